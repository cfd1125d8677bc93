"""Stain augmentation for training: HED jitter (Tellez et al. 2018), the standard way to make a
model indifferent to the lab and scanner colour of H&E."""

from __future__ import annotations

import numpy as np

from .deconvolution import HED_FROM_RGB, RGB_FROM_HED


def hed_jitter(
    rgb: np.ndarray, rng: np.random.Generator, sigma: float = 0.05, bias: float = 0.05
) -> np.ndarray:
    """Scale and shift each stain's concentration: ``c' = c·α + β``, α ~ U(1±σ·k), β ~ U(±bias)."""
    od = -np.log10(np.clip(rgb.astype(np.float32), 1, 255) / 255.0)
    hed = od.reshape(-1, 3) @ HED_FROM_RGB.astype(np.float32)
    alpha = rng.uniform(1 - sigma * 4, 1 + sigma * 4, 3).astype(np.float32)
    beta = rng.uniform(-bias, bias, 3).astype(np.float32)
    hed = hed * alpha + beta
    od2 = np.clip(hed @ RGB_FROM_HED.astype(np.float32), 0, None)
    out = 255.0 * np.power(10.0, -od2)
    return np.clip(out, 0, 255).reshape(rgb.shape).astype(np.uint8)
