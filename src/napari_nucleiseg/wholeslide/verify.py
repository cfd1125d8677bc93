"""A result store checks itself before it is resumed or reported done.

What is checked, and what is redone when it is missing or damaged (each named in one warning
line, :class:`~.store.StoreRepairWarning`):

- a tile record (``progress/tiles/r_c.npz``) that does not load: deleted, the tile is segmented
  again (its labels are deterministic, so chunks already written from it stay right);
- a level-0 chunk whose file is missing or differs from the size and CRC-32 its chunk record
  noted, or a chunk record that does not load: the record is deleted and the chunk is written
  again from the tile records;
- in a finished store, also: a coarse pyramid chunk differing from ``levels.json`` (the pyramid
  is built again), an export (CSV, Parquet, GeoJSON) missing or differing from the size and
  SHA-256 noted when it was written (the exports are written again from the records).

A finished store with any problem is reopened (``records/`` back to ``progress/``, ``finished``
false) and resumed like an interrupted one, so there is one way to heal: the job itself.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from . import store as st

#: The arrays every tile record holds (others only when the tile owns nuclei).
_TILE_FIELDS = ("origin", "labels", "owned")


def tile_record_problem(path: Path, thorough: bool = True) -> str | None:
    """Why a tile record cannot be used (``None``: it can). ``thorough`` reads every member and
    checks its CRC (a resume); otherwise only the zip's directory is read (a finished store)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            missing = [f for f in _TILE_FIELDS if f"{f}.npy" not in names]
            if missing:
                return f"is incomplete (no {', '.join(missing)})"
            if thorough:
                bad = z.testzip()
                if bad is not None:
                    return f"is damaged ({bad} fails its CRC)"
    except FileNotFoundError:
        return "is missing"
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        return f"is damaged ({type(exc).__name__}: {exc})"
    return None


def read_chunk_record(path: Path) -> dict | None:
    """A chunk record, or ``None`` when it is missing or damaged."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or not {"kept", "nonzero", "file"} <= rec.keys():
        return None
    return rec


def _rc(key: str) -> tuple[int, int]:
    r, c = key.split("_")
    return int(r), int(c)


def _drop(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _chunk_problem(store: Path, rc, rec: dict) -> str | None:
    f = st.chunk_file(store, 0, *rc)
    got = st.file_digest(f)
    want = rec["file"]
    if got == want:
        return None
    if want is None:
        return f"{f} holds labels its record says it has none"
    if got is None:
        return f"{f} is missing"
    return f"{f} is damaged ({got[0]:,} bytes, {want[0]:,} when written, or another checksum)"


def check_records(store: Path, base: Path, *, thorough: bool, expect_tiles=(), expect_chunks=()):
    """Check the tile and chunk records under ``base`` (``progress/`` or ``records/``) and the
    level-0 chunks they vouch for; delete what is damaged so it is redone. ``expect_*``: keys
    that must be there (a finished store has a record of every tile and chunk). Returns the
    warning lines."""
    lines = []
    tiles = base / "tiles"
    have = {p.stem for p in tiles.glob("*.npz") if not p.name.startswith(".")}
    for k in sorted(have | set(expect_tiles), key=_rc):
        path = tiles / f"{k}.npz"
        problem = tile_record_problem(path, thorough)
        if problem:
            lines.append(f"{path} {problem}; tile {k} will be segmented again")
            _drop(path)
    chunks = base / "chunks"
    have = {p.stem for p in chunks.glob("*.json") if not p.name.startswith(".")}
    for k in sorted(have | set(expect_chunks), key=_rc):
        path = chunks / f"{k}.json"
        rec = read_chunk_record(path)
        if rec is None:
            what = "is missing" if not path.exists() else "is damaged"
            lines.append(f"{path} {what}; chunk {k} will be written again from the tile records")
            _drop(path)
            continue
        problem = _chunk_problem(store, _rc(k), rec)
        if problem:
            lines.append(f"{problem}; chunk {k} will be written again from the tile records")
            _drop(path)
    return lines


def check_levels(store: Path, base: Path) -> list[str]:
    """The coarse pyramid levels against ``levels.json`` (written once they were built)."""
    path = base / "levels.json"
    try:
        levels = json.loads(path.read_text())
    except (OSError, ValueError):
        return [f"{path} is missing or damaged; the coarse levels will be built again"]
    for level, chunks in levels.items():
        for k, want in chunks.items():
            f = st.chunk_file(store, int(level), *_rc(k))
            if st.file_digest(f) != want:
                what = "is missing" if not f.exists() else "is damaged"
                return [f"{f} {what}; the coarse levels will be built again"]
    return []


def check_exports(out_dir: Path, outputs: dict) -> list[str]:
    """Each export against the size and SHA-256 noted when it was written."""
    for kind in ("csv", "parquet", "geojson"):
        rec = outputs.get(kind)
        if not isinstance(rec, dict) or "sha256" not in rec:
            return [f"{out_dir}: the store does not record its {kind} export; writing it again"]
        path = Path(out_dir) / rec["file"]
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            problem = "is missing"
        else:
            if size != rec["bytes"]:
                problem = f"is incomplete or changed ({size:,} bytes, {rec['bytes']:,} written)"
            elif st.sha256_file(path) != rec["sha256"]:
                problem = "has changed since it was written (its SHA-256 differs)"
            else:
                continue
        # One line: the exports are written together, so all are written again.
        return [f"{path} {problem}; the exports will be written again from the tile records"]
    return []


def check_finished(store: Path, out_dir: Path, meta: dict, tissue, chunks) -> list[str]:
    """Check a finished store (its records in ``records/``), deleting damaged records; returns
    the warning lines (none: it is whole)."""
    from .tasks import key

    base = store / "records"
    lines = check_records(
        store,
        base,
        thorough=False,
        expect_tiles=[key(*rc) for rc in tissue],
        expect_chunks=[key(*rc) for rc in chunks],
    )
    if meta.get("levels", 1) > 1:
        lines += check_levels(store, base)
    lines += check_exports(out_dir, meta.get("outputs", {}))
    return lines
