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
    #: Every nucleus' area (µm²), as in the table: what the µm/px check reads.
    areas_um2: np.ndarray | None = None


def result_source(path) -> str | None:
    """The input that the labels TIFF at ``path`` (one :func:`segment_file` wrote) was made
    from, or None when ``path`` is not such a file (another image, unreadable, absent)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            meta = json.loads(tif.pages[0].description or "null")
    except Exception:  # noqa: BLE001 (any file that is not a readable result TIFF: not one)
        return None
    if isinstance(meta, dict) and "source" in meta and "mpp" in meta and "method" in meta:
        return str(meta["source"])
    return None


def segment_file(
    path, out_dir, *, mpp=None, method=None, normaliser=None, info=None, progress=None, stem=None
) -> SegmentedFile:
    """Segment the nuclei of one image (or small slide) into ``out_dir/<stem>.tif`` (labels,
    with ``info`` — what produced them — in the description) and ``out_dir/<stem>.csv``
    (measurements); ``stem`` defaults to :func:`~napari_nucleiseg.io.output.output_stem`.
    ``out_dir`` is created only once there is something to write, and the two files appear
    together or not at all.

    ``progress(done, total)`` is called as tiles finish. Raises ``SlideError`` (names the file)
    for an unreadable input, one without µm/px, or one too large to read whole, and its
    ``OutputError`` (names the output) when the results cannot be written.
    """
    from concurrent.futures import ThreadPoolExecutor

    import tifffile

    from ..io import SlideError, open_slide
    from ..io.output import OutputError, output_stem, write_together
    from ..stain.errors import StainError
    from ..tiling.plan import ResolutionError
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
    except ResolutionError as exc:  # its µm/px is implausible for the method: one line, go on
        raise SlideError(path, str(exc)) from None
    dtype = np.uint16 if labels.max() < 65535 else np.uint32
    out = Path(out_dir)
    stem = output_stem(path) if stem is None else stem
    labels_path, table_path = out / f"{stem}.tif", out / f"{stem}.csv"
    meta = {"source": str(path), "mpp": px, **info}

    def write_labels(tmp):
        # zlib level 1: label maps are mostly runs of zeros, so it compresses almost as well as
        # the default level 6 in a fraction of the time.
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

    # The measurements are taken while the label TIFF is compressed (zlib and most of numpy
    # release the GIL): on a dense 16 MP field these are ~1 s and ~0.5 s, one after the other on
    # one core while the other waited.
    with ThreadPoolExecutor(1, thread_name_prefix="nucleiseg-measure") as pool:
        measuring = pool.submit(measure_nuclei, labels, rgb, px)
        try:
            # Both or neither: a labels file without its table (or an older table) misleads.
            write_together(
                {
                    labels_path: write_labels,
                    table_path: lambda tmp: write_csv(measuring.result(), tmp),
                }
            )
        except OutputError as exc:
            raise OutputError(
                exc.path, f"{exc.problem}; nothing was written for {Path(path).name}"
            ) from None
        table = measuring.result()
    return SegmentedFile(
        Path(path), labels_path, table_path, int(labels.max()), px, table["area_um2"]
    )


class EvaluationError(ValueError):
    """Nothing can be scored: no ground truth, or no prediction matching it. ``str()`` names the
    folder."""


@dataclass
class Evaluation:
    """Per-image scores, the data-set aggregate, the ground-truth images with no prediction, and
    the lines about images scored with a doubt (``warnings``) or not scored (``refused``), each
    naming its file."""

    scores: list
    aggregate: dict
    missing: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def read_label_map(path) -> tuple[np.ndarray, list[str]]:
    """A label TIFF as integer ids and the warnings about it; ``EvaluationError`` naming the
    file when it cannot be read or cannot be scored (see
    :func:`~napari_nucleiseg.metrics.check_label_map`)."""
    import tifffile

    from ..metrics import LabelMapError, check_label_map

    try:
        arr = tifffile.imread(path)
    except MemoryError:
        raise
    except Exception as exc:  # tifffile's own, zlib's, struct's: a damaged file, said once
        raise EvaluationError(
            f"{path}: not a readable label TIFF ({type(exc).__name__}: {exc})"
        ) from None
    try:
        labels, notes = check_label_map(arr)
    except LabelMapError as exc:
        raise EvaluationError(f"{path}: {exc}") from None
    return labels, [f"{path}: {n}" for n in notes]


def evaluate_dirs(pred_dir, gt_dir, progress=None, report=None) -> Evaluation:
    """Score every ``pred_dir/<stem>.tif`` against ``gt_dir/<stem>.tif`` (or
    ``gt_dir/labels/``); ``<stem>`` is the name less its last suffix, as ``segment`` writes it.

    An image that cannot be scored (unreadable, not instance labels, another shape than its
    ground truth) is left out with a line in ``refused`` and the others are scored; doubtful
    ones (binary masks, float ids) are scored with a line in ``warnings``. ``report(kind, line)``
    (kind ``"warning"`` or ``"error"``) as each line arises, ``progress(done, total)`` after
    each image. Raises :class:`EvaluationError` when there is no ground truth or no prediction
    matches it."""
    from ..io.output import output_stem
    from ..metrics import aggregate, score_image

    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for folder in (pred_dir, gt_dir):
        if not folder.is_dir():
            raise EvaluationError(
                f"{folder}: {'not a folder' if folder.exists() else 'no such folder'}"
            )
    if (gt_dir / "labels").is_dir():
        gt_dir = gt_dir / "labels"
    gts: dict[str, Path] = {}
    for p in sorted(gt_dir.glob("*.tif*")):
        if p.suffix.lower() in (".tif", ".tiff") and not p.name.startswith("."):
            gts.setdefault(output_stem(p), p)
    if not gts:
        raise EvaluationError(f"{gt_dir}: no ground-truth .tif label maps")
    result = Evaluation([], {})

    def note(kind, line):
        (result.warnings if kind == "warning" else result.refused).append(line)
        if report is not None:
            report(kind, line)

    preds = {
        stem: [c for c in (pred_dir / f"{stem}.tif", pred_dir / f"{stem}.tiff") if c.is_file()]
        for stem in gts
    }
    if not any(preds.values()):  # said before any progress, not after reading every image
        raise EvaluationError(f"{pred_dir}: no predictions matching the ground-truth names")
    for i, (stem, gt_path) in enumerate(gts.items()):
        cands = preds[stem]
        if not cands:
            result.missing.append(stem)
        else:
            try:
                gt, gt_notes = read_label_map(gt_path)
                pred, pred_notes = read_label_map(cands[0])
                if pred.shape != gt.shape:
                    raise EvaluationError(
                        f"{cands[0]}: shape {pred.shape} differs from its ground truth "
                        f"{gt_path} {gt.shape}; not scored"
                    )
            except EvaluationError as exc:
                note("error", str(exc))
            else:
                for line in gt_notes + pred_notes:
                    note("warning", line)
                result.scores.append(score_image(gt, pred, stem))
        if progress is not None:
            progress(i + 1, len(gts))
    if result.scores:
        result.aggregate = aggregate(result.scores)
    return result
