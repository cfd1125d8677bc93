"""Tumour heatmaps: a tissue classifier's patch probabilities on a grid of cells, and its geometry.

This module is the map (:class:`Heatmap`) and the one grid it lies on for views and whole slides:
strides and block sizes, slide and image readers at the model's µm/px, tissue per cell, one block
of cells classified, and the heatmaps of a view (:func:`heatmap_region`) and of an image in memory
(:func:`heatmap_image`). A whole slide's heatmap, computed block by block into a resumable store,
is :mod:`napari_nucleiseg.classification.slide_heatmap`, which builds on this module.

Geometry — one rule for views and whole slides
----------------------------------------------
A classifier sees ``P``-px patches at its own µm/px ``m``. The heatmap is a grid of cells ``S``
model px apart (the stride) laid from the slide's top-left corner: map pixel ``(i, j)`` stands
for the slide square ``[i·S·m, (i+1)·S·m) × [j·S·m, (j+1)·S·m)`` µm and holds the probabilities
of the patch *centred* on that square (the patch reaches ``(P - S) / 2`` model px beyond it on
each side). So the map's µm/px is ``S·m`` and its pixel (0, 0) starts at the slide's corner; in
napari, where the slide layer's level-0 pixel 0 is centred on 0 (:mod:`napari_nucleiseg.layers`),
the map is drawn with ``scale = S·m`` and ``translate = origin + (S·m - mpp0) / 2``
(:meth:`Heatmap.layer_transform`). A view's heatmap (:func:`heatmap_region`) snaps to the same
grid, so its cells are the whole-slide map's cells.

Why half a patch by default: with ``S = P`` a map pixel *is* a patch, and a tumour border is placed
only to within a patch (112 µm for a 112-px model at 1 µm/px). Half a patch apart, every cell is
judged by a patch centred on it, the map is twice as fine, and the border moves to within half a
patch, for 4× the patches, and each cell is seen by 3 × 3 overlapping patches whose mean
(:meth:`Heatmap.averaged`, what outlines use) is steadier than any one of them. On the mosaic
slides of :mod:`napari_nucleiseg.demo.mosaic`, whose cell borders fall anywhere in the grid as
tumour borders do, ``benchmarks/heatmap_speed.py`` measures the outline's Dice at both strides.

Cells without tissue are NaN in every class (not 0): "not classified" is not "not tumour" (a mean
over the map, or an attention weight, must skip them, and ``Heatmap.tissue`` says which cells
were classified); thresholding treats NaN as not tumour. A cell is classified when at least
``min_tissue`` of its *patch* is tissue by :func:`~napari_nucleiseg.tissue.tissue_mask`
(computed once per slide, ≤ 512 px across, as the nuclei job's): the patch, not the cell,
because the mask (16 µm/px or coarser) misses lumina and pale stroma that the patch around them
shows to be tissue.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from ..io.errors import SlideError
from ..methods.classifier import TUMOUR

#: Least tissue fraction of a cell's patch for the cell to be classified. Above the quarter of a
#: half-stride patch that reaches into tissue from the first cell outside a straight tissue edge,
#: so the map does not spill a cell into the glass; lumina and pale areas inside tissue, which
#: the 16-µm/px mask misses, are still classified from the tissue around them.
MIN_TISSUE = 0.3
#: Largest region read per block, in pixels of the level read along each side (≈ 50 MB of RGB):
#: many patches per read, and memory that does not grow with the slide.
READ_MAX_PX = 4096
#: Largest block, in map pixels per side: 256 patches (a second or so of network on a CPU) per
#: read, so a small slide still has blocks for every worker and Cancel answers within a block.
MAX_BLOCK = 16


class HeatmapError(ValueError):
    """A heatmap cannot be made or read as asked (e.g. the model has no ``tumour`` class)."""


class HeatmapCancelled(Exception):
    """The caller's cancel event stopped a heatmap; a whole-slide store keeps its finished
    blocks (``str()`` says how many) and the same call resumes."""


def require_tag(tags, tag: str = TUMOUR, model: str = "the model") -> int:
    """Index of ``tag`` among a model's classes, or :class:`HeatmapError` naming them."""
    tags = list(tags)
    if tag not in tags:
        raise HeatmapError(
            f"{model} has no {tag!r} class (its classes: {', '.join(tags) or 'none'}); a tumour "
            f"heatmap needs a classifier trained with a {tag!r} tag"
        )
    return tags.index(tag)


