"""napari layer data tuples built from core objects, without importing napari.

Every layer carries ``scale`` (and ``translate`` for coarser layers) in µm from the slide's
µm/px, so masks, labels and heatmaps at any resolution line up with the slide at every zoom.
Our layers are tagged in ``metadata["nucleiseg"]`` so widgets find them without relying on names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import numpy as np

#: Key under ``layer.metadata`` that marks and describes the layers this plugin creates.
META_KEY = "nucleiseg"


def physical_transform(
    slide, downsample: float | tuple[float, float] = 1.0
) -> tuple[tuple[float, float], tuple[float, float]]:
    """``(scale, translate)`` for a layer whose pixel spans ``downsample`` level-0 pixels.

    napari draws data pixel ``i`` centred on ``i * scale + translate``. Level-0 pixel 0 spans
    ``[-mpp/2, mpp/2]``; a coarser pixel 0 must span ``[-mpp/2, -mpp/2 + downsample*mpp]``, so its
    centre — the translate — is ``(downsample - 1) * mpp / 2``. Without this a 16× mask would sit
    7.5 level-0 pixels off the tissue.
    """
    base = slide.mpp if slide.mpp is not None else 1.0
    dy, dx = downsample if isinstance(downsample, tuple) else (downsample, downsample)
    sy, sx = base * dy, base * dx
    return (sy, sx), ((sy - base) / 2.0, (sx - base) / 2.0)


def _units(slide) -> tuple[str, str]:
    return ("micrometer", "micrometer") if slide.mpp is not None else ("pixel", "pixel")


#: Largest coarsest level napari should be given: zoomed out, it draws that level whole.
MAX_OVERVIEW = 4096


def display_pyramid(levels: list) -> list:
    """Add lazy ×4 area-averaged levels while the coarsest one is larger than ``MAX_OVERVIEW``.

    Files without a pyramid (a single-level tiled TIFF, a big PNG) would otherwise make napari
    read the full-resolution level to draw a zoomed-out view. The added levels are computed chunk
    by chunk from the level above only when they are looked at.
    """
    import dask.array as da

    levels = list(levels)
    while max(levels[-1].shape[:2]) > MAX_OVERVIEW:
        prev = levels[-1]
        small = da.coarsen(np.mean, prev, {0: 4, 1: 4}, trim_excess=True)
        # Coarsening shrinks chunks 4x per level; rechunk so the overview is not thousands of
        # tiny tasks.
        levels.append(small.astype(prev.dtype).rechunk((512, 512, -1)))
    return levels


def slide_layer(slide, chunk: int | None = None, name: str | None = None) -> tuple[Any, dict, str]:
    """A multiscale RGB image layer for a :class:`~napari_nucleiseg.io.Slide`."""
    from .io.slide import DEFAULT_CHUNK

    pyramid = display_pyramid(slide.pyramid(chunk or DEFAULT_CHUNK, on_error="warn"))
    meta = {"kind": "slide", **slide.metadata()}
    return (pyramid, _rgb_pyramid_kwargs(slide, name or slide.path.name, meta), "image")


def _rgb_pyramid_kwargs(slide, name: str, meta: dict) -> dict:
    """Layer arguments of a lazy RGB pyramid placed on ``slide`` in µm."""
    scale, translate = physical_transform(slide)
    return {
        "name": name,
        "rgb": True,
        "multiscale": True,
        "scale": scale,
        "translate": translate,
        "units": _units(slide),
        # Given explicitly: otherwise napari would compute them from the pixels.
        "contrast_limits": [0, 255],
        # napari's opportunistic dask cache would keep every chunk ever viewed (up to a quarter
        # of RAM); the slide backends keep their own bounded tile cache, so memory stays flat.
        "cache": False,
        "metadata": {META_KEY: meta},
    }


#: Colour of the tissue mask's outline (green: apart from the nuclei's yellow and the stains).
TISSUE_COLOUR = "#30d050"
#: Width of the tissue mask's outline (mask pixels).
TISSUE_CONTOUR = 2


#: The tissue mask is drawn this many times finer than it was computed, its edge smoothed: an
#: outline that follows the tissue instead of the mask's blocks.
TISSUE_DISPLAY_UPSAMPLE = 4


def tissue_layer(
    slide, mask, name: str = "tissue", upsample: int = TISSUE_DISPLAY_UPSAMPLE
) -> tuple[Any, dict, str]:
    """A labels layer (1 = tissue) for a :class:`~napari_nucleiseg.tissue.TissueMask`, drawn as
    the tissue's outline (set the layer's ``contour`` to :data:`TISSUE_CONTOUR` once added:
    napari takes it only then). The mask is shown ``upsample`` times finer with its edge
    smoothed (display only: ``metadata["downsample"]`` is the mask's own, the layer's is
    ``display_downsample``)."""
    data = mask.mask.astype(np.uint8)
    dy, dx = mask.downsample_yx
    if upsample > 1:
        from scipy import ndimage as ndi

        soft = ndi.gaussian_filter(mask.mask.astype(np.float32), sigma=0.6)
        soft = ndi.zoom(soft, upsample, order=1, grid_mode=True, mode="nearest")
        data = (soft >= 0.5).astype(np.uint8)
        dy, dx = dy * mask.mask.shape[0] / data.shape[0], dx * mask.mask.shape[1] / data.shape[1]
    scale, translate = physical_transform(slide, (dy, dx))
    kwargs = {
        "name": name,
        "scale": scale,
        "translate": translate,
        "units": _units(slide),
        "opacity": 0.9,
        "colormap": {None: TISSUE_COLOUR, 0: "transparent"},
        "metadata": {
            META_KEY: {
                "kind": "tissue",
                "slide": str(slide.path),
                "downsample": mask.downsample,
                "display_downsample": [dy, dx],
                "mpp": mask.mpp,
                "fraction": mask.fraction,
                "threshold_od": mask.threshold_od,
            }
        },
    }
    return (data, kwargs, "labels")


def labels_display_pyramid(levels: list) -> list:
    """Add lazy ×2 levels (every other pixel: ids are never mixed) between levels further apart.

    napari draws the finest level the zoom needs and colour-maps every drawn pixel on the
    interface thread; with ×4 steps, a slide fitted to the window is drawn from a level up to 16
    times the screen's pixels. ×2 steps keep that at most 4 times.
    """
    out = [levels[0]]
    for nxt in levels[1:]:
        while out[-1].shape[0] >= 4 * nxt.shape[0] and out[-1].shape[1] >= 4 * nxt.shape[1]:
            out.append(out[-1][::2, ::2])
        out.append(nxt)
    return out


#: Nuclei are drawn as outlines in one colour that stands out on haematoxylin (blue-purple) and
#: on eosin (pink), so the chromatin inside stays visible; the same for the view and the slide.
NUCLEI_COLOUR = "#ffe600"
#: Outline width (pixels of the labels level drawn).
NUCLEI_CONTOUR = 2
#: Opacity of filled nuclei (outlines are drawn opaque).
FILL_OPACITY = 0.45
#: The Nuclei panel's display choices.
NUCLEI_STYLES = ("outlines", "filled")
NUCLEI_COLOURINGS = ("one colour", "a colour per nucleus")


def one_colour(colour: str = NUCLEI_COLOUR) -> dict:
    """A labels colour map drawing every label in ``colour`` (napari's direct colour map)."""
    return {None: colour, 0: "transparent"}


def nuclei_style(style: str = NUCLEI_STYLES[0], colouring: str = NUCLEI_COLOURINGS[0]) -> dict:
    """Labels layer arguments drawing nuclei as ``style`` in ``colouring`` (per nucleus: None,
    napari's own random colours)."""
    outline = style == NUCLEI_STYLES[0]
    return {
        "contour": NUCLEI_CONTOUR if outline else 0,
        "opacity": 1.0 if outline else FILL_OPACITY,
        "colormap": one_colour() if colouring == NUCLEI_COLOURINGS[0] else None,
    }


def labels_layer(
    slide, pyramid, name: str = "nuclei", kind: str = "nuclei", **meta
) -> tuple[Any, dict, str]:
    """A (multiscale) instance labels layer aligned with the slide's level 0 (nuclei drawn as
    :func:`nuclei_style`'s default: yellow outlines)."""
    scale, translate = physical_transform(slide)
    multiscale = isinstance(pyramid, (list, tuple))
    kwargs = {
        **(_nuclei_kwargs() if kind == "nuclei" else {}),
        "name": name,
        "scale": scale,
        "translate": translate,
        "units": _units(slide),
        "multiscale": multiscale,
        "cache": False,
        "metadata": {META_KEY: {"kind": kind, "slide": str(slide.path), **meta}},
    }
    return (list(pyramid) if multiscale else pyramid, kwargs, "labels")


def _nuclei_kwargs() -> dict:
    """Layer arguments of the default style (napari takes the outline width, ``contour``, only
    once the layer exists: set it then)."""
    return {k: v for k, v in nuclei_style().items() if v is not None and k != "contour"}


#: Largest slide (level-0 pixels) whose unfinished whole-slide labels are shown at every zoom:
#: zoomed out, they are read from level 0 (the result store's coarse levels are built at the
#: end). Larger slides show them where level 0 is drawn (zoomed in) until the run ends.
LIVE_OVERVIEW_MAX_PX = 32_000_000


def outlines_only(labels: np.ndarray, width: int = 1) -> np.ndarray:
    """``labels`` kept only on each nucleus' edge (``width`` pixels): outlines drawn as data, so
    napari need not compute them on the interface thread (its ``contour`` costs about five
    times the drawing itself)."""
    lab = np.asarray(labels)
    edge = np.zeros(lab.shape, bool)
    for _ in range(width):
        inner = lab.copy()
        inner[edge] = 0
        e = np.zeros(lab.shape, bool)
        e[1:, :] |= inner[1:, :] != inner[:-1, :]
        e[:-1, :] |= inner[:-1, :] != inner[1:, :]
        e[:, 1:] |= inner[:, 1:] != inner[:, :-1]
        e[:, :-1] |= inner[:, :-1] != inner[:, 1:]
        edge |= e & (lab > 0)
    return np.where(edge, lab, 0).astype(lab.dtype, copy=False)


def slide_labels_so_far(
    store, count: bool = True, cache: dict | None = None, outlines: bool = False
) -> tuple:
    """The nuclei of an unfinished (running or cancelled) whole-slide result store:
    ``(levels, tiles segmented, nuclei)`` (nuclei 0 unless ``count``: counting reads a little
    of every record). Reads records and chunks: call it in a worker thread, and pass the same
    ``cache`` (a dict) from one call to the next so only what changed is read again.

    The store's level 0 holds the chunks already merged (a chunk is merged once the tiles around
    it are segmented); every other chunk is merged here, in memory, from the segmented tiles
    around it, by the job's own rule (``wholeslide.tasks.merge_chunk``). So the nuclei counted
    so far are the nuclei shown, and a chunk whose neighbours are all segmented shows what the
    finished store will hold. For a slide up to :data:`LIVE_OVERVIEW_MAX_PX` the
    levels from ×2 down are computed here, in memory (the store's coarse levels are built only
    at the end, and napari would read them on the interface thread), so the nuclei show at every
    zoom; a larger slide gets one overview in memory (zoomed far out) and level 0 (zoomed in),
    the levels between filling in at the end.
    """
    import json
    import math

    from .wholeslide import open_labels
    from .wholeslide.store import StoreMismatchError, chunk_record, finished_keys, read_attrs
    from .wholeslide.tasks import load_tile, merge_chunk

    cache = {} if cache is None else cache
    store = str(store)
    levels, _, _ = open_labels(store)
    level0 = levels[0]
    tile = int(level0.chunks[0][0])
    h, w = level0.shape[:2]
    rows, cols = math.ceil(h / tile), math.ceil(w / tile)
    try:
        halo = int(read_attrs(store)["nucleiseg"]["identity"]["halo_px"])
    except (StoreMismatchError, KeyError, TypeError, ValueError):
        # Any halo up to the largest a plan makes merges a chunk the same way.
        halo = tile // 2
    tiles = finished_keys(store, "tiles")
    chunks = finished_keys(store, "chunks")

    def around(r, c):
        return [
            (rr, cc)
            for rr in (r - 1, r, r + 1)
            for cc in (c - 1, c, c + 1)
            if 0 <= rr < rows and 0 <= cc < cols
        ]

    def compose(r, c, sources):
        """Chunk ``(r, c)`` merged from the segmented ``sources`` among its 3×3, as the job will
        merge it, and how many of tile ``(r, c)``'s own nuclei it keeps (0 if not among them)."""

        def records():
            for rc in sorted(sources):  # raster order: the merge's
                try:
                    yield rc, load_tile(store, *rc, ("labels", "origin", "owned"))
                except Exception:  # being rewritten, or damaged: the job redoes it; not shown
                    continue

        y0, x0 = r * tile, c * tile
        core = (x0, y0, min(x0 + tile, w), min(y0 + tile, h))
        labels, kept_ids = merge_chunk(core, halo, level0.dtype, cols, records())
        return labels, len(kept_ids.get((r, c), ()))

    pending = {}
    kept_own = {}
    near = {nb for key in tiles for nb in around(*map(int, key.split("_")))}
    for r, c in near:
        if f"{r}_{c}" in chunks:
            continue
        sources = frozenset(rc for rc in around(r, c) if f"{rc[0]}_{rc[1]}" in tiles)
        hit = cache.get(("pending", r, c))
        if hit is None or hit[0] != sources:
            hit = cache[("pending", r, c)] = (sources, *compose(r, c, sources))
        pending[(r, c)] = hit[1]
        kept_own[(r, c)] = hit[2]

    def block(data, block_info=None):
        r, c = block_info[0]["chunk-location"]
        if f"{r}_{c}" not in chunks:
            data = pending.get((r, c), np.zeros_like(data))
        return outlines_only(data, NUCLEI_CONTOUR) if outlines else data

    so_far = level0.map_blocks(block, dtype=level0.dtype)
    nuclei = 0
    for key in tiles if count else ():
        if key not in chunks:  # its nuclei the merge keeps so far (a tile's "owned" counts twice
            # the nuclei near its edge that a neighbour also owns)
            nuclei += kept_own.get(tuple(map(int, key.split("_"))), 0)
    for key in chunks if count else ():
        try:
            nuclei += len(json.loads(chunk_record(store, key).read_text())["kept"])
        except (OSError, ValueError, KeyError):
            pass
    big = h * w > LIVE_OVERVIEW_MAX_PX
    # Overviews in memory: ×2 and ×4 for a slide up to LIVE_OVERVIEW_MAX_PX, else one of at most
    # LIVE_OVERVIEW_MAX_PX / 8 pixels (what a zoomed-out screen draws).
    steps = (
        (2, 4)
        if not big
        else (2 ** math.ceil(math.log2(math.sqrt(8 * h * w / LIVE_OVERVIEW_MAX_PX))),)
    )
    overviews = {}
    for step in steps:
        overview = overviews[step] = np.zeros(
            (math.ceil(h / step), math.ceil(w / step)), level0.dtype
        )
        for r in range(rows):
            for c in range(cols):
                y0, x0 = r * tile, c * tile
                sy, sx = (-y0) % step, (-x0) % step
                if f"{r}_{c}" in chunks:  # final: read once, kept at the overviews' size
                    part = cache.get(("final", step, r, c))
                    if part is None:
                        full = np.asarray(level0.blocks[r, c])
                        part = cache[("final", step, r, c)] = full[sy::step, sx::step].copy()
                elif (r, c) in pending:
                    part = pending[(r, c)][sy::step, sx::step]
                else:
                    continue
                oy, ox = (y0 + sy) // step, (x0 + sx) // step
                overview[oy : oy + part.shape[0], ox : ox + part.shape[1]] = part
    for r, c in [k[1:] for k in cache if k[0] == "pending" and f"{k[1]}_{k[2]}" in chunks]:
        del cache[("pending", r, c)]  # merged since: the store has it
    if outlines:
        overviews = {k: outlines_only(v) for k, v in overviews.items()}
    if big:
        # The store's coarse levels (empty until the end) between level 0 and the overview.
        (step,) = steps
        pyramid = []
        for lv in labels_display_pyramid([so_far, *levels[1:]]):
            d = max(1, round(h / lv.shape[0]))
            if d < step:
                pyramid.append(lv)
            elif d % step == 0:
                pyramid.append(overviews[step][:: d // step, :: d // step])
        if max(round(h / lv.shape[0]) for lv in pyramid) < step:  # the store stops short of it
            pyramid.append(overviews[step])
        return pyramid, len(tiles), nuclei
    pyramid = [so_far, overviews[2], overviews[4]]
    while max(pyramid[-1].shape[:2]) > MAX_OVERVIEW // 4:
        pyramid.append(pyramid[-1][::2, ::2])
    return pyramid, len(tiles), nuclei


def region_labels_layer(
    slide,
    labels,
    origin_px: tuple[float, float],
    downsample: float = 1.0,
    name: str = "nuclei",
    kind: str = "nuclei",
    **meta,
) -> tuple[Any, dict, str]:
    """A labels layer for a label map cut from the slide.

    ``origin_px`` is the level-0 pixel ``(x, y)`` where label pixel (0, 0) starts and
    ``downsample`` the level-0 pixels per label pixel, so the map sits on the tissue it was
    computed from at every zoom.
    """
    (sy, sx), (ty, tx) = physical_transform(slide, downsample)
    base = slide.mpp if slide.mpp is not None else 1.0
    ox, oy = origin_px
    kwargs = {
        **(_nuclei_kwargs() if kind == "nuclei" else {}),
        "name": name,
        "scale": (sy, sx),
        "translate": (ty + oy * base, tx + ox * base),
        "units": _units(slide),
        "metadata": {
            META_KEY: {
                "kind": kind,
                "slide": str(slide.path),
                "origin_px": [float(ox), float(oy)],
                "downsample": float(downsample),
                **meta,
            }
        },
    }
    return (labels, kwargs, "labels")


# ---------------------------------------------------------------------------------------- stain
#: Largest view (pixels at the level read) a stain reference is fitted on; larger views are read
#: from a coarser level. Stain statistics need colour, not detail.
MAX_VIEW_FIT_PIXELS = 4_000_000
#: The deconvolution channels shown over a slide: name, colour map, top of the display range
#: (optical density). Greyscale, dark where the stain is (as a single-stain slide looks).
STAIN_CHANNELS = (("haematoxylin", "gray_r", 1.0), ("eosin", "gray_r", 1.0), ("DAB", "gray_r", 1.0))


def read_view(slide, box, max_pixels: int = MAX_VIEW_FIT_PIXELS) -> np.ndarray:
    """The RGB pixels of a view of ``slide``, read from the finest level that keeps them under
    ``max_pixels`` (a zoomed-out view of a gigapixel slide is read from a coarse level).

    ``box`` is ``(x0, y0, x1, y1)`` in level-0 pixels (as the viewer reports it; clipped to the
    slide here). Raises ValueError when even the coarsest level holds far more than
    ``max_pixels`` of the view (a slide without reduced levels, seen whole).
    """
    x0, y0, x1, y1 = (max(0, v) for v in box)
    h0, w0 = slide.shape
    x1, y1 = min(x1, w0), min(y1, h0)
    area = max(1.0, (x1 - x0) * (y1 - y0))
    level = slide.best_level_for_downsample(max(1.0, (area / max_pixels) ** 0.5))
    d = slide.level_downsamples[level]
    if area / d**2 > 4 * max_pixels:
        raise ValueError(
            f"{slide.path.name}: the view is too large to fit a stain reference on at this "
            "file's resolution levels: zoom in, or use a reference file"
        )
    return slide.read_region(
        int(x0 / d), int(y0 / d), max(1, int((x1 - x0) / d)), max(1, int((y1 - y0) / d)), level
    )


@dataclass(frozen=True)
class NormalisedStain:
    """What a stain-normalised slide layer records in ``metadata["nucleiseg"]``: its colour
    mapping, so another panel (Nuclei: "normalise stain first") can apply the very same mapping
    to the slide's pixels. Written by :func:`normalised_layer`, read by :func:`recorded_normaliser`.

    Keys (besides ``kind``, always ``"stain_normalised"``):

    ``slide``
        Path of the slide the layer shows normalised (``str``).
    ``method``
        The normaliser: ``macenko``, ``reinhard``, ``vahadane``, ``ruifrok`` or ``learned``.
    ``reference``
        What the target was fitted on, in words ("the current view of x.svs", a file name, "model
        stain-cycle-v1").
    ``profile``
        The target: :meth:`StainProfile.to_dict <napari_nucleiseg.stain.StainProfile.to_dict>`
        (``{}`` for a learned normaliser: its target is the style it learnt).
    ``source``
        The slide's own stain profile (sampled once from its tissue), same form. Target and
        source together fix the per-pixel mapping of every chunk at every zoom. For a learned
        normaliser, ``{"card": path, "stain": [8 numbers], "calibration": {...} or None}``: its
        model card, the slide's measured stain vector and its colour calibration (strength, Lab
        scale and shift, the output colour measured), which with the network fix the mapping
        the same way.
    """

    slide: str
    method: str
    reference: str
    profile: dict
    source: dict

    KIND: ClassVar[str] = "stain_normalised"

    @classmethod
    def of(cls, normaliser, slide_path, reference: str = "") -> NormalisedStain:
        """The record of a normaliser adapted to a slide."""
        if not normaliser.adapted:
            raise ValueError("the normaliser is not adapted to the slide yet")
        if normaliser.method == "learned":
            return cls(
                slide=str(slide_path),
                method="learned",
                reference=reference or f"model {normaliser.name}",
                profile={},
                source={
                    "card": str(normaliser.card_path),
                    "stain": [float(v) for v in normaliser.source_stain],
                    "calibration": normaliser.describe()["calibration"],
                },
            )
        return cls(
            slide=str(slide_path),
            method=normaliser.method,
            reference=reference,
            profile=normaliser.profile.to_dict(),
            source=normaliser.source.to_dict(),
        )

    def to_metadata(self) -> dict:
        return {"kind": self.KIND, **asdict(self)}

    @classmethod
    def from_metadata(cls, meta: dict) -> NormalisedStain:
        """Read a layer's ``metadata["nucleiseg"]``; KeyError names a missing key."""
        if meta.get("kind") != cls.KIND:
            raise KeyError(f"not a stain-normalised layer (kind {meta.get('kind')!r})")
        return cls(**{f.name: meta[f.name] for f in fields(cls)})

    def normaliser(self):
        """The normaliser, adapted to the slide as it was when the layer was made."""
        if self.method == "learned":
            from .stain.learned_normaliser import load_learned

            return load_learned(self.source["card"]).adapted_to(
                self.source["stain"], self.source.get("calibration")
            )
        from .stain import StainProfile, normaliser_from_profile

        normaliser = normaliser_from_profile(StainProfile.from_dict(self.profile))
        normaliser.source = StainProfile.from_dict(self.source)
        return normaliser


def recorded_normaliser(meta: dict):
    """The normaliser a stain-normalised layer shows, from its ``metadata["nucleiseg"]`` (see
    :class:`NormalisedStain` for the keys): every chunk it maps gets the layer's colours."""
    return NormalisedStain.from_metadata(meta).normaliser()


def normalised_layer(
    slide, levels: list, normaliser, reference: str = "", name: str | None = None
) -> tuple[Any, dict, str]:
    """A lazy multiscale RGB layer of ``levels`` (the slide's pyramid, finest first) normalised
    by ``normaliser`` — adapted to the slide first if it is not yet (a read of a tissue sample;
    do it in a worker) — placed on the slide in µm and recording its mapping
    (:class:`NormalisedStain`)."""
    from .stain import normalise_levels
    from .stain.lazy import adapt_to_levels

    normaliser = adapt_to_levels(normaliser, levels, name=slide.path.name, mpp=slide.mpp)
    record = NormalisedStain.of(normaliser, slide.path, reference)
    what = normaliser.name if normaliser.method == "learned" else normaliser.method
    title = f"{name or slide.path.name} (normalised, {what})"
    kwargs = _rgb_pyramid_kwargs(slide, title, record.to_metadata())
    # Each level's µm/px: a learned normaliser works at its own scale (colour maps ignore it).
    width = levels[0].shape[1]
    mpps = None if slide.mpp is None else [slide.mpp * width / lv.shape[1] for lv in levels]
    return (normalise_levels(levels, normaliser, mpps=mpps), kwargs, "image")


def _stain_channel(block: np.ndarray, k: int) -> np.ndarray:
    from .stain import deconvolve

    return deconvolve(block)[..., k]


def stain_channel_layers(slide, levels: list, name: str | None = None) -> list[tuple]:
    """Haematoxylin, eosin and DAB optical density of ``levels`` (the slide's RGB pyramid), as
    lazy greyscale multiscale layers computed per chunk, placed on the slide in µm (H shown, E
    and DAB hidden; each opaque over the slide, so one reads the stain alone)."""
    scale, translate = physical_transform(slide)
    out = []
    for k, (channel, colour, top) in enumerate(STAIN_CHANNELS):
        data = [lv.map_blocks(_stain_channel, k, drop_axis=2, dtype=np.float32) for lv in levels]
        kwargs = {
            "name": f"{channel} ({name or slide.path.name})",
            "multiscale": True,
            "scale": scale,
            "translate": translate,
            "units": _units(slide),
            "colormap": colour,
            "contrast_limits": [0.0, top],
            "blending": "translucent",
            "cache": False,
            "visible": k == 0,
            "metadata": {
                META_KEY: {"kind": "stain_channel", "channel": channel, "slide": str(slide.path)}
            },
        }
        out.append((data, kwargs, "image"))
    return out
