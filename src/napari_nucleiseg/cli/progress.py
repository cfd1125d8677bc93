"""Progress of long commands on stderr: a tqdm bar on a terminal; on a log or a pipe, whole lines,
about one per tenth of the work (a bar redrawn with carriage returns reads as
``16/34 tiles32/34 tiles`` in a log)."""

from __future__ import annotations

import math
import sys
import time


def is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def duration(seconds: float) -> str:
    """``0.4s``, ``12s``, ``3m05s``, ``1h02m``: tenths under 10 s, so a fast image's time is not
    "0s"; ``?`` when unknown."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 9.95:
        return f"{max(0.0, seconds):.1f}s"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """One piece of long work (the tiles of an image, the images of a folder).

    ``update(done, total, status)`` as it advances; ``fraction`` (0-1), when given, decides the
    tenths on a log instead of ``done / total`` (work that goes on after the last tile);
    ``initial`` (read on the first call) is work an earlier run did, left out of the rate and
    ETA. Work of fewer than ``min_total`` steps shows nothing. On a terminal the bar is removed
    at ``close()`` unless ``leave``.
    """

    def __init__(
        self,
        desc: str,
        unit: str = "tiles",
        *,
        stream=None,
        position: int = 0,
        leave: bool = False,
        min_total: int = 2,
        tty: bool | None = None,
        bar_format: str | None = None,
    ):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = is_tty(self.stream) if tty is None else tty
        self.desc, self.unit = desc, unit
        self.position, self.leave, self.min_total = position, leave, min_total
        self.bar_format = bar_format
        self.bar = None
        self._tenth = -1
        self._t0 = time.perf_counter()
        self._first = None

    def update(
        self, done, total, status: str = "", fraction: float | None = None, initial: int = 0
    ) -> None:
        if total < self.min_total:
            return
        if self._first is None:
            self._first = initial
        if self.tty:
            self._draw(done, total, status)
            return
        frac = done / total if fraction is None else fraction
        tenth = min(10, int(10 * frac + 1e-9))
        if tenth > self._tenth:
            self._tenth = tenth
            print(self.line(done, total, status, frac), file=self.stream, flush=True)

    def line(self, done, total, status: str = "", fraction: float | None = None) -> str:
        frac = done / total if fraction is None else fraction
        text = f"{self.desc}: {done}/{total} {self.unit} ({100 * frac:.0f} %)"
        if status:
            text += f", {status}"
        elapsed = time.perf_counter() - self._t0
        rate = (done - (self._first or 0)) / elapsed if elapsed > 0 else 0.0
        if 0 < done < total and rate > 0:
            text += f", ETA {duration((total - done) / rate)}"
        return text

    def _draw(self, done, total, status) -> None:
        if self.bar is None:
            from tqdm import tqdm

            # ``initial``: work an earlier run did (resumed tiles) is not counted in the rate.
            self.bar = tqdm(
                total=total,
                initial=self._first,
                desc=self.desc,
                unit=self.unit.rstrip("s") or self.unit,
                file=self.stream,
                position=self.position,
                leave=self.leave,
                dynamic_ncols=True,
                bar_format=self.bar_format,
            )
        if self.bar.total != total:
            self.bar.total = total
        if status:
            self.bar.set_postfix_str(status, refresh=False)
        self.bar.update(done - self.bar.n)

    def write(self, text: str, stream=None) -> None:
        """A message line that does not break the bars."""
        stream = stream if stream is not None else self.stream
        if self.tty:
            from tqdm import tqdm

            tqdm.write(text, file=stream)
        else:
            print(text, file=stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def follow_training(label: str, steps, quiet: bool = False):
    """Drain a training run's progress dicts (``stage``, ``elapsed_s``, ``budget_s``, and
    ``iter``/``loss`` while training) onto a seconds bar named ``label``; the ``result`` of its
    ``done`` item, or None. ``quiet``: no bar (a worker rank under torchrun)."""
    bar = Progress(label, unit="s", min_total=1)
    result = None
    for info in steps:
        if info["stage"] == "done":
            result = info["result"]
            break
        if quiet:
            continue
        status = info["stage"]
        if "loss" in info:
            status += f" iter {info['iter']} loss {info['loss']:.3f}"
        bar.update(int(info["elapsed_s"]), int(info["budget_s"]), status)
    bar.close()
    return result
