"""Do a data set's labels sit on its nuclei, or a pixel beside them?

Labels rasterised from drawn outlines can sit a whole pixel off the image: a 0- or 1-based
vertex convention, pixel corners against pixel centres. ``../shared/data``'s MoNuSeg 2018 sets do
(``benchmarks/label_alignment.py``): the training labels must move 1 px down to sit where the
haematoxylin is, the test labels 1 px up and 1 px left, while the DSB 2018 masks (painted per
pixel) sit where they are. Training flips and turns every patch, so a label offset of one pixel
in one direction is taught as a blur of one pixel in every direction: the network's outlines get
softer, never shifted. Moving the labels before training removes that blur.

The measure needs no model: haematoxylin (Ruifrok-Johnston optical density) is what makes a
nucleus, so the labels' foreground, moved by (dy, dx), should cover as much of it as it can. The
move is chosen once for the whole data set (the mean contrast over its images): one image's
choice is noisy (on the DSB masks, which need no move, 43 of 107 images choose none and the rest
scatter by a pixel), one data set's is not.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

#: Moves tried, in pixels of the data set's own images, each way on each axis.
REACH = 2


def haematoxylin(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin optical density (Ruifrok-Johnston) of an RGB uint8 image, float32 (H, W)."""
    from ..stain.deconvolution import RGB_FROM_HED
    from ..stain.optical import OD_LUT

    od = OD_LUT[np.asarray(rgb, np.uint8).reshape(-1, 3)]
    return (od @ np.linalg.inv(RGB_FROM_HED)[:, 0]).astype(np.float32).reshape(rgb.shape[:2])


def moved(labels: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``labels`` moved ``dy`` px down and ``dx`` px right; what enters at the edge is
    background (no wrap-around: a nucleus leaving one side must not appear on the other)."""
    out = np.zeros_like(labels)
    h, w = labels.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = labels[ys, xs]
    return out


def contrast_by_move(rgb: np.ndarray, labels: np.ndarray, reach: int = REACH) -> dict:
    """``{(dy, dx): mean haematoxylin under the moved labels' foreground minus outside it}``,
    measured away from the border the moves touch (``reach`` >= 1)."""
    if reach < 1:
        raise ValueError(f"reach must be at least 1 px, got {reach}")
    h = haematoxylin(rgb)
    fg = np.asarray(labels) > 0
    inner = (slice(reach, -reach), slice(reach, -reach))
    hh = h[inner]
    out = {}
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            m = moved(fg, dy, dx)[inner]
            if not m.any() or m.all():
                out[(dy, dx)] = 0.0
                continue
            out[(dy, dx)] = float(hh[m].mean() - hh[~m].mean())
    return out


def dataset_offset(images, reach: int = REACH) -> tuple[int, int]:
    """The one move (dy, dx) that puts the most haematoxylin under a data set's labels: the
    argmax of the contrast averaged over ``images`` (``LabelledImage``-like: ``rgb``,
    ``labels``). (0, 0) for labels that already sit on their nuclei."""
    images = list(images)
    if not images:
        raise ValueError("no images to measure the labels' alignment on")
    total: dict = {}
    for im in images:
        for move, c in contrast_by_move(im.rgb, im.labels, reach).items():
            total[move] = total.get(move, 0.0) + c
    # Ties (no contrast anywhere) keep the labels where they are. So does a data set whose
    # nuclei are not where the haematoxylin is (fluorescence: bright nuclei on black, every
    # move's contrast negative): the measure does not apply to it, and its argmax would be noise.
    if total.get((0, 0), 0.0) <= 0:
        return (0, 0)
    return max(sorted(total), key=lambda m: (total[m], m == (0, 0)))


def aligned(images, reach: int = REACH) -> tuple[list, tuple[int, int]]:
    """``images`` with their labels moved by :func:`dataset_offset`, and that move."""
    images = list(images)
    dy, dx = dataset_offset(images, reach)
    if (dy, dx) == (0, 0):
        return images, (0, 0)
    return [replace(im, labels=moved(im.labels, dy, dx)) for im in images], (dy, dx)
