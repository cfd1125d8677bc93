"""Vectorised instance-segmentation metrics from one contingency table per image.

Everything comes from the table of overlaps between ground-truth and predicted objects (one
``bincount`` over the image), never from per-object loops over pixels:

- pixel accuracy, mean (per-class) accuracy, mean IU and Dice of the foreground;
- object F1 at IoU 0.5, AP averaged over IoU 0.5:0.05:0.95 as TP/(TP+FP+FN) (reference 000), and
  panoptic quality PQ = DQ × SQ — for IoU > 0.5 matches are unique, so no assignment solver is
  needed;
- AJI (Kumar et al. 2017): each true nucleus takes the prediction of highest IoU; unmatched
  predictions join the union. Over a data set, numerators and denominators are summed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

AP_THRESHOLDS = np.round(np.arange(0.5, 0.951, 0.05), 2)


@dataclass
class ImageScores:
    """Scores of one image plus the raw counts that aggregate over a data set."""

    name: str = ""
    n_true: int = 0
    n_pred: int = 0
    pixel_accuracy: float = 0.0
    mean_accuracy: float = 0.0
    mean_iu: float = 0.0
    dice: float = 0.0
    f1: float = 0.0
    precision: float = 0.0
    recall: float = 0.0
    aji: float = 0.0
    dq: float = 0.0
    sq: float = 0.0
    pq: float = 0.0
    ap: float = 0.0
    # raw sums for data-set aggregation
    counts: dict = field(default_factory=dict, repr=False)

    def as_row(self) -> dict:
        d = asdict(self)
        d.pop("counts")
        return d


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Map ids to 1..n (0 stays background) so table sizes follow object counts, not id values."""
    labels = np.asarray(labels)
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape)
    if ids[0] == 0:
        return inverse, len(ids) - 1
    return inverse + 1, len(ids)


