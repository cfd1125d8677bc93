"""Mosaic slides with an exact truth: real LC25000 tiles laid out cell by cell in a known layout.

A tumour heatmap can only be scored against a truth that is known to the pixel, and no real slide
in ``../shared`` has one. So :func:`mosaic_slide` builds a slide from real tissue: a grid of square
cells, each filled with LC25000 tiles of one tag (tumour or normal; or left as glass), resampled
to a stated µm/px and written as the same tiled JPEG pyramid the demo slide uses (OpenSlide reads
it as ``generic-tiff`` with its µm/px), together with the truth mask at a coarse µm/px.

Tiles are chosen one per LC25000 ``group`` (a group is one source image and its augmented
copies, so two tiles of a group are the same tissue) and can be restricted to given groups, so a
mosaic can be made only of tissue a classifier never trained on.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

#: Edge of a mosaic cell (µm): larger than a tile (so a cell is several tiles), and on purpose
#: not a multiple of common heatmap strides (56 and 112 µm: 112-px patches at 1 µm/px), so cell
#: borders cut through heatmap cells as a real tumour border does (444 = 7.93 × 56).
CELL_UM = 444.0
#: µm/px of the truth mask: fine against a cell (56 px per 448-µm cell), small for any mosaic.
TRUTH_MPP = 8.0
#: Layout entries that mean "no tissue here".
GLASS = ("glass", "", None)


def default_tissue_index() -> Path:
    """``index.json`` of the tissue tiles: ``$NUCLEISEG_SHARED/data/tissue``, else the
    ``shared`` folder beside the repository."""
    root = os.environ.get("NUCLEISEG_SHARED")
    shared = Path(root) if root else Path(__file__).resolve().parents[4] / "shared"
    return shared / "data" / "tissue" / "index.json"


def _candidates(index: Path, organ: str, groups, size: int | None) -> dict[str, list[dict]]:
    """Index rows by tag, one row per group (the first listed), restricted to ``groups``."""
    try:
        data = json.loads(Path(index).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{index}: the tissue tile index is missing (../shared/data/tissue); "
            "set NUCLEISEG_SHARED or pass index="
        ) from None
    allowed = None if groups is None else {str(g) for g in groups}
    by_tag: dict[str, dict[str, dict]] = {}
    for row in data["images"]:
        if organ and row.get("organ") != organ:
            continue
        if size is not None and int(row.get("size", 224)) != size:
            continue
        if allowed is not None and row["group"] not in allowed:
            continue
        by_tag.setdefault(row["label"], {}).setdefault(row["group"], row)
    return {tag: list(rows.values()) for tag, rows in by_tag.items()}


def _load_tile(path: Path, tile_mpp: float, mpp: float) -> np.ndarray:
    from PIL import Image

    from ..classification.tiles import to_mpp

    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    return to_mpp(rgb, tile_mpp, mpp)


def mosaic_slide(
    out_path,
    layout: Sequence[Sequence[str | None]],
    mpp: float = 0.5,
    seed: int = 0,
    *,
    cell_um: float = CELL_UM,
    truth_mpp: float = TRUTH_MPP,
    groups: Iterable[str] | None = None,
    organ: str = "colon",
    index=None,
    tile_mpp: float | None = None,
    tile_size: int | None = 224,
) -> tuple[Path, np.ndarray, float]:
    """Write a mosaic slide and return ``(path, truth, truth_mpp)``.

    Parameters
    ----------
    out_path
        The slide to write (a ``.tif``: tiled JPEG pyramid, ×4 per level, µm/px in the TIFF
        resolution tags, read by OpenSlide as ``generic-tiff``).
    layout
        Rows of cell tags, top to bottom, e.g. ``[["tumour", "normal"], ["normal", "glass"]]``.
        A tag is any label of the tile index (``tumour``, ``normal``); ``"glass"``, ``""`` or
        ``None`` leaves the cell empty (white).
    mpp
        µm/px of the slide's level 0; tiles are resampled to it.
    seed
        Which tiles (and their flips and quarter turns) fill which cells.
    cell_um
        Edge of a cell in µm; a cell is ``round(cell_um / mpp)`` px.
    truth_mpp
        µm/px of the returned truth mask.
    groups
        Use only tiles of these LC25000 groups (e.g. a classifier's held-out groups); default all.
    organ, index, tile_mpp, tile_size
        Which tiles (``organ`` and ``tile_size`` filter the index; ``None``: any), where the index
        is (default :func:`default_tissue_index`), and the µm/px of its tiles (default
        :data:`~napari_nucleiseg.classification.datasets.LC25000_MPP`, the estimate the
        classifiers are trained with).

    Returns
    -------
    path, truth, truth_mpp
        ``truth[i, j]`` is True where the pixel of ``truth_mpp`` µm whose centre lies at
        ``((i + 0.5) * truth_mpp, (j + 0.5) * truth_mpp)`` µm from the slide's top-left corner is
        in a tumour cell: exact, whatever ``truth_mpp`` (cells are
        ``[r * cell_px * mpp, (r + 1) * cell_px * mpp)`` µm).
    """
    from ..classification.datasets import LC25000_MPP
    from ..methods.classifier import TUMOUR
    from .slides import _atomic, write_pyramidal_tiff

    tile_mpp = LC25000_MPP if tile_mpp is None else float(tile_mpp)

    rows = [list(r) for r in layout]
    if not rows or not rows[0] or any(len(r) != len(rows[0]) for r in rows):
        raise ValueError("layout must be a non-empty rectangle of cell tags")
    index = Path(index) if index is not None else default_tissue_index()
    candidates = _candidates(index, organ, groups, tile_size)
    tags = sorted({t for r in rows for t in r if t not in GLASS})  # sorted: same draws every run
    missing = sorted(t for t in tags if not candidates.get(t))
    if missing:
        raise ValueError(
            f"{index}: no tiles tagged {', '.join(map(repr, missing))} among the chosen ones "
            f"(tags there: {', '.join(sorted(candidates)) or 'none'})"
        )
    rng = np.random.default_rng(seed)
    # Each tag's tiles in a random order, one per group, cycled only when a mosaic needs more
    # tiles than there are groups (then with other flips and turns).
    queues = {t: [candidates[t][k] for k in rng.permutation(len(candidates[t]))] for t in tags}
    taken = dict.fromkeys(tags, 0)
    cell_px = round(cell_um / mpp)
    n_rows, n_cols = len(rows), len(rows[0])
    rgb = np.full((n_rows * cell_px, n_cols * cell_px, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, tag in enumerate(row):
            if tag in GLASS:
                continue
            canvas = None
            for k in itertools.count():
                entry = queues[tag][taken[tag] % len(queues[tag])]
                taken[tag] += 1
                tile = _load_tile(index.parent / entry["file"], tile_mpp, mpp)
                tile = np.rot90(tile, int(rng.integers(4)))
                if rng.integers(2):
                    tile = tile[:, ::-1]
                if canvas is None:  # tiles of an index share one size
                    side = min(tile.shape[:2])
                    per_side = math.ceil(cell_px / side)
                    canvas = np.empty((per_side * side, per_side * side, 3), np.uint8)
                i, j = divmod(k, per_side)
                canvas[i * side : (i + 1) * side, j * side : (j + 1) * side] = tile[:side, :side]
                if k + 1 == per_side * per_side:
                    break
            y, x = r * cell_px, c * cell_px
            rgb[y : y + cell_px, x : x + cell_px] = canvas[:cell_px, :cell_px]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic(out_path, lambda p: write_pyramidal_tiff(p, rgb, mpp))
    # The truth, from the cell geometry (not from the pixels): exact at any truth_mpp.
    cell_true_um = cell_px * mpp
    th, tw = (max(1, round(n * cell_true_um / truth_mpp)) for n in (n_rows, n_cols))
    ci = np.minimum(((np.arange(th) + 0.5) * truth_mpp // cell_true_um).astype(int), n_rows - 1)
    cj = np.minimum(((np.arange(tw) + 0.5) * truth_mpp // cell_true_um).astype(int), n_cols - 1)
    tumour = np.array([[t == TUMOUR for t in row] for row in rows], bool)
    truth = tumour[ci[:, None], cj[None, :]]
    return out_path, truth, float(truth_mpp)
