"""The three kinds of task a whole-slide job runs — each a plain function of picklable arguments,
so the same code runs in a thread, a local process or a dask.distributed worker.

1. :func:`segment_tile` — segment one tissue tile's read box (core + halo) and record the nuclei it
   *owns* (centroid in its core grown by a small margin, and small enough that the tile saw them
   whole), with their measurements and outlines, in ``progress/tiles/r_c.npz``. The margin is why
   a nucleus on a tile corner cannot vanish: each tile segments it with its own context, so their
   centroids can differ by a pixel or two, and with strict ownership both could land in the
   other's core. With the margin both tiles may own it; the merge keeps one.
2. :func:`write_chunk` — once the tile records of the 3×3 tiles around a chunk exist, merge them
   into that level-0 chunk (= one tile core) and record which of the tile's own nuclei are kept.
3. :func:`build_level_chunk` — one chunk of a coarser pyramid level from the level below.

Ownership and the merge rule are the tile planner's (:mod:`napari_nucleiseg.tiling.merge`),
applied here chunk by chunk; in-memory tiling applies them to the whole image at once, and the
labels are identical. Because an owned nucleus has its centroid within ``m`` (the
margin) of its tile's core and spans at most ``halo - m``, and the halo is at most half a tile,
any nucleus overlapping one that touches a chunk has its centroid within ``2 * halo - m`` of that
chunk, so it is owned by one of the 3×3 tiles around it — so every chunk a nucleus touches
takes the same decision about it, and a nucleus is either kept whole in every chunk it covers or
nowhere.

Ids are ``tile_index * 2**16 + local`` (local = 1.. in the tile's own label order): unique,
and the same whichever process, order or run produced them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .store import (
    PYRAMID_FACTOR,
    atomic_json,
    atomic_write,
    chunk_file,
    chunk_record,
    file_digest,
    fsync_path,
    tile_record,
)

#: Bits of a label id that number nuclei within their tile.
LOCAL_BITS = 16


@dataclass(frozen=True)
class Job:
    """Everything a task needs; small and picklable (the slide pickles as its path)."""

    slide: object
    store: str
    mpp: float
    method: str | None
    tile: int
    halo: int
    shape: tuple[int, int]
    rows: int
    cols: int
    dtype: str
    normaliser: object = None
    levels: int = 1
    #: The method's identity the store records (runtime and flip setting included): a worker
    #: that would compute otherwise (another NUCLEISEG_RUNTIME or CPU on a cluster) refuses.
    method_identity: dict | None = None

    def index(self, r: int, c: int) -> int:
        return r * self.cols + c

    def core(self, r: int, c: int) -> tuple[int, int, int, int]:
        x, y = c * self.tile, r * self.tile
        return x, y, min(x + self.tile, self.shape[1]), min(y + self.tile, self.shape[0])

    def neighbours(self, r: int, c: int):
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                rr, cc = r + dr, c + dc
                if 0 <= rr < self.rows and 0 <= cc < self.cols:
                    yield rr, cc


def key(r: int, c: int) -> str:
    return f"{r}_{c}"


def sharing_cores_for(passes: int, fn, *args):
    """Run a task whose network passes share this machine's cores with ``passes - 1`` other
    workers' (see ``segmentation.predict.sharing_cores``)."""
    from ..segmentation.predict import sharing_cores

    with sharing_cores(passes):
        return fn(*args)


