"""Classical nuclei segmentation, no training: the floor every learned model must beat.

Haematoxylin from colour deconvolution, a global Otsu or a Phansalkar local threshold
(reference 004: ``T = μ(1 + p·exp(-q·μ) + k(σ/r - 1))``, k=0.25, r=0.5, p=2, q=10 on the
haematoxylin image scaled to 0–1), clean-up sized in µm, then a marker-controlled watershed on the
distance transform to split touching nuclei.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..stain import rgb_to_hed

#: Nuclei smaller than this (µm²) are debris; holes smaller than this inside a nucleus are filled.
MIN_AREA_UM2 = 8.0
MAX_HOLE_UM2 = 20.0
#: Two markers closer than this (µm) belong to the same nucleus.
MIN_MARKER_DISTANCE_UM = 3.0


def haematoxylin(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin OD, clipped at 0."""
    return np.clip(rgb_to_hed(rgb)[..., 0], 0, None)


def phansalkar_threshold(
    image: np.ndarray, window: int, k=0.25, r=0.5, p=2.0, q=10.0
) -> np.ndarray:
    """Per-pixel Phansalkar threshold of an image scaled to [0, 1] (box-filter mean and std)."""
    img = image.astype(np.float32)
    mean = ndi.uniform_filter(img, window)
    sq = ndi.uniform_filter(img * img, window)
    std = np.sqrt(np.clip(sq - mean * mean, 0, None))
    return mean * (1 + p * np.exp(-q * mean) + k * (std / r - 1))


def segment_classical(rgb: np.ndarray, mpp: float, threshold: str = "otsu") -> np.ndarray:
    """Instance labels (uint32) of nuclei in an RGB uint8 image at ``mpp`` µm/px."""
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_holes, remove_small_objects
    from skimage.segmentation import watershed

    h = haematoxylin(rgb)
    h = ndi.gaussian_filter(h, max(0.5, 0.25 / mpp))
    if threshold == "otsu":
        # Otsu can pick a threshold inside the background noise of an empty tile: require a
        # minimum stain density so glass and pale stroma stay background.
        t = max(threshold_otsu(h), 0.15) if np.ptp(h) > 0 else np.inf
        fg = h > t
    elif threshold == "phansalkar":
        scaled = np.clip(h / max(np.percentile(h, 99.5), 1e-6), 0, 1)
        window = int(round(15.0 / mpp)) | 1  # ~15 µm: a few nuclei across
        fg = (scaled > phansalkar_threshold(scaled, window)) & (h > 0.1)
    else:
        raise ValueError(f"unknown threshold {threshold!r}: use 'otsu' or 'phansalkar'")
    px_area = mpp * mpp
    fg = ndi.binary_opening(fg, iterations=1)
    fg = remove_small_holes(fg, max_size=int(MAX_HOLE_UM2 / px_area))
    fg = remove_small_objects(fg, max_size=int(MIN_AREA_UM2 / px_area))
    if not fg.any():
        return np.zeros(fg.shape, np.uint32)
    dist = ndi.distance_transform_edt(fg)
    dist = ndi.gaussian_filter(dist, 1.0)
    from skimage.feature import peak_local_max

    peaks = peak_local_max(
        dist,
        min_distance=max(1, int(MIN_MARKER_DISTANCE_UM / mpp)),
        labels=ndi.label(fg)[0],
        exclude_border=False,
    )
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-dist, markers, mask=fg)
    return labels.astype(np.uint32)
