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


def _turn(v: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """``v`` turned by ``degrees`` about a random axis perpendicular to it, kept non-negative."""
    axis = rng.normal(size=3)
    axis -= (axis @ v) * v
    axis /= np.linalg.norm(axis)
    t = np.radians(degrees)
    out = np.maximum(v * np.cos(t) + axis * np.sin(t), 0.0)  # Rodrigues with axis ⟂ v
    return out / np.linalg.norm(out)


def restain(
    rgb: np.ndarray,
    rng: np.random.Generator,
    angles_deg: tuple[float, float] = (20.0, 35.0),
    amounts: tuple[float, float] = (0.4, 2.5),
) -> tuple[np.ndarray, dict]:
    """Another lab's stain, as Beer-Lambert allows: in the Ruifrok-Johnston H, E, DAB basis the H
    and E colour vectors are turned by ``angles_deg`` (uniform) about random axes (a bluer or
    purpler haematoxylin, an orange or magenta eosin) and their amounts scaled by factors drawn
    log-uniformly from ``amounts``; DAB is left alone. The fixed basis (exact: three independent
    vectors), not any normaliser's estimate, so the change favours no method. Returns the image
    and the draw."""
    from .deconvolution import RGB_FROM_HED
    from .optical import OD_LUT

    od = OD_LUT[rgb.reshape(-1, 3)]
    hed = od @ np.linalg.inv(RGB_FROM_HED)
    angles = rng.uniform(*angles_deg, 2)
    basis = np.array(RGB_FROM_HED)
    basis[0], basis[1] = _turn(basis[0], angles[0], rng), _turn(basis[1], angles[1], rng)
    scale = np.exp(rng.uniform(np.log(amounts[0]), np.log(amounts[1]), 2))
    od2 = (hed * np.array([scale[0], scale[1], 1.0])) @ basis
    out = np.clip(np.rint(255.0 * np.exp(-od2)), 0, 255).astype(np.uint8).reshape(rgb.shape)
    return out, {"angles_deg": angles.round(2).tolist(), "amount_scale": scale.round(3).tolist()}
