"""The ``segment`` and ``eval`` commands: files in, files out, one line per problem."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np

#: Inputs above this many pixels are whole slides: they need the whole-slide job, not one read.
MAX_IMAGE_PIXELS = 120_000_000


def segment_files(inputs, out_dir, mpp=None, method=None, normaliser=None) -> int:
    import tifffile

    from ..io import SlideError, open_slide
    from .api import describe_method, segment_image
    from .measure import measure_nuclei, write_csv

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    try:
        info = describe_method(method, normaliser)
    except Exception as exc:  # unknown model name, weights failing their hash
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in inputs:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                slide = open_slide(path, mpp=mpp)
            if slide.mpp is None:
                raise SlideError(
                    path, "states no µm/px; give it with --mpp (e.g. 0.25 for 40x, 0.5 for 20x)"
                )
            h, w = slide.shape
            if h * w > MAX_IMAGE_PIXELS:
                raise SlideError(
                    path,
                    f"{w}x{h} px is a whole slide; segment its tissue with the whole-slide job",
                )
            rgb = slide.read_region(0, 0, w, h, 0)
            labels = segment_image(rgb, slide.mpp, method, normaliser=normaliser)
            dtype = np.uint16 if labels.max() < 65535 else np.uint32
            stem = Path(path).name.split(".")[0]
            meta = {"source": str(path), "mpp": slide.mpp, **info}
            tmp = out / f"{stem}.tif.part"
            # zlib level 1: label maps are mostly runs of zeros, so it compresses almost as well
            # as the default level 6 in a fraction of the time.
            tifffile.imwrite(
                tmp,
                labels.astype(dtype),
                compression="zlib",
                compressionargs={"level": 1},
                resolution=(1e4 / slide.mpp, 1e4 / slide.mpp),
                resolutionunit="CENTIMETER",
                description=json.dumps(meta),
                metadata=None,
            )
            tmp.replace(out / f"{stem}.tif")
            write_csv(measure_nuclei(labels, rgb, slide.mpp), out / f"{stem}.csv")
            print(f"{path}: {int(labels.max())} nuclei -> {out / (stem + '.tif')}")
        except SlideError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed.append(str(path))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def evaluate_dirs(pred_dir, gt_dir) -> int:
    import tifffile

    from ..metrics import aggregate, score_image

    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    if (gt_dir / "labels").is_dir():
        gt_dir = gt_dir / "labels"
    gts = {p.name.split(".")[0]: p for p in sorted(gt_dir.glob("*.tif*"))}
    if not gts:
        print(f"error: {gt_dir}: no ground-truth .tif label maps", file=sys.stderr)
        return 2
    scores, missing = [], []
    for stem, gt_path in gts.items():
        cands = list(pred_dir.glob(f"{stem}.tif")) + list(pred_dir.glob(f"{stem}.tiff"))
        if not cands:
            missing.append(stem)
            continue
        gt, pred = tifffile.imread(gt_path), tifffile.imread(cands[0])
        if pred.shape != gt.shape:
            print(
                f"error: {cands[0]}: shape {pred.shape} differs from ground truth {gt.shape}",
                file=sys.stderr,
            )
            return 2
        scores.append(score_image(gt, pred, stem))
    if not scores:
        print(f"error: {pred_dir}: no predictions matching the ground-truth names", file=sys.stderr)
        return 2
    cols = ["aji", "f1", "pq", "ap", "dice", "n_true", "n_pred"]
    print(f"{'image':<28}" + "".join(f"{c:>8}" for c in cols))
    for s in scores:
        r = s.as_row()
        print(
            f"{s.name[:28]:<28}"
            + "".join(f"{r[c]:>8.4f}" if isinstance(r[c], float) else f"{r[c]:>8}" for c in cols)
        )
    agg = aggregate(scores)
    m = agg["mean_per_image"]
    print(
        f"{'mean of images':<28}" + "".join(f"{m[c]:>8.4f}" if c in m else f"{'':>8}" for c in cols)
    )
    print(
        f"{'aggregate':<28}"
        + "".join(
            f"{agg[c]:>8.4f}" if isinstance(agg.get(c), float) else f"{agg.get(c, ''):>8}"
            for c in cols
        )
    )
    if missing:
        print(
            f"warning: no prediction for {len(missing)} image(s): {', '.join(missing)}",
            file=sys.stderr,
        )
    print(json.dumps({k: v for k, v in agg.items()}))
    return 1 if missing else 0
