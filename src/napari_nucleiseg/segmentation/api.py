"""One entry point for every nuclei method: ``segment_image(rgb, mpp, method)``.

``method`` is anything the registry (:mod:`napari_nucleiseg.methods`) knows: a shipped or
user-trained model by name or card path, ``classical``, ``classical-phansalkar``, or a method
registered at run time. Inputs larger than a tile are cut by the tile planner
(:mod:`napari_nucleiseg.tiling`) and merged seam-free, as a whole-slide job cuts a slide.
"""

from __future__ import annotations

import numpy as np

from ..methods import get_method


def describe_method(method=None, normaliser=None) -> dict:
    """What produced a result, recorded in output files: the method's identity, and the stain
    normalisation (target profile) when the input was normalised first."""
    info = dict(get_method(method).describe())
    if normaliser is not None:
        info["stain"] = normaliser.describe()
    return info


def segment_untiled(rgb: np.ndarray, mpp: float, method=None) -> np.ndarray:
    """One pass of ``method`` over the whole of ``rgb`` (no tiling)."""
    return get_method(method).segment(rgb, mpp)


def segment_image(
    rgb: np.ndarray,
    mpp: float,
    method=None,
    tile: int | None = None,
    progress=None,
    normaliser=None,
) -> np.ndarray:
    """Instance labels (uint32, 0 = background) for an RGB image at ``mpp`` µm/px.

    ``tile`` (input pixels) overrides the method's tile core; ``progress(done, total)`` is called
    after every tile. With a stain ``normaliser`` (:func:`napari_nucleiseg.stain.make_normaliser`,
    fitted), the image is first normalised to its target, as one source.
    """
    from ..io.image_backend import to_rgb_uint8
    from ..tiling import plan_tiles

    rgb = to_rgb_uint8(rgb)
    if normaliser is not None:
        from ..stain import normalise_image

        rgb = normalise_image(rgb, normaliser, mpp)
    if min(rgb.shape[:2]) < 2:
        return np.zeros(rgb.shape[:2], np.uint32)
    m = get_method(method)
    plan = plan_tiles(rgb.shape[:2], mpp, m, tile)
    if plan.fits_one_pass(rgb.shape[:2]):
        labels = m.segment(rgb, mpp)
        if progress is not None:
            progress(1, 1)
        return labels
    from .tiled import segment_tiled

    return segment_tiled(rgb, mpp, m.segment, plan, progress=progress)
