"""Helpers for tests that watch a whole-slide result store fill while its job runs."""

from __future__ import annotations

import time
from pathlib import Path


def tile_records(out_dir: Path, stem: str) -> list[Path]:
    """The tile records a running job has written so far into ``<stem>.nuclei.zarr``."""
    d = Path(out_dir) / f"{stem}.nuclei.zarr" / "progress" / "tiles"
    return sorted(d.glob("*.npz")) if d.is_dir() else []


def wait_for_records(out_dir: Path, stem: str, n: int, proc, timeout: float = 180) -> int:
    """Wait until the job in ``proc`` has recorded ``n`` tiles; how many it had by then."""
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        k = len(tile_records(out_dir, stem))
        if k >= n:
            return k
        if proc.poll() is not None:
            raise AssertionError(
                f"the run ended before {n} tiles were recorded:\n{proc.stderr.read()}"
            )
        time.sleep(0.02)
    raise AssertionError(f"fewer than {n} tiles recorded after {timeout} s")
