"""The learned stain normaliser against Reinhard, Macenko and Vahadane (issue 18), same run.

    python benchmarks/learned_normaliser.py [--model stain-cycle-v1] [--skip-masks]
        [--calibration-curve 0.25 0.75 1]
        [--out benchmarks/results/learned_normaliser.json]

Every classical method is fitted to the average profile of the 30 MoNuSeg 2018 *training*
images (the style the shipped nuclei model learnt; never a test image); the learned model maps
to the style it learnt from the same images. Each image is its own source (adapted to itself).

Cases (none of their images was trained on, except the last, which says so):
* ``monuseg-test re-stained`` — the 14 MoNuSeg 2018 test images after the strong stain change of
  ``stain_robustness.py`` (same seeds): the hard case, with the unperturbed original as a paired
  truth for reference 002's MAE / RMSE / SSIM;
* ``monuseg-test as scanned`` — the same images unchanged (14 TCGA sites never seen);
* ``dsb brightfield held out`` — the 38 DSB 2018 colour crops held out of training (other stains
  and scanners, and not all H&E);
* ``other sources`` — ``../shared/data/stain``: the regression source image, two Kather
  colorectal tiles and a TCGA tile;
* ``real slides (X pool: seen)`` — tissue tiles of the CMU and TCGA slides, which the learned
  model's X pool did read (unlabelled): shown apart, not as held-out.

Per case and method: **H-SSIM** (SSIM of the haematoxylin map of input and output, each unmixed
with its own Macenko vectors; bar ≥ 0.9), **Lab distance** (of the output's per-channel Lab
mean/std to the reference style's, pooled over the training images; the learned model's must be
below Macenko's) and, where a paired truth exists, **MAE / RMSE / SSIM** against it.
Where a paired truth exists, the truth itself is also scored as an output (``oracle``: what a
perfect restoration would get; its H-SSIM against the re-stained input bounds that case's).
``learned`` is the model as shipped (its default colour calibration after the network);
``learned@S`` the same at calibration strength S (``learned@0``: the network alone; 1: its
output's Lab statistics matched to the style's, Reinhard on the network's output).

Then the learned model's **nuclei decoder** on MoNuSeg 2018 test (aggregate AJI, the shipped
nuclei model's beside it: bar within 0.02), and **throughput** on the CMU slide
(``nucleiseg normalize`` to an OME-Zarr pyramid), learned and Macenko in the same run, in MP/s.
``stain_robustness.py --normalise learned`` gives the nuclei model's AJI with it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NUCLEISEG_SHARED", REPO.parent / "shared")) / "data"
NUCLEI = SHARED / "nuclei"
TRAIN, TEST = NUCLEI / "monuseg2018_train", NUCLEI / "monuseg2018_test"
CLASSICAL = ("reinhard", "macenko", "vahadane")


def _cases(skip_slides: bool):
    from stain_robustness import perturb

    from napari_nucleiseg.training.nuclei_data import appearance_holdout, load_dataset

    test = load_dataset(TEST)
    restained = [perturb(im.rgb, np.random.default_rng([0, i]))[0] for i, im in enumerate(test)]
    cases = {
        "monuseg-test re-stained": [(im.stem, r, im.mpp, im.rgb) for im, r in zip(test, restained)],
        "monuseg-test as scanned": [(im.stem, im.rgb, im.mpp, None) for im in test],
    }
    dsb = load_dataset(NUCLEI / "dsb2018_stage1_train", kinds=("colour",))
    held = set(appearance_holdout(dsb))
    cases["dsb brightfield held out"] = [
        (im.stem, im.rgb, im.mpp, None) for im in dsb if im.stem in held
    ]
    from napari_nucleiseg.io import open_slide

    other = []
    for name in ("source_image.png", "kather1.tif", "kather2.tif", "TCGA-HE-7130-01Z-00-DX1.png"):
        path = SHARED / "stain" / name
        if path.exists():
            slide = open_slide(path, mpp=0.5)
            h, w = slide.shape
            rgb = slide.read_region(0, 0, min(w, 1024), min(h, 1024), 0)
            slide.close()
            other.append((name, rgb, 0.5, None))
    cases["other sources"] = other
    if not skip_slides:
        from napari_nucleiseg.stain.learned.data import slide_tiles

        tiles = []
        for name, mpp in (("CMU-1-Small-Region.svs", None), ("tcga-cr-7395-01a-01-ts1.svs", 1.0)):
            for i, rgb in enumerate(slide_tiles(SHARED / "slides" / name, mpp, 0.5, 256, 6, 7)):
                tiles.append((f"{name}#{i}", rgb, 0.5, None))
        cases["real slides (X pool: seen)"] = tiles
    return cases, test, restained


def _normalisers(model, curve=()):
    """The classical three, the learned model as shipped (``learned``: its default colour
    calibration), the network alone (``learned@0``) and any other calibration strengths."""
    from napari_nucleiseg.stain import load_target
    from napari_nucleiseg.stain.learned_normaliser import load_learned

    out = {"none": None}
    for m in CLASSICAL:
        out[m] = load_target(m, TRAIN)
    out["learned"] = load_learned(model)
    for strength in sorted({0.0, *curve}):
        out[f"learned@{strength:g}"] = load_learned(model, calibration=strength)
    return out


def _apply(normaliser, rgb, mpp):
    from napari_nucleiseg.stain import normalise_image

    if normaliser is None:
        return rgb
    return normalise_image(rgb, normaliser, mpp)


def colour_table(cases, normalisers, reference) -> dict:
    from napari_nucleiseg.metrics.colour import h_ssim, lab_distance, lab_stats, mae_rmse_ssim

    table = {}
    for case, items in cases.items():
        table[case] = {}
        for name, normaliser in normalisers.items():
            rows = {"h_ssim": [], "lab": [], "mae": [], "rmse": [], "ssim": []}
            t = time.perf_counter()
            for _stem, rgb, mpp, truth in items:
                out = _apply(normaliser, rgb, mpp)
                rows["h_ssim"].append(h_ssim(rgb, out))
                rows["lab"].append(lab_distance(lab_stats(out), reference))
                if truth is not None:
                    paired = mae_rmse_ssim(out, truth)
                    for k in ("mae", "rmse", "ssim"):
                        rows[k].append(paired[k])
            table[case][name] = {
                "images": len(items),
                "h_ssim": float(np.mean(rows["h_ssim"])),
                "h_ssim_min": float(np.min(rows["h_ssim"])),
                "lab_distance": float(np.mean(rows["lab"])),
                **{k: float(np.mean(rows[k])) for k in ("mae", "rmse", "ssim") if rows[k]},
                "seconds": time.perf_counter() - t,
            }
            r = table[case][name]
            paired = (
                f"  MAE {r['mae']:.4f} RMSE {r['rmse']:.4f} SSIM {r['ssim']:.4f}"
                if "mae" in r
                else ""
            )
            print(
                f"{case:<28}{name:<13} H-SSIM {r['h_ssim']:.3f} (min {r['h_ssim_min']:.3f})  "
                f"Lab {r['lab_distance']:6.2f}{paired}",
                flush=True,
            )
    return table


def oracle(cases, reference) -> dict:
    """Where a case has a paired truth (the re-stained test: the unperturbed original), the
    figures a perfect restoration would get: the original itself scored as an output. What
    bounds H-SSIM there: the metric compares with the re-stained *input*."""
    from napari_nucleiseg.metrics.colour import h_ssim, lab_distance, lab_stats

    out = {}
    for case, items in cases.items():
        if any(truth is None for *_, truth in items):
            continue
        h = [h_ssim(rgb, truth) for _s, rgb, _m, truth in items]
        lab = [lab_distance(lab_stats(truth), reference) for *_, truth in items]
        out[case] = {
            "what": "the unperturbed original as the output",
            "h_ssim": float(np.mean(h)),
            "h_ssim_min": float(np.min(h)),
            "lab_distance": float(np.mean(lab)),
        }
        print(
            f"{case:<28}{'original':<13} H-SSIM {out[case]['h_ssim']:.3f} "
            f"(min {out[case]['h_ssim_min']:.3f})  Lab {out[case]['lab_distance']:6.2f}"
            "   (a perfect restoration)",
            flush=True,
        )
    return out


def mask_decoder(model, test) -> dict:
    """The learned model's nuclei decoder against the shipped nuclei model, MoNuSeg test."""
    from napari_nucleiseg.methods import default_method_name, get_method
    from napari_nucleiseg.metrics import aggregate, score_image
    from napari_nucleiseg.segmentation.api import segment_image
    from napari_nucleiseg.stain.learned import load_generator
    from napari_nucleiseg.training.normaliser_train import _mask_predictor

    method = get_method(model, kind="normaliser")
    gen = load_generator(method.card, method.card_path.parent)
    predictor = _mask_predictor(gen, method.card)
    ours = [score_image(im.labels, predictor.segment(im.rgb, im.mpp), im.stem) for im in test]
    nuclei = default_method_name()
    shipped = [
        score_image(im.labels, segment_image(im.rgb, im.mpp, nuclei), im.stem) for im in test
    ]
    a, b = aggregate(ours), aggregate(shipped)
    return {
        "mask_decoder": {"aji": a["aji"], "f1": a["f1"]},
        "nuclei_model": {"name": str(nuclei), "aji": b["aji"], "f1": b["f1"]},
        "difference_aji": a["aji"] - b["aji"],
    }


