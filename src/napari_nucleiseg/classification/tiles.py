"""Labelled tiles: read a ``file,label[,group]`` list, bring each tile to the model's µm/px, cut
training patches, and make pixel-labelled mosaics.

A labelled tile is a region with one tag (the CLI's ``--tiles LIST.csv`` and an outline on a
napari Shapes layer end in the same :class:`LabelledTile`). A patch cut where two outlines meet
gets a pixel mask from them; tiles alone have no such patches, so :func:`mosaic` lays two to four
tiles of different tags side by side with a random seam: the pixel-labelled images the
segmentation decoder of reference 001 trains on, with the truth known exactly.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Pixels labelled this are not scored (outside every outline: unknown tissue).
IGNORE = 255


class TileListError(ValueError):
    """A tile list that cannot train anything; the message names the file and the row."""


@dataclass
class LabelledTile:
    """An RGB uint8 image at ``mpp`` µm/px with one tag, or with a per-pixel ``mask`` of tag
    indices (:data:`IGNORE` outside every outline). ``group`` keeps copies of one
    source together when splitting (LC25000's augmented copies)."""

    rgb: np.ndarray
    tag: str
    mpp: float
    group: str = ""
    source: str = ""
    mask: np.ndarray | None = None
    provenance: dict = field(default_factory=dict)


def read_tile_list(path: str | Path) -> list[dict]:
    """Rows of a tile list: ``file`` (relative to the list's folder or absolute), ``label``, and
    optional ``group`` and ``mpp``. Every problem is one :class:`TileListError` naming the row."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise TileListError(f"{path}: cannot read the tile list ({exc})") from None
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip().lower() for c in reader.fieldnames or []]
    if "file" not in columns or "label" not in columns:
        raise TileListError(
            f"{path}: a tile list needs the columns file,label (optional: group, mpp); "
            f"found {','.join(columns) or 'no header'}"
        )
    rows = []
    for n, raw in enumerate(reader, start=2):
        row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
        if not row.get("file") and not row.get("label"):
            continue  # blank line
        if not row.get("file") or not row.get("label"):
            raise TileListError(f"{path}, line {n}: both file and label are needed")
        f = Path(row["file"])
        if not f.is_absolute():
            f = path.parent / f
        if not f.is_file():
            raise TileListError(f"{path}, line {n}: {f} does not exist")
        mpp = None
        if row.get("mpp"):
            try:
                mpp = float(row["mpp"])
            except ValueError:
                raise TileListError(
                    f"{path}, line {n}: mpp {row['mpp']!r} is not a number"
                ) from None
        rows.append({"file": f, "label": row["label"], "group": row.get("group", ""), "mpp": mpp})
    if not rows:
        raise TileListError(f"{path}: the tile list has no rows")
    tags = sorted({r["label"] for r in rows})
    if len(tags) < 2:
        raise TileListError(
            f"{path}: every tile is labelled {tags[0]!r}; a classifier needs at least two tags"
        )
    return rows


def to_mpp(rgb: np.ndarray, mpp: float, target_mpp: float) -> np.ndarray:
    """Resample an RGB uint8 image from ``mpp`` to ``target_mpp`` µm/px (area-averaged when
    shrinking, so texture is not aliased)."""
    from PIL import Image

    f = mpp / target_mpp
    if abs(f - 1) < 0.02:
        return rgb
    h, w = rgb.shape[:2]
    size = (max(1, round(w * f)), max(1, round(h * f)))
    resample = Image.Resampling.BOX if f < 1 else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(rgb).resize(size, resample))


def load_tiles(rows: list[dict], mpp: float | None, model_mpp: float) -> list[LabelledTile]:
    """Read listed tiles (a file's own µm/px, else the row's, else ``mpp``) at ``model_mpp``."""
    from ..project.folder import open_with_mpp

    tiles = []
    for row in rows:
        with open_with_mpp(row["file"], row["mpp"] or mpp) as image:
            h, w = image.shape
            rgb = image.read_region(0, 0, w, h, 0)
            tile_mpp = image.mpp
        tiles.append(
            LabelledTile(
                to_mpp(rgb, tile_mpp, model_mpp),
                row["label"],
                model_mpp,
                group=row["group"] or str(row["file"]),
                source=str(row["file"]),
            )
        )
    return tiles


def grouped_split(tiles: list[LabelledTile], fraction: float, seed: int = 0):
    """``(train, held_out)`` with about ``fraction`` of each tag's groups held out (at least one
    group per tag when a tag has two or more): never a group on both sides."""
    rng = np.random.default_rng(seed)
    held_groups = set()
    for tag in sorted({t.tag for t in tiles}):
        groups = sorted({t.group for t in tiles if t.tag == tag})
        if len(groups) < 2 or fraction <= 0:
            continue
        k = min(len(groups) - 1, max(1, round(fraction * len(groups))))
        held_groups.update(rng.choice(groups, k, replace=False).tolist())
    train = [t for t in tiles if t.group not in held_groups]
    held = [t for t in tiles if t.group in held_groups]
    return train, held


def random_patch(rgb: np.ndarray, size: int, rng, mask: np.ndarray | None = None):
    """A ``size``² crop (reflect-padded when the tile is smaller), randomly flipped and rotated."""
    h, w = rgb.shape[:2]
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        pad = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
        rgb = np.pad(rgb, (*pad, (0, 0)), mode="reflect")
        if mask is not None:
            mask = np.pad(mask, pad, mode="constant", constant_values=IGNORE)
        h, w = rgb.shape[:2]
    y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
    rgb = rgb[y : y + size, x : x + size]
    mask = mask[y : y + size, x : x + size] if mask is not None else None
    k = int(rng.integers(4))
    rgb = np.rot90(rgb, k)
    mask = np.rot90(mask, k) if mask is not None else None
    if rng.random() < 0.5:
        rgb = rgb[:, ::-1]
        mask = mask[:, ::-1] if mask is not None else None
    return np.ascontiguousarray(rgb), (np.ascontiguousarray(mask) if mask is not None else None)


def mosaic(tiles: list[LabelledTile], tags: list[str], size: int, rng):
    """A ``size``² image cut in two or four by a random seam, each part from a tile of another
    tag where possible, and its pixel mask of tag indices."""
    by_tag = {}
    for t in tiles:
        by_tag.setdefault(t.tag, []).append(t)
    present = sorted(by_tag)
    image = np.zeros((size, size, 3), np.uint8)
    mask = np.zeros((size, size), np.uint8)
    cy, cx = (int(v) for v in rng.integers(size // 4, 3 * size // 4 + 1, 2))
    quads = [(0, cy, 0, cx), (0, cy, cx, size), (cy, size, 0, cx), (cy, size, cx, size)]
    if rng.random() < 0.5:  # two halves instead of four quarters
        quads = [(0, size, 0, cx), (0, size, cx, size)]
    first = present[int(rng.integers(len(present)))]
    for i, (y0, y1, x0, x1) in enumerate(quads):
        tag = first if i % 2 == 0 else present[(present.index(first) + 1) % len(present)]
        if len(quads) == 4 and rng.random() < 0.5:
            tag = present[int(rng.integers(len(present)))]
        pool = by_tag[tag]
        tile = pool[int(rng.integers(len(pool)))]
        patch, _ = random_patch(tile.rgb, size, rng)
        image[y0:y1, x0:x1] = patch[y0:y1, x0:x1]
        mask[y0:y1, x0:x1] = tags.index(tag)
    return image, mask
