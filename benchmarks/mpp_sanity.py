"""Do the nuclei say the µm/px is wrong? Nucleus sizes found by the default model when the µm/px
given is right, and when it is off by 2x either way, on real H&E.

    python benchmarks/mpp_sanity.py [--out benchmarks/results/mpp_sanity.json]

For each case the model segments the image as if it were at the stated µm/px; the median nucleus
area is then measured in µm² at that µm/px, and the µm/px the nuclei suggest is
``stated * reference area / median area`` (:mod:`napari_nucleiseg.segmentation.scale`).
Cases: MoNuSeg training images (40x, 0.25 µm/px: the reference's own data set, training split),
MoNuSeg test images, the CMU slide (0.499 µm/px, another scanner and organ) and the TCGA slide
of ``../shared/data/slides`` (states no µm/px; about 1 µm/px by eye and by these figures).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NUCLEISEG_SHARED", REPO.parent / "shared")) / "data"


def _images(split: str, n: int):
    from napari_nucleiseg.training.nuclei_data import load_dataset

    return [
        (f"{split}/{im.stem}", im.rgb, im.mpp) for im in load_dataset(SHARED / "nuclei" / split)[:n]
    ]


def _slide(name: str, mpp: float | None):
    from napari_nucleiseg.io import open_slide

    slide = open_slide(SHARED / "slides" / name, mpp=mpp)
    h, w = slide.shape
    rgb = slide.read_region(0, 0, w, h, 0)
    return rgb


def summarise(rows: list[dict]) -> dict:
    """How often the check warned at the right µm/px and at one 2x off; printed too."""
    right = [
        r for r in rows if r["true_mpp"] and abs(math.log2(r["stated_mpp"] / r["true_mpp"])) < 0.05
    ]
    wrong = [
        r for r in rows if r["true_mpp"] and abs(math.log2(r["stated_mpp"] / r["true_mpp"])) > 0.5
    ]
    fine = [r for r in wrong if r["stated_mpp"] < r["true_mpp"]]
    coarse = [r for r in wrong if r["stated_mpp"] > r["true_mpp"]]
    tcga = {r["stated_mpp"]: r for r in rows if r["image"].startswith("tcga")}
    summary = {
        "right_mpp_cases": len(right),
        "right_mpp_warned": sum(r["warns"] for r in right),
        "wrong_mpp_cases": len(wrong),
        "wrong_mpp_warned": sum(r["warns"] for r in wrong),
        "too_fine_cases": len(fine),
        "too_fine_warned": sum(r["warns"] for r in fine),
        "too_coarse_cases": len(coarse),
        "too_coarse_warned": sum(r["warns"] for r in coarse),
        "tcga_at_0.5_warned": tcga[0.5]["warns"],
        "tcga_at_0.5_suggested": tcga[0.5]["suggested_mpp"],
        "suggested_over_true_right": [r["suggested_mpp"] / r["true_mpp"] for r in right],
        "suggested_over_true_wrong": [
            (r["suggested_mpp"] or np.nan) / r["true_mpp"] for r in wrong
        ],
    }
    print(
        f"\nright µm/px: {summary['right_mpp_warned']} of {summary['right_mpp_cases']} warned; "
        f"stated 2x too fine: {summary['too_fine_warned']} of {summary['too_fine_cases']} "
        f"warned; 2x too coarse: {summary['too_coarse_warned']} of {summary['too_coarse_cases']}; "
        f"TCGA slide at 0.5: {'warned' if tcga[0.5]['warns'] else 'no warning'}, "
        f"suggested {tcga[0.5]['suggested_mpp']:.2f} µm/px"
    )
    return summary


def main(argv=None):
    from napari_nucleiseg.segmentation.api import segment_image
    from napari_nucleiseg.segmentation.scale import nuclei_scale

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=4, help="MoNuSeg images per split")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "mpp_sanity.json"))
    args = ap.parse_args(argv)
    if not SHARED.exists():
        sys.exit(f"{SHARED} not found: this benchmark needs ../shared/data")

    cases = []  # (name, rgb, true mpp or None, stated mpp)
    for split in ("monuseg2018_train", "monuseg2018_test"):
        for name, rgb, mpp in _images(split, args.images):
            for factor in (0.5, 1.0, 2.0):
                cases.append((name, rgb, mpp, mpp * factor))
    cmu = _slide("CMU-1-Small-Region.svs", None)
    for stated in (0.25, 0.499, 1.0):
        cases.append(("CMU-1-Small-Region.svs", cmu, 0.499, stated))
    tcga = _slide("tcga-cr-7395-01a-01-ts1.svs", 1.0)
    for stated in (0.5, 1.0):
        cases.append(("tcga-cr-7395-01a-01-ts1.svs", tcga, None, stated))

    print(
        f"{'image':<42}{'true':>7}{'stated':>8}{'nuclei':>8}{'p25':>8}{'median':>8}{'p75':>8}"
        f"{'fg':>7}{'suggest':>9}   (areas in µm² at the stated µm/px)"
    )
    rows = []
    for name, rgb, true, stated in cases:
        t = time.perf_counter()
        labels = segment_image(rgb, stated)
        verdict = nuclei_scale(labels, stated)
        areas = np.bincount(labels.ravel())[1:]
        areas = areas[areas > 0] * stated**2
        p25, p75 = np.percentile(areas, [25, 75]) if areas.size else (np.nan, np.nan)
        rows.append(
            {
                "image": name,
                "true_mpp": true,
                "stated_mpp": stated,
                "nuclei": verdict.count,
                "median_area_um2": verdict.median_area_um2,
                "p25_area_um2": float(p25),
                "p75_area_um2": float(p75),
                "foreground_fraction": float((labels > 0).mean()),
                "suggested_mpp": verdict.suggested_mpp,
                "warns": verdict.implausible,
                "seconds": time.perf_counter() - t,
            }
        )
        r = rows[-1]
        print(
            f"{name[:40]:<42}{true or float('nan'):>7.3f}{stated:>8.3f}{r['nuclei']:>8}"
            f"{r['p25_area_um2']:>8.1f}{r['median_area_um2']:>8.1f}{r['p75_area_um2']:>8.1f}"
            f"{r['foreground_fraction']:>7.3f}{r['suggested_mpp'] or float('nan'):>9.3f}"
            f"{'  WARN' if r['warns'] else ''}",
            flush=True,
        )
    summary = summarise(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"benchmark": "mpp_sanity", "rows": rows, "summary": summary}, indent=1)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
