"""Pixel losses for the segmentation decoder (reference 001, eq. 1-3).

``dynamic``: the dynamically weighted cross-entropy ``w(x) = exp(ln(100) · p(x)^β)``, where
``p(x)`` is the network's own (detached) probability of the labelled class at pixel ``x``; weights
run from 1 (p = 0) to 100 (p = 1) and are renormalised to mean 1 over the batch so the learning
rate means the same for every β. The reference picks β = 3. ``fixed``: class-frequency weights
computed once per batch (the fixed-weight cross-entropy it compares against). ``plain``: none.
The total loss is ``L_seg + α · L_cls`` (α = 1 in the reference).
"""

from __future__ import annotations

import math

from .tiles import IGNORE

PIXEL_LOSSES = ("dynamic", "fixed", "plain")


def pixel_loss(logits, target, kind: str = "dynamic", beta: float = 3.0):
    """Mean cross-entropy over labelled pixels; ``logits`` (N, C, H, W), ``target`` (N, H, W)
    long with :data:`IGNORE` for unlabelled pixels."""
    import torch
    from torch.nn import functional as F

    if kind not in PIXEL_LOSSES:
        raise ValueError(f"pixel loss must be one of {PIXEL_LOSSES}, got {kind!r}")
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
    valid = target != IGNORE
    if not valid.any():
        return logits.sum() * 0.0
    if kind == "plain":
        return ce[valid].mean()
    if kind == "fixed":
        classes = logits.shape[1]
        counts = torch.bincount(target[valid], minlength=classes).float()
        w_class = counts.sum() / (classes * counts.clamp(min=1))
        w = w_class[target.clamp(max=classes - 1)]
    else:
        with torch.no_grad():
            p = torch.softmax(logits, 1).gather(1, target.clamp(max=logits.shape[1] - 1)[:, None])
            w = torch.exp(math.log(100.0) * p[:, 0].pow(beta))
    w = w[valid]
    return (w * ce[valid]).sum() / w.sum()
