"""One ownership and merge rule for every tiled nuclei job (reference 000 §3.3).

Each tile is segmented with a halo of context. A tile *owns* the nuclei whose centroid lies in
its core grown by a small margin and that span at most ``halo - margin`` (so the tile saw them
whole). The margin is why a nucleus on a tile corner cannot vanish: each tile segments it with
its own context, so their centroids can differ by a pixel or two, and with strict ownership both
could land in the other's core. With the margin both tiles may own it, and the merge keeps one.

The merge, in raster order of tiles: a nucleus is a duplicate — the same nucleus seen from the
other side of a border — when more than :data:`DUPLICATE_OVERLAP` of its pixels are covered by
nuclei owned by earlier tiles (kept or not: so a decision depends on two tiles' records only,
never on the order work finishes in); where two kept nuclei overlap a little, the earlier tile
keeps the pixels. In-memory tiling (:class:`Merger`) and the whole-slide job's chunk merge
(``wholeslide.tasks.write_chunk``) apply exactly this rule, so their labels are identical.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: A nucleus covered by earlier tiles' nuclei over more than this fraction of its area is a
#: duplicate.
DUPLICATE_OVERLAP = 0.3


def owned_nuclei(
    labels: np.ndarray,
    origin: tuple[int, int],
    core: tuple[int, int, int, int],
    margin: int,
    halo: int,
) -> tuple[np.ndarray, tuple[int, int]]:
    """The nuclei a tile owns, renumbered 1..k in label order and cropped to their bounding box.

    ``labels`` were segmented over a read box whose top-left pixel is ``origin`` (x, y); ``core``
    is the tile's core ``(x0, y0, x1, y1)`` in the same coordinates. Returns ``(crop, (x, y))``,
    the crop's top-left in those coordinates (an empty crop when the tile owns nothing).
    """
    lab = np.asarray(labels)
    rx0, ry0 = origin
    n = int(lab.max()) if lab.size else 0
    if n == 0:
        return np.zeros((0, 0), np.uint32), (rx0, ry0)
    fg = lab > 0
    flat = lab[fg]
    ys, xs = np.nonzero(fg)
    area = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = np.bincount(flat, ys, n + 1)[1:] / area + ry0
        cx = np.bincount(flat, xs, n + 1)[1:] / area + rx0
    extent = np.zeros((n, 2), np.int64)
    for i, sl in enumerate(ndi.find_objects(lab)):
        if sl is not None:
            extent[i] = (sl[0].stop - sl[0].start, sl[1].stop - sl[1].start)
    x0, y0, x1, y1 = core
    m = margin
    owned = (
        (area > 0)
        & (cy >= y0 - m)
        & (cy < y1 + m)
        & (cx >= x0 - m)
        & (cx < x1 + m)
        & (extent[:, 0] <= halo - m)
        & (extent[:, 1] <= halo - m)
    )
    ids = np.nonzero(owned)[0] + 1
    if not len(ids):
        return np.zeros((0, 0), np.uint32), (rx0, ry0)
    local = np.zeros(n + 1, np.uint32)
    local[ids] = np.arange(1, len(ids) + 1, dtype=np.uint32)
    sel = local[lab]
    rows, cols = np.nonzero(sel)
    cy0, cy1, cx0, cx1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    crop = np.ascontiguousarray(sel[cy0:cy1, cx0:cx1])
    return crop, (rx0 + int(cx0), ry0 + int(cy0))


def kept(crop: np.ndarray, covered: np.ndarray, k: int | None = None) -> np.ndarray:
    """``keep[i]`` for local ids ``0..k`` of ``crop`` (default: its largest; 0 is background,
    never kept), given ``covered``: the pixels under ``crop`` that earlier tiles' owned nuclei
    cover. ``crop`` must hold each nucleus whole (its area is counted here)."""
    if k is None:
        k = int(crop.max()) if crop.size else 0
    area = np.bincount(crop.ravel(), minlength=k + 1)
    clash = np.bincount(crop[covered & (crop > 0)], minlength=k + 1)
    keep = clash <= DUPLICATE_OVERLAP * area
    keep[0] = False
    return keep


def overlap(box, placed):
    """Slices of ``box`` (x0, y0, x1, y1) and of an array placed at ``(ox, oy)`` (with its
    ``shape``) where they meet, or ``(None, None)``."""
    bx0, by0, bx1, by1 = box
    ox, oy, (ah, aw) = placed
    ix0, iy0, ix1, iy1 = max(bx0, ox), max(by0, oy), min(bx1, ox + aw), min(by1, oy + ah)
    if ix0 >= ix1 or iy0 >= iy1:
        return None, None
    return (
        (slice(iy0 - by0, iy1 - by0), slice(ix0 - bx0, ix1 - bx0)),
        (slice(iy0 - oy, iy1 - oy), slice(ix0 - ox, ix1 - ox)),
    )


class Merger:
    """In-memory merge of owned nuclei, tile after tile in raster order, into one label map with
    consecutive ids (the rule of the module docstring)."""

    def __init__(self, out: np.ndarray):
        self.out = out
        self.covered = np.zeros(out.shape, bool)
        self.next_id = 1

    def add(self, crop: np.ndarray, origin: tuple[int, int]) -> int:
        """Merge one tile's owned nuclei (``crop`` placed at ``origin``); returns how many were
        kept."""
        if not crop.size:
            return 0
        h, w = self.out.shape
        win, loc = overlap((0, 0, w, h), (origin[0], origin[1], crop.shape))
        if win is None:
            return 0
        sub = crop[loc]
        keep = kept(sub, self.covered[win])
        mapping = np.zeros(len(keep), np.uint32)
        n = int(keep.sum())
        mapping[keep] = np.arange(self.next_id, self.next_id + n, dtype=np.uint32)
        placed = mapping[sub]
        window = self.out[win]
        free = (window == 0) & (placed > 0)
        window[free] = placed[free]
        self.covered[win] |= sub > 0
        self.next_id += n
        return n
