"""Tumour against normal on grouped held-out LC25000 tiles: what the multi-task loss (reference
001) and stepwise fine-tuning (reference 004) add, with all the labels and with 10 % of them.

    python benchmarks/tissue_classifier.py [--iterations 500] [--only SETTINGS] [--out FILE]

LC25000 tiles are augmented copies of about 250 source images per class, so a fifth of each
class's *groups* is held out, never single files. Every setting trains the same network for the
same number of iterations (equal work whatever else the machine does), from scratch, with the
same seed and split:

- ``alone``: the classification head only (image-level labels);
- ``multitask-plain`` / ``-fixed`` / ``-dynamic``: plus the segmentation step on pixel-labelled
  mosaics of training tiles, with plain, class-weighted or dynamically weighted cross-entropy;
- ``stepwise``: multitask-dynamic, after a first stage (30 % of the iterations) on reference
  004's pathologist-free intermediate labels (nuclei density clusters of all training images);
- alone, multitask-dynamic and stepwise again at 10 %: a tenth of each class's training groups
  keep their labels (the others are unlabelled: stepwise still uses their images).

Scores: AUC, accuracy, precision and recall of tumour at p ≥ 0.5, per held-out tile (the tile's
patches averaged), and the AUC on the same tiles recoloured to two other labs' stain (Macenko
to a MoNuSeg test image and to the CMU-1 slide). The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TISSUE = REPO.parent / "shared" / "data" / "tissue"


def _recoloured(held, seed: int):
    """The held-out tiles in other labs' colours: Macenko-normalised to a MoNuSeg test image
    (TCGA, another scanner and lab) and to the CMU-1 slide (Aperio, normal skin). A classifier
    that learnt LC25000's colour rather than its tissue loses AUC here."""
    import warnings

    from PIL import Image

    from napari_nucleiseg.classification.tiles import LabelledTile
    from napari_nucleiseg.io import open_slide
    from napari_nucleiseg.stain.normalise import make_normaliser

    shared = TISSUE.parent
    targets = {
        "monuseg": np.asarray(
            Image.open(
                shared / "nuclei/monuseg2018_test/images/TCGA-2Z-A9J9-01A-01-TS1.png"
            ).convert("RGB")
        ),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open_slide(shared / "slides/CMU-1-Small-Region.svs") as slide:
            targets["cmu"] = slide.read_region(700, 1500, 800, 800, 0)
    out = {}
    for name, target in targets.items():
        norm = make_normaliser("macenko").fit(target, name)
        tiles = []
        for t in held:
            try:
                rgb = norm.transform(t.rgb)
            except Exception:  # a tile too pale to measure keeps its colours
                rgb = t.rgb
            tiles.append(LabelledTile(rgb, t.tag, t.mpp, group=t.group))
        out[name] = tiles
    return out


def _scores(state, tags, cfg, held) -> dict:
    import torch

    from napari_nucleiseg.classification.network import TissueNet
    from napari_nucleiseg.methods.classifier import image_patches
    from napari_nucleiseg.metrics.classification import binary_scores

    model = TissueNet(len(tags), cfg.widths)
    model.load_state_dict(state)
    model.eval()
    p = []
    with torch.inference_mode():
        for t in held:
            x = torch.from_numpy(image_patches(t.rgb, cfg.patch)).permute(0, 3, 1, 2).float() / 255
            p.append(float(torch.softmax(model(x)[0], 1)[:, tags.index("tumour")].mean()))
    return binary_scores([t.tag == "tumour" for t in held], p)


def main(argv=None) -> int:
    from napari_nucleiseg.classification.datasets import lc25000_rows
    from napari_nucleiseg.classification.intermediate import intermediate_labels
    from napari_nucleiseg.classification.tiles import grouped_split, load_tiles, random_patch
    from napari_nucleiseg.classification.train import ClassifierConfig, train_classifier

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", help="comma-separated settings to run (default: all)")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/tissue_classifier.json"))
    args = ap.parse_args(argv)
    if not TISSUE.exists():
        sys.exit(f"{TISSUE} not found: this benchmark needs ../shared/data")
    base = ClassifierConfig(iterations=args.iterations, seed=args.seed)
    tiles = load_tiles(lc25000_rows(TISSUE), None, base.mpp)
    train, held = grouped_split(tiles, 0.2, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    groups = {}
    for t in train:
        groups.setdefault(t.tag, set()).add(t.group)
    few_groups = set()
    for _tag, g in sorted(groups.items()):
        g = sorted(g)
        few_groups.update(rng.choice(g, max(1, len(g) // 10), replace=False).tolist())
    few = [t for t in train if t.group in few_groups]
    print(
        f"{len(train)} training tiles ({len(few)} in the 10 % setting), {len(held)} held out; "
        f"groups: {sum(len(g) for g in groups.values())} train",
        flush=True,
    )

    # Reference 004's intermediate labels, from every training image with no label used.
    t0 = time.perf_counter()
    prng = np.random.default_rng(args.seed + 1)
    patches = [random_patch(t.rgb, base.patch, prng)[0] for t in train]
    labels, _ = intermediate_labels(patches, base.mpp, seed=args.seed)
    agree = float(np.mean((labels == 1) == np.array([t.tag == "tumour" for t in train])))
    print(f"intermediate labels: {time.perf_counter() - t0:.0f} s, agreement with tumour/normal "
          f"{max(agree, 1 - agree):.3f}", flush=True)  # fmt: skip

    recoloured = _recoloured(held, args.seed)
    settings = {
        "alone": dict(pixel_loss="none"),
        "multitask-plain": dict(pixel_loss="plain"),
        "multitask-fixed": dict(pixel_loss="fixed"),
        "multitask-dynamic": dict(pixel_loss="dynamic"),
        "stepwise": dict(pixel_loss="dynamic", stepwise=True),
    }
    only = set(args.only.split(",")) if args.only else None
    results = {}
    for fraction, data in (("100%", train), ("10%", few)):
        for name, kw in settings.items():
            key = f"{name} {fraction}"
            if only and name not in only and key not in only:
                continue
            if not only and fraction == "10%" and name in ("multitask-plain", "multitask-fixed"):
                continue  # the loss comparison is made once, with every label
            cfg = ClassifierConfig(iterations=args.iterations, seed=args.seed, **kw)
            t0 = time.perf_counter()
            for info in train_classifier(data, cfg, intermediate=(patches, labels)):
                if info["stage"] == "done":
                    done = info
            s = _scores(done["state"], done["tags"], cfg, held)
            for target, tiles in recoloured.items():
                s[f"auc_recoloured_{target}"] = _scores(done["state"], done["tags"], cfg, tiles)[
                    "auc"
                ]
            s["train_seconds"] = round(time.perf_counter() - t0, 1)
            s["train_tiles"] = len(data)
            results[key] = s
            print(f"{key:<26} AUC {s['auc']:.4f}  acc {s['accuracy']:.4f}  "
                  f"prec {s['precision']:.4f}  rec {s['recall']:.4f}  recoloured AUC "
                  f"{s['auc_recoloured_monuseg']:.4f} / {s['auc_recoloured_cmu']:.4f}  "
                  f"({s['train_seconds']:.0f} s)", flush=True)  # fmt: skip

    print(
        f"\n{'setting':<26}{'AUC':>8}{'acc':>8}{'prec':>8}{'rec':>8}{'AUC mon.':>10}{'AUC cmu':>9}"
    )
    for key, s in results.items():
        print(
            f"{key:<26}{s['auc']:>8.4f}{s['accuracy']:>8.4f}{s['precision']:>8.4f}"
            f"{s['recall']:>8.4f}{s['auc_recoloured_monuseg']:>10.4f}{s['auc_recoloured_cmu']:>9.4f}"
        )
    out = {
        "benchmark": "tissue_classifier",
        "data": "LC25000 colon + lung, tumour vs normal, 20 % of groups held out",
        "held_out_tiles": len(held),
        "train_tiles": len(train),
        "iterations": args.iterations,
        "seed": args.seed,
        "intermediate_agreement": max(agree, 1 - agree),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: round(v["auc"], 4) for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
