"""Release a trained run as the shipped model: tune post-processing on held-out *training* images,
export safetensors + model card, then measure (never tune) on the test set and record the figures.

    nucleiseg release-model runs/seg-v3 --name nuclei-unet-v3 --version 3.0.0 \\
        --train-data ../shared/data/nuclei/monuseg2018_train \\
        --test-data ../shared/data/nuclei/monuseg2018_test
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict
from pathlib import Path

#: Test images whose scores the card records for CI to reproduce (a quick, fixed subset).
CI_SUBSET = ["TCGA-2Z-A9J9-01A-01-TS1", "TCGA-44-2665-01B-06-BS6"]


def tune_postprocess(predictor, images) -> dict:
    """Grid-search post-processing thresholds for aggregate AJI on the given (held-out) images."""
    from ..metrics import aggregate, score_image
    from ..segmentation.postprocess import PostprocessSettings, instances_from_maps

    maps = [(im, predictor.maps(im.rgb, im.mpp)) for im in images]
    best = None
    for fg, md, mc in itertools.product(
        (0.3, 0.4, 0.5), (0.15, 0.2, 0.3, 0.4, 0.5), (0.5, 0.7, 0.9)
    ):
        s = PostprocessSettings(foreground=fg, marker_distance=md, marker_contour=mc)
        agg = aggregate(
            [score_image(im.labels, instances_from_maps(p, im.mpp, s)) for im, p in maps]
        )
        if best is None or agg["aji"] > best[0]:
            best = (agg["aji"], s)
    return asdict(best[1]) | {"tuned_on_heldout_train_aji": round(best[0], 4)}


def release(run_dir, name, version, train_data, test_data, out_dir=None, notes="") -> Path:
    """Export, tune post-processing on held-out training images with the runtime that ships by
    default (the int8 ONNX model), then measure the test set with the tuned settings."""
    from ..methods import load_predictor
    from ..metrics import aggregate, score_image
    from ..models import MODELS_DIR
    from ..segmentation.postprocess import PostprocessSettings
    from .export import export_model
    from .nuclei_data import load_dataset

    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else MODELS_DIR
    cfg = json.loads((run_dir / "config.json").read_text())
    train_index = json.loads((Path(train_data) / "index.json").read_text())
    export_model(
        run_dir,
        name,
        version,
        out_dir,
        training_data=[
            f"{train_index['name']} ({len(train_index['images'])} images; "
            f"{len(cfg['holdout'])} held out for model selection and post-processing tuning)"
        ],
        licence=f"weights trained on data licensed {train_index.get('licence')}: "
        "non-commercial use, share-alike (CC BY-NC-SA 4.0)",
        notes=notes,
    )
    card_path = out_dir / f"{name}.json"
    predictor, card = load_predictor(card_path)
    heldout = load_dataset(train_data, stems=cfg["holdout"])
    pp = tune_postprocess(predictor, heldout)
    card.postprocess = {
        k: v for k, v in pp.items() if k in PostprocessSettings.__dataclass_fields__
    }
    predictor.settings = PostprocessSettings(**card.postprocess)
    test = load_dataset(test_data)
    scores = [score_image(im.labels, predictor.segment(im.rgb, im.mpp), im.stem) for im in test]
    agg = aggregate(scores)
    sub = aggregate([s for s in scores if s.name in CI_SUBSET])
    card.metrics = {
        "monuseg2018_test": {k: round(agg[k], 4) for k in ("aji", "f1", "pq", "ap", "dice")}
        | {
            "images": agg["images"],
            "aggregation": "summed over the data set",
            "runtime": predictor.runtime,
        },
        "heldout_train_aji_after_tuning": pp["tuned_on_heldout_train_aji"],
        "ci_subset": {"stems": CI_SUBSET, "aji": round(sub["aji"], 4), "f1": round(sub["f1"], 4)},
    }
    card_path.write_text(card.to_json() + "\n")
    return card_path
