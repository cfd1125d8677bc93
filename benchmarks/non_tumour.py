"""Is tissue that is not tumour called tumour? Classifiers side by side (issue 16: "a tile that
is glass, fat, blood, mucus or debris is not tumour").

    python benchmarks/non_tumour.py [--models tissue-tumour-v1 tissue-tumour-v2 tissue-tumour-v3]
        [--renders 30] [--out benchmarks/results/non_tumour.json]

No labelled tiles of fat, blood, mucus, debris, lymphoid tissue or smooth muscle exist here, so
three measurements, each through ``ClassifierMethod.classify_image`` (what ``nucleiseg
classify`` runs) or the whole-slide heatmap (what ``nucleiseg heatmap`` runs):

1. **Renders** (:mod:`napari_nucleiseg.classification.synthetic_tissue`, seeds 1000 on: the
   shipped v2 trained on seeds below 60): each kind's share of 307-µm tiles called tumour
   (p_tumour >= 0.5), and the AUC of tumour against them, with the held-out LC25000 tumour
   tiles as the positives. A render is a drawing, so this shows what the model learnt from the
   drawings, not how it does on real fat.
2. **Held-out LC25000** (the groups the card holds out): tumour against benign glands, AUC,
   accuracy, precision, recall: teaching new kinds must not cost the task it had.
3. **Carcinoma from other labs** (``monuseg2018_test``: 14 crops of TCGA primary-tumour
   diagnostic slides, 14 tissue source sites, seven organs, 0.25 µm/px; never trained on): the
   share called tumour, and the AUC of these against the unseen renders and against the held-out
   benign LC25000 tiles. LC25000 is one lab's tiles; a classifier that learnt that lab's look as
   "tumour" calls other labs' carcinoma normal, which is what the shipped v2 did.
4. **Real slides, no labels**: the share of tissue cells of the whole-slide heatmap called
   tumour on CMU-1 (normal skin: dermis, epidermis, a hair follicle, keratin; every call there
   is wrong) and on the TCGA slide (a squamous carcinoma with stroma between its nests: most
   should be tumour, not all). Pointers, not scores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NUCLEISEG_SHARED", REPO.parent / "shared")) / "data"
SLIDES = {
    "CMU-1 (normal skin)": (DATA / "slides" / "CMU-1-Small-Region.svs", None),
    # The TCGA file states no µm/px; 0.92 is what the scale check suggests (non_nuclei.py).
    "TCGA (squamous carcinoma)": (DATA / "slides" / "tcga-cr-7395-01a-01-ts1.svs", 0.92),
}
RENDER_UM = 307.0  # an LC25000 tile's field at its estimated µm/px


def held_out_tiles(method):
    from napari_nucleiseg.classification.datasets import lc25000_rows
    from napari_nucleiseg.classification.tiles import load_tiles

    held = set(method.card.training.get("heldout_groups") or ())
    if not held:
        raise SystemExit(f"{method.name}: its card lists no held-out groups")
    rows = [r for r in lc25000_rows(DATA / "tissue") if r["group"] in held]
    return load_tiles(rows, None, method.mpp)


def renders(kind: str, n: int, mpp: float):
    from napari_nucleiseg.classification.synthetic_tissue import render_tissue

    return [render_tissue(kind, round(RENDER_UM / mpp), mpp, 1000 + s) for s in range(n)]


def foreign_carcinoma() -> list:
    """The MoNuSeg 2018 test images (``LabelledImage``: rgb, mpp); none when ../shared lacks
    them."""
    from napari_nucleiseg.training.nuclei_data import load_dataset

    root = DATA / "nuclei" / "monuseg2018_test"
    return load_dataset(root) if (root / "index.json").exists() else []


def slide_share(method_name, path: Path, mpp) -> dict:
    from napari_nucleiseg.classification.slide_heatmap import compute_slide_heatmap, open_heatmap

    out = Path(tempfile.mkdtemp())
    try:
        hm = open_heatmap(compute_slide_heatmap(path, out, model=method_name, mpp=mpp))
        p = hm.p_tumour[hm.tissue]
        return {"cells": int(p.size), "called_tumour": float(np.mean(p >= 0.5)),
                "mean_p_tumour": float(p.mean())}  # fmt: skip
    finally:
        import shutil

        shutil.rmtree(out, ignore_errors=True)


def score(method, n_renders: int) -> dict:
    from napari_nucleiseg.classification.synthetic_tissue import KINDS
    from napari_nucleiseg.metrics.classification import binary_scores

    ti = method.classes.index("tumour")

    def p_tumour(images, mpp):
        return [float(method.classify_image(rgb, mpp)[ti]) for rgb in images]

    held = held_out_tiles(method)
    truth = [t.tag == "tumour" for t in held]
    p_held = p_tumour([t.rgb for t in held], method.mpp)
    out = {"lc25000_heldout": binary_scores(truth, p_held)}
    positives = [p for p, t in zip(p_held, truth, strict=True) if t]
    out["renders"] = {}
    p_renders = []
    for kind in KINDS:
        p = p_tumour(renders(kind, n_renders, method.mpp), method.mpp)
        p_renders += p
        auc = binary_scores([True] * len(positives) + [False] * len(p), positives + p)["auc"]
        out["renders"][kind] = {"called_tumour": float(np.mean(np.array(p) >= 0.5)),
                                "auc_vs_heldout_tumour": auc}  # fmt: skip
    foreign = foreign_carcinoma()
    if foreign:
        p_f = [float(method.classify_image(im.rgb, im.mpp)[ti]) for im in foreign]
        benign = [p for p, t in zip(p_held, truth, strict=True) if not t]

        def auc_against(negatives):
            y = [True] * len(p_f) + [False] * len(negatives)
            return binary_scores(y, p_f + negatives)["auc"]

        out["foreign_carcinoma"] = {
            "images": len(p_f),
            "called_tumour": float(np.mean(np.array(p_f) >= 0.5)),
            "mean_p_tumour": float(np.mean(p_f)),
            "auc_vs_renders": auc_against(p_renders),
            "auc_vs_heldout_benign": auc_against(benign),
        }
    out["slides"] = {
        name: slide_share(method.card_path, path, mpp)
        for name, (path, mpp) in SLIDES.items()
        if path.exists()
    }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--models", nargs="+", default=["tissue-tumour-v1", "tissue-tumour-v2", "tissue-tumour-v3"]
    )
    ap.add_argument("--renders", type=int, default=30, help="renders per kind")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/non_tumour.json"))
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    if not (DATA / "tissue" / "index.json").exists():
        print(f"{DATA / 'tissue'} not found (../shared is absent)", file=sys.stderr)
        return 2
    from napari_nucleiseg.classification.synthetic_tissue import KINDS
    from napari_nucleiseg.methods import get_method

    t0 = time.perf_counter()
    results = {}
    for name in args.models:
        method = get_method(name, kind="classifier")
        print(f"{method.name}: classes {', '.join(method.classes)}", flush=True)
        results[method.name] = score(method, args.renders)
    names = list(results)
    print(f"\nshare of tiles called tumour (p >= 0.5); renders: {args.renders} per kind")
    print(f"{'':<34}" + "".join(f"{n:>20}" for n in names))
    for kind in KINDS:
        cells = ""
        for n in names:
            r = results[n]["renders"][kind]
            cells += f"{r['called_tumour']:.3f} (AUC {r['auc_vs_heldout_tumour']:.3f})".rjust(20)
        print(f"{'render: ' + kind:<34}{cells}")
    for slide in SLIDES:
        if all(slide in results[n]["slides"] for n in names):
            cells = "".join(f"{results[n]['slides'][slide]['called_tumour']:20.3f}" for n in names)
            print(f"{'tissue cells: ' + slide:<34}{cells}")
    if all("foreign_carcinoma" in results[n] for n in names):
        print("\ncarcinoma from other labs (monuseg2018_test, 14 TCGA crops)")
        for k in ("called_tumour", "mean_p_tumour", "auc_vs_renders", "auc_vs_heldout_benign"):
            cells = "".join(f"{results[n]['foreign_carcinoma'][k]:20.3f}" for n in names)
            print(f"{k:<34}{cells}")
    print("\nheld-out LC25000 tumour vs benign (tile level)")
    for k in ("auc", "accuracy", "precision", "recall"):
        print(f"{k:<34}" + "".join(f"{results[n]['lc25000_heldout'][k]:20.4f}" for n in names))
    doc = {
        "benchmark": "non_tumour",
        "renders_per_kind": args.renders,
        "render_seeds": f"1000-{999 + args.renders}",
        "render_um": RENDER_UM,
        "results": results,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(f"\nwritten {args.out} ({doc['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
