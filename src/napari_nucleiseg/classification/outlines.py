"""Tumour outlines from a heatmap: the threshold's iso-line as polygons (with holes), and their
export as QuPath GeoJSON annotations.

The outline is the iso-line ``p_tumour = threshold`` of the map — each cell the mean of the
patches that overlap it (:meth:`~.heatmap.Heatmap.averaged`) — read as a field sampled at cell
centres (marching squares, linear between centres), not the staircase of thresholded cells: a
border between a tumour cell (p ≈ 1) and a normal one (p ≈ 0) then runs where the two patches
disagree equally, not along a cell edge chosen by rounding. Where the map carries the tissue
mask it was computed with (whole-slide, view and image heatmaps do; attention maps, maps made
with ``tissue=False`` and stores from before masks were kept do not), the field is read on the
mask's grid and is 0 off the tissue, so a region ends at the tissue's edge (:func:`_on_tissue`);
otherwise cells without tissue (NaN) count as 0. The field is closed with a ring of 0 so every
outline is a closed polygon; it is clipped to the slide. Regions smaller than ``min_area_um2``
(default: the area one patch sees) are dropped, and holes smaller than that filled: a single cell
is not evidence of anything.

Coordinates: rings are ``(x, y)`` µm from the slide's top-left corner; in GeoJSON they are slide
level-0 pixels with pixel ``(i, j)`` covering ``[j, j+1) × [i, i+1)`` — QuPath's convention, as
:mod:`napari_nucleiseg.wholeslide.export` writes nuclei. Exterior rings have positive signed area
in ``(x, y)`` numbers, holes negative.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..methods.classifier import TUMOUR
from .heatmap import Heatmap

#: QuPath's class for tumour annotations (its built-in "Tumor" class), and its colour.
CLASS_NAME = "Tumor"
CLASS_COLOR = (200, 0, 0)
#: Fixed namespace of the annotations' UUIDs (uuid5 of this and "<seed>:<index>").
_NAMESPACE = uuid.UUID("8d3c2a4e-5f1b-4c7a-9e2d-74756d6f7572")


@dataclass
class Region:
    """One tumour region: ``exterior`` ``(k, 2)`` and ``holes`` rings of ``(x, y)`` µm from the
    slide's corner (closed: first vertex not repeated), its area in µm² (holes removed) and the
    mean p of the classified cells whose centres lie inside it."""

    exterior: np.ndarray
    holes: list[np.ndarray] = field(default_factory=list)
    area_um2: float = 0.0
    mean_p: float = float("nan")

    def rings_px(self, slide_mpp: float) -> list[np.ndarray]:
        """Exterior then holes, in slide level-0 pixels."""
        return [r / slide_mpp for r in (self.exterior, *self.holes)]


def signed_area(ring_xy: np.ndarray) -> float:
    x, y = ring_xy[:, 0], ring_xy[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def tumour_regions(
    heatmap: Heatmap,
    threshold: float = 0.5,
    *,
    tag: str = TUMOUR,
    min_area_um2: float | None = None,
    bounds_um: tuple[float, float] | None = None,
    average: bool = True,
    clip_to_tissue: bool = True,
) -> list[Region]:
    """Regions where the map of ``tag`` is at least ``threshold``, largest first.

    ``min_area_um2`` defaults to the area of one patch (``(patch_px · model_mpp)²``);
    ``bounds_um`` ``(height, width)`` clips the rings to the slide (:func:`slide_bounds`; the
    last cells of a map may reach past the slide's edge); None: no clipping. ``average``: the
    outline of :meth:`~.heatmap.Heatmap.averaged` (each cell the mean of the patches that
    overlap it), not of the patch centred on each cell alone. ``clip_to_tissue``: where the map
    carries its tissue mask, the outline keeps to the tissue (:func:`_on_tissue`).
    """
    from skimage.measure import find_contours, points_in_poly

    if not 0 < threshold < 1:
        raise ValueError(f"the threshold must be between 0 and 1, got {threshold:g}")
    p = (heatmap.averaged() if average else heatmap).p(tag)
    if min_area_um2 is None:
        min_area_um2 = (heatmap.patch_px * heatmap.model_mpp) ** 2
    if clip_to_tissue and heatmap.tissue_mask is not None:
        values, (oy, ox), (my, mx) = _on_tissue(heatmap, p)
    else:
        values, (oy, ox) = np.nan_to_num(p, nan=0.0), heatmap.origin_um
        my = mx = heatmap.mpp
    field_ = np.pad(values, 1)
    rings = []
    for rc in find_contours(field_, threshold, fully_connected="high"):
        if len(rc) < 4:
            continue
        # Padded index (r, c) is field pixel (r - 1, c - 1), whose centre is at +0.5 pixel.
        xy = np.stack([ox + (rc[:, 1] - 0.5) * mx, oy + (rc[:, 0] - 0.5) * my], axis=1)
        if np.allclose(xy[0], xy[-1]):
            xy = xy[:-1]
        if len(xy) >= 3:
            rings.append(xy)
    # Exterior or hole by nesting, not by the library's orientation: iso-lines of one level never
    # cross, and the map is closed by low values, so a ring inside an even number of others
    # encloses high values (an exterior), inside an odd number low ones (a hole).
    rings = [r if signed_area(r) > 0 else r[::-1] for r in rings]
    areas = [signed_area(r) for r in rings]
    order = sorted(range(len(rings)), key=lambda k: -areas[k])  # containers come first
    depth, parent, kept = {}, {}, {}
    for n, k in enumerate(order):
        around = [j for j in order[:n] if points_in_poly(rings[k][:1], rings[j])[0]]
        depth[k] = len(around)
        parent[k] = around[-1] if around else None  # the smallest ring around it
        # A region or hole below the minimum area goes, and so does whatever lies inside it.
        kept[k] = areas[k] >= min_area_um2 and (parent[k] is None or kept[parent[k]])
    exteriors = [k for k in order if kept[k] and depth[k] % 2 == 0]
    owned = {k: [] for k in exteriors}
    for k in order:
        if kept[k] and depth[k] % 2 == 1:
            owned[parent[k]].append(rings[k][::-1])  # holes run the other way round
    ci, cj = np.nonzero(~np.isnan(p))
    cy, cx = heatmap.centre_um(ci, cj)
    centres = np.stack([cx, cy], axis=1)
    regions = []
    for k in exteriors:
        ext, hs, area = rings[k], owned[k], areas[k]
        if bounds_um is not None:
            ext = _clip(ext, bounds_um)
            hs = [_clip(h, bounds_um) for h in hs]
            area = signed_area(ext)
        area -= sum(-signed_area(h) for h in hs)
        inside = points_in_poly(centres, ext) if len(centres) else np.zeros(0, bool)
        for h in hs:
            inside &= ~points_in_poly(centres, h)
        mean = float(np.mean(p[ci[inside], cj[inside]])) if inside.any() else float("nan")
        regions.append(Region(ext, hs, float(area), mean))
    regions.sort(key=lambda r: -r.area_um2)
    return regions


def _on_tissue(heatmap: Heatmap, p: np.ndarray):
    """The map as a field on its tissue mask's grid: ``(values, origin_um, (mpp_y, mpp_x))``.

    Why: the map's cells end at the last classified patch, and a NaN cell counts as 0, so the
    iso-line between the last tumour cell and the glass fell wherever the two centres put it —
    short of a tissue edge or out on the glass, by up to half a cell. Here each mask pixel takes
    the map linearly between cell centres, unclassified cells take the nearest classified cell's
    value (up to a patch away: a patch reaches that far), and pixels off the tissue are 0, so a
    tumour region ends where the tissue ends. The mask is first closed with a disk whose radius
    is one patch, so gaps and lumina narrower than two patches — about what the averaged map,
    3 × 3 overlapping patches, resolves — are tissue to the outline (a pathologist's tumour
    annotation holds its lumina too; measured on the mosaics, a radius of half a patch did worse
    than no mask: 0.893 against 0.899), and kept to the map's extent. The grid is the mask's,
    brought to between a quarter and half a cell: a whole slide's mask (at most 512 px across)
    can be coarser than the map, and a border must not lose the map's resolution.
    """
    from scipy import ndimage as ndi
    from skimage.morphology import disk, remove_small_holes

    placed = heatmap.tissue_mask
    my, mx = (float(v) for v in placed.mpp)
    toy, tox = placed.origin_um
    mask = np.asarray(placed.mask, bool)
    # A mask much finer than the map (an image's own, at its µm/px) is coarsened: the map cannot
    # place a border finer than a quarter of a cell anyway. Padded with glass to whole blocks,
    # so no tissue at the bottom or right is dropped.
    k = max(1, int(heatmap.mpp / 4 // max(my, mx)))
    if k > 1:
        h, w = -(-mask.shape[0] // k) * k, -(-mask.shape[1] // k) * k
        mask = np.pad(mask, ((0, h - mask.shape[0]), (0, w - mask.shape[1])))
        mask = mask.reshape(h // k, k, w // k, k).mean((1, 3)) >= 0.5
        my, mx = my * k, mx * k
    # A mask coarser than half a cell (a large slide's) is refined, each pixel repeated.
    ky = max(1, int(np.ceil(my / (heatmap.mpp / 2))))
    kx = max(1, int(np.ceil(mx / (heatmap.mpp / 2))))
    if ky > 1 or kx > 1:
        mask = np.repeat(np.repeat(mask, ky, axis=0), kx, axis=1)
        my, mx = my / ky, mx / kx
    patch_um = heatmap.patch_px * heatmap.model_mpp
    r = max(1, round(patch_um / max(my, mx)))
    # Padded with the edge's own values: closing must not shrink tissue at the mask's border.
    closed = ndi.binary_closing(np.pad(mask, r, mode="edge"), disk(r).astype(bool))[r:-r, r:-r]
    closed = remove_small_holes(closed, max_size=max(1, int(patch_um**2 / (my * mx))))
    # The map's extent, in mask pixels (a view's map covers part of the slide's mask).
    oy, ox = heatmap.origin_um
    rows, cols = heatmap.shape
    r0 = max(0, int(np.floor((oy - toy) / my)))
    c0 = max(0, int(np.floor((ox - tox) / mx)))
    r1 = min(closed.shape[0], int(np.ceil((oy + rows * heatmap.mpp - toy) / my)))
    c1 = min(closed.shape[1], int(np.ceil((ox + cols * heatmap.mpp - tox) / mx)))
    if r1 <= r0 or c1 <= c0 or not np.isfinite(p).any():
        return np.zeros((1, 1)), (oy, ox), (heatmap.mpp, heatmap.mpp)
    nan = np.isnan(p)
    dist, idx = ndi.distance_transform_edt(nan, return_indices=True)
    filled = np.where(dist * heatmap.mpp <= patch_um, p[tuple(idx)], 0.0)
    # Map coordinates (fractional cell index, centres at whole numbers) of the mask pixels.
    yc = toy + (np.arange(r0, r1) + 0.5) * my
    xc = tox + (np.arange(c0, c1) + 0.5) * mx
    fi = (yc - oy) / heatmap.mpp - 0.5
    fj = (xc - ox) / heatmap.mpp - 0.5
    ii, jj = np.meshgrid(fi, fj, indexing="ij")
    values = ndi.map_coordinates(filled, [ii, jj], order=1, mode="nearest")
    values = np.where(closed[r0:r1, c0:c1], values, 0.0)
    return values, (toy + r0 * my, tox + c0 * mx), (my, mx)


def _clip(ring: np.ndarray, bounds_um) -> np.ndarray:
    h, w = bounds_um
    return np.stack([np.clip(ring[:, 0], 0, w), np.clip(ring[:, 1], 0, h)], axis=1)


def tumour_geojson_path(out_dir, slide_path) -> Path:
    """Where a slide's tumour outlines are written: ``<out_dir>/<stem>.tumour.geojson``."""
    from ..io.output import output_stem

    return Path(out_dir) / f"{output_stem(slide_path)}.{TUMOUR}.geojson"


def slide_bounds(heatmap: Heatmap, slide_shape) -> tuple[float, float]:
    """``(height, width)`` µm of a slide of ``slide_shape`` level-0 px at the map's slide µm/px."""
    if heatmap.slide_mpp is None:
        raise ValueError("the heatmap is not placed on a slide (slide_mpp is None)")
    return slide_shape[0] * heatmap.slide_mpp, slide_shape[1] * heatmap.slide_mpp


# --------------------------------------------------------------------------- GeoJSON
def _packed_rgb(rgb) -> int:
    """QuPath's packed ARGB colour as a signed 32-bit int (its ``colorRGB``)."""
    r, g, b = (int(v) for v in rgb)
    v = (0xFF << 24) | (r << 16) | (g << 8) | b
    return v - (1 << 32)


def feature(
    region: Region,
    slide_mpp: float,
    index: int,
    *,
    name: str = CLASS_NAME,
    color=CLASS_COLOR,
    id_seed: str = "",
    tag: str = TUMOUR,
) -> dict:
    """One QuPath annotation: a Polygon (exterior, then holes) in level-0 pixels."""
    coords = []
    for ring in region.rings_px(slide_mpp):
        pts = [[round(float(x), 3), round(float(y), 3)] for x, y in ring]
        coords.append(pts + pts[:1])  # GeoJSON rings are closed
    measurements = {"Area µm^2": round(region.area_um2, 3)}
    if np.isfinite(region.mean_p):
        measurements[f"Mean p_{tag}"] = round(region.mean_p, 6)
    return {
        "type": "Feature",
        "id": str(uuid.uuid5(_NAMESPACE, f"{id_seed}:{index}")),
        "geometry": {"type": "Polygon", "coordinates": coords},
        "properties": {
            "objectType": "annotation",
            "name": f"{name} {index + 1}",
            # "color" is QuPath 0.4+'s; "colorRGB" (packed ARGB) what 0.2-0.3 read.
            "classification": {
                "name": name,
                "color": list(color),
                "colorRGB": _packed_rgb(color),
            },
            "measurements": measurements,
        },
    }


def write_geojson(
    regions: list[Region],
    path,
    slide_mpp: float,
    *,
    name: str = CLASS_NAME,
    color=CLASS_COLOR,
    id_seed: str = "",
    tag: str = TUMOUR,
) -> Path:
    """Write ``regions`` as a QuPath-importable GeoJSON ``FeatureCollection`` of annotations
    (``File > Import objects``), atomically. Returns the path."""
    from ..wholeslide.store import atomic_write

    collection = {
        "type": "FeatureCollection",
        "features": [
            feature(r, slide_mpp, k, name=name, color=color, id_seed=id_seed, tag=tag)
            for k, r in enumerate(regions)
        ],
    }
    path = Path(path)
    atomic_write(path, lambda f: f.write(json.dumps(collection, ensure_ascii=False).encode()))
    return path


def rasterise(regions: list[Region], shape, mpp: float) -> np.ndarray:
    """Boolean mask ``shape`` at ``mpp`` µm/px (pixel ``(i, j)`` centred on
    ``((i + 0.5)·mpp, (j + 0.5)·mpp)`` µm) of the points inside the regions (outside holes)."""
    from skimage.measure import points_in_poly

    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    pts = np.stack([(xx.ravel() + 0.5) * mpp, (yy.ravel() + 0.5) * mpp], axis=1)
    out = np.zeros(h * w, bool)
    for r in regions:
        inside = points_in_poly(pts, r.exterior)
        for hole in r.holes:
            inside &= ~points_in_poly(pts, hole)
        out |= inside
    return out.reshape(h, w)
