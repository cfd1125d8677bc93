"""A whole slide's tumour heatmap: the resumable store and the block-by-block job that fills it.

The map, its grid and the classification of one block are those of
:mod:`napari_nucleiseg.classification.heatmap`; this module runs them over a whole slide and keeps
the result.

Whole slides (:func:`heatmap_slide`) are read block by block — many cells, one region read at the
pyramid level nearest the model's µm/px that is not coarser — on the nuclei job's runner (threads
or dask, :func:`~napari_nucleiseg.wholeslide.job.make_runner`), each block written as one chunk of
``<out>/<stem>.heatmap.zarr`` and then recorded, so an interrupted run (Ctrl-C, Cancel, a kill)
resumes without computing a finished block again; memory is a few blocks whatever the slide.

The store is zarr v2: the array ``probabilities`` (classes, rows, cols), float32, NaN where a
cell was not classified, chunked one block per chunk, with NGFF ``multiscales`` attributes that
place it in µm beside the slide; the array ``tissue``, the slide's tissue mask the run used
(uint8, its µm/px in ``tissue_mpp``), to which outlines keep; and this package's ``nucleiseg``
attributes (tags, model, geometry, the run's identity, ``finished``). ``blocks/<bi>_<bj>.json``
records a block once its chunk is on disk, with the chunk's digest; a record whose chunk is
missing or changed is dropped and the block computed again. A store made for another slide,
model or geometry is refused, not mixed. :func:`open_heatmap` reads a store, finished or not, as
a :class:`~napari_nucleiseg.classification.heatmap.Heatmap`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io.errors import SlideError
from .heatmap import (
    MIN_TISSUE,
    Heatmap,
    HeatmapCancelled,
    HeatmapError,
    PlacedTissue,
    _block_size,
    _grid_blocks,
    _method,
    _slide_fractions,
    classify_block,
    default_stride,
    slide_reader,
    slide_tissue,
)

#: Bump when the store layout or the geometry rule changes: old stores are refused, not mixed.
STORE_FORMAT = 1
#: The probabilities array of a store: (classes, rows, cols) float32, NaN = not classified.
ARRAY = "probabilities"
#: The tissue mask the heatmap was computed with (uint8, the mask's own grid; its µm/px in the
#: attributes): outlines keep to it. Stores written before it existed have none.
TISSUE = "tissue"


# --------------------------------------------------------------------------- the store
def store_path(out_dir, slide_path) -> Path:
    from ..io.output import output_stem

    return Path(out_dir) / f"{output_stem(slide_path)}.heatmap.zarr"


def _key(bi: int, bj: int) -> str:
    return f"{bi}_{bj}"


def _record(store: Path, k: str) -> Path:
    return Path(store) / "blocks" / f"{k}.json"


def _chunk(store: Path, bi: int, bj: int) -> Path:
    return Path(store) / ARRAY / "0" / str(bi) / str(bj)


def _read_attrs(path: Path) -> dict:
    from ..wholeslide.store import StoreMismatchError

    try:
        attrs = json.loads((Path(path) / ".zattrs").read_text())
    except (OSError, ValueError) as exc:
        raise StoreMismatchError(
            path, f"exists and is not a heatmap store ({exc}); refusing to write into it"
        ) from None
    meta = attrs.get("nucleiseg")
    if not isinstance(meta, dict) or meta.get("kind") != "heatmap":
        raise StoreMismatchError(
            path, "exists and is not a nucleiseg heatmap store; refusing to write into it"
        )
    return attrs


def _write_attrs(path: Path, attrs: dict) -> None:
    from ..wholeslide.store import atomic_write

    atomic_write(Path(path) / ".zattrs", lambda f: f.write(json.dumps(attrs, indent=1).encode()))


def _ngff(geometry: dict, tags: list[str]) -> dict:
    mpp = geometry["mpp"]
    return {
        "multiscales": [
            {
                "version": "0.4",
                "name": "heatmap",
                "axes": [
                    {"name": "c", "type": "channel"},
                    {"name": "y", "type": "space", "unit": "micrometer"},
                    {"name": "x", "type": "space", "unit": "micrometer"},
                ],
                "datasets": [
                    {
                        "path": ARRAY,
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [1.0, mpp, mpp]},
                            {"type": "translation", "translation": [0.0, *geometry["translate"]]},
                        ],
                    }
                ],
                "metadata": {
                    "description": "class probabilities of the patch centred on each cell; NaN: "
                    "not classified (no tissue); translation as napari's, beside a slide layer "
                    "whose level-0 pixel 0 is centred on 0",
                    "channels": [f"p_{t}" for t in tags],
                },
            }
        ]
    }


def _open_or_create(
    path: Path, identity: dict, meta: dict, n_classes: int, tissue: PlacedTissue
) -> dict:
    """The store's attributes, creating it (under a temporary name, renamed into place) when
    absent; :class:`~napari_nucleiseg.wholeslide.store.StoreMismatchError` when it holds another
    slide's, model's or geometry's heatmap. A store without its tissue mask (written before
    masks were kept, or the array lost) gets the one this version computes for the slide."""
    from ..wholeslide.store import (
        StoreMismatchError,
        StoreRepairWarning,
        create_aside,
        repair_array_metadata,
    )

    g = meta["geometry"]

    def create_probabilities(root) -> None:
        root.create_array(
            ARRAY,
            shape=(n_classes, *g["shape"]),
            chunks=(n_classes, g["block"], g["block"]),
            dtype="float32",
            fill_value=np.nan,
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )

    def fill(root, tmp: Path) -> None:
        create_probabilities(root)
        _write_tissue(root, tissue)
        (tmp / "blocks").mkdir()
        _write_attrs(tmp, {**_ngff(g, meta["tags"]), "nucleiseg": {**meta, "identity": identity}})

    create_aside(path, fill, "heatmap store")
    attrs = _read_attrs(path)
    old = attrs["nucleiseg"].get("identity", {})
    if old != identity:
        raise StoreMismatchError(
            path,
            f"{_difference(old, identity)}; refusing to mix heatmaps — delete the store or "
            "choose another --out",
        )
    (path / "blocks").mkdir(exist_ok=True)
    import zarr

    # Damaged array metadata is written again (the blocks it describes are kept), else a resume
    # would fail on it with a traceback.
    for line in repair_array_metadata(path, create_probabilities):  # < _run < heatmap_slide
        warnings.warn(line, StoreRepairWarning, stacklevel=5)
    root = zarr.open_group(str(path), mode="r+")
    if "tissue_mpp" not in attrs["nucleiseg"] or not _tissue_readable(root):
        _write_tissue(root, tissue)
        attrs["nucleiseg"]["tissue_mpp"] = list(tissue.mpp)
        _write_attrs(path, attrs)
    return attrs


def _tissue_readable(root) -> bool:
    try:
        root[TISSUE]
    except Exception:  # noqa: BLE001 (absent, or metadata zarr cannot parse: written again)
        return False
    return True


def _write_tissue(root, tissue: PlacedTissue) -> None:
    mask = np.asarray(tissue.mask, np.uint8)
    arr = root.create_array(
        TISSUE, shape=mask.shape, chunks=mask.shape, dtype="uint8", overwrite=True
    )
    arr[...] = mask


def _difference(old: dict, new: dict) -> str:
    """One phrase saying why a store's identity differs from this run's."""
    from ..wholeslide.store import describe_difference

    if any(old.get(k) != new.get(k) for k in ("format", "slide", "method")):
        return describe_difference(old, new)  # another slide, model, runtime or format
    changed = [
        f"{k} {old.get(k)} (this run: {new.get(k)})"
        for k in ("stride_px", "block", "min_tissue", "mask_max_px")
        if old.get(k) != new.get(k)
    ]
    return "it was made with " + ", ".join(changed or ["other settings"])


def _check_records(path: Path, blocks) -> tuple[dict[str, dict], list[str]]:
    """Records whose chunk is on disk as recorded; a record or chunk that is missing, damaged
    or changed is dropped (its block is redone), one line each."""
    from ..wholeslide.store import file_digest

    good, problems = {}, []
    for bi, bj in blocks:
        k = _key(bi, bj)
        rec_path = _record(path, k)
        if not rec_path.exists():
            continue
        try:
            rec = json.loads(rec_path.read_text())
            expected = rec["chunk"]
        except (OSError, ValueError, KeyError, TypeError):
            rec, expected = None, "?"
        actual = file_digest(_chunk(path, bi, bj))
        if rec is None or expected != actual:
            problems.append(
                f"{path}: block {k}'s {'record' if rec is None else 'chunk'} is missing or "
                "damaged; computing that block again"
            )
            rec_path.unlink(missing_ok=True)
            _chunk(path, bi, bj).unlink(missing_ok=True)
            continue
        good[k] = rec
    return good, problems


@dataclass(frozen=True)
class HeatmapJob:
    """What a block task needs; small and picklable (the slide pickles as its path)."""

    slide: object
    store: str
    method: str
    method_identity: dict
    model_mpp: float
    stride: int
    block: int


def heatmap_block(job: HeatmapJob, bi: int, bj: int, keep: np.ndarray) -> dict:
    """Classify block ``(bi, bj)``'s kept cells, write its chunk, then record it. Runs in a
    thread, a local process or a dask worker; idempotent (same content, atomic writes)."""
    import zarr

    from ..wholeslide.store import atomic_json, file_digest, fsync_path

    method = _method(job.method)
    if method.describe() != job.method_identity:
        import socket

        raise SlideError(
            job.slide.path,
            f"worker {socket.gethostname()} would compute block {_key(bi, bj)} with another "
            f"model or runtime ({method.describe()}) than the rest of the slide; give every "
            "worker the same settings",
        )
    r0, c0 = bi * job.block, bj * job.block
    t0 = time.perf_counter()
    probs = classify_block(method, slide_reader(job.slide, job.model_mpp), r0, c0, keep, job.stride)
    arr = zarr.open_group(job.store, mode="r+")[ARRAY]
    h, w = keep.shape
    arr[:, r0 : r0 + h, c0 : c0 + w] = probs
    chunk = _chunk(Path(job.store), bi, bj)
    fsync_path(chunk)  # the record says the chunk is on disk: it must be
    n = int(keep.sum())
    atomic_json(_record(Path(job.store), _key(bi, bj)), {"patches": n, "chunk": file_digest(chunk)})
    return {"patches": n, "seconds": time.perf_counter() - t0}


@dataclass
class HeatmapProgress:
    """Where a whole-slide heatmap stands; yielded after every finished block.

    ``done`` counts tissue blocks recorded in the store, ``total`` all tissue blocks;
    ``resumed`` were recorded by earlier runs, ``computed`` by this one; ``patches`` counts the
    patches classified in the recorded blocks.
    """

    slide: str
    done: int
    total: int
    patches: int
    store: Path
    finished: bool = False
    resumed: int = 0
    computed: int = 0
    elapsed: float = 0.0

    @property
    def fraction(self) -> float:
        return 1.0 if self.finished else self.done / max(1, self.total)


def plan_slide(slide, method, *, stride_px=None, block=None, min_tissue=MIN_TISSUE):
    """The grid, blocks and identity of a whole-slide heatmap, without running it:
    ``(geometry, fractions, tissue_blocks, identity, tissue)`` (tissue: the slide's mask, placed
    in µm)."""
    from ..wholeslide.job import MASK_MAX_PX
    from ..wholeslide.store import slide_fingerprint

    if slide.mpp is None:
        raise SlideError(
            slide.path, "states no µm/px; give it with --mpp (e.g. 0.25 for 40x, 0.5 for 20x)"
        )
    m, patch = float(method.mpp), int(method.tile_px)
    stride = int(stride_px or default_stride(method))
    cell = stride * m
    h0, w0 = slide.shape
    rows, cols = math.ceil(h0 * slide.mpp / cell), math.ceil(w0 * slide.mpp / cell)
    level = slide.best_level_for_mpp(m)
    block = int(block or _block_size(stride, patch, m / slide.level_mpp(level)))
    mask = slide_tissue(slide)
    fractions = _slide_fractions(slide, mask, stride, patch, m, 0, 0, rows, cols)
    tissue_blocks = [
        (r0 // block, c0 // block)
        for r0, c0, r1, c1 in _grid_blocks(rows, cols, block)
        if (fractions[r0:r1, c0:c1] >= min_tissue).any()
    ]
    _, translate = Heatmap(
        np.zeros((1, 0, 0), np.float32), [], cell, (0.0, 0.0), stride, patch, m, slide.mpp
    ).layer_transform()
    geometry = {
        "mpp": cell,
        "origin_um": [0.0, 0.0],
        "stride_px": stride,
        "patch_px": patch,
        "model_mpp": m,
        "slide_mpp": float(slide.mpp),
        "block": block,
        "shape": [rows, cols],
        "read_level": level,
        "scale": [cell, cell],
        "translate": list(translate),
        "rule": "map pixel (i, j) = slide square [i, i+1) x [j, j+1) * mpp µm from the slide's "
        "corner, valued by the patch centred on it",
    }
    identity = {
        "format": STORE_FORMAT,
        "slide": slide_fingerprint(slide),
        "method": method.describe(),
        "stride_px": stride,
        "block": block,
        "min_tissue": float(min_tissue),
        "mask_max_px": MASK_MAX_PX,
    }
    return geometry, fractions, tissue_blocks, identity, PlacedTissue.of_slide(mask, slide.mpp)


def heatmap_slide(
    slide,
    out_dir,
    *,
    model=None,
    project=None,
    mpp: float | None = None,
    stride_px: int | None = None,
    block: int | None = None,
    min_tissue: float = MIN_TISSUE,
    scheduler=None,
    workers: int | None = None,
) -> Iterator[HeatmapProgress]:
    """The heatmap of a whole slide into ``<out_dir>/<stem>.heatmap.zarr``, yielding progress
    after every finished block.

    Parameters
    ----------
    slide
        Path of the slide, or an opened :class:`~napari_nucleiseg.io.Slide`.
    out_dir
        Folder of the store (created if missing).
    model, project
        The classifier: a name or card path, looked up in ``project`` too; None: the project's
        current classifier, else the shipped default.
    mpp
        µm/px of the slide's level 0 when its file states none (or states it wrongly).
    stride_px
        Model pixels between cells (default half a patch).
    block
        Map pixels per block side (default 16, fewer if a block's read would exceed 4096² px
        of the level read).
    min_tissue
        Least tissue fraction of a cell's patch to classify the cell (0: every cell).
    scheduler, workers
        Where blocks run, as for :func:`~napari_nucleiseg.wholeslide.segment_slide`: threads
        (default 2), ``"local"`` or a dask scheduler address / ``Client``.

    Closing the generator (the Cancel of a widget, ``compute_slide_heatmap``'s ``cancel``)
    cancels the blocks not started; running ones finish and are recorded. Ctrl-C raises
    :class:`~napari_nucleiseg.wholeslide.JobInterrupted` saying how many blocks are kept. The
    same call resumes; a finished store is checked and returned at once.

    Raises
    ------
    SlideError
        The slide cannot be read (named), or states no µm/px.
    StoreMismatchError
        The store holds another slide's, model's or geometry's heatmap.
    MethodError, WeightsError
        No such classifier (the message lists them), or its weights fail their hash.
    """
    from ..io import slide_for_job
    from ..methods import get_method

    method = get_method(model, kind="classifier", project=project)
    if getattr(method, "kind", None) != "classifier":
        raise HeatmapError(f"{getattr(method, 'name', method)!r} is not a tissue classifier")
    with slide_for_job(slide, mpp) as slide:
        _check_resolution(slide, method)
        yield from _run(
            slide, Path(out_dir), method, stride_px, block, min_tissue, scheduler, workers
        )


def _check_resolution(slide, method) -> None:
    """Refuse a slide whose µm/px the classifier could only meet by enlarging it implausibly
    (a file stating 352.8 µm/px planned 5,921 blocks, a quarter of an hour of nothing), as
    segmenting refuses it: a :class:`HeatmapError` naming the file, before any work."""
    from ..tiling.plan import ResolutionError, check_resolution

    if slide.mpp is None:
        return
    try:
        check_resolution(float(slide.mpp), method)
    except ResolutionError as exc:
        raise HeatmapError(f"{slide.path}: {exc}") from None


def _remove_stale_outputs(out_dir: Path, stem: str) -> None:
    import re

    pattern = re.compile(rf"^\.{re.escape(stem)}\.heatmap\.zarr\.[0-9a-f]{{32}}\.tmp$")
    try:
        names = os.listdir(out_dir)
    except FileNotFoundError:
        return
    for name in names:
        if pattern.match(name):
            shutil.rmtree(Path(out_dir) / name, ignore_errors=True)


def _run(slide, out_dir, method, stride_px, block, min_tissue, scheduler, workers):
    from ..io.output import output_stem
    from ..wholeslide.job import JobInterrupted, make_runner
    from ..wholeslide.store import (
        DiskFullError,
        StoreLock,
        StoreRepairWarning,
        is_no_space,
        remove_stale_temporaries,
    )

    t_start = time.perf_counter()
    path = store_path(out_dir, slide.path)
    geometry, fractions, tissue_blocks, identity, tissue = plan_slide(
        slide, method, stride_px=stride_px, block=block, min_tissue=min_tissue
    )
    tags = list(method.classes)
    meta = {
        "kind": "heatmap",
        "finished": False,
        "tags": tags,
        "model": method.describe(),
        "geometry": geometry,
        "slide": str(slide.path),
        "tissue_mpp": list(tissue.mpp),
    }
    name, total = str(slide.path), len(tissue_blocks)
    with StoreLock(path):
        _remove_stale_outputs(out_dir, output_stem(slide.path))
        attrs = _open_or_create(path, identity, meta, len(tags), tissue)
        remove_stale_temporaries(path)
        records, problems = _check_records(path, tissue_blocks)
        for line in problems:  # attributed to whoever iterates heatmap_slide
            warnings.warn(line, StoreRepairWarning, stacklevel=4)
        patches = sum(int(r.get("patches", 0)) for r in records.values())
        resumed = len(records)
        if attrs["nucleiseg"].get("finished") and not problems and resumed == total:
            yield HeatmapProgress(name, total, total, patches, path, True, resumed, 0, 0.0)
            return
        if attrs["nucleiseg"].get("finished"):
            attrs["nucleiseg"]["finished"] = False
            _write_attrs(path, attrs)
        job = HeatmapJob(
            slide,
            str(path),
            # A card path: every worker finds the model without knowing the project.
            str(getattr(method, "card_path", None) or method.name),
            identity["method"],
            method.mpp,
            geometry["stride_px"],
            geometry["block"],
        )
        b = geometry["block"]
        todo = [bij for bij in tissue_blocks if _key(*bij) not in records]
        todo.reverse()  # pop() from the end = raster order
        done, computed = resumed, 0

        def progress(finished=False):
            return HeatmapProgress(
                name,
                done,
                total,
                patches,
                path,
                finished,
                resumed,
                computed,
                time.perf_counter() - t_start,
            )

        runner, inflight = None, {}
        run = f"{output_stem(slide.path)}-{uuid.uuid4().hex[:8]}"  # dask keys of this run
        try:
            try:
                yield progress()
                runner = make_runner(scheduler, workers)
                while todo or inflight:
                    while todo and len(inflight) < runner.slots():
                        bi, bj = todo.pop()
                        keep = fractions[bi * b : (bi + 1) * b, bj * b : (bj + 1) * b] >= min_tissue
                        f = runner.submit(
                            heatmap_block,
                            job,
                            bi,
                            bj,
                            keep,
                            key=f"nucleiseg-heatmap-{run}-{_key(bi, bj)}",
                        )
                        inflight[f] = (bi, bj)
                    for f in runner.wait_any(inflight):
                        inflight.pop(f)
                        result = f.result()  # re-raises the block's error (SlideError, OSError)
                        done += 1
                        computed += 1
                        patches += result["patches"]
                        yield progress()
                summary = {
                    "tissue_blocks": total,
                    "blocks": math.ceil(geometry["shape"][0] / b)
                    * math.ceil(geometry["shape"][1] / b),
                    "patches": patches,
                    "seconds_last_run": round(time.perf_counter() - t_start, 2),
                    "resumed_blocks": resumed,
                    "runner": runner.kind,
                }
                attrs["nucleiseg"].update(finished=True, summary=summary)
                _write_attrs(path, attrs)
            finally:
                if runner is not None:
                    if inflight:
                        runner.cancel(list(inflight))
                    runner.close()  # waits for running blocks: they are recorded, and kept
        except KeyboardInterrupt:
            kept = len(_check_records(path, tissue_blocks)[0])
            raise JobInterrupted(
                f"interrupted: {kept} of {total} heatmap blocks are kept; run the same command "
                "to resume"
            ) from None
        except OSError as exc:
            if is_no_space(exc):
                kept = len(_check_records(path, tissue_blocks)[0])
                raise DiskFullError(
                    path,
                    f"disk full while writing the heatmap ({exc.strerror}); {kept} of {total} "
                    "blocks are kept: free some space and run the same command again to resume",
                ) from exc
            raise
    yield progress(True)


def compute_slide_heatmap(
    slide,
    out_dir,
    *,
    progress: Callable[[int, int], None] | None = None,
    cancel=None,
    **kwargs,
) -> Path:
    """:func:`heatmap_slide` run to the end: ``progress(done, total)`` after every block,
    ``cancel`` (a ``threading.Event``) checked after every block — set, the run stops (blocks
    running finish and are kept) and
    :class:`~napari_nucleiseg.classification.heatmap.HeatmapCancelled` is raised. Returns the
    store."""
    gen = heatmap_slide(slide, out_dir, **kwargs)
    last = None
    try:
        for last in gen:
            if progress is not None:
                progress(last.done, last.total)
            if cancel is not None and cancel.is_set() and not last.finished:
                gen.close()  # cancels what has not started; running blocks are recorded
                raise HeatmapCancelled(
                    f"cancelled: {last.done} of {last.total} heatmap blocks are kept in "
                    f"{last.store}; run again to resume"
                )
    finally:
        gen.close()
    return last.store


def open_heatmap(store) -> Heatmap:
    """The map of a heatmap store (finished or not: cells not computed yet are NaN)."""
    import zarr

    path = Path(store)
    attrs = _read_attrs(path)
    meta = attrs["nucleiseg"]
    g = meta["geometry"]
    root = zarr.open_group(str(path), mode="r")
    probs = np.asarray(root[ARRAY][...], np.float32)
    tissue = None
    if "tissue_mpp" in meta and TISSUE in root:
        tissue = PlacedTissue(np.asarray(root[TISSUE][...], bool), tuple(meta["tissue_mpp"]))
    return Heatmap(
        probs,
        list(meta["tags"]),
        float(g["mpp"]),
        tuple(g["origin_um"]),
        int(g["stride_px"]),
        int(g["patch_px"]),
        float(g["model_mpp"]),
        float(g["slide_mpp"]),
        dict(meta.get("model", {})),
        bool(meta.get("finished")),
        tissue,
    )
