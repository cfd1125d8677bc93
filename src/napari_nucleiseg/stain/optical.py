"""Optical density and the pixels a stain fit looks at.

Stain normalisation works in natural-log optical density, ``OD = -ln(I / 255)`` (Beer-Lambert;
the convention of Macenko 2009, Vahadane 2016, StainTools and TIAToolbox), whereas Ruifrok-Johnston
deconvolution (:mod:`.deconvolution`) keeps its traditional log10. Inputs are 8-bit, so OD is a
256-entry table per channel value: no logarithm is ever taken per pixel.
"""

from __future__ import annotations

import numpy as np

from .errors import StainError

#: OD of each 8-bit value. 0 is read as 1 (a fully dark pixel has no finite OD) and OD never drops
#: below 1e-6, as in TIAToolbox, so every value is finite and glass is (almost) zero.
OD_LUT = np.maximum(-np.log(np.maximum(np.arange(256, dtype=np.float64), 1.0) / 255.0), 1e-6)
OD_LUT32 = OD_LUT.astype(np.float32)

#: sRGB value -> linear light (IEC 61966-2-1), the first step of CIELAB.
_v = np.arange(256, dtype=np.float64) / 255.0
SRGB_TO_LINEAR = np.where(_v <= 0.04045, _v / 12.92, ((_v + 0.055) / 1.055) ** 2.4)
#: CIE Y of linear sRGB (D65), the only part of the colour lightness depends on.
Y_WEIGHTS = np.array([0.212671, 0.715160, 0.072169])

#: Tissue is darker than this CIELAB lightness (fraction of 100): the luminosity threshold of
#: StainTools and TIAToolbox (0.8), which leaves glass and pale background out of stain fits.
LUMINOSITY_THRESHOLD = 0.8
#: Pixels a fit samples at most: enough for 1e-3 precision on percentiles, a few ms of work.
MAX_FIT_PIXELS = 100_000
#: A fit needs at least this many tissue pixels to say anything about stains.
MIN_TISSUE_PIXELS = 500


def as_pixels(rgb) -> np.ndarray:
    """Any RGB image (H, W, 3) or pixel list (N, 3) as a contiguous (N, 3) uint8 array.

    Float images (0-1 or 0-255) and NaN/inf are made safe here: NaN reads as glass (255), +inf as
    255, -inf as 0, so a damaged float export never produces a non-finite optical density.
    """
    a = np.asarray(rgb)
    if a.ndim < 2 or a.shape[-1] < 3:
        raise StainError(
            f"expected an RGB image (height, width, 3), got an array of shape {a.shape}"
        )
    a = a[..., :3]
    if a.dtype != np.uint8:
        f = a.astype(np.float32)
        finite = f[np.isfinite(f)]
        if a.dtype.kind == "f" and finite.size and finite.max() <= 1.0:
            f = f * 255.0
        f = np.nan_to_num(f, nan=255.0, posinf=255.0, neginf=0.0)
        a = np.clip(np.rint(f), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a.reshape(-1, 3))


def lightness(pixels: np.ndarray) -> np.ndarray:
    """CIELAB L* / 100 of (N, 3) uint8 pixels, through the sRGB table (no per-pixel powers
    except one cube root)."""
    lin = SRGB_TO_LINEAR.astype(np.float32)
    y = (
        lin[pixels[:, 0]] * np.float32(Y_WEIGHTS[0])
        + lin[pixels[:, 1]] * np.float32(Y_WEIGHTS[1])
        + lin[pixels[:, 2]] * np.float32(Y_WEIGHTS[2])
    )
    f = np.where(y > 0.008856, np.cbrt(y), 7.787 * y + 16.0 / 116.0)
    return (1.16 * f - 0.16).astype(np.float32)


def sample_pixels(rgb, max_pixels: int = MAX_FIT_PIXELS, seed: int = 0) -> np.ndarray:
    """Up to ``max_pixels`` pixels of an image, a stratified random sample (one pixel drawn from
    each run of ``n / max_pixels`` consecutive pixels; seeded, so a fit is reproducible). O(k),
    no sort, and every part of the image is represented."""
    px = as_pixels(rgb)
    n = len(px)
    if n <= max_pixels:
        return px
    step = n // max_pixels
    rng = np.random.default_rng(seed)
    idx = np.arange(max_pixels, dtype=np.int64) * step + rng.integers(0, step, max_pixels)
    return px[idx]


def tissue_selection(pixels: np.ndarray, luminosity: float = LUMINOSITY_THRESHOLD) -> np.ndarray:
    """Boolean mask of the pixels that carry stain information: darker than the luminosity
    threshold (not glass) and with no channel at 0 (a clipped, saturated pixel has no true OD)."""
    # Channel by channel: a reduction along the short last axis is slow in numpy.
    return (
        (lightness(pixels) < luminosity)
        & (pixels[:, 0] > 0)
        & (pixels[:, 1] > 0)
        & (pixels[:, 2] > 0)
    )
