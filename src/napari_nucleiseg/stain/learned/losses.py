"""The objectives of reference 002's stain-normalising CycleGAN with a segmentation decoder.

Two generators, G: X → Y (any stain to the lab's reference style) and F: Y → X, and two
discriminators, D_Y (is this reference style?) and D_X. With λ from :class:`LossWeights`:

* adversarial (LSGAN): ``mean((D_Y(G(x)) − 1)²) + mean((D_X(F(y)) − 1)²)`` for the generators,
  ``½[mean((D(real) − 1)²) + mean(D(fake)²)]`` for each discriminator. Least squares rather than
  the log loss: gradients do not vanish for fakes far on the right side of the boundary, which
  keeps small-batch training steadier;
* cycle: ``‖F(G(x)) − x‖₁ + ‖G(F(y)) − y‖₁`` (means) — the translation must keep the content;
* segmentation: binary cross-entropy of each generator's mask logit on its real input, only
  where a strong label exists (``valid``): unlabelled patches still train the translation;
* identity: ``‖G(y) − y‖₁ + ‖F(x) − x‖₁`` — a patch already in the target style stays as it is.

Total for the generators: ``λ_adv·adv + λ_cyc·cycle + λ_seg·seg + λ_idt·identity``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class LossWeights:
    """CycleGAN's standard weights: λ_cycle = 10, identity 0.5 · λ_cycle = 5 (its code's
    ``lambda_identity=0.5``). Identity is on because a slide already in the lab's style should
    come out unchanged; 0 skips the two extra generator passes. Segmentation at 1, as in
    reference 002's plain weighted sum."""

    adversarial: float = 1.0
    cycle: float = 10.0
    segmentation: float = 1.0
    identity: float = 5.0


def lsgan_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """``mean((D(fake) − 1)²)``: the generator wants its fakes scored as real (1)."""
    return (fake_scores - 1.0).pow(2).mean()


def lsgan_discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """``½[mean((D(real) − 1)²) + mean(D(fake)²)]``; the ½ slows the discriminator relative to
    the generator, as in CycleGAN."""
    return 0.5 * ((real_scores - 1.0).pow(2).mean() + fake_scores.pow(2).mean())


