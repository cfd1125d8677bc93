"""Training patches for the learned normaliser, drawn from a project (reference 002's X and Y).

* **Y**, the lab's reference style: tissue tiles of the slides the user marked as reference
  (``Project.add_slide(..., reference=True)``), and the strong labels cut from them.
* **X**, many stains: tissue tiles of the project's other slides, and every strong label
  re-stained at random (:func:`~napari_nucleiseg.stain.augment.restain`) — reference 002's
  multi-stain labelled set; pseudo-labels (the student's extra data) as they are. A strong label
  cut from a reference slide and re-stained is a *pair*: the way back to the reference style is
  known exactly, and the trainer uses it (a paired L1 term beside the unpaired CycleGAN terms).

Everything is held as uint8 tiles at the model's µm/px (a few hundred MB at most: tiles per
slide are capped), so an iteration costs crops and flips only, and a run resumed at iteration
``i`` draws the batches it would have drawn (one random stream per iteration).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Tile:
    """One pool entry: RGB uint8 (H, W, 3) at the model's µm/px, instance labels or None, and
    whether it may be re-stained when drawn (labelled X tiles always are)."""

    rgb: np.ndarray
    labels: np.ndarray | None = None
    restain: float = 0.0
    source: str = ""
    #: The tile is in the reference style: re-stained, it comes with the way back (paired).
    paired: bool = False


@dataclass
class Pools:
    x: list[Tile] = field(default_factory=list)
    y: list[Tile] = field(default_factory=list)

    def describe(self, names_only: bool = False) -> dict:
        """Tiles, labelled tiles and sources of each side (``names_only``: file names, for a
        card that travels; a run's own record keeps the paths)."""

        def count(tiles):
            sources = {t.source for t in tiles if t.source}
            if names_only:
                sources = {Path(s).name for s in sources}
            return {
                "tiles": len(tiles),
                "labelled": sum(t.labels is not None for t in tiles),
                "sources": sorted(sources),
            }

        return {"x": count(self.x), "y": count(self.y)}


def resample(rgb: np.ndarray, labels: np.ndarray | None, factor: float):
    """``rgb`` (and ``labels``) scaled by ``factor`` (output px per input px): area-averaged when
    shrinking, bilinear when growing; labels by nearest neighbour."""
    from PIL import Image

    if abs(factor - 1.0) < 1e-3:
        return rgb, labels
    h, w = rgb.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    mode = Image.Resampling.BOX if factor < 1 else Image.Resampling.BILINEAR
    out = np.asarray(Image.fromarray(rgb).resize(size, mode))
    if labels is not None:
        labels = np.asarray(
            Image.fromarray(labels.astype(np.int32)).resize(size, Image.Resampling.NEAREST)
        )
    return out, labels


def slide_tiles(path, mpp_override, model_mpp: float, tile_um: float, n: int, seed: int):
    """Up to ``n`` tissue tiles (``tile_um`` a side) of a slide or image at ``model_mpp``
    (:func:`~napari_nucleiseg.tissue.sampling.sample_tissue_tiles`, then resampled). Raises
    ProjectError naming the file."""
    from ...tissue.sampling import sample_tissue_tiles

    return [
        resample(rgb, None, mpp / model_mpp)[0]
        for rgb, mpp, _ in sample_tissue_tiles(path, mpp_override, tile_um, n, seed)
    ]


def project_pools(
    project,
    model_mpp: float,
    tile_um: float,
    tiles_per_slide: int,
    seed: int,
    restain_unlabelled: float,
    pseudo_teacher: str | None = None,
) -> Pools:
    """X and Y pools of ``project`` (see the module docstring). ``pseudo_teacher``: add the
    pseudo-labels that teacher made (its id in their provenance) to X."""
    from ...project.errors import ProjectError

    pools = Pools()
    reference = {s["path"] for s in project.slides if s.get("reference")}
    if not reference:
        raise ProjectError(
            f"{project.path}: no slide is marked as the reference style: mark one or more with "
            "`nucleiseg project add-slide DIR SLIDE --reference` (or in the Project panel)"
        )
    for i, entry in enumerate(project.slides):
        is_ref = entry["path"] in reference
        for rgb in slide_tiles(
            entry["path"], entry.get("mpp"), model_mpp, tile_um, tiles_per_slide, seed + i
        ):
            tile = Tile(rgb, None, 0.0 if is_ref else restain_unlabelled, entry["path"])
            (pools.y if is_ref else pools.x).append(tile)
    for ex in project.store.examples(kind="strong", split="train"):
        rgb, labels = resample(ex.image(), ex.labels(), ex.mpp / model_mpp)
        source = str(ex.provenance.get("source", ""))
        pools.x.append(Tile(rgb, labels, 1.0, source, paired=source in reference))
        if source in reference:
            pools.y.append(Tile(rgb, labels, 0.0, source))
    if pseudo_teacher:
        for ex in project.store.examples(kind="pseudo"):
            if ex.provenance.get("teacher") == pseudo_teacher:
                rgb, labels = resample(ex.image(), ex.labels(), ex.mpp / model_mpp)
                pools.x.append(Tile(rgb, labels, 0.0, str(ex.provenance.get("source", ""))))
    if not pools.x:
        raise ProjectError(
            f"{project.path}: nothing to normalise from: add slides of other stains "
            "(`nucleiseg project add-slide`) or strong labels"
        )
    return pools


#: How far a drawn X patch is re-stained (the H and E vectors turned, amounts scaled): a range
#: wider than the jitter nuclei models train with, so X spans other labs' stains.
RESTAIN_ANGLES = (0.0, 35.0)
RESTAIN_AMOUNTS = (0.4, 2.5)


def draw(tiles: list[Tile], n: int, patch: int, rng: np.random.Generator, labelled_share=None):
    """``n`` random patches: RGB uint8 (n, P, P, 3), nuclei targets float32 (n, 3, P, P) (zeros
    where a tile has no labels), a per-sample flag of which carry labels, and the patch before
    re-staining (n, P, P, 3) with a flag of which were re-stained: for those the way back to
    the original style is known (a paired target). ``labelled_share``: the chance a patch comes
    from a labelled tile (None: every tile alike)."""
    from ...segmentation.targets import make_targets
    from ..augment import restain

    labelled = [t for t in tiles if t.labels is not None]
    other = [t for t in tiles if t.labels is None]
    rgbs, targets, valid, originals, paired = [], [], [], [], []
    for _ in range(n):
        if labelled_share is not None and labelled and other:
            pool = labelled if rng.random() < labelled_share else other
        else:
            pool = tiles
        tile = pool[int(rng.integers(len(pool)))]
        rgb, lab = tile.rgb, tile.labels
        h, w = rgb.shape[:2]
        if h < patch or w < patch:  # reflect small tiles up to a patch
            ph, pw = max(0, patch - h), max(0, patch - w)
            pad = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
            rgb = np.pad(rgb, (*pad, (0, 0)), mode="reflect")
            lab = None if lab is None else np.pad(lab, pad, mode="constant")
            h, w = rgb.shape[:2]
        y, x = int(rng.integers(0, h - patch + 1)), int(rng.integers(0, w - patch + 1))
        rgb = rgb[y : y + patch, x : x + patch]
        lab = None if lab is None else lab[y : y + patch, x : x + patch]
        k, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
        rgb = np.rot90(rgb, k)[:, ::-1] if flip else np.rot90(rgb, k)
        if lab is not None:
            lab = np.rot90(lab, k)[:, ::-1] if flip else np.rot90(lab, k)
        rgb = np.ascontiguousarray(rgb)
        originals.append(rgb)
        if tile.restain and rng.random() < tile.restain:
            rgb, _ = restain(rgb, rng, RESTAIN_ANGLES, RESTAIN_AMOUNTS)
            paired.append(tile.paired)
        else:
            paired.append(False)
        rgbs.append(rgb)
        if lab is None:
            targets.append(np.zeros((3, patch, patch), np.float32))
            valid.append(False)
        else:
            targets.append(make_targets(np.ascontiguousarray(lab)))
            valid.append(True)
    return (
        np.stack(rgbs),
        np.stack(targets),
        np.array(valid),
        np.stack(originals),
        np.array(paired),
    )


#: The stain vector of a field with too little tissue to measure: the Ruifrok-Johnston H and E
#: vectors and unit amounts (a neutral "typical H&E").
def _default_vector() -> np.ndarray:
    from ..deconvolution import RGB_FROM_HED

    return np.concatenate([np.asarray(RGB_FROM_HED)[:2].ravel(), [0.0, 0.0]]).astype(np.float32)


def stain_vector(rgb: np.ndarray) -> np.ndarray:
    """What a generator is told of a field's stain: the Macenko H and E optical-density vectors
    (6 numbers) and the log of their 99th-percentile amounts (2), float32 (8,). A field with too
    little tissue gets the neutral default."""
    from ..errors import StainError
    from ..normalise import make_normaliser

    try:
        p = make_normaliser("macenko").measure(rgb)
    except StainError:
        return _default_vector()
    m = np.asarray(p.stain_matrix, np.float64)[:2].ravel()
    c = np.log(np.maximum(np.asarray(p.max_concentrations, np.float64)[:2], 1e-3))
    return np.concatenate([m, c]).astype(np.float32)


def stain_map(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 3×3 optical-density map (row-major, float32 (9,)) that Macenko normalisation applies
    to go from stain vector ``source`` to ``target`` (:func:`stain_vector`): concentrations by
    least squares on the source's H and E vectors, scaled by the ratio of 99th-percentile
    amounts, recomposed on the target's vectors. ``od' = A·od``."""
    ws, wt = (
        source[:6].reshape(2, 3).astype(np.float64),
        target[:6].reshape(2, 3).astype(np.float64),
    )
    ratio = np.exp(target[6:8].astype(np.float64) - source[6:8].astype(np.float64))
    a = wt.T @ np.diag(ratio) @ np.linalg.pinv(ws.T)
    return a.ravel().astype(np.float32)


IDENTITY_MAP = np.eye(3, dtype=np.float32).ravel()


def stain_vectors(rgbs: np.ndarray) -> np.ndarray:
    """(N, 8) :func:`stain_vector` of a batch of uint8 patches."""
    return np.stack([stain_vector(r) for r in rgbs])


def reference_vector(tiles) -> np.ndarray:
    """One stain vector for the reference style, as the classical normalisers average their
    references (:func:`~..profile.average_profiles`): each tile's H and E vectors averaged and
    renormalised, the median of their log amounts. Why not one measurement of a mosaic of
    tiles: its 99th-percentile amounts are those of the darkest tiles, and the maps made with
    them darkened every slide (Lab distance to the style 7.3 as a pure map on MoNuSeg test,
    against 5.7 with the average)."""
    vectors = np.stack([stain_vector(t.rgb) for t in tiles])
    w = vectors[:, :6].reshape(-1, 2, 3).mean(0)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    return np.concatenate([w.ravel(), np.median(vectors[:, 6:], 0)]).astype(np.float32)


def as_tensor(rgb: np.ndarray):
    """uint8 (N, H, W, 3) → float (N, 3, H, W) in [0, 1], channels-last (fast CPU convolutions)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last)
