"""What the detection threshold does on slides from other sources (the panel's box, ``nucleiseg
segment --detection-threshold``).

    python benchmarks/detection_threshold.py [--model nuclei-unet-v5]
        [--out benchmarks/results/detection_threshold.json]

The model's maps are computed once per image (as shipped: int8 ONNX, the card's test-time
flips) and post-processed at each threshold, the card's other settings unchanged. Cases are
``generalisation.py``'s (MoNuSeg test, the same re-stained, the held-out DSB colour crops, the
grey cytology fields). Per case: aggregate AJI and the foreground ratio (predicted nucleus
pixels / true ones) at each threshold, and "best per image": the aggregate AJI when every image
gets the threshold that suits it best, an upper bound on what a user choosing one per slide
could gain. The card's threshold was tuned on held-out training images only. And "Otsu per
image": each image's threshold chosen from its own foreground probabilities (Otsu's), a rule a
slide could apply to itself without labels.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

THRESHOLDS = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7)


def main(argv=None):
    from generalisation import cases, summary
    from skimage.filters import threshold_otsu

    from napari_nucleiseg.methods.learned import load_predictor
    from napari_nucleiseg.metrics import aggregate, score_image
    from napari_nucleiseg.segmentation.postprocess import instances_from_maps

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="nuclei-unet-v5")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/detection_threshold.json"))
    args = ap.parse_args(argv)
    predictor, card = load_predictor(args.model)
    own = predictor.settings.foreground
    results: dict = {}
    for case, (images, groups) in cases().items():
        if case == "dsb_colour_all":  # includes the crops the model trained on
            continue
        scores: dict = {t: [] for t in THRESHOLDS}
        otsu, otsu_t = [], []
        for im in images:
            maps = predictor.maps(im.rgb, im.mpp)
            for t in THRESHOLDS:
                labels = instances_from_maps(
                    maps, im.mpp, replace(predictor.settings, foreground=t)
                )
                scores[t].append(score_image(im.labels, labels, im.stem))
            otsu_t.append(float(threshold_otsu(maps[0])))
            own_rule = replace(predictor.settings, foreground=otsu_t[-1])
            otsu.append(
                score_image(im.labels, instances_from_maps(maps, im.mpp, own_rule), im.stem)
            )
        best = [
            max((scores[t][i] for t in THRESHOLDS), key=lambda s: aggregate([s])["aji"])
            for i in range(len(images))
        ]
        by_t = {str(t): summary(scores[t], groups) for t in THRESHOLDS}
        top = max(THRESHOLDS, key=lambda t: by_t[str(t)]["aji"])
        results[case] = {
            "images": len(images),
            "aji": {t: by_t[t]["aji"] for t in by_t},
            "fg_ratio": {t: by_t[t]["fg_ratio"] for t in by_t},
            "recall": {t: by_t[t]["recall"] for t in by_t},
            "precision": {t: by_t[t]["precision"] for t in by_t},
            "best_threshold": top,
            "best_per_image_aji": round(aggregate(best)["aji"], 4),
            "otsu_per_image_aji": round(aggregate(otsu)["aji"], 4),
            "otsu_thresholds_min_median_max": [
                round(min(otsu_t), 3),
                round(float(np.median(otsu_t)), 3),
                round(max(otsu_t), 3),
            ],
        }
    head = (
        f"{'case':<26}"
        + "".join(f"{t:>7g}" for t in THRESHOLDS)
        + f"{'best/image':>12}{'otsu/image':>12}"
    )
    print(f"\n{card.name}: aggregate AJI by detection threshold (the card's: {own:g})")
    print(head + "\n" + "-" * len(head))
    for case, r in results.items():
        row = "".join(f"{r['aji'][str(t)]:7.3f}" for t in THRESHOLDS)
        print(f"{case:<26}{row}{r['best_per_image_aji']:12.3f}{r['otsu_per_image_aji']:12.3f}")
        fg = "".join(f"{r['fg_ratio'][str(t)]:7.2f}" for t in THRESHOLDS)
        print(f"{'  foreground ratio':<26}{fg}")
    record = {
        "benchmark": "detection_threshold",
        "model": card.name,
        "card_threshold": own,
        "runtime": predictor.runtime,
        "results": results,
    }
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