# --------------------------------------------------------------------------- the map
@dataclass(frozen=True)
class PlacedTissue:
    """The tissue mask a map was computed with, placed in µm: pixel ``(r, c)`` covers
    ``origin + [r, r+1) · mpp[0] × [c, c+1) · mpp[1]`` µm from the slide's corner. Outlines keep
    to it (:func:`~napari_nucleiseg.classification.outlines.tumour_regions`): a tumour region
    ends where the tissue ends, not half a cell short of it or out on the glass."""

    mask: np.ndarray
    mpp: tuple[float, float]
    origin_um: tuple[float, float] = (0.0, 0.0)

    @classmethod
    def of_slide(cls, tissue, slide_mpp: float) -> PlacedTissue:
        """From a slide's :class:`~napari_nucleiseg.tissue.TissueMask`."""
        dy, dx = tissue.downsample_yx
        return cls(np.asarray(tissue.mask, bool), (dy * slide_mpp, dx * slide_mpp))


@dataclass
class Heatmap:
    """Class probabilities on a grid of cells (see the module docstring for the geometry).

    ``probabilities`` is float32 ``(classes, rows, cols)``, NaN where a cell was not classified
    (no tissue, or a whole-slide run not finished there); ``mpp`` is µm per map pixel;
    ``origin_um`` the ``(y, x)`` µm of map pixel (0, 0)'s top-left corner from the slide's
    top-left corner; ``slide_mpp`` µm per slide level-0 pixel (None for an image with no slide).
    """

    probabilities: np.ndarray
    tags: list[str]
    mpp: float
    origin_um: tuple[float, float]
    stride_px: int
    patch_px: int
    model_mpp: float
    slide_mpp: float | None = None
    model: dict = field(default_factory=dict)
    finished: bool = True
    #: The tissue mask it was computed with (None: unknown, e.g. a store from before 0.1.x or
    #: a map made with ``tissue=False``); outlines keep to it.
    tissue_mask: PlacedTissue | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.probabilities.shape[1:])

    def p(self, tag: str = TUMOUR) -> np.ndarray:
        """The map of one class (a view, not a copy)."""
        name = self.model.get("model") or self.model.get("method") or "the model"
        return self.probabilities[require_tag(self.tags, tag, f"model {name!r}")]

    @property
    def p_tumour(self) -> np.ndarray:
        return self.p(TUMOUR)

    @property
    def tissue(self) -> np.ndarray:
        """True where a cell was classified."""
        return ~np.isnan(self.probabilities[0])

    def layer_transform(self, slide_mpp: float | None = None):
        """``(scale, translate)`` of this map as a napari layer beside a slide layer placed by
        :func:`napari_nucleiseg.layers.physical_transform` (level-0 pixel 0 centred on 0): map
        pixel ``(i, j)`` is centred on ``origin + ((i, j) + 0.5)·mpp - mpp0/2``. ``slide_mpp``
        (``mpp0``): the slide's level-0 µm/px, default the map's own; for an image drawn alone,
        the image layer's µm/px."""
        base = slide_mpp if slide_mpp is not None else (self.slide_mpp or 0.0)
        oy, ox = self.origin_um
        half = (self.mpp - base) / 2.0
        return (self.mpp, self.mpp), (oy + half, ox + half)

    def centre_um(self, i, j):
        """``(y, x)`` µm from the slide's corner of the centre of map pixel ``(i, j)`` (arrays
        welcome)."""
        oy, ox = self.origin_um
        return oy + (np.asarray(i) + 0.5) * self.mpp, ox + (np.asarray(j) + 0.5) * self.mpp

    def index_at_um(self, y_um, x_um):
        """Map pixel ``(i, j)`` whose square holds the point ``(y_um, x_um)`` (may fall outside
        the map)."""
        oy, ox = self.origin_um
        i = np.floor((np.asarray(y_um, float) - oy) / self.mpp).astype(int)
        j = np.floor((np.asarray(x_um, float) - ox) / self.mpp).astype(int)
        return i, j

    def averaged(self) -> Heatmap:
        """The map with each cell's value replaced by the mean of every patch that overlaps
        the cell, weighted by how much of the cell it covers (:func:`overlap_weights`;
        classified cells only, NaN stays NaN). With a half-patch stride a cell is seen by 3 × 3
        patches (weights ½, 1, ½ per axis): their mean is steadier than the one centred on it,
        as overlapping tiles are averaged in any tiled prediction; with a full-patch stride
        nothing overlaps and the map is unchanged."""
        from scipy import ndimage as ndi

        w1 = overlap_weights(self.stride_px, self.patch_px)
        if np.count_nonzero(w1) == 1:
            return self
        kernel = np.outer(w1, w1)
        valid = ~np.isnan(self.probabilities[0])
        # correlate, not convolve: cell i takes the patch of cell i + d with weight w[k + d].
        den = ndi.correlate(valid.astype(np.float64), kernel, mode="constant")
        out = np.full_like(self.probabilities, np.nan)
        for c, p in enumerate(self.probabilities):
            num = ndi.correlate(np.where(valid, p, 0.0).astype(np.float64), kernel, mode="constant")
            out[c][valid] = (num[valid] / den[valid]).astype(np.float32)
        return replace(self, probabilities=out)

    def sample_um(self, y_um, x_um, tag: str = TUMOUR) -> np.ndarray:
        """The map of ``tag`` at points in µm (NaN outside the map or its tissue)."""
        p = self.p(tag)
        i, j = self.index_at_um(y_um, x_um)
        inside = (i >= 0) & (j >= 0) & (i < p.shape[0]) & (j < p.shape[1])
        out = np.full(np.shape(i), np.nan, np.float32)
        out[inside] = p[i[inside], j[inside]]
        return out


