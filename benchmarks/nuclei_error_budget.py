"""Where the shipped model loses AJI: splitting (markers) or outlines (foreground mask)?

    python benchmarks/nuclei_error_budget.py [--method nuclei-unet-v3]
        [--out benchmarks/results/nuclei_error_budget.json]

On MoNuSeg 2018 *training* images (the 4 held out from training, and the 26 trained on), the model's
maps are post-processed three ways and scored by aggregate AJI:

- as shipped: predicted markers, predicted mask;
- oracle markers: one marker per true nucleus (its core, normalised distance > 0.6) grown over the
  *predicted* mask along the predicted distance map: the AJI left when splitting is perfect;
- oracle mask: the *predicted* markers grown over the *true* foreground: the AJI left when outlines
  are perfect.

The gap to each oracle says which part of the model to improve. The training images show whether
the model fits what it has seen (underfitting) or not (overfitting). The test set is not read.
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
    from napari_nucleiseg.models import DEFAULT_NUCLEI_MODEL
    from napari_nucleiseg.training.nuclei_data import load_dataset

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
    scores: dict[str, dict[str, list]] = {"held out (4)": {}, "trained on (26)": {}}
    for im in load_dataset(args.data):
        group = "held out (4)" if im.stem in holdout else "trained on (26)"
        for name, labels in variants(
            predictor.maps(im.rgb, im.mpp), im.labels, im.mpp, predictor.settings
        ).items():
            scores[group].setdefault(name, []).append(score_image(im.labels, labels, im.stem))
    results = {
        g: {
            name: {k: round(aggregate(s)[k], 4) for k in ("aji", "f1", "dice")}
            for name, s in v.items()
        }
        for g, v in scores.items()
    }
    head = f"{'images':<18}{'post-processing':<18}{'AJI':>8}{'F1@0.5':>8}{'Dice':>8}"
    print(
        f"\n{args.method}: aggregate scores on MoNuSeg 2018 training images\n\n{head}\n"
        + "-" * len(head)
    )
    for g, v in results.items():
        for name, a in v.items():
            print(f"{g:<18}{name:<18}{a['aji']:8.4f}{a['f1']:8.4f}{a['dice']:8.4f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"benchmark": "nuclei_error_budget", "method": args.method, "results": results},
            indent=1,
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
