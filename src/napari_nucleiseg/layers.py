"""napari layer data tuples built from core objects, without importing napari.

Every layer carries ``scale`` (and ``translate`` for coarser layers) in µm from the slide's
µm/px, so masks, labels and heatmaps at any resolution line up with the slide at every zoom.
Our layers are tagged in ``metadata["nucleiseg"]`` so widgets find them without relying on names.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Key under ``layer.metadata`` that marks and describes the layers this plugin creates.
META_KEY = "nucleiseg"


def physical_transform(
    slide, downsample: float | tuple[float, float] = 1.0
) -> tuple[tuple[float, float], tuple[float, float]]:
    """``(scale, translate)`` for a layer whose pixel spans ``downsample`` level-0 pixels.

    napari draws data pixel ``i`` centred on ``i * scale + translate``. Level-0 pixel 0 spans
    ``[-mpp/2, mpp/2]``; a coarser pixel 0 must span ``[-mpp/2, -mpp/2 + downsample*mpp]``, so its
    centre — the translate — is ``(downsample - 1) * mpp / 2``. Without this a 16× mask would sit
    7.5 level-0 pixels off the tissue.
    """
    base = slide.mpp if slide.mpp is not None else 1.0
    dy, dx = downsample if isinstance(downsample, tuple) else (downsample, downsample)
    sy, sx = base * dy, base * dx
    return (sy, sx), ((sy - base) / 2.0, (sx - base) / 2.0)


def _units(slide) -> tuple[str, str]:
    return ("micrometer", "micrometer") if slide.mpp is not None else ("pixel", "pixel")


#: Largest coarsest level napari should be given: zoomed out, it draws that level whole.
MAX_OVERVIEW = 4096


def display_pyramid(levels: list) -> list:
    """Add lazy ×4 area-averaged levels while the coarsest one is larger than ``MAX_OVERVIEW``.

    Files without a pyramid (a single-level tiled TIFF, a big PNG) would otherwise make napari
    read the full-resolution level to draw a zoomed-out view. The added levels are computed chunk
    by chunk from the level above only when they are looked at.
    """
    import dask.array as da

    levels = list(levels)
    while max(levels[-1].shape[:2]) > MAX_OVERVIEW:
        prev = levels[-1]
        small = da.coarsen(np.mean, prev, {0: 4, 1: 4}, trim_excess=True)
        # Coarsening shrinks chunks 4x per level; rechunk so the overview is not thousands of
        # tiny tasks.
        levels.append(small.astype(prev.dtype).rechunk((512, 512, -1)))
    return levels


def slide_layer(slide, chunk: int | None = None, name: str | None = None) -> tuple[Any, dict, str]:
    """A multiscale RGB image layer for a :class:`~napari_nucleiseg.io.Slide`."""
    from .io.slide import DEFAULT_CHUNK

    pyramid = display_pyramid(slide.pyramid(chunk or DEFAULT_CHUNK, on_error="warn"))
    scale, translate = physical_transform(slide)
    kwargs = {
        "name": name or slide.path.name,
        "rgb": True,
        "multiscale": True,
        "scale": scale,
        "translate": translate,
        "units": _units(slide),
        # Given explicitly: otherwise napari would compute them from the pixels.
        "contrast_limits": [0, 255],
        # napari's opportunistic dask cache would keep every chunk ever viewed (up to a quarter
        # of RAM); the slide backends keep their own bounded tile cache, so memory stays flat.
        "cache": False,
        "metadata": {META_KEY: {"kind": "slide", **slide.metadata()}},
    }
    return (pyramid, kwargs, "image")


def tissue_layer(slide, mask, name: str = "tissue") -> tuple[Any, dict, str]:
    """A low-resolution labels layer (1 = tissue) for a :class:`~napari_nucleiseg.tissue.TissueMask`."""
    scale, translate = physical_transform(slide, mask.downsample_yx)
    kwargs = {
        "name": name,
        "scale": scale,
        "translate": translate,
        "units": _units(slide),
        "opacity": 0.35,
        "metadata": {
            META_KEY: {
                "kind": "tissue",
                "slide": str(slide.path),
                "downsample": mask.downsample,
                "mpp": mask.mpp,
                "fraction": mask.fraction,
                "threshold_od": mask.threshold_od,
            }
        },
    }
    return (mask.mask.astype(np.uint8), kwargs, "labels")


def labels_display_pyramid(levels: list) -> list:
    """Add lazy ×2 levels (every other pixel: ids are never mixed) between levels further apart.

    napari draws the finest level the zoom needs and colour-maps every drawn pixel on the
    interface thread; with ×4 steps, a slide fitted to the window is drawn from a level up to 16
    times the screen's pixels. ×2 steps keep that at most 4 times.
    """
    out = [levels[0]]
    for nxt in levels[1:]:
        while out[-1].shape[0] >= 4 * nxt.shape[0] and out[-1].shape[1] >= 4 * nxt.shape[1]:
            out.append(out[-1][::2, ::2])
        out.append(nxt)
    return out


def labels_layer(
    slide, pyramid, name: str = "nuclei", kind: str = "nuclei", **meta
) -> tuple[Any, dict, str]:
    """A (multiscale) instance labels layer aligned with the slide's level 0."""
    scale, translate = physical_transform(slide)
    multiscale = isinstance(pyramid, (list, tuple))
    kwargs = {
        "name": name,
        "scale": scale,
        "translate": translate,
        "units": _units(slide),
        "multiscale": multiscale,
        "cache": False,
        "metadata": {META_KEY: {"kind": kind, "slide": str(slide.path), **meta}},
    }
    return (list(pyramid) if multiscale else pyramid, kwargs, "labels")


def region_labels_layer(
    slide,
    labels,
    origin_px: tuple[float, float],
    downsample: float = 1.0,
    name: str = "nuclei",
    kind: str = "nuclei",
    **meta,
) -> tuple[Any, dict, str]:
    """A labels layer for a label map cut from the slide.

    ``origin_px`` is the level-0 pixel ``(x, y)`` where label pixel (0, 0) starts and
    ``downsample`` the level-0 pixels per label pixel, so the map sits on the tissue it was
    computed from at every zoom.
    """
    (sy, sx), (ty, tx) = physical_transform(slide, downsample)
    base = slide.mpp if slide.mpp is not None else 1.0
    ox, oy = origin_px
    kwargs = {
        "name": name,
        "scale": (sy, sx),
        "translate": (ty + oy * base, tx + ox * base),
        "units": _units(slide),
        "metadata": {
            META_KEY: {
                "kind": kind,
                "slide": str(slide.path),
                "origin_px": [float(ox), float(oy)],
                "downsample": float(downsample),
                **meta,
            }
        },
    }
    return (labels, kwargs, "labels")