def overlap_weights(stride: int, patch: int) -> np.ndarray:
    """Per axis, the share of cell ``i`` covered by the patch of cell ``i + d``, for
    ``d = -k..k`` (index ``k + d``; the patch of cell ``i`` spans ``[i·S - (P - S)//2,
    i·S - (P - S)//2 + P)``): ``[½, 1, ½]`` for ``P = 2S``, ``[1]`` for ``P = S``."""
    margin = (patch - stride) // 2
    reach = -(-max(patch - stride, 0) // stride) + 1
    w = []
    for d in range(-reach, reach + 1):
        start = d * stride - margin
        w.append(max(0, min(start + patch, stride) - max(start, 0)) / stride)
    w = np.asarray(w)
    while len(w) > 1 and w[0] == 0 and w[-1] == 0:
        w = w[1:-1]
    return w


def default_stride(method) -> int:
    """Half a patch (see the module docstring)."""
    return max(1, int(method.tile_px) // 2)


def stride_from_um(method, stride_um: float | None) -> int | None:
    """A stride in µm as model pixels (None stays None: the default)."""
    if stride_um is None:
        return None
    if not stride_um > 0:
        raise HeatmapError(f"the stride must be positive, got {stride_um:g} µm")
    return max(1, round(stride_um / method.mpp))


def _block_size(stride: int, patch: int, ratio: float) -> int:
    """Map pixels per block side so that one block's read is at most :data:`READ_MAX_PX` px of
    the level read (``ratio`` level pixels per model pixel)."""
    model_px = READ_MAX_PX / max(ratio, 1.0)
    return int(min(MAX_BLOCK, max(1, (model_px - max(0, patch - stride)) // stride)))


# --------------------------------------------------------------------------- tissue per cell
def _windows_um(first: int, last: int, stride: int, patch: int, m: float):
    """Start and end (µm from the grid's origin) of the patches of cells ``first..last-1``."""
    start = (np.arange(first, last) * stride - (patch - stride) // 2) * m
    return start, start + patch * m


def _patch_fractions(mask: np.ndarray, mask_um, ys, xs) -> np.ndarray:
    """Tissue fraction of each patch ``[ys[0][i], ys[1][i]) × [xs[0][j], xs[1][j])`` (µm) of a
    boolean mask whose pixel ``(a, b)`` spans ``[a·my, (a+1)·my) × [b·mx, (b+1)·mx)`` µm. The
    rule of :meth:`~napari_nucleiseg.tissue.TissueMask.fraction_in` (the mask pixels a patch
    touches, clipped to the mask; none: 0), for every patch at once (summed-area table)."""
    my, mx = mask_um
    h, w = mask.shape
    sat = np.zeros((h + 1, w + 1), np.int64)
    sat[1:, 1:] = np.cumsum(np.cumsum(mask, 0, dtype=np.int64), 1)
    r0 = np.clip(np.floor(np.asarray(ys[0]) / my + 1e-9), 0, h).astype(int)
    r1 = np.clip(np.ceil(np.asarray(ys[1]) / my - 1e-9), 0, h).astype(int)
    c0 = np.clip(np.floor(np.asarray(xs[0]) / mx + 1e-9), 0, w).astype(int)
    c1 = np.clip(np.ceil(np.asarray(xs[1]) / mx - 1e-9), 0, w).astype(int)
    s = (
        sat[r1[:, None], c1[None, :]]
        - sat[r0[:, None], c1[None, :]]
        - sat[r1[:, None], c0[None, :]]
        + sat[r0[:, None], c0[None, :]]
    )
    area = (r1 - r0)[:, None] * (c1 - c0)[None, :]
    return np.where(area > 0, s / np.maximum(area, 1), 0.0)


# --------------------------------------------------------------------------- one block
def _patches(rgb: np.ndarray, keep: np.ndarray, stride: int, patch: int) -> np.ndarray:
    """The patches of the kept cells of a block read (cell ``(i, j)``'s patch starts at
    ``(i·S, j·S)`` of the read), copied into one ``(N, P, P, 3)`` array."""
    from numpy.lib.stride_tricks import sliding_window_view

    windows = sliding_window_view(rgb, (patch, patch, 3))[::stride, ::stride, 0]
    ii, jj = np.nonzero(keep)
    return np.ascontiguousarray(windows[ii, jj])


def classify_block(method, read, r0: int, c0: int, keep: np.ndarray, stride: int) -> np.ndarray:
    """Probabilities ``(C, h, w)`` of the cells ``[r0, r0+h) × [c0, c0+w)`` of a grid (``keep``
    ``(h, w)``: which to classify; the rest are NaN). ``read(y_um, x_um, h_px, w_px)`` returns RGB
    at the model's µm/px from the grid's origin (white beyond the image)."""
    m, patch = float(method.mpp), int(method.tile_px)
    out = np.full((len(method.classes), *keep.shape), np.nan, np.float32)
    if not keep.any():
        return out
    # Read only the rows and columns of cells with tissue: at a tissue edge most of a block is
    # glass, and the read is what a block costs beside the network.
    rows, cols = np.flatnonzero(keep.any(1)), np.flatnonzero(keep.any(0))
    a, b, c, d = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    sub = keep[a:b, c:d]
    h, w = sub.shape
    margin = (patch - stride) // 2  # the patch of cell i starts this far before the cell
    hp, wp = (h - 1) * stride + patch, (w - 1) * stride + patch
    rgb = read(((r0 + a) * stride - margin) * m, ((c0 + c) * stride - margin) * m, hp, wp)
    if rgb.shape[:2] != (hp, wp):  # float rounding in a resample: a pixel more or less
        rgb = _fit(rgb, hp, wp)
    probs = method.probabilities(_patches(rgb, sub, stride, patch))
    out[:, a:b, c:d][:, sub] = probs.T  # a view of out: written through
    return out


def _fit(rgb: np.ndarray, h: int, w: int) -> np.ndarray:
    out = np.full((h, w, 3), 255, np.uint8)
    hh, ww = min(h, rgb.shape[0]), min(w, rgb.shape[1])
    out[:hh, :ww] = rgb[:hh, :ww]
    return out


def _integral(v: float) -> int | None:
    r = round(v)
    return r if abs(v - r) < 1e-6 * max(1.0, abs(v)) else None


def _shrink(region: np.ndarray, k: int) -> np.ndarray:
    """Mean of every ``k``² pixels, rounded half up: the same value wherever the block starts
    (a resampler with a fractional box rounds some pixels differently at different offsets, and
    a view's cells would then differ from the whole slide's, and a resumed run from a fresh
    one, by a grey level here and there)."""
    if k == 1:
        return region
    h, w = region.shape[0] // k, region.shape[1] // k
    s = region[: h * k, : w * k].reshape(h, k, w, k, 3).sum((1, 3), dtype=np.uint32)
    return ((s + (k * k) // 2) // (k * k)).astype(np.uint8)


def slide_reader(slide, model_mpp: float):
    """``read(y_um, x_um, h_px, w_px)`` of a slide at ``model_mpp``, from the pyramid level
    nearest it that is not coarser (area-averaged; white beyond the slide). Where the level is
    a whole number of times finer and the region starts on its pixels (the grid's blocks do,
    at 0.25 or 0.5 µm/px for a 1-µm/px model), the average is exact, so the same cell has the
    same pixels in every block and every view."""
    level = slide.best_level_for_mpp(model_mpp)
    lmpp = slide.level_mpp(level)
    k = _integral(model_mpp / lmpp)

    def read(y_um, x_um, h_px, w_px):
        ly, lx = _integral(y_um / lmpp), _integral(x_um / lmpp)
        if k is not None and ly is not None and lx is not None:
            return _shrink(slide.read_region(lx, ly, w_px * k, h_px * k, level), k)
        return slide.read_region_um(x_um, y_um, w_px * model_mpp, h_px * model_mpp, mpp=model_mpp)

    return read


def array_reader(rgb: np.ndarray, mpp: float, model_mpp: float):
    """``read(y_um, x_um, h_px, w_px)`` of an in-memory RGB image at ``mpp`` µm/px, resampled
    to ``model_mpp`` with the slide's rule (area average when shrinking); white beyond it."""
    from PIL import Image

    rgb = np.asarray(rgb)
    height, width = rgb.shape[:2]
    f = model_mpp / mpp  # image pixels per model pixel
    k = _integral(f)

    def read(y_um, x_um, h_px, w_px):
        y0, x0 = y_um / mpp, x_um / mpp
        iy, ix = _integral(y0), _integral(x0)
        if k is not None and iy is not None and ix is not None:  # exact, as for slides
            region = np.full((h_px * k, w_px * k, 3), 255, np.uint8)
            sy0, sx0 = max(iy, 0), max(ix, 0)
            sy1, sx1 = min(iy + h_px * k, height), min(ix + w_px * k, width)
            if sy1 > sy0 and sx1 > sx0:
                region[sy0 - iy : sy1 - iy, sx0 - ix : sx1 - ix] = rgb[sy0:sy1, sx0:sx1, :3]
            return _shrink(region, k)
        y1, x1 = y0 + h_px * f, x0 + w_px * f
        iy0, ix0, iy1, ix1 = math.floor(y0), math.floor(x0), math.ceil(y1), math.ceil(x1)
        region = np.full((iy1 - iy0, ix1 - ix0, 3), 255, np.uint8)
        sy0, sx0, sy1, sx1 = max(iy0, 0), max(ix0, 0), min(iy1, height), min(ix1, width)
        if sy1 > sy0 and sx1 > sx0:
            region[sy0 - iy0 : sy1 - iy0, sx0 - ix0 : sx1 - ix0] = rgb[sy0:sy1, sx0:sx1, :3]
        if region.shape[:2] == (h_px, w_px) and abs(f - 1) < 1e-9:
            return region
        resample = Image.Resampling.BOX if f > 1 else Image.Resampling.BILINEAR
        box = (x0 - ix0, y0 - iy0, x1 - ix0, y1 - iy0)
        return np.asarray(Image.fromarray(region).resize((w_px, h_px), resample, box=box))

    return read


# --------------------------------------------------------------------------- views
def _grid_blocks(rows: int, cols: int, block: int):
    return [
        (r, c, min(r + block, rows), min(c + block, cols))
        for r in range(0, rows, block)
        for c in range(0, cols, block)
    ]


def _run_blocks(method, read, fractions, min_tissue, stride, block, progress, cancel):
    rows, cols = fractions.shape
    out = np.full((len(method.classes), rows, cols), np.nan, np.float32)
    boxes = _grid_blocks(rows, cols, block)
    for k, (r0, c0, r1, c1) in enumerate(boxes):
        if cancel is not None and cancel.is_set():
            raise HeatmapCancelled(f"cancelled after {k} of {len(boxes)} blocks")
        keep = fractions[r0:r1, c0:c1] >= min_tissue
        out[:, r0:r1, c0:c1] = classify_block(method, read, r0, c0, keep, stride)
        if progress is not None:
            progress(k + 1, len(boxes))
    return out


def _method(method):
    from ..methods import get_method

    m = get_method(method, kind="classifier")
    if getattr(m, "kind", None) != "classifier":
        raise HeatmapError(f"{getattr(m, 'name', m)!r} is not a tissue classifier")
    return m


def heatmap_region(
    method,
    slide,
    x_um: float,
    y_um: float,
    width_um: float,
    height_um: float,
    *,
    stride_px: int | None = None,
    min_tissue: float = MIN_TISSUE,
    tissue=None,
    block: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel=None,
) -> Heatmap:
    """The heatmap of a slide region (e.g. the current view), on the whole-slide grid.

    The region (µm from the slide's corner) is widened to whole cells of the slide's grid, so its
    cells, values included, are those of
    :func:`~napari_nucleiseg.classification.slide_heatmap.heatmap_slide` there. ``tissue`` is the
    slide's :class:`~napari_nucleiseg.tissue.TissueMask` (computed when None; ``False``: classify
    every cell). ``progress(done, total)`` after each block; ``cancel`` (a ``threading.Event``)
    stops between blocks with :class:`HeatmapCancelled`.
    """
    method = _method(method)
    if slide.mpp is None:
        raise SlideError(slide.path, "states no µm/px; give it (mpp=..., --mpp) for a heatmap")
    m, patch = float(method.mpp), int(method.tile_px)
    stride = int(stride_px or default_stride(method))
    cell = stride * m
    h0, w0 = slide.shape
    rows_all, cols_all = math.ceil(h0 * slide.mpp / cell), math.ceil(w0 * slide.mpp / cell)
    r0 = min(max(0, math.floor(y_um / cell)), rows_all)
    c0 = min(max(0, math.floor(x_um / cell)), cols_all)
    r1 = min(max(r0, math.ceil((y_um + height_um) / cell)), rows_all)
    c1 = min(max(c0, math.ceil((x_um + width_um) / cell)), cols_all)
    if tissue is None:
        tissue = slide_tissue(slide)
    fractions = _slide_fractions(slide, tissue, stride, patch, m, r0, c0, r1, c1)
    base = slide_reader(slide, m)
    oy, ox = r0 * cell, c0 * cell

    def read(y, x, h, w):  # the block reads are relative to the region's first cell
        return base(y + oy, x + ox, h, w)

    level = slide.best_level_for_mpp(m)
    block = block or _block_size(stride, patch, m / slide.level_mpp(level))
    probs = _run_blocks(method, read, fractions, min_tissue, stride, block, progress, cancel)
    return Heatmap(
        probs,
        list(method.classes),
        cell,
        (oy, ox),
        stride,
        patch,
        m,
        float(slide.mpp),
        method.describe(),
        tissue_mask=None if tissue is False else PlacedTissue.of_slide(tissue, slide.mpp),
    )


def slide_tissue(slide):
    """The slide's tissue mask as every heatmap and nuclei job computes it (one small read)."""
    from ..tissue import tissue_mask
    from ..wholeslide.job import MASK_MAX_PX

    return tissue_mask(slide, max_size=MASK_MAX_PX)


def _slide_fractions(slide, tissue, stride, patch, m, r0, c0, r1, c1) -> np.ndarray:
    """Tissue fraction of the patches of cells ``[r0, r1) × [c0, c1)`` of a slide's grid
    (``tissue``: its :class:`~napari_nucleiseg.tissue.TissueMask`, or ``False``: all tissue)."""
    if tissue is False:
        return np.ones((r1 - r0, c1 - c0))
    dy, dx = tissue.downsample_yx
    return _patch_fractions(
        tissue.mask,
        (dy * slide.mpp, dx * slide.mpp),
        _windows_um(r0, r1, stride, patch, m),
        _windows_um(c0, c1, stride, patch, m),
    )


def heatmap_image(
    method,
    rgb: np.ndarray,
    mpp: float,
    *,
    origin_um: tuple[float, float] = (0.0, 0.0),
    slide_mpp: float | None = None,
    stride_px: int | None = None,
    min_tissue: float = MIN_TISSUE,
    tissue: np.ndarray | bool | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel=None,
) -> Heatmap:
    """The heatmap of an RGB image in memory at ``mpp`` µm/px (a view already read, a tile).

    Cells are laid from the image's top-left corner, which is ``origin_um`` ``(y, x)`` from the
    slide's corner (give ``slide_mpp`` too, and the map is placed on the slide). ``tissue``: a
    boolean mask of the image's size, ``False`` to classify every cell, or None to detect it
    (:func:`~napari_nucleiseg.tissue.mask.tissue_from_rgb`). Views of a slide should prefer
    :func:`heatmap_region`, whose cells are the whole-slide map's.
    """
    from ..tissue.mask import tissue_from_rgb

    method = _method(method)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"rgb must be (H, W, 3), got {rgb.shape}")
    m, patch = float(method.mpp), int(method.tile_px)
    stride = int(stride_px or default_stride(method))
    cell = stride * m
    height, width = rgb.shape[:2]
    rows, cols = max(1, math.ceil(height * mpp / cell)), max(1, math.ceil(width * mpp / cell))
    placed = None
    if tissue is False:
        fractions = np.ones((rows, cols))
    else:
        mask = tissue_from_rgb(rgb[..., :3], mpp)[0] if tissue is None else np.asarray(tissue)
        placed = PlacedTissue(mask.astype(bool), (mpp, mpp), tuple(map(float, origin_um)))
        fractions = _patch_fractions(
            mask,
            (mpp, mpp),
            _windows_um(0, rows, stride, patch, m),
            _windows_um(0, cols, stride, patch, m),
        )
    read = array_reader(rgb, mpp, m)
    block = _block_size(stride, patch, m / mpp if mpp < m else 1.0)
    probs = _run_blocks(method, read, fractions, min_tissue, stride, block, progress, cancel)
    return Heatmap(
        probs,
        list(method.classes),
        cell,
        (float(origin_um[0]), float(origin_um[1])),
        stride,
        patch,
        m,
        slide_mpp,
        method.describe(),
        tissue_mask=placed,
    )
