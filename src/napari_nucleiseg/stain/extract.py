"""Stain colour vectors from tissue optical densities: Macenko (2009), Vahadane (2016), and the
fixed Ruifrok-Johnston (2001) vectors.

Every estimator returns a (2, 3) array of unit rows — haematoxylin first, eosin second, in
natural-log OD — or raises :class:`~.errors.StainError` saying why the pixels cannot be
separated into two stains (glass only, one flat colour, one stain only).
"""

from __future__ import annotations

import numpy as np

from .errors import StainError
from .optical import MIN_TISSUE_PIXELS
from .sparse_nmf import sparse_nmf_2

#: Ruifrok & Johnston's H and E vectors as TIAToolbox and StainTools use them (rows not unit
#: length: lengths cancel in the normalisation, which only uses concentration ratios).
RUIFROK_HE = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])
#: Stains closer than this (cosine, 4 degrees) are one stain. Real H&E images estimate 11-38
#: degrees apart (MoNuSeg: Macenko 14-31, Vahadane 11-38); one stain alone gives under 2.
MAX_STAIN_COSINE = 0.9976
#: Total OD variance below this is one flat colour (a uniform fill, a blank scan).
MIN_OD_VARIANCE = 1e-4
#: Macenko's robust extremes: the 1st and 99th percentile of the angle in the stain plane.
ANGULAR_PERCENTILE = 99.0
#: Vahadane's sparsity weight λ. See docs/researcher.md: 0.1 (StainTools' SPAMS setting) biases
#: both stains towards their mean colour on natural-log OD; 0.02 keeps them apart and matches the
#: reference toolbox outputs best; torch-staintools uses 0.01.
VAHADANE_LAMBDA = 0.02


def check_tissue(od: np.ndarray) -> np.ndarray:
    """Refuse pixel sets that cannot hold two stains; returns their OD covariance (3 × 3)."""
    n = len(od)
    if n < MIN_TISSUE_PIXELS:
        raise StainError(
            f"only {n} tissue pixels (at least {MIN_TISSUE_PIXELS} needed): the image is "
            "mostly glass or saturated; choose a region with stained tissue"
        )
    cov = np.cov(od, rowvar=False)
    if not np.isfinite(cov).all():
        raise StainError("stain vectors could not be estimated (non-finite optical density)")
    if float(np.trace(cov)) < MIN_OD_VARIANCE:
        raise StainError("the tissue is a single flat colour (no variation to separate two stains)")
    return cov


def order_he(v: np.ndarray) -> np.ndarray:
    """Rows in H, E order: haematoxylin absorbs more red than eosin (the convention of StainTools
    and TIAToolbox), then unit length."""
    v = np.asarray(v, dtype=np.float64)
    if v[0, 0] < v[1, 0]:
        v = v[[1, 0]]
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def check_two_stains(w: np.ndarray) -> np.ndarray:
    w = order_he(w)
    cos = float(w[0] @ w[1])
    if not np.isfinite(w).all():
        raise StainError("stain vectors could not be estimated (non-finite optical density)")
    if cos > MAX_STAIN_COSINE:
        raise StainError(
            f"the tissue shows one stain only (the two colour directions are "
            f"{np.degrees(np.arccos(min(cos, 1.0))):.1f}° apart): no eosin, or no "
            "haematoxylin, so there is nothing to separate"
        )
    return w


def macenko_stains(od: np.ndarray, percentile: float = ANGULAR_PERCENTILE) -> np.ndarray:
    """Macenko et al. 2009: the plane of the two largest principal directions of tissue OD, and
    in it the robust extreme angles (``percentile`` and ``100 - percentile``)."""
    od = np.asarray(od, dtype=np.float32)
    _, vecs = np.linalg.eigh(check_tissue(od))
    e = vecs[:, [2, 1]]
    e = e * np.where(e[0] < 0, -1.0, 1.0)  # both directions pointing into positive OD
    e32 = e.astype(np.float32)
    # Projections through explicit column arithmetic: a skinny (N,3)@(3,2) product through a
    # threaded BLAS is slow on a busy machine.
    p0 = od[:, 0] * e32[0, 0] + od[:, 1] * e32[1, 0] + od[:, 2] * e32[2, 0]
    p1 = od[:, 0] * e32[0, 1] + od[:, 1] * e32[1, 1] + od[:, 2] * e32[2, 1]
    phi = np.arctan2(p1, p0)
    lo, hi = np.percentile(phi, [100 - percentile, percentile])
    v1 = e @ np.array([np.cos(lo), np.sin(lo)])
    v2 = e @ np.array([np.cos(hi), np.sin(hi)])
    return check_two_stains(np.array([v1, v2]))


def vahadane_stains(
    od: np.ndarray, lam: float = VAHADANE_LAMBDA, max_iter: int = 300, tol: float = 1e-5
) -> tuple[np.ndarray, int]:
    """Vahadane et al. 2016: non-negative stain vectors of a sparse NMF of tissue OD, started from
    Macenko's estimate (deterministic, and a few tens of iterations from the optimum)."""
    w0 = macenko_stains(od)
    w, iters = sparse_nmf_2(od, np.maximum(w0, 1e-3), lam=lam, max_iter=max_iter, tol=tol)
    return check_two_stains(w), iters