# --------------------------------------------------------------------------- 1. segment a tile
def segment_tile(job: Job, r: int, c: int) -> dict:
    """Segment tile ``(r, c)`` and record the nuclei it owns. Returns ``{"owned": n}``."""
    from ..methods import get_method
    from ..segmentation.measure import measure_nuclei
    from ..tiling import owned_nuclei, ownership_margin
    from .export import outlines

    method = get_method(job.method)
    if job.method_identity is not None and method.describe() != job.method_identity:
        import socket

        from ..io.errors import SlideError
        from .store import describe_difference

        phrase = describe_difference({"method": job.method_identity}, {"method": method.describe()})
        raise SlideError(
            job.slide.path,
            f"worker {socket.gethostname()} would compute tile {key(r, c)} differently from "
            f"the rest of the slide: {phrase}; give every worker the same settings",
        )
    x0, y0, x1, y1 = core = job.core(r, c)
    h = job.halo
    # The read box clipped to the slide, as the in-memory tiler clips to the image (tiling.plan).
    rx0, ry0 = max(x0 - h, 0), max(y0 - h, 0)
    rx1, ry1 = min(x1 + h, job.shape[1]), min(y1 + h, job.shape[0])
    rgb = job.slide.read_region(rx0, ry0, rx1 - rx0, ry1 - ry0, 0)
    if job.normaliser is not None:  # adapted to the slide; a learned one at its own scale
        learned = getattr(job.normaliser, "method", "") == "learned"
        rgb = (
            job.normaliser.transform(rgb, mpp=job.mpp) if learned else job.normaliser.transform(rgb)
        )
    # Each worker's pass takes its share of the cores (the runner wraps tasks in
    # sharing_cores_for); the rest of this tile (read, watershed, measure, outline, write)
    # overlaps the other workers' passes.
    lab = np.asarray(method.segment(rgb, job.mpp))
    crop, origin = owned_nuclei(lab, (rx0, ry0), core, ownership_margin(job.mpp, h), h)
    k = int(crop.max()) if crop.size else 0
    if k >= 2**LOCAL_BITS:
        from ..io.errors import SlideError

        raise SlideError(
            job.slide.path,
            f"tile {key(r, c)} holds {k} nuclei, more than one tile can number; "
            "use a smaller tile size (--tile-um)",
        )
    record = {
        "origin": np.array(origin, np.int64),
        "labels": crop.astype(np.uint16),
        "owned": np.array(k),
    }
    if k:
        cx0, cy0 = origin[0] - rx0, origin[1] - ry0
        crop = record["labels"]
        rgb_crop = rgb[cy0 : cy0 + crop.shape[0], cx0 : cx0 + crop.shape[1]]
        table = measure_nuclei(crop, rgb_crop, job.mpp, origin_px=origin)
        rings = outlines(crop, table["label"], offset=origin)
        offsets = np.cumsum([0] + [len(p) for p in rings]).astype(np.int64)
        record.update(
            {
                "ring_xy": np.concatenate(rings).astype(np.float64) if rings else np.zeros((0, 2)),
                "ring_offsets": offsets,
                **{f"col_{name}": np.asarray(v) for name, v in table.items()},
            }
        )
    atomic_write(tile_record(job.store, key(r, c)), lambda f: np.savez_compressed(f, **record))
    return {"owned": k}


class DamagedRecordError(Exception):
    """A tile record that cannot be read; the message names it. Not a ``SlideError``: the slide
    is fine, and the next run redoes the tile (see :mod:`.verify`)."""


