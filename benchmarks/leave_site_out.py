"""Leave-sites-out cross-validation of the nuclei recipe over MoNuSeg's training sites (issue 17).

    python benchmarks/leave_site_out.py [--iters 1200] [--folds 0,1,2]
        [--runs runs/leave_site_out] [--out benchmarks/results/leave_site_out.json]

Every shipped nuclei model descends from weights trained on 15 of the 18 TCGA tissue source sites
of ``monuseg2018_train`` (the site code is characters 5-6 of every file name; the other 3, one
image each, were held out for model selection), so no shipped model can be scored on more than
those 3 unseen training sites. Here the 18 sites are dealt into three folds of
about ten images each (largest site first, into the fold with the fewest images). Fold *k* trains
a network **from random weights** on the other two folds' images, with the shipped model's
network (widths, decoder, µm/px), wide augmentation, the from-scratch peak learning rate 3e-3 and
one cosine cycle of ``--iters`` (a fraction of the shipped lineage's budget: v3 alone ran 8,000
from scratch), and is scored with v5's post-processing and the same PyTorch runtime on:

- ``held_sites``: its held-out fold (sites it never saw; the spread across folds is the figure);
- ``monuseg_test``: MoNuSeg 2018 test (14 more sites it never saw);
- the shipped ``nuclei-unet-v5`` on the same fold images, for scale: it trained on most of them
  (``v5_trained_on`` of them), so it is a mostly in-sample figure, not a rival.

Each fold's run is resumable (``--runs``), and the JSON is rewritten after every fold.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from leave_source_out import scores_of, train_fold, unet  # noqa: E402  (one network, one scorer)

SHARED = Path(os.environ.get("NUCLEISEG_SHARED", REPO.parent / "shared")) / "data" / "nuclei"
FOLDS = 3


def site_of(stem: str) -> str:
    """The TCGA tissue source site of a MoNuSeg file name (``TCGA-18-5592-...`` -> ``18``)."""
    return stem.split("-")[1]


def site_folds(stems, folds: int = FOLDS) -> list[list[str]]:
    """The stems dealt into ``folds`` groups of whole sites: largest site first, each into the
    group with the fewest images so far (ties: the lower index). Deterministic."""
    by_site: dict[str, list[str]] = {}
    for s in sorted(stems):
        by_site.setdefault(site_of(s), []).append(s)
    groups: list[list[str]] = [[] for _ in range(folds)]
    for site in sorted(by_site, key=lambda k: (-len(by_site[k]), k)):
        min(groups, key=len).extend(by_site[site])
    return groups


def _score(model, images, settings, mpp: float) -> dict:
    """Pooled AJI / F1 and the per-site AJI (min, median, max over sites)."""
    from napari_nucleiseg.metrics import aggregate

    scores = scores_of(model, images, settings, mpp)
    a = aggregate(scores)
    sites = sorted({site_of(s.name) for s in scores})
    per_site = {t: aggregate([s for s in scores if site_of(s.name) == t])["aji"] for t in sites}
    values = list(per_site.values())
    return {
        "aji": round(float(a["aji"]), 4),
        "f1": round(float(a["f1"]), 4),
        "sites": len(sites),
        "site_aji_min": round(float(np.min(values)), 4),
        "site_aji_median": round(float(np.median(values)), 4),
        "site_aji_max": round(float(np.max(values)), 4),
    }


def _summarise(result: dict) -> None:
    """The spread over the folds measured so far, into ``result["summary"]``."""
    held_aji = [f["held_sites"]["aji"] for f in result["folds"]]
    test_aji = [f["monuseg_test"]["aji"] for f in result["folds"]]
    result["summary"] = {
        "folds": len(held_aji),
        "held_sites_aji_mean": round(float(np.mean(held_aji)), 4),
        "held_sites_aji_min": round(float(np.min(held_aji)), 4),
        "held_sites_aji_max": round(float(np.max(held_aji)), 4),
        "monuseg_test_aji_mean": round(float(np.mean(test_aji)), 4),
        "monuseg_test_aji_min": round(float(np.min(test_aji)), 4),
        "monuseg_test_aji_max": round(float(np.max(test_aji)), 4),
    }


def main(argv=None) -> None:
    import torch
    from safetensors.torch import load_file

    from napari_nucleiseg.methods import get_method
    from napari_nucleiseg.segmentation.postprocess import PostprocessSettings
    from napari_nucleiseg.training.nuclei_data import load_dataset
    from napari_nucleiseg.training.seg_train import TrainConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=1200)
    ap.add_argument("--folds", default=",".join(str(k) for k in range(FOLDS)))
    ap.add_argument("--runs", default=str(REPO / "runs" / "leave_site_out"))
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/leave_site_out.json"))
    args = ap.parse_args(argv)
    train_dir, test_dir = SHARED / "monuseg2018_train", SHARED / "monuseg2018_test"
    if not train_dir.exists() or not test_dir.exists():
        sys.exit(f"{SHARED}: the MoNuSeg data sets are missing (../shared/data/nuclei)")
    torch.set_num_threads(2)

    v5 = get_method("nuclei-unet-v5")
    settings = PostprocessSettings(**v5.card.postprocess)
    widths, decoder = list(v5.card.widths), v5.card.decoder
    shipped = unet(widths, decoder)
    shipped.load_state_dict(load_file(str(v5.card_path.parent / v5.card.weights)))
    images = load_dataset(train_dir)
    test = load_dataset(test_dir)
    groups = site_folds([im.stem for im in images])
    v5_held = set(v5.card.training.get("holdout") or ())
    result = {
        "benchmark": "leave_site_out",
        "v5_sha256": v5.card.sha256,
        "recipe": "from random weights; the other folds' MoNuSeg 2018 training images; v5's "
        "network, wide augmentation, lr 3e-3, one cosine cycle",
        "iters": args.iters,
        "postprocess": v5.card.postprocess,
        "folds_sites": [sorted({site_of(s) for s in g}) for g in groups],
        "folds": [],
    }
    out = Path(args.out)
    if out.exists():  # folds already measured at this budget are kept
        old = json.loads(out.read_text())
        same = ("iters", "folds_sites", "recipe", "postprocess", "v5_sha256")
        if all(old.get(k) == result[k] for k in same):
            result["folds"] = old.get("folds", [])
    done = {f["fold"] for f in result["folds"]}
    for k in (int(f) for f in args.folds.split(",")):
        if k in done:
            continue
        held_stems, sites = groups[k], result["folds_sites"][k]
        held = [im for im in images if im.stem in set(held_stems)]
        cfg = TrainConfig(
            data=str(train_dir),
            # A split and a budget, a run: a finished run of another split is never resumed.
            out=str(Path(args.runs) / f"fold{k}-{'-'.join(sites)}-{args.iters}it"),
            mpp=v5.mpp,
            iters=args.iters,
            lr=3e-3,
            widths=widths,
            decoder=decoder,
            holdout=list(held_stems),
            augment="wide",
            validate_every=10**9,
        )
        fold, seconds = train_fold(cfg, f"fold {k}")
        row = {
            "fold": k,
            "sites": result["folds_sites"][k],
            "images": len(held),
            "train_images": len(images) - len(held),
            "train_seconds": round(seconds),
            "held_sites": _score(fold, held, settings, v5.mpp),
            "monuseg_test": _score(fold, test, settings, v5.mpp),
            "v5_in_sample": _score(shipped, held, settings, v5.mpp),
            "v5_trained_on": sum(1 for im in held if im.stem not in v5_held),
        }
        result["folds"].append(row)
        print(json.dumps(row), flush=True)
        _summarise(result)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
    if result["folds"]:
        _summarise(result)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
    head = (
        f"{'fold':>5}{'images':>8}{'held-out sites AJI':>20}{'per-site min/med/max':>24}"
        f"{'MoNuSeg test AJI':>18}{'v5 (trained on)':>17}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for f in sorted(result["folds"], key=lambda f: f["fold"]):
        h = f["held_sites"]
        spread = f"{h['site_aji_min']:.3f} / {h['site_aji_median']:.3f} / {h['site_aji_max']:.3f}"
        print(
            f"{f['fold']:>5}{f['images']:>8}{h['aji']:>20.4f}{spread:>24}"
            f"{f['monuseg_test']['aji']:>18.4f}{f['v5_in_sample']['aji']:>10.4f}"
            f" ({f.get('v5_trained_on', '?')}/{f['images']})"
        )
    if "summary" in result:
        print(json.dumps(result["summary"]))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
