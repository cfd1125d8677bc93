"""Nuclei segmentation accuracy on MoNuSeg 2018 test (never trained on), beside the classical
floor and published figures.

    python benchmarks/nuclei_accuracy.py [--methods nuclei-unet-v3,nuclei-unet-v2,classical]
        [--out benchmarks/results/nuclei_accuracy.json]

Each method runs with its default settings on the 14 test images at their native 0.25 µm/px; the
learned model resamples to its own µm/px internally. Aggregate scores sum numerators and
denominators over the data set (AJI as in Kumar et al. 2017; F1 and PQ from pooled TP/FP/FN).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = (
    Path(os.environ.get("NUCLEISEG_SHARED", REPO.parent / "shared"))
    / "data"
    / "nuclei"
    / "monuseg2018_test"
)
PUBLISHED = {
    "HoVer-Net (Graham et al. 2019, MoNuSeg images)": {"aji": 0.618},
    "P-RCNN (reference 000, TCGA/MoNuSeg)": {"aji": 0.7087, "f1": 0.8825, "ap": 0.4842},
    "floor: 0.5 M-param U-Net, 35 min CPU (issue #3)": {"aji": 0.633, "f1": 0.808, "pq": 0.612},
}


def runtime_of(name: str) -> str:
    """What computed a method's maps: ``onnx-int8``, ``onnx-fp32``, ``torch`` or ``none``
    (classical). The int8 model runs only where this CPU computes it exactly."""
    from napari_nucleiseg.methods import get_method

    predictor = getattr(get_method(name), "predictor", None)
    if predictor is None:
        return "none"
    session = getattr(predictor, "session", None)
    if session is None:
        return "torch"
    return "onnx-" + {"float32": "fp32"}.get(session.nucleiseg_precision, "int8")


def main(argv=None):
    from napari_nucleiseg.metrics import aggregate, score_image
    from napari_nucleiseg.models import DEFAULT_NUCLEI_MODEL
    from napari_nucleiseg.segmentation.api import segment_image
    from napari_nucleiseg.training.nuclei_data import load_dataset

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default=f"{DEFAULT_NUCLEI_MODEL},classical,classical-phansalkar")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "nuclei_accuracy.json"))
    args = ap.parse_args(argv)
    if not Path(args.data).exists():
        sys.exit(f"{args.data} not found: this benchmark needs ../shared/data")
    images = load_dataset(args.data)
    results = {}
    for method in args.methods.split(","):
        t = time.perf_counter()
        scores = [
            score_image(im.labels, segment_image(im.rgb, im.mpp, method), im.stem) for im in images
        ]
        dt = time.perf_counter() - t
        agg = aggregate(scores)
        agg["seconds"] = dt
        agg["mp_per_s"] = sum(im.rgb.shape[0] * im.rgb.shape[1] for im in images) / 1e6 / dt
        agg["per_image"] = [s.as_row() for s in scores]
        agg["runtime"] = runtime_of(method)
        results[method] = agg
    runtimes = ", ".join(f"{m}: {a['runtime']}" for m, a in results.items())
    print(f"\nMoNuSeg 2018 test, {len(images)} images (aggregate over the data set); {runtimes}\n")
    head = f"{'method':<52}{'AJI':>8}{'F1@0.5':>8}{'PQ':>8}{'AP':>8}{'Dice':>8}{'MP/s':>8}"
    print(head)
    print("-" * len(head))
    for m, a in results.items():
        print(
            f"{m:<52}{a['aji']:8.4f}{a['f1']:8.4f}{a['pq']:8.4f}{a['ap']:8.4f}{a['dice']:8.4f}{a['mp_per_s']:8.2f}"
        )
    for m, a in PUBLISHED.items():
        print(
            f"{m:<52}"
            + "".join(
                f"{a[k]:8.4f}" if k in a else f"{'':>8}" for k in ("aji", "f1", "pq", "ap", "dice")
            )
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "nuclei_accuracy",
                "data": str(args.data),
                "results": results,
                "published": PUBLISHED,
            },
            indent=1,
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
