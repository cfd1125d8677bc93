"""Render H&E-looking tissue with known nuclei, by the Beer–Lambert law of the stains.

Pixels are ``I = 255 · 10^-(c_H·h + c_E·e)`` with Ruifrok & Johnston's haematoxylin and eosin
optical-density vectors, so colour deconvolution, stain normalisation and segmentation see the
same physics as on a real slide. Nuclei are ellipses of realistic size in µm (major semi-axis
2.5–5 µm), some deliberately touching, with a chromatin texture; stroma has a fibrous eosin texture.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: Ruifrok & Johnston stain OD vectors (rows: haematoxylin, eosin), unit length.
H_VEC = np.array([0.650, 0.704, 0.286])
E_VEC = np.array([0.072, 0.990, 0.105])


def _noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Smooth noise with unit standard deviation."""
    n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return n / max(float(n.std()), 1e-6)


def tissue_shape(
    rng: np.random.Generator, shape: tuple[int, int], coverage: float = 0.55
) -> np.ndarray:
    """An irregular tissue outline covering about ``coverage`` of the frame, glass around it."""
    h, w = shape
    small = (max(8, h // 64), max(8, w // 64))
    field = _noise(rng, small, sigma=max(small) / 10)
    yy, xx = np.mgrid[0 : small[0], 0 : small[1]]
    centre = 1.0 - np.hypot((yy / small[0] - 0.5) * 2, (xx / small[1] - 0.5) * 2)
    field = field * 0.35 + centre * 2.0
    thr = np.quantile(field, 1 - coverage)
    big = ndi.zoom(field, (h / small[0], w / small[1]), order=1)[:h, :w]
    return big > thr


def render_he(
    shape: tuple[int, int],
    mpp: float,
    seed: int = 0,
    coverage: float = 0.55,
    nuclei_per_mm2: float = 1800.0,
    touching_fraction: float = 0.2,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(rgb uint8 (h, w, 3), labels uint32 (h, w))`` for a synthetic H&E field.

    Deterministic for a given ``seed``. ``labels`` holds one id per nucleus, 0 for background.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    tissue = tissue_shape(rng, shape, coverage) if coverage < 1 else np.ones(shape, bool)
    labels = np.zeros(shape, np.uint32)

    area_mm2 = tissue.sum() * (mpp / 1000.0) ** 2
    target = int(area_mm2 * nuclei_per_mm2)
    ys, xs = np.nonzero(tissue[::4, ::4])
    next_id = 1
    attempts = 0
    while next_id <= target and attempts < target * 4 and len(ys):
        attempts += 1
        k = rng.integers(len(ys))
        cy, cx = ys[k] * 4 + rng.uniform(0, 4), xs[k] * 4 + rng.uniform(0, 4)
        group = 1 + (rng.random() < touching_fraction) * rng.integers(1, 3)
        placed_any, prev_a = False, 0.0
        for _ in range(group):
            a_um = rng.uniform(2.5, 5.0)
            a = a_um / mpp
            b = a * rng.uniform(0.55, 0.95)
            theta = rng.uniform(0, np.pi)
            if placed_any:  # a touching neighbour: centre about one diameter away
                d = (a + prev_a) * rng.uniform(0.8, 0.95)
                phi = rng.uniform(0, 2 * np.pi)
                cy, cx = cy + d * np.sin(phi), cx + d * np.cos(phi)
            if _draw_ellipse(labels, cy, cx, a, b, theta, next_id, allow_touch=placed_any):
                placed_any = True
                prev_a = a
                next_id += 1
            elif not placed_any:
                break

    nuc = labels > 0
    # Optical densities per stain (log10 units).
    chroma = _noise(rng, shape, 1.2)
    od_h = np.where(nuc, 0.62 + 0.12 * chroma, 0.06 + 0.02 * chroma).astype(np.float32)
    rim = nuc & ~ndi.binary_erosion(nuc, iterations=1)
    od_h[rim] += 0.12
    fibres = 0.6 * _noise(rng, shape, 2.0) + 0.4 * _noise(rng, shape, 8.0)
    od_e = np.where(tissue, 0.17 + 0.06 * fibres, 0.0).astype(np.float32)
    od_e[nuc] *= 0.4
    od_h[~tissue] = 0.0
    # Optical blur of the microscope (about 0.4 µm), then the stains' absorbance.
    sigma = max(0.4 / mpp, 0.5)
    od_h = ndi.gaussian_filter(np.clip(od_h, 0, None), sigma)
    od_e = ndi.gaussian_filter(np.clip(od_e, 0, None), sigma)
    od = od_h[..., None] * H_VEC.astype(np.float32) + od_e[..., None] * E_VEC.astype(np.float32)
    rgb = 250.0 * np.power(10.0, -od) + rng.normal(0, 1.5, od.shape).astype(np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8), labels


def _draw_ellipse(labels, cy, cx, a, b, theta, value, allow_touch: bool) -> bool:
    """Paint an ellipse where ``labels`` is empty. Returns False (painting nothing) if it would
    overlap an existing nucleus by more than a touching rim, or leave the frame."""
    h, w = labels.shape
    r = int(np.ceil(a)) + 1
    y0, y1, x0, x1 = int(cy) - r, int(cy) + r + 1, int(cx) - r, int(cx) + r + 1
    if y0 < 0 or x0 < 0 or y1 > h or x1 > w:
        return False
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(theta), np.sin(theta)
    inside = ((dx * c + dy * s) / a) ** 2 + ((-dx * s + dy * c) / b) ** 2 <= 1.0
    window = labels[y0:y1, x0:x1]
    clash = inside & (window > 0)
    if clash.sum() > (0.15 * inside.sum() if allow_touch else 0):
        return False
    window[inside & (window == 0)] = value
    return True
