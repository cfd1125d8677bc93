"""Train the shipped default tissue classifier:

    .venv/bin/python scripts/train_tissue_default.py [--iterations 3000] [--out DIR]
        [--name tissue-tumour-v3] [--init NAME_OR_CARD] [--synthetic 40]
        [--synthetic-tag normal] [--foreign-tumour 3] [--normal-skin-copies 10]

``tissue-tumour-v3`` (the default) is two runs of it, about 13 and 18 minutes on two cores::

    python scripts/train_tissue_default.py --iterations 2000 --init tissue-tumour-v2 --out /tmp/s1
    python scripts/train_tissue_default.py --iterations 3000 --init /tmp/s1/tissue-tumour-v3.json

Tags: ``tumour`` (LC25000 colon and lung adenocarcinoma, lung squamous cell carcinoma, and with
``--foreign-tumour`` carcinoma crops of the MoNuSeg 2018 training images from TCGA),
``normal`` (LC25000 benign colon and lung, and the normal skin of the CMU-1 slide),
``background`` (glass from both real slides). ``--synthetic N`` adds N renders each of fat,
blood, mucus, debris, lymphoid tissue and smooth muscle (``classification/synthetic_tissue.py``)
as ``--synthetic-tag``. Taught as ``other`` with LC25000 as the only tumour, the renders taught
"drawn or foreign" (a real carcinoma called other); with other labs' carcinoma as tumour and the
renders as ``normal`` they do not (``benchmarks/non_tumour.py``). A fifth of each class's
LC25000 groups is held out (the benchmark's split, seed 0): the card's figures are measured on
it, and tests and benchmarks that need tissue the model never saw use those groups; MoNuSeg's
test images are never used. Training is :func:`train_classifier`, the function ``nucleiseg
train-classifier`` runs, with the multi-task loss of reference 001. Writes to the package's
models folder by default.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def main(argv=None) -> int:
    from napari_nucleiseg.classification.datasets import lc25000_rows, slide_tiles
    from napari_nucleiseg.classification.tiles import grouped_split, load_tiles
    from napari_nucleiseg.classification.train import ClassifierConfig, train_classifier
    from napari_nucleiseg.methods.classifier import DEFAULT_CLASSIFIER_MODEL, save_classifier
    from napari_nucleiseg.models import MODELS_DIR

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--out", default=str(MODELS_DIR))
    ap.add_argument("--name", default=DEFAULT_CLASSIFIER_MODEL)
    ap.add_argument("--version", default="3.0.0")
    ap.add_argument("--metrics", default=str(REPO / "benchmarks/results/tissue_classifier.json"))
    ap.add_argument(
        "--init", default="", help="start the encoder from this classifier (name or card path)"
    )
    ap.add_argument(
        "--synthetic",
        type=int,
        default=40,
        help="renders per non-tumour kind (synthetic_tissue.py), tagged --synthetic-tag",
    )
    ap.add_argument(
        "--synthetic-tag",
        default="normal",
        help="the tag the renders are taught as (other, or normal: not tumour either way)",
    )
    ap.add_argument(
        "--foreign-tumour",
        type=int,
        default=3,
        help="add the carcinoma crops of the MoNuSeg 2018 training images (TCGA, 0.25 µm/px) as "
        "tumour, each listed this many times (0: not used)",
    )
    ap.add_argument(
        "--normal-skin-copies",
        type=int,
        default=10,
        help="list CMU-1's normal skin tiles this many times (the only normal tissue from "
        "another lab than LC25000's)",
    )
    ap.add_argument("--scale-jitter", type=float, default=ClassifierConfig.scale_jitter)
    args = ap.parse_args(argv)
    cfg = ClassifierConfig(
        iterations=args.iterations,
        pixel_loss="dynamic",
        scale_jitter=args.scale_jitter,
    )
    init_state, parent = None, ""
    if args.init:
        from safetensors.torch import load_file

        from napari_nucleiseg.methods import get_method

        parent_method = get_method(args.init, kind="classifier")
        weights = parent_method.card_path.parent / parent_method.card.weights
        init_state, parent = load_file(str(weights)), parent_method.card.name
    lc = load_tiles(lc25000_rows(SHARED / "tissue"), None, cfg.mpp)
    # The benchmark's split (a fifth of each class's LC25000 groups, seed 0) stays out of the
    # shipped model too: its figures, and every test on "tissue it never saw", use those groups.
    tiles, held = grouped_split(lc, 0.2, seed=0)
    slides = SHARED / "slides"
    skin = slide_tiles(slides / "CMU-1-Small-Region.svs", cfg.mpp, cfg.patch * cfg.mpp)
    tiles += [t for t in skin if t.tag != "normal"]
    tiles += [t for t in skin if t.tag == "normal"] * max(1, args.normal_skin_copies)
    # The TCGA file states no µm/px; only its glass is used, where scale means nothing.
    tiles += slide_tiles(
        slides / "tcga-cr-7395-01a-01-ts1.svs", cfg.mpp, cfg.patch * cfg.mpp, tissue_tag=None,
        mpp=0.5,
    )  # fmt: skip
    tiles += synthetic_tiles(
        args.synthetic, cfg.mpp, seeds=range(args.synthetic), tag=args.synthetic_tag
    )
    tiles += foreign_tumour_tiles(args.foreign_tumour, cfg.mpp)
    counts = {t: sum(x.tag == t for x in tiles) for t in sorted({x.tag for x in tiles})}
    print(f"{len(tiles)} tiles: {counts}", flush=True)
    t0 = time.perf_counter()
    for info in train_classifier(tiles, cfg, init_state=init_state):
        if info["stage"] == "done":
            result = info
        elif info["iter"] % 100 == 0:
            print(f"{info['iter']} loss {info['loss']:.4f} eta {info['eta_s']:.0f}s", flush=True)
    metrics = {"lc25000_heldout_groups": _held_out_scores(result, cfg, held)}
    if Path(args.metrics).exists():
        bench = json.loads(Path(args.metrics).read_text())
        metrics["benchmark"] = {
            "file": "benchmarks/results/tissue_classifier.json",
            "results": bench.get("results", {}),
        }
    card = save_classifier(
        result["state"],
        result["tags"],
        args.out,
        args.name,
        version=args.version,
        parent=parent,
        mpp=cfg.mpp,
        patch=cfg.patch,
        widths=cfg.widths,
        training_data=[
            "LC25000 lung and colon histopathology tiles (Borkowski et al. 2019): colon "
            "adenocarcinoma, lung adenocarcinoma and squamous cell carcinoma (tumour), benign "
            "colon and lung (normal), 224 px at an estimated 1.37 µm/px; a fifth of each class's "
            "groups held out (training.heldout_groups) for the figures",
            "CMU-1-Small-Region.svs (Aperio, 0.499 µm/px, CC0): normal skin tiles (normal, "
            f"listed {args.normal_skin_copies}x) and glass (background); "
            "tcga-cr-7395-01a-01-ts1.svs: glass (background)",
            *(
                [
                    "MoNuSeg 2018 training images (Kumar et al. 2017, 30 crops of TCGA "
                    "primary-tumour slides, seven organs, 0.25 µm/px): the 136-µm crops whose "
                    "true nuclei say carcinoma epithelium (median area >= 30 µm², nuclei >= 20 % "
                    f"of the crop) as tumour, listed {args.foreign_tumour}x; the test images "
                    "never"
                ]
                if args.foreign_tumour
                else []
            ),
            *(
                [
                    f"{args.synthetic} renders each of fat, blood, mucus, debris, lymphoid "
                    f"tissue and smooth muscle ({args.synthetic_tag}): drawings by the "
                    "Beer-Lambert law of the stains (classification/synthetic_tissue.py), "
                    "not tissue"
                ]
                if args.synthetic
                else []
            ),
            f"tiles per tag: {counts}",
        ],
        licence=(
            "weights trained on data licensed CC BY-NC-SA 4.0 (MoNuSeg 2018): non-commercial "
            "use, share-alike (CC BY-NC-SA 4.0); LC25000: made freely available by its authors "
            "for any research use (no formal licence); CMU-1: CC0"
            if args.foreign_tumour
            else "LC25000: made freely available by its authors for any research use (no "
            "formal licence); CMU-1: CC0. Weights: as the package (BSD-3-Clause)"
        ),
        metrics=metrics,
        training={
            **cfg.to_dict(),
            "heldout_groups": sorted({t.group for t in held}),
            "seconds": round(time.perf_counter() - t0),
            "command": (
                f"python scripts/train_tissue_default.py --iterations {args.iterations} "
                f"--synthetic {args.synthetic} --synthetic-tag {args.synthetic_tag} "
                f"--foreign-tumour {args.foreign_tumour} --normal-skin-copies "
                f"{args.normal_skin_copies} --scale-jitter {args.scale_jitter}"
                + (f" --init {args.init}" if args.init else "")
            ),
        },
        notes=(
            "p_tumour: tumour against normal tissue, other tissue and glass. Fat, blood, mucus, "
            f"debris, lymphoid tissue and smooth muscle were taught (as {args.synthetic_tag}) "
            "from renders, not from labelled tissue: none exists here "
            "(benchmarks/non_tumour.py measures them, and carcinoma from other labs)."
            if args.synthetic
            else "p_tumour: tumour against normal tissue and glass. Not taught: fat, blood, "
            "mucus, debris, lymphocyte-rich tissue, muscle (no labelled tiles of them here; "
            "benchmarks/non_tumour.py measures how renders of them are called)."
        ),
    )
    print(f"wrote {card}")
    return 0


def foreign_tumour_tiles(copies: int, mpp: float) -> list:
    """Carcinoma from many labs and scanners, where LC25000 is one lab's: crops of the MoNuSeg
    2018 training images (30 crops of TCGA primary-tumour diagnostic slides, seven organs,
    0.25 µm/px), tagged ``tumour``, each listed ``copies`` times (its own group).

    An image of a tumour slide also holds stroma, lymphocytes and vessels, and tagging all of
    it tumour taught exactly those as tumour (measured: the TCGA slide's stroma and lymphoid
    renders called tumour). So each image is cut into a 4×4 grid of 136-µm crops and a crop is
    kept only where its true nuclei (MoNuSeg's labels) say carcinoma epithelium: median nucleus
    area ≥ 30 µm² and nuclei covering ≥ 20 % of it (170 of 480 crops, 16 of 30 images; the
    stroma, lymphocyte and small-nucleus crops are left out, not taught as normal, since clear-
    cell and papillary renal and liver carcinoma have small nuclei too)."""
    if copies <= 0:
        return []
    from napari_nucleiseg.classification.tiles import LabelledTile, to_mpp
    from napari_nucleiseg.training.nuclei_data import load_dataset

    out = []
    for image in load_dataset(SHARED / "nuclei" / "monuseg2018_train"):
        side = round(136 / image.mpp)
        step = (min(image.labels.shape) - side) // 3
        for y in range(0, 4 * step, step):
            for x in range(0, 4 * step, step):
                crop = image.labels[y : y + side, x : x + side]
                areas = np.bincount(crop.ravel())[1:] * image.mpp**2
                areas = areas[areas > 5]  # slivers of nuclei cut by the crop's edge
                if areas.size == 0 or np.median(areas) < 30 or (crop > 0).mean() < 0.2:
                    continue
                rgb = to_mpp(image.rgb[y : y + side, x : x + side], image.mpp, mpp)
                group = f"monuseg:{image.stem}:{y}:{x}"
                out.append(LabelledTile(rgb, "tumour", mpp, group=group, source=image.stem))
    return out * copies


def synthetic_tiles(n: int, mpp: float, seeds, tag: str = "") -> list:
    """``n`` renders of each non-tumour kind, 307 µm square (an LC25000 tile's field) at
    ``mpp``, tagged ``tag`` (default ``other``), each its own group."""
    from napari_nucleiseg.classification.synthetic_tissue import KINDS, OTHER_TAG, render_tissue
    from napari_nucleiseg.classification.tiles import LabelledTile

    size, tag = round(307 / mpp), tag or OTHER_TAG
    return [
        LabelledTile(render_tissue(k, size, mpp, s), tag, mpp, group=f"synthetic:{k}:{s}",
                     source="synthetic")
        for k in KINDS
        for s in list(seeds)[:n]
    ]  # fmt: skip


def _held_out_scores(result, cfg, held) -> dict:
    """AUC, accuracy, precision, recall of tumour against the rest on the held-out groups."""
    import torch

    from napari_nucleiseg.classification.network import TissueNet
    from napari_nucleiseg.methods.classifier import image_patches
    from napari_nucleiseg.metrics.classification import binary_scores

    tags = result["tags"]
    model = TissueNet(len(tags), cfg.widths)
    model.load_state_dict(result["state"])
    model.eval()
    p = []
    with torch.inference_mode():
        for t in held:
            x = torch.from_numpy(image_patches(t.rgb, cfg.patch)).permute(0, 3, 1, 2).float() / 255
            p.append(float(torch.softmax(model(x)[0], 1)[:, tags.index("tumour")].mean()))
    scores = binary_scores([t.tag == "tumour" for t in held], p)
    print(f"held-out groups ({len(held)} tiles): {scores}", flush=True)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()}


if __name__ == "__main__":
    sys.exit(main())
