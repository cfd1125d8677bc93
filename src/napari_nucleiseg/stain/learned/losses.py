"""The objectives of reference 002's stain-normalising CycleGAN with a segmentation decoder.

Two generators, G: X → Y (any stain to the lab's reference style) and F: Y → X, and two
discriminators, D_Y (is this reference style?) and D_X. With λ from :class:`LossWeights`:

* adversarial (LSGAN): ``mean((D_Y(G(x)) − 1)²) + mean((D_X(F(y)) − 1)²)`` for the generators,
  ``½[mean((D(real) − 1)²) + mean(D(fake)²)]`` for each discriminator. Least squares rather than
  the log loss: gradients do not vanish for fakes far on the right side of the boundary, which
  keeps small-batch training steadier;
* cycle: ``‖F(G(x)) − x‖₁ + ‖G(F(y)) − y‖₁`` (means) — the translation must keep the content;
* segmentation: each generator's nuclei maps on its real input against a strong label, only for
  the samples that have one (``valid``): unlabelled patches still train the translation. The
  foreground term is reference 002's binary cross-entropy; the contour and distance terms of the
  nuclei models' loss (:func:`~napari_nucleiseg.training.seg_train.loss_fn`) come with it, because
  a foreground mask alone cannot part touching nuclei;
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
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """The nuclei loss of the samples ``valid`` marks.

    ``logits`` (N, 3, H, W) [foreground, contour, distance]; ``targets`` (N, 3, H, W) from
    :func:`~napari_nucleiseg.segmentation.targets.make_targets`; ``valid`` None (every sample) or
    (N,) one flag per sample. Targets of unlabelled samples may hold anything. With no valid
    sample the loss is 0 (and still part of the graph)."""
    from ...training.seg_train import loss_fn

    if valid is None:
        return loss_fn(logits, targets.to(logits.dtype))
    keep = valid.to(torch.bool).reshape(-1)
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return loss_fn(logits[keep], targets[keep].to(logits.dtype))


@dataclass
class CyclePass:
    """Every generator output one training step needs, computed once and shared by the generator
    and discriminator objectives."""

    fake_y: torch.Tensor  # G(x)
    fake_x: torch.Tensor  # F(y)
    rec_x: torch.Tensor  # F(G(x))
    rec_y: torch.Tensor  # G(F(y))
    mask_x: torch.Tensor | None  # G's nuclei logits on x (None: not computed this step)
    mask_y: torch.Tensor | None  # F's nuclei logits on y
    same_y: torch.Tensor | None = None  # G(y), for the identity term
    same_x: torch.Tensor | None = None  # F(x)


@dataclass
class CycleMaps:
    """The stain map (N, 9) each generator pass is told (see :func:`cycle_maps`)."""

    xy: torch.Tensor  # G(x): x's stain → the reference
    yx: torch.Tensor  # F(y): the reference → another sample's X stain
    back_x: torch.Tensor  # F(G(x)): the reference → x's stain
    back_y: torch.Tensor  # G(F(y)): that X stain → the reference
    same_y: torch.Tensor  # G(y): y's measured stain → the reference
    same_x: torch.Tensor  # F(x): the identity map


def cycle_maps(s_x, s_y, reference) -> CycleMaps:
    """Every pass's stain map from the stain vectors of the X and Y patches (N, 8) and the
    reference style's (8,) (numpy, from :mod:`.data`). F(y) is given another sample's X stain
    (``s_x`` rolled by one), so fakes of X come in the stains X has."""
    import numpy as np

    from .data import IDENTITY_MAP, stain_map

    def maps(pairs):
        return torch.from_numpy(np.stack([stain_map(a, b) for a, b in pairs]))

    other = np.roll(s_x, 1, axis=0)
    n = len(s_x)
    return CycleMaps(
        xy=maps((s, reference) for s in s_x),
        yx=maps((reference, s) for s in other),
        back_x=maps((reference, s) for s in s_x),
        back_y=maps((s, reference) for s in other),
        same_y=maps((s, reference) for s in s_y),
        same_x=torch.from_numpy(np.tile(IDENTITY_MAP, (n, 1))),
    )


def cycle_pass(
    g_xy,
    g_yx,
    x: torch.Tensor,
    y: torch.Tensor,
    maps: CycleMaps,
    identity: bool = True,
    segment: bool = True,
) -> CyclePass:
    """Run G = ``g_xy`` and F = ``g_yx`` (:class:`~.network.CycleGenerator`) on real ``x`` and
    ``y``, the cycles back, and (with ``identity``) each generator on its own target domain,
    each told its stain map (:class:`CycleMaps`). Only the passes on real patches run the
    segmentation decoder, and only with ``segment``: the others need RGB alone, which reads
    just the encoder's first levels."""
    if segment:
        fake_y, mask_x = g_xy(x, maps.xy)
        fake_x, mask_y = g_yx(y, maps.yx)
    else:
        fake_y, mask_x = g_xy.normalise(x, maps.xy), None
        fake_x, mask_y = g_yx.normalise(y, maps.yx), None
    same_y = g_xy.normalise(y, maps.same_y) if identity else None
    same_x = g_yx.normalise(x, maps.same_x) if identity else None
    return CyclePass(
        fake_y=fake_y,
        fake_x=fake_x,
        rec_x=g_yx.normalise(fake_y, maps.back_x),
        rec_y=g_xy.normalise(fake_x, maps.back_y),
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

    ``x_mask`` / ``y_mask`` are nuclei targets of ``x`` / ``y`` (None: that domain has none in
    this batch), ``x_valid`` / ``y_valid`` which samples carry them."""
    terms = {
        "adversarial_xy": lsgan_generator_loss(d_y(cycle.fake_y)),
        "adversarial_yx": lsgan_generator_loss(d_x(cycle.fake_x)),
        "cycle_x": cycle_loss(x, cycle.rec_x),
        "cycle_y": cycle_loss(y, cycle.rec_y),
    }
    if x_mask is not None and cycle.mask_x is not None:
        terms["segmentation_x"] = segmentation_loss(cycle.mask_x, x_mask, x_valid)
    if y_mask is not None and cycle.mask_y is not None:
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


def lab_moments(rgb: torch.Tensor, tissue: torch.Tensor) -> torch.Tensor:
    """Per-image CIE Lab mean and standard deviation (N, 6) of ``rgb`` (N, 3, H, W) in [0, 1]
    (sRGB, D65) over the pixels ``tissue`` (N, H, W) marks; differentiable."""
    lin = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055).clamp(min=1e-6) ** 2.4)
    m = torch.tensor(
        [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]],
        dtype=rgb.dtype,
    )
    white = torch.tensor([0.95047, 1.0, 1.08883], dtype=rgb.dtype)
    xyz = torch.einsum("ij,njhw->nihw", m, lin) / white[None, :, None, None]
    f = torch.where(xyz > 0.008856, xyz.clamp(min=1e-6) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    lab = torch.stack(
        [116.0 * f[:, 1] - 16.0, 500.0 * (f[:, 0] - f[:, 1]), 200.0 * (f[:, 1] - f[:, 2])], 1
    )
    w = tissue.to(rgb.dtype)[:, None]
    count = w.sum((2, 3)).clamp(min=1.0)
    mean = (lab * w).sum((2, 3)) / count
    var = (((lab - mean[:, :, None, None]) ** 2) * w).sum((2, 3)) / count
    return torch.cat([mean, (var + 1e-6).sqrt()], 1)


def colour_moment_loss(fake: torch.Tensor, real: torch.Tensor, reference: torch.Tensor):
    """How far the Lab mean and spread of each translated patch ``fake`` lie from the reference
    style's (``reference`` (6,), :func:`lab_moments` pooled over the reference tiles), in tens
    of Lab units, over the tissue of the real patch it came from (any channel below 220/255).
    Why: the adversarial term alone left the teacher's colours too contrasted (Lab spread +4
    above the reference on MoNuSeg test, Macenko +3); the style is first of all these six
    numbers."""
    tissue = real.amin(1) < 220.0 / 255.0
    return ((lab_moments(fake, tissue) - reference[None]).abs() / 10.0).mean()
