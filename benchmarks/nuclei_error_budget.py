"""Where the shipped model loses AJI, and which errors it makes: missed, merged, split, boundary.

    python benchmarks/nuclei_error_budget.py [--method nuclei-unet-v5]
        [--out benchmarks/results/nuclei_error_budget.json]

Image sets: MoNuSeg 2018 training images (those the card says were held out, and those trained
on), MoNuSeg 2018 test (14 sites never trained on) and the brightfield crops of
``dsb2018_stage1_train`` held out as whole look-alike clusters (``nuclei_data.appearance_holdout``;
µm/px from their labels). On each, the model's maps are post-processed three ways and scored by
aggregate AJI:

- as shipped: predicted markers, predicted mask;
- oracle markers: one marker per true nucleus (its core, normalised distance > 0.6) grown over the
  *predicted* mask along the predicted distance map: the AJI left when splitting is perfect;
- oracle mask: the *predicted* markers grown over the *true* foreground: the AJI left when outlines
  are perfect.

The gap to each oracle says which part of the model to improve. Then every true nucleus is put in
one class by ``metrics.errors.error_budget`` (matched, missed, merged, split, boundary; spurious
predictions beside), with the matched nuclei's area ratio (predicted / true: below 1 = drawn too
small). Measuring the test set tunes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = (
    Path(os.environ.get("NUCLEISEG_SHARED", REPO.parent / "shared"))
    / "data"
    / "nuclei"
    / "monuseg2018_train"
)


def variants(maps: np.ndarray, truth: np.ndarray, mpp: float, settings) -> dict:
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    from napari_nucleiseg.segmentation.postprocess import instances_from_maps
    from napari_nucleiseg.segmentation.targets import make_targets

    fg_p, contour_p, dist_p = maps
    mask = fg_p > settings.foreground
    true_cores = np.where(make_targets(truth)[2] > 0.6, truth, 0)
    pred_cores, _ = ndi.label(
        mask & (dist_p > settings.marker_distance) & (contour_p < settings.marker_contour)
    )
    return {
        "as shipped": instances_from_maps(maps, mpp, settings),
        "oracle markers": watershed(-dist_p, true_cores, mask=mask),
        "oracle mask": watershed(-dist_p, pred_cores, mask=truth > 0),
    }


def main(argv=None):
    from napari_nucleiseg.methods import load_predictor
    from napari_nucleiseg.metrics import aggregate, score_image
    from napari_nucleiseg.metrics.errors import error_budget, pooled_budget
    from napari_nucleiseg.models import DEFAULT_NUCLEI_MODEL
    from napari_nucleiseg.training.nuclei_data import appearance_holdout, load_dataset

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", default=DEFAULT_NUCLEI_MODEL)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument(
        "--out", default=str(REPO / "benchmarks" / "results" / "nuclei_error_budget.json")
    )
    args = ap.parse_args(argv)
    if not Path(args.data).exists():
        sys.exit(f"{args.data} not found: this benchmark needs ../shared/data")
    predictor, card = load_predictor(args.method)
    holdout = set(card.training.get("holdout", []))
    nuclei = Path(args.data).parent
    sets: dict[str, list] = {"held out": [], "trained on": []}
    for im in load_dataset(args.data):
        sets["held out" if im.stem in holdout else "trained on"].append(im)
    if (nuclei / "monuseg2018_test").exists():
        sets["MoNuSeg test"] = load_dataset(nuclei / "monuseg2018_test")
    if (nuclei / "dsb2018_stage1_train").exists():
        dsb = load_dataset(nuclei / "dsb2018_stage1_train", kinds=("colour",))
        held = set(appearance_holdout(dsb, seed=0))
        sets["DSB colour held out"] = [im for im in dsb if im.stem in held]
    results, budgets = {}, {}
    for group, images in sets.items():
        scores: dict[str, list] = {}
        per_image = []
        for im in images:
            for name, labels in variants(
                predictor.maps(im.rgb, im.mpp), im.labels, im.mpp, predictor.settings
            ).items():
                scores.setdefault(name, []).append(score_image(im.labels, labels, im.stem))
                if name == "as shipped":
                    per_image.append(error_budget(im.labels, labels))
        label = f"{group} ({len(images)})"
        results[label] = {
            name: {k: round(aggregate(s)[k], 4) for k in ("aji", "f1", "dice")}
            for name, s in scores.items()
        }
        budgets[label] = pooled_budget(per_image)
    head = f"{'images':<26}{'post-processing':<18}{'AJI':>8}{'F1@0.5':>8}{'Dice':>8}"
    print(f"\n{args.method}: aggregate scores by image set\n\n{head}\n" + "-" * len(head))
    for g, v in results.items():
        for name, a in v.items():
            print(f"{g:<26}{name:<18}{a['aji']:8.4f}{a['f1']:8.4f}{a['dice']:8.4f}")
    head = (
        f"{'images':<26}{'matched':>9}{'missed':>9}{'merged':>9}{'split':>9}{'boundary':>9}"
        f"{'spurious':>10}{'area ratio':>11}"
    )
    print(f"\nEvery true nucleus in one class (share of true nuclei)\n\n{head}\n" + "-" * len(head))
    for g, b in budgets.items():
        print(
            f"{g:<26}"
            + "".join(
                f"{b[k + '_share']:9.3f}"
                for k in ("matched", "missed", "merged", "split", "boundary")
            )
            + f"{b['spurious_share_of_pred']:10.3f}{b['matched_area_ratio']:11.3f}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "nuclei_error_budget",
                "method": args.method,
                "results": results,
                "error_classes": budgets,
            },
            indent=1,
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
