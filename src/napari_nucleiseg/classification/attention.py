"""Attention maps from a project's outlined regions (reference 003, on :mod:`.mil`).

Each outlined region is a bag of its patches' embeddings (the project's classifier's encoder)
labelled by whether it holds tumour; a gated-attention head learns from those region labels
alone which patches carry the evidence. Over the current view the view's tissue patches form
one bag, and the head's attention weights are drawn as a map on the heatmap's grid (one cell a
patch), so it lines up with the slide like the tumour heatmap does.
"""

from __future__ import annotations

import math

import numpy as np

from ..methods.classifier import TUMOUR, image_patches
from ..project.errors import ProjectError
from .tiles import to_mpp

#: A patch is part of a bag when at least this share of it lies inside the region's outlines.
MIN_LABELLED = 0.5
#: A region counts as tumour when at least this share of its labelled pixels are tumour.
MIN_TUMOUR = 0.05


def region_bags(project, method) -> list[tuple[np.ndarray, int]]:
    """``[(embeddings (n, D), 1 if the region holds tumour else 0)]`` for the project's region
    examples, patches cut at the classifier's µm/px."""
    bags = []
    p = int(method.tile_px)
    for ex in project.store.examples(kind="region"):
        tags = list(ex.provenance.get("tags", []))
        rgb = to_mpp(ex.image(), ex.mpp, method.mpp)
        labels = ex.labels()
        if labels.shape != rgb.shape[:2]:
            from PIL import Image

            labels = np.asarray(
                Image.fromarray(labels.astype(np.int32)).resize(
                    (rgb.shape[1], rgb.shape[0]), Image.Resampling.NEAREST
                )
            )
        patches = image_patches(rgb, p)
        masks = image_patches(np.repeat((labels > 0)[..., None], 3, 2).astype(np.uint8), p)
        keep = masks[..., 0].mean((1, 2)) >= MIN_LABELLED
        if not keep.any():
            continue
        labelled = labels[labels > 0]
        tumour = TUMOUR in tags and (labelled == tags.index(TUMOUR) + 1).mean() >= MIN_TUMOUR
        bags.append((method.embed(patches[keep])[1], int(tumour)))
    return bags


def train_project_attention(project, method=None, minutes: float = 1.0, iterations: int = 0):
    """Generator: train an attention head on the project's regions and make it the project's
    ``attention`` model; yields :func:`~.mil.train_mil`'s progress, then ``{"stage": "done",
    "result": {...}}``."""
    from ..methods import get_method
    from .mil import MILConfig, embedder_meta, train_mil

    method = method or get_method(None, kind="classifier", project=project.path)
    bags = region_bags(project, method)
    pos = sum(y for _, y in bags)
    if pos == 0 or pos == len(bags):
        raise ProjectError(
            f"{project.path}: attention needs outlined regions with tumour and regions "
            f"without ({pos} of {len(bags)} regions hold tumour)"
        )
    cfg = MILConfig(minutes=minutes, iterations=iterations)
    model = None
    for info in train_mil(bags, cfg, meta=embedder_meta(method)):
        if info["stage"] == "done":
            model = info["model"]
        else:
            yield info
    n = 1 + len(list(project.models_dir.glob("attention-*.json")))
    name = f"attention-{n}"
    model.save(project.models_dir, name)
    project.set_current_model(name, kind="attention")
    yield {
        "stage": "done",
        "result": {"model": name, "bags": len(bags), "tumour_bags": pos, "embedder": method.name},
    }


def load_project_attention(project):
    """The project's current attention head, or None."""
    from .mil import load_mil

    name = project.current_model("attention")
    return load_mil(project.models_dir / f"{name}.json") if name else None


def attention_region(mil, method, slide, x_um, y_um, width_um, height_um, min_tissue=0.5):
    """The attention of ``mil`` over a slide region's tissue patches taken as one bag, as a
    :class:`~.heatmap.Heatmap` with one cell per patch (weights × number of patches, so 1 is
    the uniform weight; NaN off tissue), on the slide's patch grid."""
    from ..tissue.mask import tissue_from_rgb
    from .heatmap import Heatmap

    mil.check_embedder(method)
    m, p = float(method.mpp), int(method.tile_px)
    cell = p * m
    h0, w0 = slide.shape
    rows_all = math.ceil(h0 * slide.mpp / cell)
    cols_all = math.ceil(w0 * slide.mpp / cell)
    r0, c0 = max(0, math.floor(y_um / cell)), max(0, math.floor(x_um / cell))
    r1 = min(rows_all, math.ceil((y_um + height_um) / cell))
    c1 = min(cols_all, math.ceil((x_um + width_um) / cell))
    if r1 <= r0 or c1 <= c0:
        raise ValueError("the region lies outside the slide")
    rgb = slide.read_region_um(c0 * cell, r0 * cell, (c1 - c0) * cell, (r1 - r0) * cell, m)
    rows, cols = r1 - r0, c1 - c0
    full = np.full((rows * p, cols * p, 3), 255, np.uint8)
    full[: rgb.shape[0], : rgb.shape[1]] = rgb[: rows * p, : cols * p]
    tissue, _ = tissue_from_rgb(full, m)
    cells = full.reshape(rows, p, cols, p, 3).swapaxes(1, 2).reshape(-1, p, p, 3)
    share = tissue.reshape(rows, p, cols, p).mean((1, 3)).ravel()
    keep = share >= min_tissue
    weights = np.full(rows * cols, np.nan, np.float32)
    if keep.sum() >= 1:
        emb = method.embed(cells[keep])[1]
        weights[keep] = mil.attention(emb) * keep.sum()
    return Heatmap(
        probabilities=weights.reshape(1, rows, cols),
        tags=["attention"],
        mpp=cell,
        origin_um=(r0 * cell, c0 * cell),
        stride_px=p,
        patch_px=p,
        model_mpp=m,
        slide_mpp=slide.mpp,
        model={"model": method.name, "attention": mil.meta.get("name", "")},
    )
