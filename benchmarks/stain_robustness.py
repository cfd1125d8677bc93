"""Does stain normalisation keep the shipped nuclei model working on other labs' colours?

    python benchmarks/stain_robustness.py [--method MODEL] [--normalise macenko] [--seed 0]
                                          [--out benchmarks/results/stain_robustness.json]

MoNuSeg 2018 test (14 images, never trained on) is segmented four times with
``segmentation.api.segment_image`` and scored with ``metrics.aggregate`` (AJI summed over the
data set, as ``nuclei_accuracy.py``):

1. as scanned;
2. after a strong random stain perturbation (seeded, one draw per image), normalisation off;
3. the same perturbed images, normalised first (``segment_image(..., normaliser=...)``) to one
   fixed target profile: by default the average of the profiles of the 30 *training* images
   (``monuseg2018_train``: the colours the model learnt on; never a test image). ``--target``
   takes a single image, a folder or a profile .json instead;
4. as scanned, normalised to the same profile (what normalisation itself costs).

The target matters: a single training image with extreme colours (the first in sorted order,
TCGA-18-5592, is unusually pink) costs the model ~20 % AJI whatever the perturbation, while the
training-set average costs ~1 % (see docs/researcher.md).

The perturbation models another lab's stain as Beer-Lambert allows: in the Ruifrok-Johnston
H, E, DAB basis the H and E colour vectors are turned by 20-35 degrees about random axes (a bluer
or purpler haematoxylin, an orange or magenta eosin) and the stain amounts scaled by factors in
[0.4, 2.5] (log-uniform). That is well beyond the HED jitter the model was trained with (±20 %
amounts along fixed vectors). Done when run 3 keeps ≥ 95 % of run 1's AJI.

Re-run as is after shipping a new default model; ``--method`` picks another.
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
TRAIN = NUCLEI / "monuseg2018_train"
#: Perturbation strength: rotation of the H and E vectors, and the range of stain-amount factors.
ANGLES_DEG = (20.0, 35.0)
AMOUNTS = (0.4, 2.5)


def perturb(rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A strong random stain change of one image (see the module docstring):
    :func:`napari_nucleiseg.stain.augment.restain` with this benchmark's angles and amounts."""
    from napari_nucleiseg.stain.augment import restain

    return restain(rgb, rng, ANGLES_DEG, AMOUNTS)


def main(argv=None):
    import torch

    from napari_nucleiseg.methods import default_method_name
    from napari_nucleiseg.metrics import aggregate, score_image
    from napari_nucleiseg.segmentation.api import describe_method, segment_image
    from napari_nucleiseg.stain import load_target
    from napari_nucleiseg.training.nuclei_data import load_dataset

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--method", default=None, help="segmentation method (default: the shipped model)"
    )
    ap.add_argument(
        "--normalise", default="macenko", help="stain normalisation method (or learned)"
    )
    ap.add_argument(
        "--model", default=None, help="--normalise learned: the normaliser model (default: shipped)"
    )
    ap.add_argument(
        "--target",
        default=str(TRAIN),
        help="target: image, folder of images (profiles averaged) or profile .json "
        "(default: the monuseg2018_train images)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "stain_robustness.json"))
    args = ap.parse_args(argv)
    if not TEST.exists() or not TRAIN.exists():
        sys.exit(f"{NUCLEI} not found: this benchmark needs ../shared/data/nuclei")
    torch.set_num_threads(args.threads)
    method = args.method or default_method_name()
    target_path = Path(args.target)
    if TEST.resolve() in (target_path.resolve(), *target_path.resolve().parents):
        sys.exit(f"{target_path}: the target must not come from the test set")
    if args.normalise == "learned":
        from napari_nucleiseg.stain.learned_normaliser import load_learned

        normaliser = load_learned(args.model)  # its target is the style it learnt
    else:
        normaliser = load_target(args.normalise, target_path)
    images = load_dataset(TEST)
    perturbed, draws = [], {}
    for i, im in enumerate(images):
        p, d = perturb(im.rgb, np.random.default_rng([args.seed, i]))
        perturbed.append(p)
        draws[im.stem] = d

    runs = {
        "unperturbed": (lambda i: images[i].rgb, None),
        "perturbed, normalisation off": (lambda i: perturbed[i], None),
        "perturbed, normalisation on": (lambda i: perturbed[i], normaliser),
        "unperturbed, normalisation on": (lambda i: images[i].rgb, normaliser),
    }
    results = {}
    for name, (rgb_of, norm) in runs.items():
        t = time.perf_counter()
        scores = [
            score_image(
                im.labels, segment_image(rgb_of(i), im.mpp, method, normaliser=norm), im.stem
            )
            for i, im in enumerate(images)
        ]
        agg = aggregate(scores)
        results[name] = {
            "aji": agg["aji"],
            "f1": agg["f1"],
            "pq": agg["pq"],
            "dice": agg["dice"],
            "seconds": time.perf_counter() - t,
            "per_image_aji": {s.name: s.as_row()["aji"] for s in scores},
        }
        print(
            f"{name:<34} AJI {agg['aji']:.4f}  F1 {agg['f1']:.4f}  PQ {agg['pq']:.4f}  "
            f"({results[name]['seconds']:.0f} s)",
            flush=True,
        )
    base = results["unperturbed"]["aji"]
    ratio_on = results["perturbed, normalisation on"]["aji"] / base
    ratio_off = results["perturbed, normalisation off"]["aji"] / base
    target_name = (
        f"the style {normaliser.name} learnt"
        if args.normalise == "learned"
        else f"{args.normalise} profile of {normaliser.profile.fitted_on.get('name')}"
    )
    print(
        f"\n{method} on MoNuSeg 2018 test, strong stain perturbation (seed {args.seed}), "
        f"target: {target_name}\n"
    )
    head = f"{'condition':<34}{'AJI':>8}{'F1':>8}{'PQ':>8}{'of unperturbed AJI':>22}"
    print(head + "\n" + "-" * len(head))
    for name, r in results.items():
        print(f"{name:<34}{r['aji']:8.4f}{r['f1']:8.4f}{r['pq']:8.4f}{r['aji'] / base:21.1%}")
    verdict = "PASS" if ratio_on >= 0.95 else "FAIL"
    print(
        f"\nnormalisation on keeps {ratio_on:.1%} of the unperturbed AJI (off: {ratio_off:.1%}); "
        f"target ≥ 95 %: {verdict}"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "stain_robustness",
                "data": str(TEST),
                "segmentation": describe_method(method),
                "normalisation": {
                    "method": args.normalise,
                    **(
                        {"model": normaliser.describe()}
                        if args.normalise == "learned"
                        else {"target": str(target_path), "profile": normaliser.profile.to_dict()}
                    ),
                },
                "seed": args.seed,
                "perturbation": {
                    "basis": "Ruifrok-Johnston H, E, DAB",
                    "angles_deg": ANGLES_DEG,
                    "amounts": AMOUNTS,
                    "draws": draws,
                },
                "results": results,
                "aji_ratio_normalisation_on": ratio_on,
                "aji_ratio_normalisation_off": ratio_off,
                "criterion": "normalisation on >= 95% of unperturbed AJI",
                "pass": ratio_on >= 0.95,
            },
            indent=1,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
