"""Tiled instance segmentation of an image in memory, seam-free.

The tiles, their context and the ownership/merge rule are the tile planner's
(:mod:`napari_nucleiseg.tiling`), the same as a whole-slide job's: an image segmented here and
the same pixels segmented as a whole slide give the same nuclei.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..tiling import Merger, TileGrid, TilePlan, owned_nuclei, ownership_margin


def _as_plan(tile, halo, mpp) -> TilePlan:
    if isinstance(tile, TilePlan):
        return tile
    return TilePlan(int(tile), int(halo), 1, ownership_margin(mpp, int(halo)))


def iter_segment_tiled(
    rgb: np.ndarray,
    mpp: float,
    segment: Callable[[np.ndarray, float], np.ndarray],
    tile: TilePlan | int = 1024,
    halo: int = 64,
    out: np.ndarray | None = None,
    lookahead: int = 1,
    area: tuple[int, int, int, int] | None = None,
):
    """Segment ``rgb`` tile by tile with ``segment(block, mpp) -> labels``: a generator yielding
    ``(done, total)`` after every tile and returning the label map (``StopIteration.value``), so
    a caller can stop between tiles. Pass ``out`` (zeros, uint32, the image's height and width)
    to see the finished tiles meanwhile.

    ``tile`` is a :class:`~napari_nucleiseg.tiling.TilePlan` (or a core edge, with ``halo``).
    Tile cores cover ``area`` (x0, y0, x1, y1; default the whole image, whose origin is the
    grid's); read boxes reach ``halo`` beyond, clipped to the image.

    ``1 + lookahead`` tiles are segmented at once in worker threads, each network pass on its
    share of the cores (:func:`~napari_nucleiseg.segmentation.predict.sharing_cores`), and each
    worker also finds the nuclei its tile owns; this thread merges finished tiles in raster
    order whatever finishes first, so the result does not depend on threads.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from .predict import sharing_cores

    plan = _as_plan(tile, halo, mpp)
    h, w = rgb.shape[:2]
    if out is None:
        out = np.zeros((h, w), np.uint32)
    ax0, ay0, ax1, ay1 = area if area is not None else (0, 0, w, h)
    grid = TileGrid((ay1 - ay0, ax1 - ax0), plan.tile, plan.halo)
    tiles = iter(grid)
    workers = 1 + max(0, lookahead)
    merger = Merger(out)

    def work(t):
        x0, y0, x1, y1 = t.box
        core = (x0 + ax0, y0 + ay0, x1 + ax0, y1 + ay0)
        hh = plan.halo
        rb = (
            max(core[0] - hh, 0),
            max(core[1] - hh, 0),
            min(core[2] + hh, w),
            min(core[3] + hh, h),
        )
        with sharing_cores(min(workers, len(grid))):
            labels = segment(rgb[rb[1] : rb[3], rb[0] : rb[2]], mpp)
        return owned_nuclei(labels, rb[:2], core, plan.margin, plan.halo)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nucleiseg-tile")
    pending: deque = deque()
    try:
        for t in tiles:
            pending.append(pool.submit(work, t))
            if len(pending) > lookahead:
                break
        done = 0
        while pending:
            crop, origin = pending.popleft().result()
            following = next(tiles, None)
            if following is not None:
                pending.append(pool.submit(work, following))
            merger.add(crop, origin)
            done += 1
            yield done, len(grid)
    finally:  # stopped early (cancelled): drop the tiles not started, wait for the running ones
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)
    return out


def segment_tiled(rgb, mpp, segment, *args, progress=None, **kwargs) -> np.ndarray:
    """Segment an image tile by tile with ``segment(rgb_block, mpp) -> labels``; one global map.
    Arguments as :func:`iter_segment_tiled`; ``progress(done, total)`` after every tile."""
    steps = iter_segment_tiled(rgb, mpp, segment, *args, **kwargs)
    while True:
        try:
            done, total = next(steps)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(done, total)
