"""Do the shared data sets' labels sit on their nuclei? And what a pixel's offset does to AJI.

    python benchmarks/label_alignment.py [--models nuclei-unet-v5[,runs/release/X.json]]
        [--data PATH[:KIND] ...] [--out benchmarks/results/label_alignment.json]

1. **Where each data set's labels sit** (no model): for every move (dy, dx) of the labels by up
   to 2 px, the haematoxylin under the moved foreground minus the haematoxylin outside it
   (``training.label_alignment``). The data set's move is the argmax of the mean over its
   images; the per-image argmaxes show how noisy one image's choice is.
2. **The same question asked of a model**: each model's aggregate AJI on MoNuSeg test with its
   predictions moved by whole pixels. A model trained with flips and turns cannot learn a label
   offset (it is taught in every direction at once), so its outlines sit on the nuclei; the
   move that scores best is then the labels' offset, measured a second way.
3. **Labels as given and moved onto the nuclei**, per model: MoNuSeg test (the figure every model
   card states, and the one without the offset), the held-out DSB crops (which need no move: the
   control) and any data set given with ``--data`` (one's own labelled set in the shared layout:
   does it need a move, and what does the move do to the score?).
4. **At 20x** (the dense benchmark's mosaic is MoNuSeg test halved): the images halved, segmented
   at 0.5 µm/px, and scored against the labels brought to 20x three ways (every other pixel from
   the first, from the second, the 2x2 majority). How a data set's labels were brought to 20x moves
   AJI by hundredths; a figure at 20x should say which.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
NUCLEI = Path(os.environ.get("NUCLEISEG_SHARED", REPO.parent / "shared")) / "data" / "nuclei"


def majority_2x2(labels: np.ndarray) -> np.ndarray:
    """Labels at half the resolution: each 2x2 block's most frequent label (ties: the first)."""
    h, w = (labels.shape[0] // 2) * 2, (labels.shape[1] // 2) * 2
    b = (
        labels[:h, :w]
        .reshape(h // 2, 2, w // 2, 2)
        .transpose(0, 2, 1, 3)
        .reshape(h // 2, w // 2, 4)
    )
    counts = (b[..., :, None] == b[..., None, :]).sum(-1)
    return np.take_along_axis(b, counts.argmax(-1)[..., None], -1)[..., 0]


def where_labels_sit(images) -> dict:
    from napari_nucleiseg.training.label_alignment import contrast_by_move, dataset_offset

    per_image = Counter()
    mean: dict = {}
    for im in images:
        c = contrast_by_move(im.rgb, im.labels)
        per_image[max(sorted(c), key=lambda m: (c[m], m == (0, 0)))] += 1
        for m, v in c.items():
            mean[m] = mean.get(m, 0.0) + v / len(images)
    move = dataset_offset(images)
    return {
        "images": len(images),
        "move": list(move),
        "contrast_as_given": round(mean[(0, 0)], 4),
        "contrast_moved": round(mean[move], 4),
        "per_image_moves": {f"{m[0]},{m[1]}": n for m, n in per_image.most_common()},
    }


def main(argv=None):
    from generalisation import cases, summary
    from skimage.transform import resize

    from napari_nucleiseg.metrics import score_image
    from napari_nucleiseg.segmentation.api import segment_image
    from napari_nucleiseg.training.label_alignment import moved
    from napari_nucleiseg.training.nuclei_data import load_dataset, load_spec

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="nuclei-unet-v5", help="comma-separated names or cards")
    ap.add_argument(
        "--data",
        action="append",
        default=[],
        help="another labelled data set (the shared layout; PATH or PATH:KIND) to check and "
        "score as given and with its labels moved onto the nuclei; repeatable",
    )
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/label_alignment.json"))
    args = ap.parse_args(argv)
    if not (NUCLEI / "monuseg2018_test").exists():
        sys.exit(f"{NUCLEI} not found: this benchmark needs ../shared/data/nuclei")

    sets = {
        "monuseg2018_train": load_dataset(NUCLEI / "monuseg2018_train"),
        "monuseg2018_test": load_dataset(NUCLEI / "monuseg2018_test"),
        "dsb2018_colour": load_spec(str(NUCLEI / "dsb2018_stage1_train") + ":colour"),
    }
    sets.update({spec: load_spec(spec) for spec in args.data})
    record: dict = {"benchmark": "label_alignment", "data_sets": {}, "models": {}}
    print("\nWhere the labels sit (move that puts the most haematoxylin under them, px)")
    print(
        f"{'data set':<20}{'images':>7}{'move':>9}{'contrast as given':>19}{'moved':>8}  per image"
    )
    for name, images in sets.items():
        r = where_labels_sit(images)
        record["data_sets"][name] = r
        print(
            f"{Path(name).name:<20}{r['images']:>7}{str(tuple(r['move'])):>9}"
            f"{r['contrast_as_given']:>19.3f}{r['contrast_moved']:>8.3f}  {r['per_image_moves']}"
        )
    # Scored as given and moved: MoNuSeg test, the held-out DSB crops (which need no move: the
    # control) and every --data set.
    scored = {
        "monuseg2018_test": (sets["monuseg2018_test"], "monuseg2018_test"),
        "dsb_colour_heldout": (cases()["dsb_colour_heldout"][0], "dsb2018_colour"),
        **{spec: (sets[spec], spec) for spec in args.data},
    }
    test = sets["monuseg2018_test"]
    for model in args.models.split(","):
        r: dict = {"prediction_moved": {}, "scores": {}}
        for name, (images, moves_from) in scored.items():
            move = tuple(record["data_sets"][moves_from]["move"])
            preds = [segment_image(im.rgb, im.mpp, model) for im in images]
            given = summary([score_image(im.labels, p, im.stem) for im, p in zip(images, preds)])
            on_nuclei = summary(
                [score_image(moved(im.labels, *move), p, im.stem) for im, p in zip(images, preds)]
            )
            r["scores"][name] = {
                "move": list(move),
                "as_given": {k: given[k] for k in ("aji", "f1", "fg_ratio")},
                "labels_moved": {k: on_nuclei[k] for k in ("aji", "f1", "fg_ratio")},
            }
            if name == "monuseg2018_test":
                # The model's own answer: its predictions moved by whole pixels, diagonally (the
                # test labels' offset), the border the moves touch cut away.
                for d in range(-2, 3):
                    scores = [
                        score_image(im.labels[2:-2, 2:-2], moved(p, d, d)[2:-2, 2:-2], im.stem)
                        for im, p in zip(images, preds)
                    ]
                    r["prediction_moved"][str(d)] = summary(scores)["aji"]
        at20: dict = {"first_of_2": [], "second_of_2": [], "majority_2x2": []}
        for im in test:
            h, w = im.labels.shape
            half = resize(
                im.rgb, (h // 2, w // 2, 3), order=1, anti_aliasing=True, preserve_range=True
            )
            pred = segment_image(np.rint(half).astype(np.uint8), im.mpp * 2, model)
            at20["first_of_2"].append(score_image(im.labels[::2, ::2], pred))
            at20["second_of_2"].append(score_image(im.labels[1::2, 1::2], pred))
            at20["majority_2x2"].append(score_image(majority_2x2(im.labels), pred))
        r["monuseg_test_at_20x"] = {k: summary(v)["aji"] for k, v in at20.items()}
        record["models"][model] = r

    print("\nMoNuSeg test: aggregate AJI with the predictions moved d px down and right")
    head = f"{'model':<34}" + "".join(f"{d:>8}" for d in range(-2, 3))
    print(head + "\n" + "-" * len(head))
    for model, r in record["models"].items():
        print(
            f"{Path(model).stem:<34}" + "".join(f"{v:8.4f}" for v in r["prediction_moved"].values())
        )
    print("\nAggregate AJI (F1): labels as given / moved onto the nuclei")
    head = f"{'model':<26}{'data set':<22}{'move':>9}{'as given':>17}{'moved':>17}"
    print(head + "\n" + "-" * len(head))
    for model, r in record["models"].items():
        for name, c in r["scores"].items():
            a, b = c["as_given"], c["labels_moved"]
            print(
                f"{Path(model).stem:<26}{Path(name).name:<22}{str(tuple(c['move'])):>9}"
                f"{a['aji']:>9.4f} ({a['f1']:.3f}){b['aji']:>9.4f} ({b['f1']:.3f})"
            )
    print("\nMoNuSeg test halved to 20x: aggregate AJI by how the labels were brought to 20x")
    head = f"{'model':<34}{'first of 2':>12}{'second of 2':>13}{'2x2 majority':>14}"
    print(head + "\n" + "-" * len(head))
    for model, r in record["models"].items():
        a = r["monuseg_test_at_20x"]
        print(
            f"{Path(model).stem:<34}{a['first_of_2']:12.4f}{a['second_of_2']:13.4f}"
            f"{a['majority_2x2']:14.4f}"
        )
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
