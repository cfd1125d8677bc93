"""Cohorts: folders and list files of slides, whole slides through the whole-slide job one after
another, one slide's failure never stopping the others.

This is the loop only: :func:`run_cohort` yields what happens and returns nothing to print; the
command line (:mod:`napari_nucleiseg.cli.segment`) draws the progress and the tables.

Routing keeps the plain contract: an input goes to the whole-slide job when asked for, or when it
is larger than :data:`~napari_nucleiseg.segmentation.commands.MAX_IMAGE_PIXELS`; everything else
(plain images and small slides) still gives ``DIR/<stem>.tif`` + ``DIR/<stem>.csv``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LIST_SUFFIXES = (".txt", ".lst", ".list")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def expand_inputs(inputs) -> tuple[list[Path], list[str]]:
    """Files as given; folders → the slides and images inside (not recursive; result stores
    and the label TIFFs of earlier runs skipped, so a folder segmented into itself can be run
    again); ``.txt``/``.lst`` lists → one path per line (``#`` comments; relative to the list).
    Returns ``(paths, errors)``."""
    from ..io import SLIDE_SUFFIXES
    from ..segmentation.commands import result_source

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
                and not (p.suffix.lower() in (".tif", ".tiff") and result_source(p))
            )
            if not found:
                errors.append(f"{item}: a folder with no slides or images in it")
            paths.extend(found)
        elif item.suffix.lower() in LIST_SUFFIXES and item.is_file():
            listed = 0
            for line in item.read_text(encoding="utf-8", errors="replace").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    p = Path(line).expanduser()
                    paths.append(p if p.is_absolute() else item.parent / p)
                    listed += 1
            if not listed:  # as an empty folder: a run that does nothing must say so
                errors.append(f"{item}: a list with no slides or images in it")
        else:
            paths.append(item)
    return paths, errors


def needs_whole_slide(path: Path, mpp=None) -> bool:
    """Whether ``path`` is too large to segment in memory (unreadable inputs: False, so the
    plain path reports them in its usual words)."""
    from ..io import SlideError, open_slide
    from ..segmentation.commands import MAX_IMAGE_PIXELS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slide = open_slide(path, mpp=mpp)
    except SlideError:
        return False
    h, w = slide.shape
    slide.close()
    return h * w > MAX_IMAGE_PIXELS


def route_inputs(paths, *, whole_slide: bool = False, mpp=None) -> tuple[list, list]:
    """``(plain, whole)``: inputs for in-memory segmentation and for the whole-slide job."""
    whole = [p for p in paths if whole_slide or needs_whole_slide(p, mpp)]
    return [p for p in paths if p not in whole], whole


@dataclass
class SlideStarted:
    """A slide's job is starting (opening it, finding its tissue)."""

    slide: str
    index: int
    count: int


@dataclass
class SlideOutcome:
    """How one slide's job ended: ``ok`` with its tiles, nuclei and store, or its ``error`` (a
    line naming the slide)."""

    slide: str
    ok: bool
    tiles: int = 0
    resumed: int = 0
    nuclei: int = 0
    seconds: float = 0.0
    store: str = ""
    error: str = ""


def _slide_failures(client) -> tuple[type[BaseException], ...]:
    """What makes one slide fail while the cohort goes on: an unreadable slide or a store of
    another slide or model (SlideError), a full disk, bad tiling or stain (ValueError), I/O,
    weights failing their hash, and on a cluster a task whose workers died too often."""
    from ..io import SlideError
    from ..models.registry import WeightsError
    from .tasks import DamagedRecordError

    kinds: tuple[type[BaseException], ...] = (
        SlideError,
        ValueError,
        OSError,
        WeightsError,
        DamagedRecordError,
    )
    if client is not None:
        from distributed import KilledWorker

        kinds += (KilledWorker,)
    return kinds


def _error_line(path, exc: BaseException) -> str:
    from ..io import SlideError
    from .tasks import DamagedRecordError

    if isinstance(exc, SlideError) and Path(exc.path) == Path(path):  # names the slide already
        return str(exc)
    if isinstance(exc, OSError) and not isinstance(exc, SlideError):
        # "[Errno 1] Operation not permitted: 'a' -> 'b'" in the words a user searches for,
        # naming the file the system refused.
        from ..io.output import describe_os_error

        where = exc.filename2 or exc.filename or path  # a rename's target, else the file
        return f"{path}: cannot write the results: {where}: {describe_os_error(exc)}"
    if isinstance(exc, (SlideError, ValueError, OSError, DamagedRecordError)):  # its store
        return f"{path}: {exc}"
    return f"{path}: {type(exc).__name__}: {exc}"


def run_cohort(
    slides,
    out_dir,
    *,
    method=None,
    mpp=None,
    tile_um=None,
    scheduler=None,
    workers=None,
    normaliser=None,
) -> Iterator[SlideStarted | object | SlideOutcome]:
    """Run the whole-slide job on each slide in turn.

    Yields, for each slide, a :class:`SlideStarted`, then the job's
    :class:`~napari_nucleiseg.wholeslide.SlideProgress` after every finished task, then its
    :class:`SlideOutcome` (failed slides carry their error; the next slide still runs).

    Before any slide runs, raises ``WeightsError``/``MethodError`` (the method cannot run) or
    ``ConnectionError`` (the scheduler cannot be reached). Ctrl-C stops the cohort: it raises
    :class:`~napari_nucleiseg.wholeslide.JobInterrupted` (a ``KeyboardInterrupt``, never a
    slide's failure, so the command exits 130 and ``... && next_step`` does not run), whose
    message says how many tiles are kept. Closing the generator stops the running job the same
    way. Either way its finished tiles stay recorded and the same call resumes.
    """
    from ..segmentation.api import describe_method
    from .job import JobInterrupted, connect, interrupted, segment_slide
    from .store import store_path

    describe_method(method)  # unknown model or weights failing their hash: nothing can run
    client, cluster = connect(scheduler, workers) if scheduler is not None else (None, None)
    stopped = None
    try:
        failures = _slide_failures(client)
        for i, path in enumerate(slides):
            yield SlideStarted(str(path), i, len(slides))
            t0 = time.perf_counter()
            outcome = SlideOutcome(str(path), False)
            p = None
            job = segment_slide(
                path,
                out_dir,
                method=method,
                mpp=mpp,
                tile_um=tile_um,
                scheduler=client,
                workers=workers,
                normaliser=normaliser,
            )
            try:
                for p in job:
                    yield p
                outcome = SlideOutcome(
                    str(path), True, p.total, p.resumed, p.nuclei, store=str(p.store)
                )
            except failures as exc:
                outcome.error = _error_line(path, exc)
            except KeyboardInterrupt as exc:  # Ctrl-C: the cohort stops here (exit 130)
                job.close()  # waits for running tasks: their tiles are recorded and count
                if isinstance(exc, JobInterrupted):
                    stopped = exc
                else:  # it came between two of the job's steps
                    total = p.total if p is not None else None
                    stopped = interrupted(store_path(out_dir, path), total)
                break
            outcome.seconds = time.perf_counter() - t0
            yield outcome
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    if stopped is not None:
        raise stopped.recount() from None  # the cluster is closed: every tile it wrote counts
