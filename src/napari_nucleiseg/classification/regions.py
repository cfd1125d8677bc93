"""Outlines drawn on a slide → region labels in a project's training store.

Each outline (a polygon in level-0 pixels, with a tag) becomes one example: the slide's pixels
in the outline's bounding box at the chosen µm/px, and a mask giving every pixel inside *any*
outline its tag (1 + the tag's index), 0 elsewhere. A patch cut where a tumour outline meets a
normal one so carries both tags pixel by pixel (the segmentation step trains on it); a patch
inside one outline carries its tag (the classification step). Pixels outside every outline are
not called normal: nobody looked at them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..project.errors import ProjectError

#: Largest outline box stored as one example, in pixels at the chosen µm/px.
MAX_OUTLINE_PIXELS = 16_000_000


def outline_regions(slide, polygons, tags_of, mpp: float):
    """``[(rgb, labels, tags, region_um)]``, one per outline. ``polygons``: (N, 2) arrays of
    (row, column) level-0 pixel vertices (napari's Shapes order); ``tags_of``: a tag per outline."""
    from skimage.draw import polygon as fill_polygon

    if slide.mpp is None:
        raise ProjectError(f"{slide.path}: the slide states no µm/px; set it before outlining")
    tags = sorted(set(tags_of))
    scale = slide.mpp / mpp  # level-0 px → px at mpp
    h0, w0 = slide.shape
    boxes = []
    for poly in polygons:
        poly = np.asarray(poly, float)[:, -2:]
        (r0, c0), (r1, c1) = np.floor(poly.min(0)), np.ceil(poly.max(0))
        r0, c0 = max(0.0, r0), max(0.0, c0)
        r1, c1 = min(float(h0), r1), min(float(w0), c1)
        boxes.append((r0, c0, r1, c1))
    out = []
    for i, (r0, c0, r1, c1) in enumerate(boxes):
        if r1 <= r0 or c1 <= c0:
            raise ProjectError(f"outline {i + 1} lies outside the slide")
        hh, ww = round((r1 - r0) * scale), round((c1 - c0) * scale)
        if hh * ww > MAX_OUTLINE_PIXELS:
            raise ProjectError(
                f"outline {i + 1} spans {(c1 - c0) * slide.mpp / 1000:.1f} x "
                f"{(r1 - r0) * slide.mpp / 1000:.1f} mm: larger than one example may be; "
                "outline smaller regions"
            )
        if hh < 8 or ww < 8:
            raise ProjectError(f"outline {i + 1} is smaller than 8 px at {mpp:g} µm/px")
        x_um, y_um = c0 * slide.mpp, r0 * slide.mpp
        rgb = slide.read_region_um(x_um, y_um, ww * mpp, hh * mpp, mpp)[:hh, :ww]
        labels = np.zeros(rgb.shape[:2], np.uint32)
        for poly, tag in zip(polygons, tags_of):  # every outline over this box, in order
            poly = np.asarray(poly, float)[:, -2:]
            rr, cc = fill_polygon(
                (poly[:, 0] - r0) * scale, (poly[:, 1] - c0) * scale, shape=labels.shape
            )
            labels[rr, cc] = tags.index(tag) + 1
        region_um = (x_um, y_um, x_um + ww * mpp, y_um + hh * mpp)
        out.append((rgb, labels, tags, region_um))
    return out


def add_outlines(project, slide, polygons, tags_of, mpp: float = 1.0, annotator=None) -> list:
    """Store every outline as a region example (atomically, one by one); returns the examples.
    Checked all first: one bad outline stores none of them."""
    from .project_training import add_region

    if len(polygons) != len(tags_of):
        raise ValueError("one tag per outline")
    if not polygons:
        raise ProjectError("no outlines to add: draw some on the outlines layer first")
    regions = outline_regions(slide, polygons, tags_of, mpp)
    name = Path(str(slide.path)).name
    examples = []
    for rgb, labels, tags, region_um in regions:
        group = f"{name}:{round(region_um[0])},{round(region_um[1])}"
        examples.append(
            add_region(project, rgb, labels, mpp, tags, source=slide.path, group=group,
                       region_um=region_um, annotator=annotator)
        )  # fmt: skip
    return examples
