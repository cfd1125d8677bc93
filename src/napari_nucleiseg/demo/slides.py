"""Synthetic pyramidal slides: the built-in demo slide (with ground truth) and large test slides.

Both are tiled JPEG TIFFs that OpenSlide reads as ``generic-tiff``, with the pixel size in the
TIFF resolution tags, so they exercise exactly the path a real slide takes.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io.output import shareable
from .render import render_he

#: Bump when rendering changes, so cached demo slides are regenerated rather than reused.
DEMO_VERSION = 1
DEMO_SHAPE = (3072, 4096)
DEMO_MPP = 0.5
DEMO_SEED = 2018
TILE = 256


@dataclass(frozen=True)
class DemoSlide:
    """Paths of the demo slide and its ground-truth nucleus labels, with its resolution."""

    slide: Path
    labels: Path
    mpp: float
    nuclei: int


def cache_dir() -> Path:
    """Per-user cache (``$NUCLEISEG_CACHE``, else ``$XDG_CACHE_HOME``/``~/.cache``)."""
    root = os.environ.get("NUCLEISEG_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "napari-nucleiseg"


def demo_slide(directory: str | Path | None = None) -> DemoSlide:
    """The demo slide, generated on first use (a few seconds) and reused afterwards."""
    d = Path(directory) if directory is not None else cache_dir() / f"demo-v{DEMO_VERSION}"
    d.mkdir(parents=True, exist_ok=True)
    slide, labels = d / "demo_he.tif", d / "demo_he_labels.tif"
    if not (slide.exists() and labels.exists()):
        rgb, lab = render_he(DEMO_SHAPE, DEMO_MPP, seed=DEMO_SEED)
        # Labels first: the slide's presence is what marks the pair complete.
        _atomic(labels, lambda p: write_label_tiff(p, lab, DEMO_MPP))
        _atomic(slide, lambda p: write_pyramidal_tiff(p, rgb, DEMO_MPP))
    import tifffile

    with tifffile.TiffFile(labels) as tf:
        n = (
            int(tf.pages[0].description.split("nuclei=")[-1])
            if "nuclei=" in (tf.pages[0].description or "")
            else 0
        )
    return DemoSlide(slide=slide, labels=labels, mpp=DEMO_MPP, nuclei=n)


def _atomic(target: Path, write) -> None:
    """Write to a temporary file beside ``target`` and rename: a crash never leaves half a file,
    and two napari processes generating at once both end with a complete one."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".part")
    os.close(fd)
    try:
        write(Path(tmp))
        shareable(tmp)  # mkstemp's file is owner-only
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _levels(rgb: np.ndarray, factor: int = 4, smallest: int = 512) -> list[np.ndarray]:
    levels = [rgb]
    while max(levels[-1].shape[:2]) > smallest:
        prev = levels[-1]
        h, w = prev.shape[0] // factor * factor, prev.shape[1] // factor * factor
        c = prev.shape[2] if prev.ndim == 3 else 1
        small = prev[:h, :w].reshape(h // factor, factor, w // factor, factor, c).mean(axis=(1, 3))
        levels.append(small.astype(prev.dtype).reshape(h // factor, w // factor, *prev.shape[2:]))
    return levels


def _write_pyramid(
    path, levels: list[np.ndarray], mpp: float, tile: int, description: str, **codec
) -> None:
    """Tiled TIFF, one page per ×4 level, each with its own resolution tags (OpenSlide's generic
    TIFF layout)."""
    import tifffile

    px_per_cm = 1e4 / mpp
    with tifffile.TiffWriter(path, bigtiff=levels[0].nbytes > 2**31) as tw:
        for i, level in enumerate(levels):
            tw.write(
                level,
                tile=(tile, tile),
                resolution=(px_per_cm / 4**i, px_per_cm / 4**i),
                resolutionunit="CENTIMETER",
                subfiletype=0 if i == 0 else 1,
                description=description if i == 0 else None,
                metadata=None,
                **codec,
            )


def write_pyramidal_tiff(
    path: str | Path, rgb: np.ndarray, mpp: float, tile: int = TILE, quality: int = 90
) -> None:
    """Write an RGB image as a tiled JPEG pyramid (×4 per level, area-averaged) with its µm/px."""
    _write_pyramid(
        path,
        _levels(rgb),
        mpp,
        tile,
        f"napari-nucleiseg synthetic H&E, mpp={mpp}",
        compression="jpeg",
        compressionargs={"level": quality},
        photometric="rgb",
    )


def write_label_tiff(path: str | Path, labels: np.ndarray, mpp: float, tile: int = TILE) -> None:
    """Write an instance label map as a tiled, zlib-compressed TIFF.

    Lower levels form a nearest-neighbour pyramid.
    """
    levels = [labels]
    while max(levels[-1].shape) > 512:
        levels.append(levels[-1][::4, ::4])
    _write_pyramid(
        path,
        levels,
        mpp,
        tile,
        f"napari-nucleiseg labels, nuclei={int(labels.max())}",
        compression="zlib",
    )


def read_label_pyramid(path: str | Path) -> list:
    """Lazy dask arrays of a label TIFF written by :func:`write_label_tiff`, finest first."""
    import dask.array as da
    import tifffile
    import zarr

    tf = tifffile.TiffFile(path)
    series = tf.series[0]
    n = len(series.levels)
    group = zarr.open(series.aszarr(), mode="r")
    arrays = [group] if n == 1 and not hasattr(group, "keys") else [group[str(i)] for i in range(n)]
    return [da.from_zarr(a) for a in arrays]


def make_large_slide(
    path: str | Path,
    size: tuple[int, int] = (100_000, 100_000),
    mpp: float = 0.5,
    tile: int = 512,
    tissue_fraction: float = 0.4,
    seed: int = 0,
    tissue_box: tuple[int, int, int, int] | None = None,
) -> Path:
    """A gigapixel pyramidal slide written in seconds: tiles are pre-encoded once and repeated.

    Tissue tiles (cut from a rendered H&E field) fill an ellipse covering ``tissue_fraction`` of the
    slide and glass fills the rest, at every level (×4). Each level is written from an iterator of
    encoded tiles, so memory stays at a few tiles whatever ``size`` is.

    ``tissue_box=(x0, y0, x1, y1)`` (level-0 px) puts tissue in that rectangle instead, drawn to the
    pixel at every level (tiles across its edge are composed and encoded on the fly), so a small
    patch of tissue on a huge slide is seen where it is by a mask made from a coarse level.
    """
    import imagecodecs
    import tifffile

    rng = np.random.default_rng(seed)
    field, _ = render_he((tile * 4, tile * 4), mpp, seed=seed, coverage=1.0)
    glass = np.clip(242 + rng.normal(0, 1.5, (tile, tile, 3)), 0, 255).astype(np.uint8)

    def encode(a):
        return imagecodecs.jpeg8_encode(np.ascontiguousarray(a), level=70)

    glass_jpeg = encode(glass)
    h0, w0 = size
    px_per_cm = 1e4 / mpp
    path = Path(path)
    # Ellipse of area tissue_fraction centred on the slide, in normalised coordinates.
    radius = np.sqrt(tissue_fraction / np.pi)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        factor, i = 1, 0
        while True:
            h, w = h0 // factor, w0 // factor
            texture = _texture(field, factor, tile)
            th, tw_ = texture.shape[:2]
            tissue_tiles = [
                encode(texture[(k // 2) * (th - tile) :][:tile, (k % 2) * (tw_ - tile) :][:, :tile])
                for k in range(4)
            ]
            rows, cols = -(-h // tile), -(-w // tile)

            def tiles(
                rows=rows,
                cols=cols,
                h=h,
                w=w,
                factor=factor,
                texture=texture,
                tissue_tiles=tissue_tiles,
            ):
                if tissue_box is not None:
                    yield from _box_tiles(
                        rows,
                        cols,
                        factor,
                        tile,
                        tissue_box,
                        texture,
                        glass,
                        tissue_tiles,
                        glass_jpeg,
                        encode,
                    )
                    return
                for r in range(rows):
                    cy = ((r + 0.5) * tile / h) - 0.5
                    for c in range(cols):
                        cx = ((c + 0.5) * tile / w) - 0.5
                        if cy * cy + cx * cx <= radius * radius:
                            yield tissue_tiles[(r * 7 + c * 3) % 4]
                        else:
                            yield glass_jpeg

            tw.write(
                tiles(),
                shape=(h, w, 3),
                dtype="uint8",
                tile=(tile, tile),
                compression="jpeg",
                photometric="ycbcr",
                subsampling=(2, 2),
                resolution=(px_per_cm / factor, px_per_cm / factor),
                resolutionunit="CENTIMETER",
                subfiletype=0 if i == 0 else 1,
                metadata=None,
            )
            if max(h, w) <= 2048:
                break
            factor, i = factor * 4, i + 1
    return path


def _box_tiles(rows, cols, factor, tile, box, texture, glass, tissue_tiles, glass_jpeg, encode):
    """Encoded tiles of one level for tissue in ``box`` (level-0 px): whole tiles reuse the
    pre-encoded ones, tiles across the box edge are composed (tissue inside, glass outside)."""
    x0, y0, x1, y1 = (v / factor for v in box)
    th, tw = texture.shape[:2]
    for r in range(rows):
        ys = r * tile + np.arange(tile) + 0.5
        inside_y = (ys >= y0) & (ys < y1)
        for c in range(cols):
            xs = c * tile + np.arange(tile) + 0.5
            inside = inside_y[:, None] & ((xs >= x0) & (xs < x1))[None, :]
            if not inside.any():
                yield glass_jpeg
            elif inside.all():
                yield tissue_tiles[(r * 7 + c * 3) % 4]
            else:
                k = (r * 7 + c * 3) % 4
                part = texture[(k // 2) * (th - tile) :][:tile, (k % 2) * (tw - tile) :][:, :tile]
                yield encode(np.where(inside[:, :, None], part, glass))


def _texture(field: np.ndarray, factor: int, tile: int) -> np.ndarray:
    """The rendered field as it looks at ``factor`` downsampling, at least one tile in size."""
    f = min(factor, 4)
    n = field.shape[0] // f
    t = field[: n * f, : n * f].reshape(n, f, n, f, 3).mean(axis=(1, 3))
    if factor > 4:
        t = t[:: factor // 4, :: factor // 4]
    if t.shape[0] < tile:
        reps = -(-tile // t.shape[0])
        t = np.tile(t, (reps, reps, 1))
    return t.astype(np.uint8)
