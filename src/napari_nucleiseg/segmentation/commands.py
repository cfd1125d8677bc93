"""Files in, files out: what ``nucleiseg segment`` and ``nucleiseg eval`` do, without the
printing. Functions return results and raise typed errors whose ``str()`` names the file and the
problem (:class:`~napari_nucleiseg.io.SlideError`, :class:`EvaluationError`); the command line
(:mod:`napari_nucleiseg.cli`) turns them into lines, progress bars and exit codes."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Inputs above this many pixels are whole slides: they need the whole-slide job, not one read.
MAX_IMAGE_PIXELS = 120_000_000


@dataclass
class SegmentedFile:
    """What :func:`segment_file` wrote for one input."""

    source: Path
    labels: Path
    table: Path
    nuclei: int
    mpp: float


def segment_file(
    path, out_dir, *, mpp=None, method=None, normaliser=None, info=None, progress=None
) -> SegmentedFile:
    """Segment the nuclei of one image (or small slide) into ``out_dir/<stem>.tif`` (labels,
    with ``info`` — what produced them — in the description) and ``out_dir/<stem>.csv``
    (measurements). ``out_dir`` is created only once there is something to write.

    ``progress(done, total)`` is called as tiles finish. Raises ``SlideError`` (names the file)
    for an unreadable input, one without µm/px, or one too large to read whole.
    """
    import tifffile

    from ..io import SlideError, open_slide
    from ..stain.errors import StainError
    from .api import describe_method, segment_image
    from .measure import measure_nuclei, write_csv

    if info is None:
        info = describe_method(method, normaliser)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slide = open_slide(path, mpp=mpp)
    try:
        if slide.mpp is None:
            raise SlideError(
                path, "states no µm/px; give it with --mpp (e.g. 0.25 for 40x, 0.5 for 20x)"
            )
        h, w = slide.shape
        if h * w > MAX_IMAGE_PIXELS:
            raise SlideError(
                path, f"{w}x{h} px is a whole slide; segment its tissue with the whole-slide job"
            )
        rgb = slide.read_region(0, 0, w, h, 0)
        px = float(slide.mpp)
    finally:
        slide.close()
    try:
        labels = segment_image(rgb, px, method, progress=progress, normaliser=normaliser)
    except StainError as exc:  # the normaliser cannot adapt to this image
        raise exc.for_path(path) from None
    dtype = np.uint16 if labels.max() < 65535 else np.uint32
    stem = Path(path).name.split(".")[0]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"source": str(path), "mpp": px, **info}
    tmp = out / f"{stem}.tif.part"
    # zlib level 1: label maps are mostly runs of zeros, so it compresses almost as well as the
    # default level 6 in a fraction of the time.
    tifffile.imwrite(
        tmp,
        labels.astype(dtype),
        compression="zlib",
        compressionargs={"level": 1},
        resolution=(1e4 / px, 1e4 / px),
        resolutionunit="CENTIMETER",
        description=json.dumps(meta),
        metadata=None,
    )
    tmp.replace(out / f"{stem}.tif")
    write_csv(measure_nuclei(labels, rgb, px), out / f"{stem}.csv")
    return SegmentedFile(
        Path(path), out / f"{stem}.tif", out / f"{stem}.csv", int(labels.max()), px
    )


class EvaluationError(ValueError):
    """Nothing can be scored: no ground truth, no matching predictions, or mismatched shapes.
    ``str()`` names the folder or file."""


@dataclass
class Evaluation:
    """Per-image scores, the data-set aggregate and the ground-truth images with no prediction."""

    scores: list
    aggregate: dict
    missing: list[str] = field(default_factory=list)


def evaluate_dirs(pred_dir, gt_dir, progress=None) -> Evaluation:
    """Score every ``pred_dir/<stem>.tif`` against ``gt_dir/<stem>.tif`` (or
    ``gt_dir/labels/``). ``progress(done, total)`` after each image. Raises
    :class:`EvaluationError`."""
    import tifffile

    from ..metrics import aggregate, score_image

    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    if (gt_dir / "labels").is_dir():
        gt_dir = gt_dir / "labels"
    gts = {p.name.split(".")[0]: p for p in sorted(gt_dir.glob("*.tif*"))}
    if not gts:
        raise EvaluationError(f"{gt_dir}: no ground-truth .tif label maps")
    scores, missing = [], []
    for i, (stem, gt_path) in enumerate(gts.items()):
        cands = list(pred_dir.glob(f"{stem}.tif")) + list(pred_dir.glob(f"{stem}.tiff"))
        if not cands:
            missing.append(stem)
        else:
            gt, pred = tifffile.imread(gt_path), tifffile.imread(cands[0])
            if pred.shape != gt.shape:
                raise EvaluationError(
                    f"{cands[0]}: shape {pred.shape} differs from ground truth {gt.shape}"
                )
            scores.append(score_image(gt, pred, stem))
        if progress is not None:
            progress(i + 1, len(gts))
    if not scores:
        raise EvaluationError(f"{pred_dir}: no predictions matching the ground-truth names")
    return Evaluation(scores, aggregate(scores), missing)
