"""How well a stain normaliser did: structure kept, colour moved, and reference 002's figures.

* :func:`h_ssim` — SSIM between the haematoxylin channel of the input and of the output, each
  unmixed with its own stain vectors (a Macenko estimate: a normaliser changes the vectors, so
  a fixed basis would count the change of colour as a change of structure): the nuclei's shapes
  and texture must survive.
* :func:`lab_stats` / :func:`lab_distance` — per-channel mean and standard deviation in CIE Lab
  over tissue pixels, and the Euclidean distance between two such six-vectors: how far an
  output's colour is from the reference style.
* :func:`mae_rmse_ssim` — against a target image, on a 0-1 scale, as reference 002 reports them.
"""

from __future__ import annotations

import numpy as np


def tissue_pixels(rgb: np.ndarray) -> np.ndarray:
    """(N,) which pixels of ``rgb`` (an image or (N, 3) pixels) are not glass: any channel below
    220 (a fixed, method-blind rule)."""
    return rgb.reshape(-1, 3).min(axis=1) < 220


def lab_stats(rgb: np.ndarray) -> np.ndarray:
    """(6,) mean L, a, b and std L, a, b over the tissue pixels of ``rgb`` (uint8)."""
    from ..stain.lab import rgb_to_lab

    px = rgb.reshape(-1, 3)
    keep = tissue_pixels(rgb)
    lab = rgb_to_lab(px[keep] if keep.sum() >= 64 else px).reshape(-1, 3).astype(np.float64)
    return np.concatenate([lab.mean(0), lab.std(0)])


def pooled_lab_stats(images) -> np.ndarray:
    """:func:`lab_stats` of several images pooled (each image weighs the same)."""
    return np.mean([lab_stats(im) for im in images], axis=0)


def lab_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between two :func:`lab_stats` vectors (Lab units)."""
    return float(np.linalg.norm(np.asarray(a, float) - np.asarray(b, float)))


def haematoxylin(rgb: np.ndarray) -> np.ndarray:
    """The haematoxylin amount map (H, W) of ``rgb`` unmixed with its own H and E vectors
    (Macenko estimate; the neutral Ruifrok-Johnston vectors where it has too little tissue)."""
    from ..stain.learned.data import stain_vector
    from ..stain.optical import OD_LUT

    w = stain_vector(rgb)[:6].reshape(2, 3).astype(np.float64)
    od = OD_LUT[rgb.reshape(-1, 3)]
    return (od @ np.linalg.pinv(w))[:, 0].reshape(rgb.shape[:2])


def h_ssim(before: np.ndarray, after: np.ndarray) -> float:
    """SSIM of the haematoxylin maps (:func:`haematoxylin`) of two RGB uint8 images of one
    field. The data range is the input's (1st-99th percentile span, so one dark speck does not
    set it)."""
    from skimage.metrics import structural_similarity

    h0, h1 = haematoxylin(before), haematoxylin(after)
    lo, hi = np.percentile(h0, [1, 99])
    return float(structural_similarity(h0, h1, data_range=max(float(hi - lo), 1e-6)))


def mae_rmse_ssim(output: np.ndarray, target: np.ndarray) -> dict:
    """Mean absolute error, root mean square error and SSIM (RGB, channel-averaged) between two
    uint8 images on a 0-1 scale, as reference 002 reports a normaliser against its target."""
    from skimage.metrics import structural_similarity

    a = output.astype(np.float64) / 255.0
    b = target.astype(np.float64) / 255.0
    return {
        "mae": float(np.abs(a - b).mean()),
        "rmse": float(np.sqrt(((a - b) ** 2).mean())),
        "ssim": float(structural_similarity(a, b, data_range=1.0, channel_axis=-1)),
    }