def load_tile(job_store, r: int, c: int, fields=None) -> dict:
    """A tile record's arrays (only ``fields`` when given: the others stay compressed on disk)."""
    import zipfile
    import zlib

    path = tile_record(job_store, key(r, c))
    try:
        with np.load(path) as z:
            return {name: z[name] for name in (fields or z.files) if name in z.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, KeyError, OSError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
            from .store import is_no_space

            if is_no_space(exc):
                raise
        raise DamagedRecordError(
            f"{path} is missing or damaged ({type(exc).__name__}: {exc}); run the same command "
            "again: the store checks its records and segments this tile again"
        ) from exc


# --------------------------------------------------------------------------- 2. merge into a chunk
def merge_chunk(
    core: tuple[int, int, int, int], halo: int, dtype, cols: int, records
) -> tuple[np.ndarray, dict[tuple[int, int], np.ndarray]]:
    """The merge of one level-0 chunk, in memory: ``(labels of the chunk, {tile: ids kept})``.

    ``core`` is the chunk's box (x0, y0, x1, y1); ``records`` yields ``((rr, cc), record)`` for
    the segmented tiles among the 3×3 around it, in raster order (the merge order), each record
    holding ``labels``, ``origin`` and ``owned``. The running job writes what this returns; the
    Nuclei panel shows it for chunks not written yet, so what it counts is what it shows and,
    once every neighbour is segmented, what the finished store will hold."""
    from ..tiling import kept, overlap

    x0, y0, x1, y1 = core
    ex0, ey0 = x0 - halo, y0 - halo  # every nucleus that matters here lies in core plus one halo
    covered = np.zeros((y1 - y0 + 2 * halo, x1 - x0 + 2 * halo), bool)
    final = np.zeros((y1 - y0, x1 - x0), np.dtype(dtype))
    kept_ids: dict[tuple[int, int], np.ndarray] = {}
    for (rr, cc), rec in records:
        lab = rec["labels"]
        if not lab.size:
            continue
        ox, oy = (int(v) for v in rec["origin"])
        k = int(rec["owned"])
        # The record's window on the extended chunk, and on the core. A nucleus that reaches the
        # core lies whole in the extended chunk, so its decision is the global one (tiling.merge).
        ev, lv = overlap(
            (ex0, ey0, ex0 + covered.shape[1], ey0 + covered.shape[0]), (ox, oy, lab.shape)
        )
        keep = kept(lab[lv], covered[ev], k) if ev is not None else np.zeros(k + 1, bool)
        kept_ids[(rr, cc)] = np.nonzero(keep)[0]
        cv, lc = overlap((x0, y0, x1, y1), (ox, oy, lab.shape))
        if cv is not None:
            sub = lab[lc]
            window = final[cv]
            place = keep[sub] & (window == 0)
            base = np.array((rr * cols + cc) << LOCAL_BITS, dtype=final.dtype)
            window[place] = base + sub[place].astype(final.dtype)
        if ev is not None:
            covered[ev] |= lab[lv] > 0
    return final, kept_ids


def write_chunk(job: Job, r: int, c: int, sources: list[tuple[int, int]]) -> dict:
    """Merge the owned nuclei of ``sources`` (the tissue tiles among the 3×3 around ``(r, c)``)
    into level-0 chunk ``(r, c)``. Returns ``{"kept": n kept of tile (r, c), "nonzero": bool}``."""
    import zarr

    x0, y0, x1, y1 = job.core(r, c)
    ordered = sorted(sources, key=lambda rc: job.index(*rc))
    records = ((rc, load_tile(job.store, *rc, ("labels", "origin", "owned"))) for rc in ordered)
    final, kept_ids = merge_chunk((x0, y0, x1, y1), job.halo, job.dtype, job.cols, records)
    kept_own = kept_ids.get((r, c), np.zeros(0, int)).tolist()
    arr = zarr.open_array(str(_level_path(job.store, 0)), mode="r+")
    arr[y0:y1, x0:x1] = final
    fsync_path(chunk_file(job.store, 0, r, c))
    fsync_path(chunk_file(job.store, 0, r, c).parent)
    nonzero = bool(final.any())
    # The chunk file's size and CRC-32, so a later run can tell it is still what was written
    # (None: zarr stores no file for an all-zero chunk).
    atomic_json(
        chunk_record(job.store, key(r, c)),
        {"kept": kept_own, "nonzero": nonzero, "file": file_digest(chunk_file(job.store, 0, r, c))},
    )
    return {"kept": len(kept_own), "nonzero": nonzero}


def _level_path(store, level: int):
    from pathlib import Path

    return Path(store) / str(level)


# --------------------------------------------------------------------------- 3. pyramid
def build_level_chunk(store: str, level: int, i: int, j: int, tile: int) -> tuple[bool, list]:
    """Chunk ``(i, j)`` of ``level`` = level ``level - 1`` sampled every 4 pixels. Returns whether
    it holds any label, and its file's ``[size, CRC-32]`` (None: no file, all zero)."""
    import zarr

    src = zarr.open_array(str(_level_path(store, level - 1)), mode="r")
    dst = zarr.open_array(str(_level_path(store, level)), mode="r+")
    f = PYRAMID_FACTOR
    y0, x0 = i * tile * f, j * tile * f
    y1, x1 = min(y0 + tile * f, src.shape[0]), min(x0 + tile * f, src.shape[1])
    data = np.asarray(src[y0:y1:f, x0:x1:f])
    dst[i * tile : i * tile + data.shape[0], j * tile : j * tile + data.shape[1]] = data
    fsync_path(chunk_file(store, level, i, j))
    fsync_path(chunk_file(store, level, i, j).parent)
    return bool(data.any()), file_digest(chunk_file(store, level, i, j))