def throughput(model, rounds: int = 2) -> dict:
    """Seconds to normalise the CMU slide to an OME-Zarr pyramid, learned and Macenko
    interleaved; best of ``rounds``."""
    from napari_nucleiseg.io import open_slide
    from napari_nucleiseg.stain.commands import normalize_file

    slide = SHARED / "slides" / "CMU-1-Small-Region.svs"
    with open_slide(slide) as s:
        h, w = s.shape
    mp = h * w / 1e6
    best = {"macenko": float("inf"), "learned": float("inf")}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name in best:
                out = Path(tmp) / f"{name}-{r}.zarr"
                t = time.perf_counter()
                if name == "learned":
                    normalize_file(slide, out, "learned", None, model=model)
                else:
                    normalize_file(slide, out, "macenko", TRAIN)
                best[name] = min(best[name], time.perf_counter() - t)
    return {
        "slide": slide.name,
        "megapixels": mp,
        "seconds": best,
        "mp_per_s": {k: mp / v for k, v in best.items()},
        "learned_over_macenko": best["macenko"] / best["learned"],
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="the learned normaliser (default: shipped)")
    ap.add_argument("--skip-masks", action="store_true", help="no nuclei-decoder AJI")
    ap.add_argument("--skip-slides", action="store_true", help="no real-slide case or speed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="images per case (a quick look)")
    ap.add_argument(
        "--calibration-curve",
        type=float,
        nargs="*",
        default=[0.25, 0.75, 1.0],
        help="other colour-calibration strengths to report beside the default and 0",
    )
    ap.add_argument(
        "--out", default=str(REPO / "benchmarks" / "results" / "learned_normaliser.json")
    )
    args = ap.parse_args(argv)
    if not TEST.exists() or not TRAIN.exists():
        sys.exit(f"{NUCLEI} not found: this benchmark needs ../shared/data")
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from napari_nucleiseg.methods import default_method_name
    from napari_nucleiseg.metrics.colour import pooled_lab_stats
    from napari_nucleiseg.training.nuclei_data import load_dataset

    model = args.model or default_method_name("normaliser")
    reference = pooled_lab_stats([im.rgb for im in load_dataset(TRAIN)])
    cases, test, _ = _cases(args.skip_slides)
    if args.limit:
        cases = {k: v[: args.limit] for k, v in cases.items()}
        test = test[: args.limit]
    normalisers = _normalisers(model, args.calibration_curve)
    print(f"learned model: {normalisers['learned'].describe()}\n", flush=True)
    result = {
        "benchmark": "learned_normaliser",
        "model": normalisers["learned"].describe(),
        "reference": f"{TRAIN.name} (30 images): average profile / pooled Lab statistics",
        "colour": colour_table(cases, normalisers, reference),
        "oracle": oracle(cases, reference),
    }
    if not args.skip_masks:
        result["segmentation"] = mask_decoder(model, test)
        s = result["segmentation"]
        ours, shipped = s["mask_decoder"], s["nuclei_model"]
        print(
            f"\nnuclei decoder AJI {ours['aji']:.4f} (F1 {ours['f1']:.4f}) vs "
            f"{shipped['name']} {shipped['aji']:.4f}: {s['difference_aji']:+.4f}",
            flush=True,
        )
    if not args.skip_slides:
        result["throughput"] = throughput(model)
        t = result["throughput"]
        print(
            f"\n{t['slide']} ({t['megapixels']:.1f} MP) to OME-Zarr: learned "
            f"{t['mp_per_s']['learned']:.2f} MP/s, Macenko {t['mp_per_s']['macenko']:.2f} MP/s "
            f"(learned takes {1 / t['learned_over_macenko']:.1f}x as long)",
            flush=True,
        )
    macenko = result["colour"]["monuseg-test re-stained"]["macenko"]["lab_distance"]
    learned = result["colour"]["monuseg-test re-stained"]["learned"]
    result["criteria"] = {
        "h_ssim_ge_0.9": all(
            result["colour"][c]["learned"]["h_ssim"] >= 0.9 for c in result["colour"]
        ),
        "lab_below_macenko_restained": learned["lab_distance"] < macenko,
        "lab_below_macenko_every_case": all(
            result["colour"][c]["learned"]["lab_distance"]
            < result["colour"][c]["macenko"]["lab_distance"]
            for c in result["colour"]
        ),
    }
    if "segmentation" in result:
        result["criteria"]["mask_aji_within_0.02"] = (
            result["segmentation"]["difference_aji"] >= -0.02
        )
    print("\n" + json.dumps(result["criteria"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
