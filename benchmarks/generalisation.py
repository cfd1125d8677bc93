"""Does a nuclei model hold up on slides from sources it never saw? (issue 17)

    python benchmarks/generalisation.py [--models nuclei-unet-v4,runs/release/nuclei-unet-v5.json]
        [--normalise macenko|vahadane|learned [--target DIR_OR_PROFILE]]
        [--out benchmarks/results/generalisation[_METHOD].json]

Five hard cases, every one scored with ``metrics.aggregate`` (AJI and F1 pooled over the set),
plus precision, recall and the **foreground ratio** (predicted nucleus pixels / true ones: below 1
means nuclei drawn too small or missed, the failure seen on other labs' slides):

1. ``monuseg_test_sites``: MoNuSeg 2018 test. Its 14 images come from 14 TCGA tissue source
   sites, none of which is among the training set's 18, so every image is a left-out site; the
   spread is the per-site AJI (min / median / max), beside the pooled figure.
2. ``monuseg_test_restained``: the same images after ``stain_robustness.perturb`` (seed 0: H and
   E vectors turned 20-35°, amounts ×0.4-2.5), no normalisation: another lab's stain.
3. ``dsb_colour_heldout``: the brightfield crops of ``dsb2018_stage1_train`` held out of
   training as whole look-alike clusters (``nuclei_data.appearance_holdout``, seed 0: the same
   38 crops every model is scored on; nuclei_unet_v5 trained on the other 69). The crops state no
   µm/px; each is read at the µm/px where its true nuclei have MoNuSeg's median area
   (``nuclei_data.mpp_from_truth``), an estimate from the labels. The spread is over the
   look-alike clusters.
4. ``dsb_colour_all``: all 107 crops (fair only for a model that never trained on any).
5. ``dsb_grey_brightfield``: the 16 grey brightfield cytology fields of ``dsb2018_stage1_train``
   (1024 x 1024, squamous cells; ``annotator_loop.domain_images``), which no model trained on: a
   source and a stain none of them saw. Read at ``mpp_from_truth`` like the crops; the spread is
   per image.

Each method runs with its card's default settings through ``segmentation.api.segment_image``;
``--normalise`` first normalises every image to a stain target (default: the profile of
``monuseg2018_train``, the colours the models learnt on; ``learned``: the shipped learned
normaliser's style), as ``nucleiseg segment --normalize`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NUCLEI = Path(os.environ.get("NUCLEISEG_SHARED", REPO.parent / "shared")) / "data" / "nuclei"
TEST = NUCLEI / "monuseg2018_test"
DSB = NUCLEI / "dsb2018_stage1_train"


def summary(scores, groups=None) -> dict:
    """Pooled scores, precision / recall / foreground ratio, and the spread over ``groups``
    (a group name per score; default one group per image)."""
    from napari_nucleiseg.metrics import aggregate

    agg = aggregate(scores)
    c = {k: sum(s.counts[k] for s in scores) for k in ("tp", "fp", "fn", "fg_true", "fg_pred")}
    groups = groups or [s.name for s in scores]
    per_group = {
        g: aggregate([s for s, gi in zip(scores, groups) if gi == g])["aji"]
        for g in sorted(set(groups))
    }
    values = np.array(list(per_group.values()))
    return {
        "images": agg["images"],
        "aji": round(agg["aji"], 4),
        "f1": round(agg["f1"], 4),
        "pq": round(agg["pq"], 4),
        "precision": round(c["tp"] / max(1, c["tp"] + c["fp"]), 4),
        "recall": round(c["tp"] / max(1, c["tp"] + c["fn"]), 4),
        "fg_ratio": round(c["fg_pred"] / max(1.0, c["fg_true"]), 4),
        "groups": len(per_group),
        "aji_min": round(float(values.min()), 4),
        "aji_median": round(float(np.median(values)), 4),
        "aji_max": round(float(values.max()), 4),
        "per_group_aji": {g: round(v, 4) for g, v in per_group.items()},
    }


def cases():
    """``{case: (images, groups)}``, each image a ``LabelledImage``."""
    from napari_nucleiseg.training.nuclei_data import (
        LabelledImage,
        appearance_holdout,
        load_dataset,
        mpp_from_truth,
    )

    sys.path.insert(0, str(REPO / "benchmarks"))
    from annotator_loop import domain_images
    from stain_robustness import perturb

    test = load_dataset(TEST)
    rng = np.random.default_rng(0)
    restained = [LabelledImage(im.stem, perturb(im.rgb, rng)[0], im.labels, im.mpp) for im in test]
    dsb = load_dataset(DSB, kinds=("colour",))
    held = set(appearance_holdout(dsb, seed=0))
    cluster = _clusters(dsb)
    dsb_held = [im for im in dsb if im.stem in held]
    grey = [
        LabelledImage(stem, rgb, labels, mpp_from_truth(labels))
        for stem, rgb, labels in domain_images("grey-brightfield")
    ]
    return {
        "monuseg_test_sites": (test, [im.stem[5:7] for im in test]),
        "monuseg_test_restained": (restained, [im.stem[5:7] for im in test]),
        "dsb_colour_heldout": (dsb_held, [cluster[im.stem] for im in dsb_held]),
        "dsb_colour_all": (dsb, [cluster[im.stem] for im in dsb]),
        "dsb_grey_brightfield": (grey, None),
    }


def _clusters(images) -> dict:
    """The look-alike cluster of each crop (what ``appearance_holdout`` splits by)."""
    from napari_nucleiseg.training.nuclei_data import appearance_clusters

    return {im.stem: f"cluster{g}" for im, g in zip(images, appearance_clusters(images))}


def _normaliser(method, target):
    """The fitted stain normaliser ``--normalise`` asks for, or None."""
    if not method:
        return None
    if method == "learned":
        from napari_nucleiseg.stain.learned_normaliser import load_learned

        return load_learned(None)
    from napari_nucleiseg.stain import load_target

    return load_target(method, target or NUCLEI / "monuseg2018_train")


def main(argv=None):
    from napari_nucleiseg.metrics import score_image
    from napari_nucleiseg.models import DEFAULT_NUCLEI_MODEL
    from napari_nucleiseg.segmentation.api import segment_image

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=DEFAULT_NUCLEI_MODEL, help="comma-separated names/cards")
    ap.add_argument("--normalise", help="stain-normalise every image first: METHOD or learned")
    ap.add_argument("--target", help="--normalise: reference folder, image or profile")
    ap.add_argument(
        "--out",
        help="JSON to write (default results/generalisation.json, or generalisation_METHOD.json "
        "with --normalise: a normalised run never replaces the baseline)",
    )
    args = ap.parse_args(argv)
    if args.target and args.normalise in (None, "learned"):
        ap.error("--target needs --normalise METHOD (a learned normaliser has its own style)")
    if args.out is None:
        suffix = f"_{args.normalise}" if args.normalise else ""
        args.out = str(REPO / "benchmarks" / "results" / f"generalisation{suffix}.json")
    if not TEST.exists() or not DSB.exists():
        sys.exit(f"{NUCLEI} not found: this benchmark needs ../shared/data")
    data = cases()
    normaliser = _normaliser(args.normalise, args.target)
    results: dict = {}
    for model in args.models.split(","):
        t = time.perf_counter()
        results[model] = {}
        for case, (images, groups) in data.items():
            scores = [
                score_image(
                    im.labels,
                    segment_image(im.rgb, im.mpp, model, normaliser=normaliser),
                    im.stem,
                )
                for im in images
            ]
            results[model][case] = summary(scores, groups)
        results[model]["seconds"] = round(time.perf_counter() - t, 1)
    head = (
        f"{'model':<34}{'case':<26}{'AJI':>7}{'F1':>7}{'prec':>7}{'rec':>7}{'fg ratio':>9}"
        f"{'AJI min/med/max over groups':>31}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for model, by_case in results.items():
        for case, r in by_case.items():
            if case == "seconds":
                continue
            spread = (
                f"{r['aji_min']:.3f} / {r['aji_median']:.3f} / {r['aji_max']:.3f} ({r['groups']})"
            )
            print(
                f"{Path(model).stem:<34}{case:<26}{r['aji']:7.4f}{r['f1']:7.4f}"
                f"{r['precision']:7.4f}{r['recall']:7.4f}{r['fg_ratio']:9.3f}{spread:>31}"
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": "generalisation", "results": results}
    if normaliser is not None:
        record["normalisation"] = {"method": args.normalise, **normaliser.describe()}
    out.write_text(json.dumps(record, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
