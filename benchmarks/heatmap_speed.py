"""Whole-slide tumour heatmap of the CMU-1 slide: patches per second end to end, beside the
classifier's raw forward throughput measured in the same run; and the tumour outline's Dice on a
mosaic slide of known layout at half-patch and full-patch strides (ten mosaics, seeds 0-9, of
the tissue the classifier's card holds out; ``tests/test_heatmap.py`` scores seed 0).

    python benchmarks/heatmap_speed.py [--model NAME_OR_PATH] [--rounds 3] [--workers 1 2]
        [--mosaics 10] [--no-dice] [--out benchmarks/results/heatmap_speed.json]

End to end is :func:`~napari_nucleiseg.classification.slide_heatmap.heatmap_slide` into a fresh
store each round, as ``nucleiseg heatmap`` runs it without the process start-up: the tissue mask,
the block reads at the pyramid level nearest the model's µm/px, resampling, patch cutting, the
network, and the zarr chunk and record writes. Raw forward is ``probabilities()`` on as many
random uint8 patches, already in memory, in the batches the heatmap uses. Their ratio is what
the reading and bookkeeping cost. The mosaic is the one ``tests/test_heatmap.py`` scores (6 × 6
cells of 448 µm at 0.5 µm/px, a ring of glass around 4 × 4 cells of LC25000 colon).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CMU = (
    Path(os.environ.get("NUCLEISEG_SHARED", REPO.parent / "shared"))
    / "data"
    / "slides"
    / "CMU-1-Small-Region.svs"
)
G, T, N = "glass", "tumour", "normal"
CORE = [[T, N, N, T], [N, T, G, N], [T, T, N, N], [N, T, T, N]]
LAYOUT = [[G] * 6] + [[G, *row, G] for row in CORE] + [[G] * 6]


def end_to_end(slide, model, workers: int, stride=None) -> dict:
    from napari_nucleiseg.classification.slide_heatmap import heatmap_slide

    out = Path(tempfile.mkdtemp())
    try:
        t = time.perf_counter()
        *_, last = heatmap_slide(slide, out, model=model, workers=workers, stride_px=stride)
        seconds = time.perf_counter() - t
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {
        "workers": workers,
        "seconds": seconds,
        "patches": last.patches,
        "blocks": last.total,
        "patches_per_s": last.patches / seconds,
    }


def mask_seconds(slide, rounds: int) -> float:
    """The tissue mask alone: a fixed cost per slide (the whole level read on a file with no
    pyramid, as CMU-1), a large share of a small slide's time."""
    from napari_nucleiseg.tissue import tissue_mask
    from napari_nucleiseg.wholeslide.job import MASK_MAX_PX

    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        tissue_mask(slide, max_size=MASK_MAX_PX)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def raw_forward(method, n: int, rounds: int) -> float:
    rng = np.random.default_rng(0)
    p = int(method.tile_px)
    patches = rng.integers(0, 256, (n, p, p, 3), dtype=np.uint8)
    method.probabilities(patches[: min(n, 64)])  # load and warm up
    best = []
    for _ in range(rounds):
        t = time.perf_counter()
        method.probabilities(patches)
        best.append(n / (time.perf_counter() - t))
    return float(np.median(best))


def mosaic_dice(model, seeds=range(10)) -> dict:
    """Outline Dice on mosaics of the LC25000 groups the classifier's card holds out (tissue it
    never saw; ``tests/test_heatmap.py`` scores seed 0), one mosaic per seed, at half-patch and
    full-patch strides; beside it, the outline not kept to the tissue mask (as before 12-2026)."""
    from napari_nucleiseg.classification.outlines import rasterise, slide_bounds, tumour_regions
    from napari_nucleiseg.classification.slide_heatmap import compute_slide_heatmap, open_heatmap
    from napari_nucleiseg.demo.mosaic import mosaic_slide
    from napari_nucleiseg.io import open_slide
    from napari_nucleiseg.methods import get_method

    method = get_method(model, kind="classifier")
    held = method.card.training.get("heldout_groups") or None
    out = {}
    for name, factor in (("half_patch", 2), ("full_patch", 1)):
        stride = int(method.tile_px) // factor
        per_seed = []
        for seed in seeds:
            tmp = Path(tempfile.mkdtemp())
            try:
                path, truth, truth_mpp = mosaic_slide(
                    tmp / "mosaic.tif", LAYOUT, mpp=0.5, seed=seed, groups=held
                )
                yy, xx = np.mgrid[0 : truth.shape[0], 0 : truth.shape[1]]
                with open_slide(path) as slide:
                    t = time.perf_counter()
                    store = compute_slide_heatmap(slide, tmp / name, model=model, stride_px=stride)
                    seconds = time.perf_counter() - t
                    hm = open_heatmap(store)
                    bounds = slide_bounds(hm, slide.shape)
                    regions = tumour_regions(hm, 0.5, bounds_um=bounds)
                    alone = tumour_regions(hm, 0.5, bounds_um=bounds, average=False)
                    loose = tumour_regions(hm, 0.5, bounds_um=bounds, clip_to_tissue=False)
                outline = rasterise(regions, truth.shape, truth_mpp)
                cells = np.nan_to_num(hm.sample_um((yy + 0.5) * truth_mpp, (xx + 0.5) * truth_mpp))
                per_seed.append(
                    {
                        "seed": seed,
                        "outline_dice": dice(outline, truth),
                        "outline_dice_not_kept_to_tissue": dice(
                            rasterise(loose, truth.shape, truth_mpp), truth
                        ),
                        "outline_dice_centred_patch_only": dice(
                            rasterise(alone, truth.shape, truth_mpp), truth
                        ),
                        "thresholded_map_dice": dice(cells >= 0.5, truth),
                        "regions": len(regions),
                        "patches": int(hm.tissue.sum()),
                        "seconds": seconds,
                    }
                )
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        keys = (
            "outline_dice",
            "outline_dice_not_kept_to_tissue",
            "outline_dice_centred_patch_only",
            "thresholded_map_dice",
            "seconds",
        )
        out[name] = {
            "stride_px": stride,
            "map_mpp": stride * method.mpp,
            "groups": "held out by the card" if held else "all",
            **{k: float(np.mean([r[k] for r in per_seed])) for k in keys},
            "outline_dice_min": float(min(r["outline_dice"] for r in per_seed)),
            "mosaics_at_0_9_or_more": sum(r["outline_dice"] >= 0.9 for r in per_seed),
            "seeds": per_seed,
        }
    return out


