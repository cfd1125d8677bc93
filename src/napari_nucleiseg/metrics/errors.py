"""Where a nuclei segmentation goes wrong, counted per true nucleus: the error budget.

Every true nucleus falls in exactly one class, decided from the overlap table
(:func:`~napari_nucleiseg.metrics.instance.contingency`), in this order:

- **matched**: one prediction overlaps it with IoU ≥ 0.5;
- **merged**: the prediction covering most of it holds at least half of it and at least half of
  another true nucleus (two or more nuclei drawn as one);
- **split**: two or more predictions each lie at least half inside it (one nucleus drawn as
  several);
- **missed**: no prediction lies mostly inside it and less than half of it is covered (nothing
  was drawn for it);
- **boundary**: the rest: something was drawn for it, but its best IoU is below 0.5 (the outline
  is wrong: drawn too small, too large or shifted).

Predictions with less than half of their pixels on true foreground are **spurious**. For matched
nuclei, ``matched_area_ratio`` is the pooled predicted area / true area: below 1 means nuclei drawn
too small even where they are found.
"""

from __future__ import annotations

import numpy as np

from .instance import contingency

CLASSES = ("matched", "missed", "merged", "split", "boundary")


def error_budget(true: np.ndarray, pred: np.ndarray) -> dict:
    """Counts of each class (see the module docstring), ``spurious`` predictions, and the pooled
    areas of matched pairs (``matched_true_px``, ``matched_pred_px``) so data sets can add up."""
    table, true_area, pred_area = contingency(np.asarray(true), np.asarray(pred))
    inter = table[1:, 1:].astype(np.float64)
    ta = true_area[1:].astype(np.float64)
    pa = pred_area[1:].astype(np.float64)
    counts = dict.fromkeys(CLASSES, 0) | {
        "spurious": 0,
        "n_true": len(ta),
        "n_pred": len(pa),
        "matched_true_px": 0.0,
        "matched_pred_px": 0.0,
    }
    if len(pa):
        counts["spurious"] = int((table[0, 1:] > 0.5 * pa).sum())
    if not len(ta):
        return counts
    if not len(pa):
        counts["missed"] = len(ta)
        return counts
    iou = inter / (ta[:, None] + pa[None, :] - inter)
    best = iou.argmax(axis=1)
    true_in_pred = inter / ta[:, None]  # share of each true nucleus inside each prediction
    pred_in_true = inter / pa[None, :]  # share of each prediction inside each true nucleus
    main = inter.argmax(axis=1)  # the prediction covering most of each true nucleus
    halves_per_pred = (true_in_pred >= 0.5).sum(axis=0)
    inside = (pred_in_true >= 0.5).sum(axis=1)  # predictions lying mostly inside each nucleus
    covered = inter.sum(axis=1) >= 0.5 * ta
    for i in range(len(ta)):
        if iou[i, best[i]] >= 0.5:
            counts["matched"] += 1
            counts["matched_true_px"] += ta[i]
            counts["matched_pred_px"] += pa[best[i]]
        elif true_in_pred[i, main[i]] >= 0.5 and halves_per_pred[main[i]] >= 2:
            counts["merged"] += 1
        elif inside[i] >= 2:
            counts["split"] += 1
        elif inside[i] == 0 and not covered[i]:
            counts["missed"] += 1
        else:
            counts["boundary"] += 1
    return counts


def pooled_budget(budgets: list[dict]) -> dict:
    """Sum of per-image budgets, with each class as a share of the true nuclei and the matched
    area ratio."""
    total = {k: sum(b[k] for b in budgets) for k in budgets[0]}
    n = max(1, total["n_true"])
    out = {k: int(total[k]) for k in CLASSES + ("spurious", "n_true", "n_pred")}
    out |= {f"{k}_share": round(total[k] / n, 4) for k in CLASSES}
    out["spurious_share_of_pred"] = round(total["spurious"] / max(1, total["n_pred"]), 4)
    out["matched_area_ratio"] = round(
        total["matched_pred_px"] / max(1.0, total["matched_true_px"]), 4
    )
    return out
