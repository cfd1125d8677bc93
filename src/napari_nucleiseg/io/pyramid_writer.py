"""Write a lazy multiscale RGB image (dask arrays, finest first) to disk, window by window.

Memory stays at a few windows whatever the image size: each pyramid level is computed in
row-major windows of whole tiles and streamed into the file. Two layouts, both readable again by
:func:`napari_nucleiseg.io.open_slide`:

* tiled pyramidal TIFF (``.tif``): one JPEG-compressed page per level, each with its own
  resolution tags — OpenSlide's generic-TIFF layout, as the demo slides;
* OME-Zarr (``.zarr``): an NGFF 0.4 multiscale of (c, y, x) arrays with µm scales.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: Windows computed together (dask's thread pool runs them in parallel).
WINDOWS_AT_ONCE = 4
#: Tiles per window along x.
WINDOW_TILES = 4


def count_tiles(levels, tile: int) -> int:
    return sum(math.ceil(lv.shape[0] / tile) * math.ceil(lv.shape[1] / tile) for lv in levels)


def iter_windows(level, tile: int):
    """``(y0, x0, block)`` windows of one level in row-major tile order, computed a few at a time
    in parallel; each block is up to ``tile`` × ``WINDOW_TILES·tile`` pixels."""
    import dask

    h, w = level.shape[:2]
    width = tile * WINDOW_TILES
    boxes = [(y0, x0) for y0 in range(0, h, tile) for x0 in range(0, w, width)]
    for i in range(0, len(boxes), WINDOWS_AT_ONCE):
        group = boxes[i : i + WINDOWS_AT_ONCE]
        blocks = dask.compute(*[level[y0 : y0 + tile, x0 : x0 + width] for y0, x0 in group])
        for (y0, x0), block in zip(group, blocks):
            yield y0, x0, np.asarray(block)


def write_pyramidal_tiff(
    path: str | Path,
    levels,
    mpp: float | None = None,
    downsamples: list[float] | None = None,
    tile: int = 512,
    quality: int = 90,
    description: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Stream ``levels`` into a tiled JPEG pyramid; ``progress(done_tiles, total_tiles)``.

    Written beside the target and renamed when complete, so a cancelled or failed job never
    leaves a half file under the final name.
    """
    import tifffile

    path = Path(path)
    downsamples = downsamples or [levels[0].shape[0] / lv.shape[0] for lv in levels]
    total, done = count_tiles(levels, tile), 0
    tmp = path.with_name(path.name + ".part")
    bigtiff = sum(lv.shape[0] * lv.shape[1] * 3 for lv in levels) > 2**31

    def tiles(level):
        nonlocal done
        for _, _, block in iter_windows(level, tile):
            for x in range(0, block.shape[1], tile):
                t = block[:, x : x + tile]
                if t.shape[:2] != (tile, tile):  # edge tiles are padded with glass
                    t = np.pad(
                        t,
                        ((0, tile - t.shape[0]), (0, tile - t.shape[1]), (0, 0)),
                        constant_values=255,
                    )
                done += 1  # counted before handing over: the writer asks for no tile after the last
                if progress is not None:
                    progress(done, total)
                yield np.ascontiguousarray(t)

    try:
        with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw:
            for i, level in enumerate(levels):
                h, w = level.shape[:2]
                kw = {}
                if mpp is not None:
                    px_per_cm = 1e4 / (mpp * downsamples[i])
                    kw = {"resolution": (px_per_cm, px_per_cm), "resolutionunit": "CENTIMETER"}
                tw.write(
                    tiles(level),
                    shape=(h, w, 3),
                    dtype=np.uint8,
                    tile=(tile, tile),
                    photometric="rgb",
                    compression="jpeg",
                    compressionargs={"level": quality},
                    subfiletype=0 if i == 0 else 1,
                    metadata=None,
                    description=description if i == 0 else None,
                    **kw,
                )
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_ome_zarr(
    path: str | Path,
    levels,
    mpp: float | None = None,
    downsamples: list[float] | None = None,
    tile: int = 512,
    attrs: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Stream ``levels`` into an OME-Zarr (NGFF 0.4) multiscale image of (c, y, x) uint8 arrays."""
    import zarr

    path = Path(path)
    downsamples = downsamples or [levels[0].shape[0] / lv.shape[0] for lv in levels]
    total, done = count_tiles(levels, tile), 0
    tmp = path.with_name(path.name + ".part")
    if tmp.exists():
        shutil.rmtree(tmp)
    keep = False
    try:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        datasets = []
        for i, level in enumerate(levels):
            h, w = level.shape[:2]
            arr = root.create_array(
                str(i), shape=(3, h, w), chunks=(3, tile, tile), dtype=np.uint8, fill_value=255
            )
            for y0, x0, block in iter_windows(level, tile):
                arr[:, y0 : y0 + block.shape[0], x0 : x0 + block.shape[1]] = np.moveaxis(
                    block, 2, 0
                )
                done += math.ceil(block.shape[1] / tile)
                if progress is not None:
                    progress(done, total)
            scale = (
                [1.0, 1.0, 1.0]
                if mpp is None
                else [1.0, mpp * downsamples[i], mpp * downsamples[i]]
            )
            datasets.append(
                {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": scale}]}
            )
        space = {"type": "space", **({"unit": "micrometer"} if mpp is not None else {})}
        root.attrs["multiscales"] = [
            {
                "version": "0.4",
                "axes": [
                    {"name": "c", "type": "channel"},
                    {"name": "y", **space},
                    {"name": "x", **space},
                ],
                "datasets": datasets,
            }
        ]
        if attrs:
            root.attrs.update(attrs)
        if path.exists():
            # Checked again here, not only before the work: the folder goes, with all in it.
            from .output import OutputError, replaceable_image_store

            problem = replaceable_image_store(path)
            if problem:  # something appeared meanwhile: the finished image is not thrown away
                keep = True
                raise OutputError(path, f"{problem}; the image written is kept as {tmp}")
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if not keep:
            _remove_settled(tmp)
    return path


def _remove_settled(folder: Path, settle_s: float = 1.0) -> None:
    """Remove ``folder``, and again if it comes back within ``settle_s``: zarr writes chunks from
    its own I/O thread, so after Ctrl-C a write already under way can recreate the folder after
    it was removed (a ``.part`` left behind)."""
    import time

    deadline = time.monotonic() + settle_s
    removed = False
    while True:
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
            removed = True
        if not removed or time.monotonic() > deadline:
            return
        time.sleep(0.1)
