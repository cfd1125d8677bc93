"""Tissue detection on a low-resolution view of the slide.

Glass is bright and colourless; stained tissue absorbs light. We threshold optical density
(``OD = -log10(I / I0)``, with ``I0`` the slide's own white, so dim scanners and yellowish glass
work) at a level set by Otsu but clamped to a physically meaningful range: on a slide that is
all tissue or all glass Otsu alone would split noise. Small specks (dust) are removed and small
holes (lumina, fat) filled, both sized in µm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Resolution the mask is computed at: fine enough for 256-µm tiles (16 px), a few MB for any slide.
MASK_MPP = 16.0
#: OD bounds for the glass/tissue threshold (log10 units): 0.03 is clean glass noise, 0.12 pale
#: eosin is always tissue.
OD_MIN, OD_MAX = 0.03, 0.12


@dataclass
class TissueMask:
    """A boolean mask over the whole slide at ``downsample`` level-0 pixels per mask pixel."""

    mask: np.ndarray
    downsample: float  # level-0 pixels per mask pixel, vertically
    mpp: float | None  # µm per mask pixel (vertical), None when the slide has no resolution
    threshold_od: float
    downsample_x: float | None = None  # horizontally, when rounding made it differ

    @property
    def downsample_yx(self) -> tuple[float, float]:
        return (self.downsample, self.downsample_x or self.downsample)

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def fraction_in(self, x0: float, y0: float, x1: float, y1: float) -> float:
        """Tissue fraction of a level-0 rectangle (exclusive ends)."""
        dy, dx = self.downsample_yx
        r0, r1 = int(np.floor(y0 / dy)), int(np.ceil(y1 / dy))
        c0, c1 = int(np.floor(x0 / dx)), int(np.ceil(x1 / dx))
        window = self.mask[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)]
        return float(window.mean()) if window.size else 0.0


def tissue_mask(slide, mpp: float = MASK_MPP, max_size: int = 2048) -> TissueMask:
    """Compute the tissue mask of a slide (any :class:`~napari_nucleiseg.io.Slide`).

    The mask is made at about ``mpp`` µm/px (or ``max_size`` px across, whichever is coarser) from
    the pyramid level nearest that resolution, so a gigapixel slide costs one small level read.
    """
    import math

    h0, w0 = slide.shape
    target = max(max(h0, w0) / max_size, 1.0)
    if slide.mpp is not None:
        target = max(target, mpp / slide.mpp)
    level = min(
        range(slide.level_count), key=lambda i: abs(math.log(slide.level_downsamples[i] / target))
    )
    lh, lw = slide.level_shapes[level]
    if (
        lh * lw > 4 * max_size * max_size
    ):  # the nearest level is still huge: take a finer-read thumbnail
        rgb = slide.thumbnail(max_size)
    else:
        rgb = slide.read_region(0, 0, lw, lh, level)
        if slide.level_downsamples[level] * 1.5 < target:  # much finer than needed: shrink first
            from PIL import Image

            f = slide.level_downsamples[level] / target
            size = (max(1, round(lw * f)), max(1, round(lh * f)))
            rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))
    downsample, downsample_x = h0 / rgb.shape[0], w0 / rgb.shape[1]
    mask_mpp = None if slide.mpp is None else slide.mpp * downsample
    mask, thr = tissue_from_rgb(rgb, mask_mpp)
    return TissueMask(
        mask=mask, downsample=downsample, mpp=mask_mpp, threshold_od=thr, downsample_x=downsample_x
    )


def tissue_from_rgb(rgb: np.ndarray, mpp: float | None = None) -> tuple[np.ndarray, float]:
    """Tissue mask of an RGB uint8 image; returns ``(mask, od_threshold)``."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_holes, remove_small_objects

    rgb = np.asarray(rgb, dtype=np.float32)
    # The slide's white: a high percentile per channel, never below 200 (a dark slide is still
    # mostly tissue, not mostly glass).
    white = np.maximum(np.percentile(rgb.reshape(-1, 3), 99, axis=0), 200.0)
    od = -np.log10(np.clip(rgb, 1.0, None) / white)
    od = np.clip(od, 0, None).max(axis=2)
    try:
        thr = float(threshold_otsu(od)) if od.size > 1 and np.ptp(od) > 0 else OD_MIN
    except ValueError:
        thr = OD_MIN
    thr = float(np.clip(thr, OD_MIN, OD_MAX))
    mask = od > thr
    # Sizes in µm: specks below 50 µm across are dust; holes below 100 µm across are lumina.
    px_um2 = (mpp or 8.0) ** 2
    mask = ndi.binary_opening(mask, iterations=1)
    mask = remove_small_objects(mask, max_size=max(1, int(2500 / px_um2)))
    mask = remove_small_holes(mask, max_size=max(1, int(10000 / px_um2)))
    return mask, thr
