"""Segment one region of a slide — what the viewer shows — at the model's µm/px.

The region is read from the pyramid level nearest the model's resolution (used as it is when
within 2 %, as the predictor does, else area-resampled to exactly the model's µm/px), with a halo
of context around it so nuclei cut by the edge of the screen are segmented whole. Nuclei whose
centroid lies in the region are kept, complete (they may reach into the halo); the others belong to
the neighbouring view and are dropped.

The work is a generator yielding ``(done, total)`` tiles — a :class:`TilesDone`, which also
carries the nuclei of the finished tiles, between the tiles of a multi-tile region — and returning a
:class:`RegionResult`; the widget runs it in a worker thread, the benchmark and tests drain it
directly.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np

#: Largest region (megapixels at the model's µm/px, halo included) segmented as a "current view"
#: run: a whole 1600 × 1000 screen of a slide at 20× (the demo slide zoomed out whole is 15 MP),
#: about 15 s on a 2-core laptop, with progress and Cancel. It was 4 MP, which refused the
#: first screen's "one click segments what is on screen". Beyond it the user runs a whole-slide
#: job, which is resumable and does not hold the result in memory.
MAX_VIEW_MEGAPIXELS = 16.0
#: A view with less tissue than this (fraction of its area) is glass: nothing to segment.
MIN_TISSUE_FRACTION = 0.002


class RegionError(ValueError):
    """A region that should not be segmented as it is; the message says why and what to do."""


class EmptyRegionError(RegionError):
    """The region is glass (or outside the slide)."""


class RegionTooLargeError(RegionError):
    """The region is too large to segment quickly; run it as a whole-slide job."""


@dataclass(frozen=True)
class RegionPlan:
    """Where and at which resolution a region is read.

    ``box`` is the region in level-0 pixels ``(x0, y0, x1, y1)`` (exclusive ends, inside the
    slide); ``origin`` the level-0 pixel where label pixel (0, 0) starts (halo included);
    ``downsample`` level-0 pixels per label pixel; ``shape`` the label map's (rows, cols).
    """

    box: tuple[int, int, int, int]
    origin: tuple[float, float]
    downsample: float
    mpp: float
    level: int
    shape: tuple[int, int]
    halo: int

    @property
    def megapixels(self) -> float:
        return self.shape[0] * self.shape[1] / 1e6


@dataclass
class RegionResult:
    """Instance labels of a region, placed on the slide by ``plan``."""

    plan: RegionPlan
    labels: np.ndarray
    rgb: np.ndarray = field(repr=False)
    method: dict = field(default_factory=dict)
    #: Only the tiles finished so far (yielded between tiles of a multi-tile region).
    partial: bool = False

    @property
    def count(self) -> int:
        return int(len(np.unique(self.labels[self.labels > 0])))

    def measure(self) -> dict[str, np.ndarray]:
        """Per-nucleus measurements; centroids in slide µm (from the slide's top-left corner)."""
        from .measure import measure_nuclei

        d = self.plan.downsample
        ox, oy = self.plan.origin
        return measure_nuclei(self.labels, self.rgb, self.plan.mpp, origin_px=(ox / d, oy / d))

    def labels_level0(self) -> tuple[np.ndarray, tuple[int, int]]:
        """The labels on the slide's level-0 pixel grid and their ``(x, y)`` offset there (for
        exports in slide pixels, e.g. QuPath outlines). Nearest neighbour: ids are never mixed."""
        d = self.plan.downsample
        ox, oy = (int(round(v)) for v in self.plan.origin)
        if d == 1.0:
            return self.labels, (ox, oy)
        h, w = self.labels.shape
        rows = np.minimum((np.arange(round(h * d)) + 0.5) / d, h - 1).astype(np.intp)
        cols = np.minimum((np.arange(round(w * d)) + 0.5) / d, w - 1).astype(np.intp)
        return self.labels[rows[:, None], cols[None, :]], (ox, oy)


@dataclass
class TilesDone:
    """Progress between the tiles of a region, with what is finished so far.

    One item, so that whoever has counted ``done`` tiles also has their nuclei: a run cancelled
    at any point between items still leaves everything it counted.
    """

    done: int
    total: int
    so_far: RegionResult


def model_mpp(method=None) -> float:
    """µm/px the method works at."""
    from ..methods import get_method

    return get_method(method).mpp


def plan_region(slide, box, method=None) -> RegionPlan:
    """Clip ``box`` (level-0 px, any floats) to the slide and choose level and resolution; the
    context read around it is the method's own (``context_um``)."""
    from ..methods import get_method
    from ..tiling.plan import check_resolution

    m = get_method(method)
    mpp0 = slide._require_mpp()
    # The view is read at the method's µm/px, so the planner never sees the slide's own: check
    # it here (a 40 µm/px override would otherwise be upsampled 80x, within the view's cap).
    check_resolution(mpp0, m)
    h0, w0 = slide.shape
    x0, y0, x1, y1 = box
    x0, y0 = max(0, math.floor(x0)), max(0, math.floor(y0))
    x1, y1 = min(w0, math.ceil(x1)), min(h0, math.ceil(y1))
    if x1 <= x0 or y1 <= y0:
        raise EmptyRegionError(
            f"{slide.path.name}: the view is outside the slide; pan back to the tissue"
        )
    target = m.mpp
    level = slide.best_level_for_mpp(target)
    native = slide.level_downsamples[level]
    # Within 2 % of the model's resolution the level is used as it is (the predictor would not
    # resample either); otherwise the read is resampled to exactly the model's µm/px.
    downsample = native if abs(native * mpp0 / target - 1) < 0.02 else target / mpp0
    halo = math.ceil(m.context_um / (downsample * mpp0))
    # The label grid starts on a whole label pixel; for a native level also on a whole level
    # pixel; and on the network's pooling grid over the whole slide, so a view is cut on the same
    # grid as the whole-slide job and as any other view (see tiling.plan).
    g = m.multiple
    gx0 = (math.floor(x0 / downsample) - halo) // g * g
    gy0 = (math.floor(y0 / downsample) - halo) // g * g
    gx1, gy1 = math.ceil(x1 / downsample) + halo, math.ceil(y1 / downsample) + halo
    return RegionPlan(
        box=(x0, y0, x1, y1),
        origin=(gx0 * downsample, gy0 * downsample),
        downsample=float(downsample),
        mpp=float(downsample * mpp0),
        level=level,
        shape=(gy1 - gy0, gx1 - gx0),
        halo=halo,
    )


def read_region(slide, plan: RegionPlan) -> np.ndarray:
    """The planned region (halo included) as RGB uint8 at the plan's resolution."""
    level = plan.level
    native = slide.level_downsamples[level]
    h, w = plan.shape
    if plan.downsample == native:
        return slide.read_region(
            round(plan.origin[0] / native), round(plan.origin[1] / native), w, h, level
        )
    mpp0 = slide.mpp
    ox, oy = plan.origin
    return slide.read_region_um(ox * mpp0, oy * mpp0, w * plan.mpp, h * plan.mpp, mpp=plan.mpp)


def tissue_fraction(rgb: np.ndarray, mpp: float) -> float:
    """Fraction of an RGB image that is stained, from a quick ~8 µm/px look (the glass check).

    Unlike the slide's tissue mask this takes white as 255, not the image's own brightest pixels:
    a view that is all tissue has no glass to calibrate on.
    """
    from ..tissue.mask import OD_MAX

    step = max(1, int(8.0 / mpp))
    small = np.asarray(rgb[::step, ::step], np.float32)
    if small.size == 0:
        return 0.0
    od = -np.log10(np.clip(small, 1.0, 255.0) / 255.0).max(axis=-1)
    return float((od > OD_MAX).mean())


def keep_centred(labels: np.ndarray, core: tuple[int, int, int, int]) -> np.ndarray:
    """Zero the nuclei whose centroid lies outside ``core`` (x0, y0, x1, y1, label pixels); ids
    are renumbered 1..n."""
    lab = np.asarray(labels)
    n = int(lab.max()) if lab.size else 0
    if n == 0:
        return lab.astype(np.uint32, copy=False)
    fg = lab > 0
    ys, xs = np.nonzero(fg)
    ids = lab[fg]
    area = np.bincount(ids, minlength=n + 1).astype(np.float64)
    # +0.5: pixel i covers [i, i + 1) in the edge coordinates ``core`` is given in.
    cy = np.bincount(ids, ys, n + 1) / np.maximum(area, 1) + 0.5
    cx = np.bincount(ids, xs, n + 1) / np.maximum(area, 1) + 0.5
    x0, y0, x1, y1 = core
    keep = (area > 0) & (cy >= y0) & (cy < y1) & (cx >= x0) & (cx < x1)
    keep[0] = False
    mapping = np.zeros(n + 1, np.uint32)
    mapping[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    return mapping[lab]


def segment_region(
    slide,
    box,
    method: str | None = None,
    normaliser=None,
    max_megapixels: float | None = None,
) -> Generator[tuple[int, int], None, RegionResult]:
    """Segment the level-0 region ``box`` of ``slide``; a generator (see the module docstring).

    Raises
    ------
    EmptyRegionError
        The region is outside the slide or shows only glass.
    RegionTooLargeError
        The region exceeds ``max_megapixels`` at the model's resolution.
    """
    from ..io.image_backend import to_rgb_uint8
    from ..methods import get_method
    from ..tiling import plan_tiles
    from .api import describe_method
    from .tiled import iter_segment_tiled

    m = get_method(method)
    plan = plan_region(slide, box, m)
    if max_megapixels is None:
        max_megapixels = MAX_VIEW_MEGAPIXELS
    if plan.megapixels > max_megapixels:
        # The view as the user sees it (the part on the slide), not the margins read around it;
        # the zoom that brings it under the limit, those margins (which do not shrink) included.
        x0, y0, x1, y1 = plan.box
        w, h = round((x1 - x0) / plan.downsample), round((y1 - y0) / plan.downsample)

        def megapixels(zoom):  # the view zoomed in by ``zoom``, with its context
            return (w / zoom + 2 * plan.halo) * (h / zoom + 2 * plan.halo) / 1e6

        zoom = 1.1
        # Bounded: a context alone larger than the limit (a tiny limit, a wide-context model)
        # is never brought under it by zooming, and the loop ran for ever.
        while megapixels(zoom) > max_megapixels and zoom < 100:
            zoom += 0.1
        raise RegionTooLargeError(
            f"{slide.path.name}: the view is {w} x {h} px at the model's {plan.mpp:.3g} µm/px "
            f"({plan.megapixels:.1f} MP with the context read around it, more than "
            f"{max_megapixels:g} MP): zoom in about {zoom:.1f}x, or segment the whole slide "
            "(a whole-slide job)"
        )
    yield 0, 1
    rgb = to_rgb_uint8(read_region(slide, plan))
    # The region itself in label pixels (without the halo): owns the nuclei centred in it.
    d, (ox, oy) = plan.downsample, plan.origin
    bx0, by0, bx1, by1 = plan.box
    core = (
        round((bx0 - ox) / d),
        round((by0 - oy) / d),
        math.ceil((bx1 - ox) / d),
        math.ceil((by1 - oy) / d),
    )
    if tissue_fraction(rgb[core[1] : core[3], core[0] : core[2]], plan.mpp) < MIN_TISSUE_FRACTION:
        raise EmptyRegionError(
            f"{slide.path.name}: the view shows only glass, no tissue: pan to the tissue"
        )
    if normaliser is not None:  # adapted to the slide: the colours of the normalised view
        from ..stain import normalise_image

        rgb = normalise_image(rgb, normaliser, plan.mpp)  # a learned one at its own scale
    method_info = describe_method(m, normaliser=normaliser)
    # The planner's tiles over the view itself (their halo reaches into the region's context),
    # starting on the pooling grid; a view that fits one tile is one pass over the region.
    tiles = plan_tiles((core[3] - core[1], core[2] - core[0]), plan.mpp, m)
    area = (core[0] // tiles.align * tiles.align, core[1] // tiles.align * tiles.align, *core[2:])
    h, w = rgb.shape[:2]
    if tiles.fits_one_pass((area[3] - area[1], area[2] - area[0])):
        labels = m.segment(rgb, plan.mpp)
        yield 1, 1
    else:
        labels = np.zeros((h, w), np.uint32)
        steps = iter_segment_tiled(rgb, plan.mpp, m.segment, tiles, out=labels, area=area)
        for done, total in steps:
            if done < total:  # what is finished so far, so a cancelled run still leaves it
                yield TilesDone(
                    done,
                    total,
                    RegionResult(
                        plan=plan,
                        labels=keep_centred(labels.copy(), core),
                        rgb=rgb,
                        method=method_info,
                        partial=True,
                    ),
                )
            else:
                yield done, total
    return RegionResult(plan=plan, labels=keep_centred(labels, core), rgb=rgb, method=method_info)


def write_labels_zarr(
    labels: np.ndarray,
    path,
    mpp: float,
    origin_px: tuple[float, float],
    downsample: float = 1.0,
    slide_mpp: float | None = None,
    **meta,
) -> None:
    """Write a region's labels as an OME-Zarr (NGFF 0.4) labels image placed on the slide.

    ``origin_px`` is the level-0 pixel where label pixel (0, 0) starts, ``mpp`` the labels' µm/px;
    the translation is that of the pixel's centre, in µm, as NGFF viewers (napari-ome-zarr,
    QuPath) place images. The array is written under a temporary name and moved into place, so a
    failed export leaves no half-written store.
    """
    import json
    import shutil
    import uuid
    from pathlib import Path

    import zarr

    path = Path(path)
    base = slide_mpp if slide_mpp is not None else mpp / downsample
    ox, oy = origin_px
    translate = [oy * base + (mpp - base) / 2, ox * base + (mpp - base) / 2]
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        chunk = (min(1024, labels.shape[0]), min(1024, labels.shape[1]))
        root.create_array(
            "0",
            data=np.ascontiguousarray(labels, dtype=np.uint32),
            chunks=chunk,
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
        root.attrs.update(
            {
                "multiscales": [
                    {
                        "version": "0.4",
                        "name": "nuclei",
                        "axes": [
                            {"name": "y", "type": "space", "unit": "micrometer"},
                            {"name": "x", "type": "space", "unit": "micrometer"},
                        ],
                        "datasets": [
                            {
                                "path": "0",
                                "coordinateTransformations": [
                                    {"type": "scale", "scale": [mpp, mpp]},
                                    {"type": "translation", "translation": translate},
                                ],
                            }
                        ],
                    }
                ],
                "image-label": {"version": "0.4"},
                "nucleiseg": json.loads(
                    json.dumps(
                        {"origin_px": [ox, oy], "downsample": downsample, **meta}, default=str
                    )
                ),
            }
        )
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def run(steps: Generator) -> object:
    """Drain a progress generator and return its result (for scripts and tests)."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


#: Edge (model px) of the warm-up image: about a 1024-px view plus its context. The runtime's
#: first pass at a size grows its memory arena, which costs more than the pass itself; done here,
#: in the background while the panel opens, the first click does not pay it (first view 0.88 s
#: → 0.6 s, like the next ones).
WARM_UP_PX = 1344


_WARMED: set = set()
_WARMING = threading.Lock()


def warm_up(method=None) -> None:
    """Load the method's model and run it once on a view-sized image, so the first click on
    "current view" does not pay for loading weights and initialising the runtime. Once per
    method and process: a second call waits for a warm-up in progress, then returns."""
    from ..methods import ClassicalMethod, get_method

    m = get_method(method)
    if isinstance(m, ClassicalMethod):
        return
    with _WARMING:
        if m in _WARMED:
            return
        m.warm_up()
        rgb = np.full((WARM_UP_PX, WARM_UP_PX, 3), 230, np.uint8)
        rgb[20:40, 20:40] = (90, 60, 150)
        m.segment(rgb, m.mpp)
        _WARMED.add(m)
