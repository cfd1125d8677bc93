"""Train the shipped default tissue classifier, ``tissue-tumour-v1``, in one command:

    .venv/bin/python scripts/train_tissue_default.py [--iterations 3000] [--out DIR]

Tags: ``tumour`` (LC25000 colon and lung adenocarcinoma, lung squamous cell carcinoma),
``normal`` (LC25000 benign colon and lung, and the normal skin of the CMU-1 slide) and
``background`` (glass from both real slides). Training is :func:`train_classifier`, the function
``nucleiseg train-classifier`` runs, with the multi-task loss of reference 001. The figures on
its card come from ``benchmarks/tissue_classifier.py`` (the same recipe on a grouped split);
this model itself is trained on every group. Writes to the package's models folder by default.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def main(argv=None) -> int:
    from napari_nucleiseg.classification.datasets import lc25000_rows, slide_tiles
    from napari_nucleiseg.classification.tiles import load_tiles
    from napari_nucleiseg.classification.train import ClassifierConfig, train_classifier
    from napari_nucleiseg.methods.classifier import DEFAULT_CLASSIFIER_MODEL, save_classifier
    from napari_nucleiseg.models import MODELS_DIR

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--out", default=str(MODELS_DIR))
    ap.add_argument("--name", default=DEFAULT_CLASSIFIER_MODEL)
    ap.add_argument("--metrics", default=str(REPO / "benchmarks/results/tissue_classifier.json"))
    args = ap.parse_args(argv)
    cfg = ClassifierConfig(iterations=args.iterations, pixel_loss="dynamic")
    tiles = load_tiles(lc25000_rows(SHARED / "tissue"), None, cfg.mpp)
    slides = SHARED / "slides"
    tiles += slide_tiles(slides / "CMU-1-Small-Region.svs", cfg.mpp, cfg.patch * cfg.mpp)
    # The TCGA file states no µm/px; only its glass is used, where scale means nothing.
    tiles += slide_tiles(
        slides / "tcga-cr-7395-01a-01-ts1.svs", cfg.mpp, cfg.patch * cfg.mpp, tissue_tag=None,
        mpp=0.5,
    )  # fmt: skip
    counts = {t: sum(x.tag == t for x in tiles) for t in sorted({x.tag for x in tiles})}
    print(f"{len(tiles)} tiles: {counts}", flush=True)
    t0 = time.perf_counter()
    for info in train_classifier(tiles, cfg):
        if info["stage"] == "done":
            result = info
        elif info["iter"] % 100 == 0:
            print(f"{info['iter']} loss {info['loss']:.4f} eta {info['eta_s']:.0f}s", flush=True)
    metrics = {}
    if Path(args.metrics).exists():
        bench = json.loads(Path(args.metrics).read_text())
        metrics = {"lc25000_grouped_heldout": bench.get("results", {}), "benchmark": args.metrics}
    card = save_classifier(
        result["state"],
        result["tags"],
        args.out,
        args.name,
        version="1.0.0",
        mpp=cfg.mpp,
        patch=cfg.patch,
        widths=cfg.widths,
        training_data=[
            "LC25000 lung and colon histopathology tiles (Borkowski et al. 2019): every group of "
            "colon adenocarcinoma, benign colon, lung adenocarcinoma and squamous cell carcinoma "
            f"(tumour) and benign lung (normal), 224 px at an estimated {1.37} µm/px",
            "CMU-1-Small-Region.svs (Aperio, 0.499 µm/px, CC0): normal skin tiles (normal) and "
            "glass (background); tcga-cr-7395-01a-01-ts1.svs: glass (background)",
            f"tiles per tag: {counts}",
        ],
        licence=(
            "LC25000: made freely available by its authors for any research use (no formal "
            "licence); CMU-1: CC0. Weights: as the package (BSD-3-Clause)"
        ),
        metrics=metrics,
        training={
            **cfg.to_dict(),
            "seconds": round(time.perf_counter() - t0),
            "command": f"python scripts/train_tissue_default.py --iterations {args.iterations}",
        },
        notes=(
            "p_tumour: tumour against normal tissue and glass. Not taught: fat, blood, mucus, "
            "debris, lymphocyte-rich tissue, muscle (no labelled tiles of them here)."
        ),
    )
    print(f"wrote {card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