def cycle_loss(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference (L1): sharper reconstructions than L2, which averages edges."""
    return F.l1_loss(x_rec, x)


def segmentation_loss(
    mask_logit: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean binary cross-entropy with logits over the pixels ``valid`` marks.

    ``mask_logit`` (N, 1, H, W); ``target`` (N, 1, H, W) or (N, H, W), 1 = nucleus; ``valid`` None
    (every pixel), (N,) one flag per sample, or (N, [1,] H, W) per pixel. Pixels outside
    ``valid`` contribute nothing, whatever their target holds; with no valid pixel the loss is
    0 (and still part of the graph)."""
    target = target.to(mask_logit.dtype).reshape(mask_logit.shape)
    if valid is None:
        return F.binary_cross_entropy_with_logits(mask_logit, target)
    if valid.dim() == 1:
        valid = valid.reshape(-1, 1, 1, 1)
    valid = valid.to(torch.bool).reshape(valid.shape[0], 1, *valid.shape[-2:]).expand_as(target)
    zeros = torch.zeros_like(target)
    # Unlabelled targets may hold anything (an ignore value, NaN): zero them before the loss.
    per_pixel = F.binary_cross_entropy_with_logits(
        mask_logit, torch.where(valid, target, zeros), reduction="none"
    )
    return torch.where(valid, per_pixel, zeros).sum() / valid.sum().clamp(min=1)


@dataclass
class CyclePass:
    """Every generator output one training step needs, computed once and shared by the generator
    and discriminator objectives."""

    fake_y: torch.Tensor  # G(x)
    fake_x: torch.Tensor  # F(y)
    rec_x: torch.Tensor  # F(G(x))
    rec_y: torch.Tensor  # G(F(y))
    mask_x: torch.Tensor  # G's mask logit on x
    mask_y: torch.Tensor  # F's mask logit on y
    same_y: torch.Tensor | None = None  # G(y), for the identity term
    same_x: torch.Tensor | None = None  # F(x)


def cycle_pass(g_xy, g_yx, x: torch.Tensor, y: torch.Tensor, identity: bool = True) -> CyclePass:
    """Run G = ``g_xy`` and F = ``g_yx`` on real ``x`` and ``y``, the cycles back, and (with
    ``identity``) each generator on its own target domain."""
    fake_y, mask_x = g_xy(x)
    fake_x, mask_y = g_yx(y)
    same_y = g_xy(y)[0] if identity else None
    same_x = g_yx(x)[0] if identity else None
    return CyclePass(
        fake_y=fake_y,
        fake_x=fake_x,
        rec_x=g_yx(fake_y)[0],
        rec_y=g_xy(fake_x)[0],
        mask_x=mask_x,
        mask_y=mask_y,
        same_y=same_y,
        same_x=same_x,
    )


def generator_objective(
    cycle: CyclePass,
    d_x,
    d_y,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    x_mask: torch.Tensor | None = None,
    x_valid: torch.Tensor | None = None,
    y_mask: torch.Tensor | None = None,
    y_valid: torch.Tensor | None = None,
    weights: LossWeights = LossWeights(),
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted total for G and F, and each named term as a float for logging.

    ``x_mask`` / ``y_mask`` are strong nucleus labels of ``x`` / ``y`` (None: that domain has
    none in this batch), ``x_valid`` / ``y_valid`` which samples or pixels carry them."""
    terms = {
        "adversarial_xy": lsgan_generator_loss(d_y(cycle.fake_y)),
        "adversarial_yx": lsgan_generator_loss(d_x(cycle.fake_x)),
        "cycle_x": cycle_loss(x, cycle.rec_x),
        "cycle_y": cycle_loss(y, cycle.rec_y),
    }
    if x_mask is not None:
        terms["segmentation_x"] = segmentation_loss(cycle.mask_x, x_mask, x_valid)
    if y_mask is not None:
        terms["segmentation_y"] = segmentation_loss(cycle.mask_y, y_mask, y_valid)
    if weights.identity and (cycle.same_x is None or cycle.same_y is None):
        raise ValueError("identity weight > 0 needs cycle_pass(..., identity=True)")
    if cycle.same_x is not None and cycle.same_y is not None:
        terms["identity_x"] = cycle_loss(x, cycle.same_x)
        terms["identity_y"] = cycle_loss(y, cycle.same_y)
    weight_of = {
        "adversarial": weights.adversarial,
        "cycle": weights.cycle,
        "segmentation": weights.segmentation,
        "identity": weights.identity,
    }
    total = sum(weight_of[name.rsplit("_", 1)[0]] * value for name, value in terms.items())
    return total, _floats(terms, total)


def discriminator_objective(
    d_x, d_y, x: torch.Tensor, y: torch.Tensor, fake_x: torch.Tensor, fake_y: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """LSGAN loss of D_X (real ``x`` against ``fake_x`` = F(y)) plus that of D_Y (real ``y``
    against ``fake_y`` = G(x)), and each as a float. The fakes are detached here: this step
    trains the discriminators only. Pass pooled past fakes instead of this step's to damp
    oscillation, as CycleGAN does."""
    terms = {
        "discriminator_x": lsgan_discriminator_loss(d_x(x), d_x(fake_x.detach())),
        "discriminator_y": lsgan_discriminator_loss(d_y(y), d_y(fake_y.detach())),
    }
    total = terms["discriminator_x"] + terms["discriminator_y"]
    return total, _floats(terms, total)


def _floats(terms: dict[str, torch.Tensor], total: torch.Tensor) -> dict[str, float]:
    return {name: float(value.detach()) for name, value in terms.items()} | {
        "total": float(total.detach())
    }
