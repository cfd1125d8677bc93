"""Leave-one-source-out cross-validation of the nuclei recipe's other-source training (issue 17).

    python benchmarks/leave_source_out.py [--iters 600] [--folds 0,1,2,3,4]
        [--runs runs/leave_source_out] [--out benchmarks/results/leave_source_out.json]

``nuclei-unet-v5`` is ``nuclei-unet-v4`` fine-tuned with a quarter of every batch drawn from the
107 brightfield crops of ``dsb2018_stage1_train``, two of their five look-alike clusters
(``nuclei_data.appearance_clusters``: one source image's crops share colour, background and
nucleus size) held out for selection. Which two is one draw, and its figure one number. Here the
recipe runs once per cluster: fold *k* holds out every crop of cluster *k* and trains on the
other four, from v4 (which never saw a DSB crop), with v5's settings (learning rate 1e-3, wide
augmentation, extra share 0.25) but a shorter budget (``--iters``, one cosine cycle, where v5 ran
two of 1,500). Scored on the held-out cluster and on the 4 MoNuSeg training images every model
holds out, all with v5's post-processing and the same PyTorch runtime:

- ``start``: v4 itself (what the fold's model starts from);
- ``fold``: the fold's model.

The spread of ``fold - start`` across the five clusters says how far training on some sources
carries to a source never seen: the leave-source-out figure, not one split. Each fold's run is
resumable (``--runs``), and the JSON is rewritten after every fold.
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
SHARED = Path(os.environ.get("NUCLEISEG_SHARED", REPO.parent / "shared")) / "data" / "nuclei"
DSB_COLOUR = f"{SHARED / 'dsb2018_stage1_train'}:colour"


def unet(widths, decoder):
    from napari_nucleiseg.segmentation.unet import UNet

    return UNet(tuple(widths), decoder=decoder)


def train_fold(cfg, label: str):
    """Train (or resume) ``cfg``'s run, printing progress every 100 iterations; its network with
    the final weights, and the seconds the training took."""
    import torch

    from napari_nucleiseg.training.seg_train import train

    t0 = time.perf_counter()
    for info in train(cfg):
        if info["iter"] % 100 == 0:
            print(f"{label}: {info['iter']}/{info['iters']} loss {info['loss']:.3f}", flush=True)
    seconds = time.perf_counter() - t0
    model = unet(cfg.widths, cfg.decoder)
    state = torch.load(Path(cfg.out) / "checkpoint.pt", weights_only=True)
    model.load_state_dict(state["model"])
    return model, seconds


def scores_of(model, images, settings, mpp: float) -> list:
    """Per-image scores of a network (PyTorch) with ``settings`` post-processing."""
    from napari_nucleiseg.metrics import score_image
    from napari_nucleiseg.segmentation.predict import Predictor

    pred = Predictor(model=model.eval(), mpp=mpp, settings=settings)
    return [score_image(im.labels, pred.segment(im.rgb, im.mpp), im.stem) for im in images]


def _score(model, images, settings, mpp: float) -> dict:
    from napari_nucleiseg.metrics import aggregate

    a = aggregate(scores_of(model, images, settings, mpp))
    return {k: round(float(a[k]), 4) for k in ("aji", "f1")}


def main(argv=None) -> None:
    import torch
    from safetensors.torch import load_file

    from napari_nucleiseg.methods import get_method
    from napari_nucleiseg.segmentation.postprocess import PostprocessSettings
    from napari_nucleiseg.training.nuclei_data import appearance_clusters, load_dataset, load_spec
    from napari_nucleiseg.training.seg_train import TrainConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=600)
    ap.add_argument("--folds", default="0,1,2,3,4")
    ap.add_argument("--runs", default=str(REPO / "runs" / "leave_source_out"))
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/leave_source_out.json"))
    args = ap.parse_args(argv)
    if not (SHARED / "dsb2018_stage1_train").exists():
        sys.exit(f"{SHARED}: the nuclei data sets are missing (../shared/data/nuclei)")
    torch.set_num_threads(2)

    v4, v5 = get_method("nuclei-unet-v4"), get_method("nuclei-unet-v5")
    settings = PostprocessSettings(**v5.card.postprocess)
    widths, decoder = list(v5.card.widths), v5.card.decoder
    start = unet(widths, decoder)
    start.load_state_dict(load_file(str(v4.card_path.parent / v4.card.weights)))
    extra = load_spec(DSB_COLOUR)
    cluster = appearance_clusters(extra)  # the clustering v5's held-out crops were drawn from
    base = TrainConfig(data=str(SHARED / "monuseg2018_train"), out="")
    monuseg_held = load_dataset(base.data, stems=base.holdout)
    result = {
        "benchmark": "leave_source_out",
        "recipe": "from nuclei-unet-v4; MoNuSeg 2018 training images (4 held out) + DSB "
        "brightfield crops of four clusters at a 0.25 share; lr 1e-3, wide augmentation, one "
        "cosine cycle",
        "iters": args.iters,
        "postprocess": v5.card.postprocess,
        "v5_heldout_clusters": sorted(
            {
                int(c)
                for im, c in zip(extra, cluster)
                if im.stem in set(v5.card.training["extra_holdout"])
            }
        ),
        "folds": [],
    }
    out = Path(args.out)
    if out.exists():  # folds already measured at this budget are kept
        old = json.loads(out.read_text())
        if old.get("iters") == args.iters:
            result["folds"] = old.get("folds", [])
    done = {f["cluster"] for f in result["folds"]}
    for k in (int(f) for f in args.folds.split(",")):
        if k in done:
            continue
        held = [im for im, c in zip(extra, cluster) if c == k]
        cfg = TrainConfig(
            data=base.data,
            out=str(Path(args.runs) / f"cluster{k}-{args.iters}it"),  # a budget, a run
            mpp=v5.mpp,
            iters=args.iters,
            lr=1e-3,
            widths=widths,
            decoder=decoder,
            init_from="nuclei-unet-v4",
            extra_data=[DSB_COLOUR],
            extra_share=0.25,
            extra_holdout=[im.stem for im in held],
            augment="wide",
            validate_every=10**9,
        )
        fold, seconds = train_fold(cfg, f"cluster {k}")
        row = {
            "cluster": k,
            "crops": len(held),
            "train_seconds": round(seconds),
            "start": {"held_cluster": _score(start, held, settings, v5.mpp),
                      "monuseg_heldout": _score(start, monuseg_held, settings, v5.mpp)},
            "fold": {"held_cluster": _score(fold, held, settings, v5.mpp),
                     "monuseg_heldout": _score(fold, monuseg_held, settings, v5.mpp)},
        }  # fmt: skip
        row["gain_aji"] = round(
            row["fold"]["held_cluster"]["aji"] - row["start"]["held_cluster"]["aji"], 4
        )
        result["folds"].append(row)
        print(json.dumps(row), flush=True)
        gains = [f["gain_aji"] for f in result["folds"]]
        result["summary"] = {
            "folds": len(gains),
            "gain_aji_mean": round(float(np.mean(gains)), 4),
            "gain_aji_min": round(float(np.min(gains)), 4),
            "gain_aji_max": round(float(np.max(gains)), 4),
            "fold_aji_mean": round(
                float(np.mean([f["fold"]["held_cluster"]["aji"] for f in result["folds"]])), 4
            ),
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
    print(
        f"\n{'cluster':>8}{'crops':>7}{'v4':>8}{'fold':>8}{'gain':>8}{'MoNuSeg held v4 / fold':>26}"
    )
    for f in sorted(result["folds"], key=lambda f: f["cluster"]):
        print(
            f"{f['cluster']:>8}{f['crops']:>7}{f['start']['held_cluster']['aji']:8.3f}"
            f"{f['fold']['held_cluster']['aji']:8.3f}{f['gain_aji']:+8.3f}"
            f"{f['start']['monuseg_heldout']['aji']:>17.3f} / "
            f"{f['fold']['monuseg_heldout']['aji']:.3f}"
        )
    if "summary" in result:
        print(json.dumps(result["summary"]))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
