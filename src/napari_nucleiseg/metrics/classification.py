"""Scores of a binary classifier (tumour against the rest): AUC, accuracy, precision, recall."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def roc_auc(truth, score) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random
    negative (ties count half), from the Mann–Whitney rank sum. NaN with one class only."""
    truth = np.asarray(truth, bool)
    score = np.asarray(score, np.float64)
    pos, neg = int(truth.sum()), int((~truth).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[truth].sum() - pos * (pos + 1) / 2) / (pos * neg))


def binary_scores(truth, score, threshold: float = 0.5) -> dict:
    """``auc``, ``accuracy``, ``precision``, ``recall`` (and counts) at ``threshold``."""
    truth = np.asarray(truth, bool)
    pred = np.asarray(score, np.float64) >= threshold
    tp = int((pred & truth).sum())
    fp = int((pred & ~truth).sum())
    fn = int((~pred & truth).sum())
    return {
        "auc": roc_auc(truth, score),
        "accuracy": float((pred == truth).mean()) if truth.size else float("nan"),
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
        "positives": int(truth.sum()),
        "negatives": int((~truth).sum()),
    }
