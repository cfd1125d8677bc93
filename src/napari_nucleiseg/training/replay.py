"""Replay (rehearsal): a few of a model's own labelled training crops, shipped beside it and mixed
into every retraining batch, so a student fine-tuned on one lab's corrections keeps what its
teacher knew elsewhere.

Why: measured with ``benchmarks/annotator_loop.py`` (v4 teacher, 5 corrected DSB colour crops, 10
minutes), a student trained on the corrections alone gained 0.054 AJI on that domain and fell from
0.651 to 0.275 on ``monuseg2018_test``; pseudo-labels of the lab's own tissue slow the fall but
hold the gain back too (+0.015 / -0.011), and blending the weights back towards the teacher gives
up the gain faster than it saves MoNuSeg (alpha 0.3: +0.019 / -0.051). Rehearsal of the teacher's
own data is the standard cure for this forgetting (Robins 1995; Rebuffi et al. 2017, iCaRL).

The set is one ``.npz`` (no pickle: uint8 images, uint16 labels, unicode stems, the µm/px), named
in the card's ``training["replay"]`` with its SHA-256; a student inherits its parent's entry, and
the file is looked up beside the card, then among the shipped models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Where the shipped models (and their replay sets) live.
SHIPPED = Path(__file__).resolve().parents[1] / "models"


def build(
    images, out: str | Path, *, crops: int = 16, side_um: float = 128.0, mpp: float = 0.5, seed=0
) -> dict:
    """Cut one ``side_um`` crop from each of ``crops`` labelled images (``training.nuclei_data``
    ``LabelledImage``-like: ``stem``, ``rgb``, ``labels``, ``mpp``), the crop with the most
    nucleus pixels of a few random ones, resampled to ``mpp``; write them to ``out``. Returns the
    card entry (``file``, ``sha256``, what it holds)."""
    from PIL import Image

    from ..models.registry import sha256_of

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))[:crops]
    side = int(round(side_um / mpp))
    rgbs, labs, stems = [], [], []
    for i in sorted(order):
        im = images[i]
        src = int(round(side_um / im.mpp))
        h, w = im.labels.shape
        if h < src or w < src:
            continue
        best = None
        for _ in range(8):
            y, x = int(rng.integers(0, h - src + 1)), int(rng.integers(0, w - src + 1))
            fg = int((im.labels[y : y + src, x : x + src] > 0).sum())
            if best is None or fg > best[0]:
                best = (fg, y, x)
        _, y, x = best
        rgb = Image.fromarray(im.rgb[y : y + src, x : x + src])
        lab = Image.fromarray(im.labels[y : y + src, x : x + src].astype(np.int32))
        rgbs.append(np.asarray(rgb.resize((side, side), Image.Resampling.BOX)))
        lab = np.asarray(lab.resize((side, side), Image.Resampling.NEAREST))
        # Renumber 1..k so uint16 holds any crop.
        _, inverse = np.unique(lab, return_inverse=True)
        labs.append(inverse.reshape(lab.shape).astype(np.uint16))
        stems.append(im.stem)
    out = Path(out)
    np.savez_compressed(
        out,
        images=np.stack(rgbs),
        labels=np.stack(labs),
        stems=np.array(stems, dtype=str),
        mpp=np.float64(mpp),
    )
    return {
        "file": out.name,
        "sha256": sha256_of(out),
        "crops": len(stems),
        "side_um": float(side_um),
        "mpp": float(mpp),
    }


def find(card, card_path: str | Path) -> Path | None:
    """The replay file a card names (beside it, else shipped), or None when it names none."""
    entry = (card.training or {}).get("replay")
    if not entry:
        return None
    for folder in (Path(card_path).parent, SHIPPED):
        path = folder / entry["file"]
        if path.exists():
            return path
    return None


def load(card, card_path: str | Path) -> list:
    """The replay crops of a card as ``LabelledImage`` (empty when it has none). Raises
    WeightsError when the file's hash is not the card's (a damaged or swapped file)."""
    from ..models.registry import WeightsError, sha256_of
    from .nuclei_data import LabelledImage

    path = find(card, card_path)
    if path is None:
        return []
    expected = card.training["replay"].get("sha256")
    if expected and sha256_of(path) != expected:
        raise WeightsError(
            f"{path}: the replay set's SHA-256 is not the one {card.name}'s card records "
            "(a damaged or replaced file); reinstall napari-nucleiseg"
        )
    with np.load(path, allow_pickle=False) as z:
        mpp = float(z["mpp"])
        return [
            LabelledImage(f"replay-{stem}", rgb, lab.astype(np.int32), mpp)
            for stem, rgb, lab in zip(z["stems"], z["images"], z["labels"])
        ]
