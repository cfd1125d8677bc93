"""One entry point for every nuclei method: ``segment_image(rgb, mpp, method)``.

Methods: the shipped learned model (default, by registry name), ``classical`` (haematoxylin Otsu
+ watershed) and ``classical-phansalkar`` (local threshold, reference 004). Inputs larger than a
tile are segmented tile by tile and merged seam-free.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

CLASSICAL = ("classical", "classical-phansalkar")
#: Nominal resolution of the classical methods (they adapt to any µm/px).
CLASSICAL_MPP = 0.5
#: Tile edge in model pixels for instance tiling; large enough that halo overhead is small.
TILE_MODEL_PX = 1024
#: Context on every side of a tile. The 5-level network sees ~100 px around a pixel; 32 µm (64 px
#: at 0.5 µm/px) keeps tiled and untiled maps the same (AJI >= 0.99 between them, tested).
HALO_UM = 32.0


def method_grid(method: str | None) -> tuple[float, int]:
    """``(µm/px, multiple)`` a method works at: its resolution, and the pooling factor its input
    sides must be a multiple of (1 for the classical methods)."""
    method = method or default_method()
    if method in CLASSICAL:
        return CLASSICAL_MPP, 1
    predictor, card = _predictor(method)
    return float(card.mpp), int(predictor.multiple)


def method_context(method: str | None) -> tuple[int, float]:
    """``(tile core in model pixels, context in µm)`` a method is tiled with: the model card's
    (a deeper network needs more context around a tile), the module defaults otherwise."""
    method = method or default_method()
    if method in CLASSICAL:
        return TILE_MODEL_PX, HALO_UM
    _, card = _predictor(method)
    return int(card.tile_px), float(card.context_um)


def tile_geometry(
    mpp: float,
    model_mpp: float,
    multiple: int,
    tile: int | None = None,
    tile_model_px: int = TILE_MODEL_PX,
    halo_um: float = HALO_UM,
) -> tuple[int, int, int]:
    """``(tile, halo, align)`` in input pixels for tiling an image at ``mpp`` for a network at
    ``model_mpp`` whose input must be a multiple of ``multiple`` (its total pooling factor), with
    tiles of ``tile_model_px`` model pixels (or ``tile`` input pixels) and ``halo_um`` of context.

    A pooling network is not shift-invariant: a block that starts 2 px off the grid of its
    neighbour predicts visibly different maps (tiled vs untiled AJI fell to 0.79). So every tile
    and halo is a multiple of the input pixels that map to ``multiple`` model pixels, and all
    blocks sit on one global grid. (Exact where the resolution ratio makes that a whole number —
    20x and 40x inputs to a 20x model —, the nearest grid otherwise.)
    """
    f = mpp / model_mpp  # model pixels per input pixel
    align = max(1, int(round(multiple / f)))
    if tile is None:
        tile = tile_model_px / f
    tile = max(align, int(round(tile / align)) * align)
    halo = max(1, int(round(halo_um / mpp / align))) * align
    return tile, halo, align


def balanced_tile(shape: tuple[int, int], tile: int, align: int = 1) -> int:
    """The tile edge (at most ``tile``, rounded up to ``align``) that cuts ``shape`` into as
    many tiles as ``tile`` would, but of nearly equal size: 2100 px in tiles of up to 1344 is
    two of 1056, not 1344 and a 756 sliver that pays a network pass (and its halo) for little
    image."""
    ny, nx = (max(1, math.ceil(side / tile)) for side in shape)
    even = max(math.ceil(shape[0] / ny), math.ceil(shape[1] / nx))
    return min(tile, max(align, -(-even // align) * align))


@lru_cache(maxsize=4)
def _predictor(name: str):
    from ..models import load_predictor

    return load_predictor(name)


def default_method() -> str:
    from ..models import DEFAULT_NUCLEI_MODEL

    return DEFAULT_NUCLEI_MODEL


def describe_method(method: str | None, normaliser=None) -> dict:
    """What produced a result: recorded in output files, with the stain normalisation (target
    profile) when the input was normalised first."""
    method = method or default_method()
    if method in CLASSICAL:
        info = {"method": method}
    else:
        from .predict import tta_mode

        _, card = _predictor(method)
        # The flip rule changes the labels of inputs finer than the model: a whole-slide store
        # written under one setting must not be resumed under another.
        info = {
            "method": method,
            "model": card.name,
            "version": card.version,
            "sha256": card.sha256,
            "model_mpp": card.mpp,
            "test_time_flips": tta_mode(),
        }
    if normaliser is not None:
        info["stain"] = normaliser.describe()
    return info


def segment_untiled(rgb: np.ndarray, mpp: float, method: str | None = None) -> np.ndarray:
    from ..io.image_backend import to_rgb_uint8

    rgb = to_rgb_uint8(rgb)
    method = method or default_method()
    if method == "classical":
        from .classical import segment_classical

        return segment_classical(rgb, mpp, "otsu")
    if method == "classical-phansalkar":
        from .classical import segment_classical

        return segment_classical(rgb, mpp, "phansalkar")
    predictor, _ = _predictor(method)
    return predictor.segment(rgb, mpp)


def segment_image(
    rgb: np.ndarray,
    mpp: float,
    method: str | None = None,
    tile: int | None = None,
    progress=None,
    normaliser=None,
) -> np.ndarray:
    """Instance labels (uint32, 0 = background) for an RGB image at ``mpp`` µm/px.

    With a stain ``normaliser`` (:func:`napari_nucleiseg.stain.make_normaliser`, fitted), the
    image is first normalised to its target, as one source (see ``stain.normalise_image``).
    """
    from ..io.image_backend import to_rgb_uint8

    rgb = to_rgb_uint8(rgb)
    if normaliser is not None:
        from ..stain import normalise_image

        rgb = normalise_image(rgb, normaliser)
    if min(rgb.shape[:2]) < 2:
        return np.zeros(rgb.shape[:2], np.uint32)
    tile_model_px, halo_um = method_context(method)
    chosen = tile
    tile, halo, align = tile_geometry(mpp, *method_grid(method), tile, tile_model_px, halo_um)
    h, w = rgb.shape[:2]
    if chosen is None:
        tile = balanced_tile((h, w), tile, align)
    if h <= tile + 2 * halo and w <= tile + 2 * halo:
        labels = segment_untiled(rgb, mpp, method)
        if progress is not None:
            progress(1, 1)
        return labels
    from .tiled import segment_tiled

    return segment_tiled(
        rgb, mpp, lambda block, m: segment_untiled(block, m, method), tile, halo, progress
    )