def dice(a, b) -> float:
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="classifier (default: the shipped one)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--mosaics", type=int, default=10, help="mosaics scored (seeds 0..N-1)")
    ap.add_argument("--no-dice", action="store_true", help="skip the mosaic Dice")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "heatmap_speed.json"))
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    if not CMU.exists():
        sys.exit(f"{CMU} not found: this benchmark needs ../shared/data/slides")
    from napari_nucleiseg.io import open_slide
    from napari_nucleiseg.methods import get_method

    method = get_method(args.model, kind="classifier")
    method.warm_up()
    rounds = []
    with open_slide(CMU) as slide:
        shape, mpp = slide.shape, slide.mpp
        end_to_end(slide, args.model, 1)  # first touch of the file and the model: not timed
        for _ in range(args.rounds):
            for w in args.workers:
                rounds.append(end_to_end(slide, args.model, w))
        mask_s = mask_seconds(slide, args.rounds)
    patches = rounds[0]["patches"]
    raw = raw_forward(method, patches, args.rounds)
    by_workers = {
        w: float(np.median([r["patches_per_s"] for r in rounds if r["workers"] == w]))
        for w in args.workers
    }
    best_w = max(by_workers, key=by_workers.get)
    print(
        f"\n{CMU.name}: {shape[1]} x {shape[0]} px at {mpp:.3g} µm/px; model {method.name} "
        f"({method.tile_px} px at {method.mpp:g} µm/px, stride {method.tile_px // 2} px); "
        f"{patches} tissue patches in {rounds[0]['blocks']} blocks; {os.cpu_count()} cores\n"
    )
    print(f"{'':<28}{'patches/s':>10}{'x raw':>8}")
    print(f"{'raw forward (in memory)':<28}{raw:10.1f}{1:8.2f}")
    for w, v in by_workers.items():
        label = f"end to end, {w} thread{'s' if w > 1 else ''}"
        print(f"{label:<28}{v:10.1f}{v / raw:8.2f}")
    print(
        f"(of which the tissue mask, a fixed cost per slide: {mask_s:.2f} s; end to end "
        f"without it, {best_w} threads: {patches / (patches / by_workers[best_w] - mask_s):.1f} "
        "patches/s)"
    )
    result = {
        "benchmark": "heatmap_speed",
        "slide": CMU.name,
        "slide_mpp": mpp,
        "model": method.describe(),
        "stride_px": int(method.tile_px) // 2,
        "cpu_count": os.cpu_count(),
        "patches": patches,
        "raw_forward_patches_per_s": raw,
        "end_to_end_patches_per_s": by_workers,
        "end_to_end_over_raw": by_workers[best_w] / raw,
        "tissue_mask_s": mask_s,
        "rounds": rounds,
    }
    if not args.no_dice:
        result["mosaic_dice"] = mosaic_dice(args.model, range(args.mosaics))
        print(
            f"\nmosaic Dice against the truth (p_tumour >= 0.5), mean of {args.mosaics} mosaics"
            f"{'outline':>9}{'>=0.9':>6}{'loose':>8}{'centred':>9}{'cells':>8}{'s':>7}"
        )
        for name, r in result["mosaic_dice"].items():
            print(
                f"  {name:<10} stride: {r['stride_px']:>3} px, {r['map_mpp']:>5g} µm cells"
                f"{r['outline_dice']:9.4f}{r['mosaics_at_0_9_or_more']:6d}"
                f"{r['outline_dice_not_kept_to_tissue']:8.4f}"
                f"{r['outline_dice_centred_patch_only']:9.4f}"
                f"{r['thresholded_map_dice']:8.4f}{r['seconds']:7.1f}"
            )
        print(
            "  (outline: the GeoJSON's, from overlapping patches averaged, kept to the tissue "
            "mask; >=0.9: mosaics at the bar; loose: the same not kept to the tissue; centred: "
            "from the patch centred on each cell alone; cells: the raw map thresholded); per "
            "mosaic: "
            + ", ".join(
                f"{r['outline_dice']:.4f}" for r in result["mosaic_dice"]["half_patch"]["seeds"]
            )
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
