"""Labelled tiles from the data this project has: LC25000 and regions of real slides.

LC25000 states no µm/px. Its 768² colon originals give plausible nuclei (about 40 µm² median
area, what MoNuSeg's 40× nuclei measure) with the shipped nuclei model at 0.4 µm/px, and not
at 0.25 or 0.6 (22 and 60 µm²); its 224² tiles are those images shrunk 768 → 224, hence
:data:`LC25000_MPP`. An estimate, hence the scale jitter in training.

Slides give what LC25000 lacks: glass (``background``) and non-tumour tissue of another organ
and scanner (CMU-1 is normal skin: epidermis, dermis, keratin, collagen).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .tiles import LabelledTile, to_mpp

LC25000_MPP = 0.4 * 768 / 224
#: LC25000's 768² originals, at the µm/px estimated above.
LC25000_768_MPP = 0.4


def lc25000_rows(root: str | Path, organs=("colon", "lung"), originals: bool = False) -> list:
    """Rows (file, label, group, mpp) of ``root/index.json``; the 768² originals only when
    ``originals`` (they are sources of the tiles: never train on one and test on the other)."""
    root = Path(root)
    rows = []
    for r in json.loads((root / "index.json").read_text())["images"]:
        is_original = "768" in r["file"].split("/")[0]
        if r["organ"] not in organs or is_original != originals:
            continue
        mpp = LC25000_768_MPP if is_original else LC25000_MPP
        rows.append(
            {"file": root / r["file"], "label": r["label"], "group": r["group"], "mpp": mpp}
        )
    return rows


def slide_tiles(
    path: str | Path,
    model_mpp: float,
    size_um: float,
    *,
    tissue_tag: str | None = "normal",
    glass_tag: str | None = "background",
    mpp: float | None = None,
    max_glass: int = 40,
    seed: int = 0,
) -> list[LabelledTile]:
    """Tiles of ``size_um`` from a slide at ``model_mpp``: mostly-tissue ones (≥ 60 % tissue)
    tagged ``tissue_tag`` and glass ones (≤ 2 % tissue, at most ``max_glass``) ``glass_tag``;
    each tile its own group, named after the slide."""
    from ..io import open_slide
    from ..tissue import tissue_mask

    rng = np.random.default_rng(seed)
    out = []
    with open_slide(path, mpp=mpp) as slide:
        mask = tissue_mask(slide)
        level = slide.best_level_for_mpp(model_mpp)
        step = size_um / slide.mpp  # level-0 px
        h, w = slide.shape
        boxes = [
            (x, y)
            for y in np.arange(0, h - step + 1, step)
            for x in np.arange(0, w - step + 1, step)
        ]
        glass = []
        for x, y in boxes:
            f = mask.fraction_in(x, y, x + step, y + step)
            tag = tissue_tag if f >= 0.6 else glass_tag if f <= 0.02 else None
            if tag is None:
                continue
            if tag == glass_tag:
                glass.append((x, y))
                continue
            out.append(_read(slide, level, x, y, step, model_mpp, tag, path))
        for i in rng.permutation(len(glass))[:max_glass] if glass_tag else ():
            x, y = glass[i]
            out.append(_read(slide, level, x, y, step, model_mpp, glass_tag, path))
    return out


def _read(slide, level, x, y, step, model_mpp, tag, path) -> LabelledTile:
    ds = slide.level_downsamples[level]
    side = max(1, round(step / ds))
    rgb = slide.read_region(int(x / ds), int(y / ds), side, side, level)
    rgb = to_mpp(rgb, slide.level_mpp(level), model_mpp)
    name = Path(path).name
    return LabelledTile(rgb, tag, model_mpp, group=f"{name}:{int(x)},{int(y)}", source=name)
