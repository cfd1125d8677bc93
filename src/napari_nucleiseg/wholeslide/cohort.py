"""``nucleiseg segment`` for cohorts: folders and list files of slides, whole slides to the
whole-slide job, one failure never stopping the others, progress bars and a summary.

Routing keeps the plain contract: an input goes to the whole-slide job when ``--whole-slide`` or
``--scheduler`` is given, or when it is larger than
:data:`~napari_nucleiseg.segmentation.commands.MAX_IMAGE_PIXELS`; everything else (plain images
and small slides) still gives ``DIR/<stem>.tif`` + ``DIR/<stem>.csv`` exactly as before.
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

LIST_SUFFIXES = (".txt", ".lst", ".list")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def expand_inputs(inputs) -> tuple[list[Path], list[str]]:
    """Files as given; folders → the slides and images inside (not recursive, result stores
    skipped); ``.txt``/``.lst`` lists → one path per line (``#`` comments; relative to the list).
    Returns ``(paths, errors)``."""
    from ..io import SLIDE_SUFFIXES

    paths, errors = [], []
    for item in map(Path, inputs):
        if item.is_dir() and not item.name.endswith(".zarr"):
            found = sorted(
                p
                for p in item.iterdir()
                if p.name.lower().endswith(SLIDE_SUFFIXES + IMAGE_SUFFIXES)
                and not p.name.endswith(".nuclei.zarr")
                and not p.name.startswith(".")
                and (p.is_file() or p.name.endswith(".zarr"))
            )
            if not found:
                errors.append(f"{item}: a folder with no slides or images in it")
            paths.extend(found)
        elif item.suffix.lower() in LIST_SUFFIXES and item.is_file():
            for line in item.read_text(encoding="utf-8", errors="replace").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    p = Path(line).expanduser()
                    paths.append(p if p.is_absolute() else item.parent / p)
        else:
            paths.append(item)
    return paths, errors


def needs_whole_slide(path: Path, mpp=None) -> bool:
    from ..io import SlideError, open_slide
    from ..segmentation.commands import MAX_IMAGE_PIXELS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slide = open_slide(path, mpp=mpp)
    except SlideError:
        return False  # the plain path reports it, in its usual words
    h, w = slide.shape
    slide.close()
    return h * w > MAX_IMAGE_PIXELS


def segment_command(args, normaliser=None) -> int:
    """``nucleiseg segment``: plain images as before, whole slides to the whole-slide job."""
    from ..segmentation.commands import segment_files

    paths, errors = expand_inputs(args.inputs)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    forced = bool(getattr(args, "whole_slide", False) or getattr(args, "scheduler", None))
    whole = [p for p in paths if forced or needs_whole_slide(p, args.mpp)]
    plain = [p for p in paths if p not in whole]
    codes = [1] if errors else []
    if plain:
        codes.append(
            segment_files(plain, args.out, mpp=args.mpp, method=args.method, normaliser=normaliser)
        )
    if whole:
        codes.append(
            segment_cohort(
                whole,
                args.out,
                method=args.method,
                mpp=args.mpp,
                tile_um=getattr(args, "tile_um", None),
                scheduler=getattr(args, "scheduler", None),
                workers=getattr(args, "workers", None),
                normaliser=normaliser,
            )
        )
    return 2 if 2 in codes else (1 if 1 in codes else 0)


# --------------------------------------------------------------------------- progress display
def _bar(fraction: float, width: int = 24) -> str:
    n = int(round(max(0.0, min(1.0, fraction)) * width))
    return "█" * n + "░" * (width - n)


def _duration(s: float) -> str:
    s = int(round(s))
    return (
        f"{s // 3600}h{s % 3600 // 60:02d}m"
        if s >= 3600
        else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")
    )


class ProgressDisplay:
    """Two bars (cohort, current slide) redrawn in place on a terminal; on a log (not a TTY), a
    line per slide at every tenth of its tiles."""

    def __init__(self, n_slides: int, stream=None):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.n = n_slides
        self.finished = 0
        self.failed = 0
        self.nuclei_done = 0
        self.t0 = time.perf_counter()
        self._drawn = False
        self._last_tenth = -1

    def _lines(self, name: str, p) -> tuple[str, str]:
        frac = (self.finished + self.failed + (p.fraction if p else 0.0)) / max(1, self.n)
        nuclei = self.nuclei_done + (p.nuclei if p else 0)
        top = (
            f"cohort {_bar(frac)} {self.finished + self.failed}/{self.n} slides"
            + (f" ({self.failed} failed)" if self.failed else "")
            + f"  {nuclei:,} nuclei  {_duration(time.perf_counter() - self.t0)}"
        )
        if p is None:
            return top, f"{name}: opening, finding tissue"
        rate = (p.segmented - p.resumed) / p.elapsed if p.elapsed > 0 else 0.0
        left = (p.total - p.segmented) / rate if rate > 0 else None
        line = (
            f"{name} {_bar(p.fraction)} {p.segmented}/{p.total} tiles"
            + (f" ({p.resumed} resumed)" if p.resumed else "")
            + f"  {p.nuclei:,} nuclei  {p.stage}"
            + (
                f"  {rate:.2f} tiles/s  ETA {_duration(left)}"
                if left is not None and p.stage == "segment"
                else ""
            )
        )
        return top, line

    def update(self, name: str, p=None) -> None:
        top, line = self._lines(name, p)
        if self.tty:
            width = 140
            up = "\x1b[2F" if self._drawn else ""
            self.stream.write(f"{up}\x1b[2K{top[:width]}\n\x1b[2K{line[:width]}\n")
            self.stream.flush()
            self._drawn = True
        elif p is not None:
            tenth = int(10 * p.fraction)
            if tenth != self._last_tenth:
                self._last_tenth = tenth
                print(line, file=self.stream, flush=True)

    def slide_done(self, ok: bool, nuclei: int = 0) -> None:
        self.finished += ok
        self.failed += not ok
        self.nuclei_done += nuclei
        self._last_tenth = -1
        if self.tty:  # leave the bars; messages print below them
            self._drawn = False
        else:
            print(self._lines("", None)[0], file=self.stream, flush=True)

    def message(self, text: str, stream=None) -> None:
        print(text, file=stream or self.stream, flush=True)
        self._drawn = False


# --------------------------------------------------------------------------- the cohort
@dataclass
class SlideOutcome:
    slide: str
    ok: bool
    tiles: int = 0
    resumed: int = 0
    nuclei: int = 0
    seconds: float = 0.0
    store: str = ""
    error: str = ""


def _client(scheduler, workers):
    """One dask client for the whole cohort (a LocalCluster for ``"local"``), or None for threads."""
    if scheduler is None:
        return None, None
    from .job import connect

    return connect(scheduler, workers)


def segment_cohort(
    slides,
    out_dir,
    *,
    method=None,
    mpp=None,
    tile_um=None,
    scheduler=None,
    workers=None,
    stream=None,
    normaliser=None,
) -> int:
    """Run the whole-slide job on each slide in turn; returns the exit code (0, 1: some slides
    failed, 2: nothing could run). Prints progress and, at the end, one summary line per slide."""
    from ..io import SlideError
    from ..models.registry import WeightsError
    from ..segmentation.api import describe_method
    from .job import segment_slide

    out = Path(out_dir)
    try:
        describe_method(method)  # unknown model or weights failing their hash: nothing can run
        out.mkdir(parents=True, exist_ok=True)
        client, cluster = _client(scheduler, workers)
    except (WeightsError, ConnectionError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    display = ProgressDisplay(len(slides), stream)
    outcomes: list[SlideOutcome] = []
    try:
        for path in slides:
            name = Path(path).name
            t0 = time.perf_counter()
            display.update(name)
            o = SlideOutcome(str(path), False)
            try:
                p = None
                for p in segment_slide(
                    path,
                    out,
                    method=method,
                    mpp=mpp,
                    tile_um=tile_um,
                    scheduler=client,
                    workers=workers,
                    normaliser=normaliser,
                ):
                    display.update(name, p)
                o = SlideOutcome(
                    str(path),
                    True,
                    p.total,
                    p.resumed,
                    p.nuclei,
                    time.perf_counter() - t0,
                    str(p.store),
                )
            except SlideError as exc:  # unreadable slide, store of another slide/model, disk full
                o.error = str(exc)
            except (ValueError, OSError) as exc:
                o.error = f"{path}: {exc}"
            except (
                Exception
            ) as exc:  # a worker lost too often, a bug: this slide fails, the cohort goes on
                o.error = f"{path}: {type(exc).__name__}: {exc}"
            o.seconds = time.perf_counter() - t0
            outcomes.append(o)
            display.slide_done(o.ok, o.nuclei)
            if not o.ok:
                display.message(f"error: {o.error}", sys.stderr)
    except KeyboardInterrupt:
        display.message(
            "interrupted: finished tiles are recorded; run the same command again to resume",
            sys.stderr,
        )
        return 130
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    _summary(outcomes)
    failed = [o.slide for o in outcomes if not o.ok]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _summary(outcomes) -> None:
    print(
        f"{'slide':<32}{'status':>9}{'tiles':>8}{'resumed':>9}{'nuclei':>10}{'time':>9}{'nuclei/s':>10}  result"
    )
    for o in outcomes:
        name = Path(o.slide).name[:31]
        if o.ok:
            rate = o.nuclei / o.seconds if o.seconds > 0 else 0.0
            print(
                f"{name:<32}{'done':>9}{o.tiles:>8}{o.resumed:>9}{o.nuclei:>10}{_duration(o.seconds):>9}"
                f"{rate:>10.0f}  {o.store}"
            )
        else:
            print(
                f"{name:<32}{'FAILED':>9}{'':>8}{'':>9}{'':>10}{_duration(o.seconds):>9}{'':>10}  {o.error}"
            )
    # One line per slide in the format plain segmentation prints, for scripts that parse it.
    for o in outcomes:
        if o.ok:
            print(f"{o.slide}: {o.nuclei} nuclei -> {o.store}")
