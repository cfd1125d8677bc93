"""Corrections to an instance label map, as an annotator makes them: delete a nucleus, give a
drawn region a fresh id, merge two nuclei into one, split one into two along a stroke.

Each returns the edited labels (the input is left as it was) and the ids it touched, so a panel
can re-measure only those nuclei and push the change on napari's undo stack in one step. Pure
numpy/scipy: the same calls serve the napari panel, scripts and tests.
"""

from __future__ import annotations

import numpy as np


class EditError(ValueError):
    """A correction that cannot be made as asked (the message says why, in the user's words)."""


def fresh_id(labels: np.ndarray) -> int:
    """An id no nucleus has yet: one above the largest."""
    return int(labels.max()) + 1 if labels.size else 1


def delete(labels: np.ndarray, nucleus: int) -> tuple[np.ndarray, list[int]]:
    """Remove nucleus ``nucleus`` (its pixels become background)."""
    if nucleus == 0 or not (labels == nucleus).any():
        raise EditError("there is no nucleus there to delete")
    out = labels.copy()
    out[out == nucleus] = 0
    return out, [int(nucleus)]


def add(labels: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """A new nucleus with a fresh id where ``mask`` is true and no nucleus is (a drawn region
    never eats its neighbours)."""
    mask = np.asarray(mask, bool) & (labels == 0)
    if not mask.any():
        raise EditError("the region drawn covers no background: nothing to add")
    new = fresh_id(labels)
    out = labels.copy()
    out[mask] = new
    return out, [new]


def merge(labels: np.ndarray, a: int, b: int) -> tuple[np.ndarray, list[int]]:
    """Nuclei ``a`` and ``b`` become one (keeping ``a``'s id); the background pixels that
    separate them where they touch within a pixel are filled, so the merged nucleus is whole."""
    from scipy import ndimage as ndi

    if a == b or 0 in (a, b):
        raise EditError("choose two different nuclei to merge")
    ma, mb = labels == a, labels == b
    if not ma.any() or not mb.any():
        raise EditError("one of the two nuclei is not there any more")
    out = labels.copy()
    out[mb] = a
    both = ma | mb
    # A one-pixel seam of background between them (watershed lines) joins the merged nucleus.
    seam = ndi.binary_closing(both, iterations=1) & (labels == 0)
    out[seam] = a
    return out, [int(a), int(b)]


def split(labels: np.ndarray, line: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Split the nucleus a stroke crosses into two along it: ``line`` is a (N, 2) array of
    (row, col) points the annotator drew across the nucleus. The pixels on the stroke go to
    the nearer side; the part not containing the larger piece gets a fresh id."""
    from scipy import ndimage as ndi
    from skimage.draw import line as draw_line

    line = np.asarray(line, float)
    if line.ndim != 2 or line.shape[0] < 2:
        raise EditError("draw a line across the nucleus to split it")
    h, w = labels.shape
    cut = np.zeros(labels.shape, bool)
    pts = np.round(line).astype(int)
    for (r0, c0), (r1, c1) in zip(pts[:-1], pts[1:]):
        rr, cc = draw_line(r0, c0, r1, c1)
        ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        cut[rr[ok], cc[ok]] = True
    cut = ndi.binary_dilation(cut)  # a diagonal stroke must separate 4-connected pixels too
    crossed = np.unique(labels[cut])
    crossed = crossed[crossed != 0]
    if len(crossed) != 1:
        raise EditError(
            "the line must cross exactly one nucleus"
            + (f" (it crosses {len(crossed)})" if len(crossed) else " (it crosses none)")
        )
    nucleus = int(crossed[0])
    body = labels == nucleus
    parts, n = ndi.label(body & ~cut)
    if n < 2:
        raise EditError("the line does not cut the nucleus in two: draw it right across")
    sizes = np.bincount(parts.ravel())[1:]
    order = np.argsort(sizes)[::-1]
    keep, other = order[0] + 1, order[1] + 1
    # Every pixel of the nucleus (the stroke and any crumbs) goes to the nearer of the two parts.
    _, (ri, ci) = ndi.distance_transform_edt(~np.isin(parts, [keep, other]), return_indices=True)
    nearest = parts[ri, ci]
    new = fresh_id(labels)
    out = labels.copy()
    out[body & (nearest == other)] = new
    return out, [nucleus, new]