def contingency(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Overlap table ``(n_true + 1, n_pred + 1)`` (row/col 0 = background) and the object areas."""
    if true.shape != pred.shape:
        raise ValueError(f"label maps differ in shape: {true.shape} vs {pred.shape}")
    t, nt = _relabel(true)
    p, npred = _relabel(pred)
    table = np.bincount(
        (t.astype(np.int64) * (npred + 1) + p).ravel(), minlength=(nt + 1) * (npred + 1)
    )
    table = table.reshape(nt + 1, npred + 1)
    return table, table.sum(axis=1), table.sum(axis=0)


def score_image(true: np.ndarray, pred: np.ndarray, name: str = "") -> ImageScores:
    """All metrics for one pair of instance label maps (0 = background)."""
    table, true_area, pred_area = contingency(true, pred)
    inter = table[1:, 1:].astype(np.float64)
    ta, pa = true_area[1:].astype(np.float64), pred_area[1:].astype(np.float64)
    nt, npred = len(ta), len(pa)
    union = ta[:, None] + pa[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)

    # Pixel level: foreground = any nucleus.
    total = float(table.sum())
    bg_bg = float(table[0, 0])
    fg_fg = float(table[1:, 1:].sum())
    fg_true, fg_pred = float(ta.sum()), float(pa.sum())
    bg_true, bg_pred = total - fg_true, total - fg_pred
    acc = (bg_bg + fg_fg) / total if total else 1.0
    rec_fg = fg_fg / fg_true if fg_true else 1.0
    rec_bg = bg_bg / bg_true if bg_true else 1.0
    iu_fg = fg_fg / (fg_true + fg_pred - fg_fg) if (fg_true + fg_pred - fg_fg) else 1.0
    iu_bg = bg_bg / (bg_true + bg_pred - bg_bg) if (bg_true + bg_pred - bg_bg) else 1.0
    dice = 2 * fg_fg / (fg_true + fg_pred) if (fg_true + fg_pred) else 1.0

    # Object level: IoU > 0.5 pairs are one-to-one.
    ap_terms = []
    tp_by_thr = {}
    for thr in AP_THRESHOLDS:
        tp = int((iou > thr).sum()) if inter.size else 0
        tp_by_thr[float(thr)] = tp
        denom = tp + (npred - tp) + (nt - tp)
        ap_terms.append(tp / denom if denom else 1.0)
    tp = tp_by_thr[0.5]
    fp, fn = npred - tp, nt - tp
    matched_iou_sum = float(iou[iou > 0.5].sum()) if inter.size else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0
    dq = tp / (tp + 0.5 * fp + 0.5 * fn) if (tp + fp + fn) else 1.0
    sq = matched_iou_sum / tp if tp else (1.0 if not (fp + fn) else 0.0)

    # AJI: every true object takes its highest-IoU prediction (ties: the first).
    if nt:
        if npred:
            best = iou.argmax(axis=1)
            has = iou[np.arange(nt), best] > 0
            aji_inter = float(inter[np.arange(nt), best][has].sum())
            aji_union = float(union[np.arange(nt), best][has].sum() + ta[~has].sum())
            used = np.zeros(npred, bool)
            used[best[has]] = True
            aji_union += float(pa[~used].sum())
        else:
            aji_inter, aji_union = 0.0, float(ta.sum())
    else:
        aji_inter, aji_union = 0.0, float(pa.sum())
    aji = aji_inter / aji_union if aji_union else 1.0

    return ImageScores(
        name=name,
        n_true=nt,
        n_pred=npred,
        pixel_accuracy=acc,
        mean_accuracy=(rec_fg + rec_bg) / 2,
        mean_iu=(iu_fg + iu_bg) / 2,
        dice=dice,
        f1=f1,
        precision=tp / npred if npred else float(nt == 0),
        recall=tp / nt if nt else float(npred == 0),
        aji=aji,
        dq=dq,
        sq=sq,
        pq=dq * sq,
        ap=float(np.mean(ap_terms)),
        counts={
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "iou_sum": matched_iou_sum,
            "aji_inter": aji_inter,
            "aji_union": aji_union,
            "tp_by_thr": tp_by_thr,
            "n_true": nt,
            "n_pred": npred,
            "bg_bg": bg_bg,
            "fg_fg": fg_fg,
            "fg_true": fg_true,
            "fg_pred": fg_pred,
            "total": total,
        },
    )


def aggregate(scores: list[ImageScores]) -> dict:
    """Data-set scores: AJI, F1, PQ and AP from summed counts ("aggregate"), plus per-image
    means."""
    if not scores:
        raise ValueError("no images to aggregate")
    c = {
        k: sum(s.counts[k] for s in scores)
        for k in (
            "tp",
            "fp",
            "fn",
            "iou_sum",
            "aji_inter",
            "aji_union",
            "n_true",
            "n_pred",
            "fg_fg",
            "fg_true",
            "fg_pred",
        )
    }
    tp, fp, fn = c["tp"], c["fp"], c["fn"]
    dq = tp / (tp + 0.5 * fp + 0.5 * fn) if (tp + fp + fn) else 1.0
    sq = c["iou_sum"] / tp if tp else 0.0
    ap_terms = []
    for thr in AP_THRESHOLDS:
        t = sum(s.counts["tp_by_thr"][float(thr)] for s in scores)
        ap_terms.append(
            t / (c["n_pred"] + c["n_true"] - t) if (c["n_pred"] + c["n_true"] - t) else 1.0
        )
    rows = [s.as_row() for s in scores]
    means = {
        k: float(np.mean([r[k] for r in rows])) for k in rows[0] if isinstance(rows[0][k], float)
    }
    return {
        "images": len(scores),
        "aji": c["aji_inter"] / c["aji_union"] if c["aji_union"] else 1.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0,
        "dq": dq,
        "sq": sq,
        "pq": dq * sq,
        "ap": float(np.mean(ap_terms)),
        "dice": 2 * c["fg_fg"] / (c["fg_true"] + c["fg_pred"])
        if (c["fg_true"] + c["fg_pred"])
        else 1.0,
        "n_true": c["n_true"],
        "n_pred": c["n_pred"],
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "mean_per_image": means,
    }
