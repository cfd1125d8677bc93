"""The learned normaliser's networks and losses (issue 18): the generator starts as the identity
and as its nuclei model, the student starts as its teacher, the losses are what they say."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_nucleiseg.segmentation.unet import UNet
from napari_nucleiseg.stain.learned import (
    AttentionGate,
    CycleGenerator,
    CycleMaps,
    LossWeights,
    PatchDiscriminator,
    SegmentPath,
    count_parameters,
    cycle_loss,
    cycle_pass,
    discriminator_objective,
    generator_objective,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    segmentation_loss,
)

WIDTHS = (8, 16, 32, 64)


def _eye(n: int = 1) -> torch.Tensor:
    return torch.eye(3).reshape(1, 9).repeat(n, 1)


def _generator(layers: int = 0, seed: int = 0) -> CycleGenerator:
    torch.manual_seed(seed)
    return CycleGenerator(WIDTHS, "light", norm_levels=3, transformer_layers=layers).eval()


def test_a_new_generator_told_the_identity_map_is_the_identity_and_outputs_three_maps():
    g = _generator()
    x = torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        rgb, logits = g(x, _eye(2))
        alone = g.normalise(x, _eye(2))
    assert rgb.shape == x.shape and logits.shape == (2, 3, 48, 64)
    assert (rgb - x).abs().max() <= 0.5 / 255 + 1e-6
    assert torch.allclose(alone, rgb)  # the RGB-only path reads fewer levels, same result


def test_the_nuclei_decoder_is_the_unet_it_started_from():
    torch.manual_seed(1)
    unet = UNet(WIDTHS, decoder="light").eval()
    g = _generator()
    g.unet.load_state_dict(unet.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(SegmentPath(g)(x), unet(x), atol=1e-6)


def test_the_student_starts_as_its_teacher_and_has_more_weights():
    teacher, student = _generator(0), _generator(layers=2)
    student.load_state_dict(teacher.state_dict(), strict=False)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(teacher(x, _eye()), student(x, _eye())):
            assert torch.allclose(a, b, atol=1e-6)
    assert count_parameters(student) > count_parameters(teacher)
    student.train()
    rgb, logits = student(x, _eye())
    logits.sum().backward()  # the Transformer trains: its zeroed output layers get gradients
    assert student.transformer[0].proj.weight.grad.abs().sum() > 0


def test_batchnorm_keeps_its_statistics_while_the_rest_trains():
    g = _generator()
    g.train()
    g.freeze_statistics()
    before = g.unet.down[0][1].running_mean.clone()
    g(torch.rand(2, 3, 32, 32) * 0.2, _eye(2))
    assert torch.equal(before, g.unet.down[0][1].running_mean)
    assert g.head.training  # the rest is still in training mode


def test_gradients_reach_the_residual_head_from_a_colour_loss():
    g = _generator()
    g.train()
    x = torch.rand(1, 3, 32, 32)
    g.normalise(x, _eye())[:, 0].mean().backward()  # "make it redder"
    assert g.head[-1].weight.grad.abs().sum() > 0


def test_attention_gate_weights_the_skip_by_alpha_in_unit_range():
    gate = AttentionGate(4, 8)
    skip, deep = torch.rand(1, 4, 16, 16), torch.rand(1, 8, 8, 8)
    out = gate(skip, deep)
    alpha = gate.last_alpha
    assert alpha.shape == (1, 1, 16, 16) and float(alpha.min()) >= 0 and float(alpha.max()) <= 1
    assert torch.allclose(out, skip * alpha)


def test_every_gate_of_the_normalisation_decoder_sees_its_own_level():
    g = _generator()
    with torch.no_grad():
        g.normalise(torch.rand(1, 3, 64, 64), _eye())
    sizes = [a.shape[-1] for a in g.attention_maps()]
    assert sizes == [32]  # the half-resolution skip, gated by the level below (norm_levels = 3)


def test_the_stain_map_is_applied_to_optical_densities():
    """Told a map A with no learned correction, the output is exp(-A·od): Macenko's own map."""
    from napari_nucleiseg.stain.learned.network import od_affine

    x = torch.rand(1, 3, 8, 8) * 0.8 + 0.1
    a = torch.tensor([[0.9, 0.1, 0.0, 0.0, 1.2, 0.1, 0.05, 0.0, 0.8]])
    g = _generator()
    with torch.no_grad():
        out = g.normalise(x, a)
    od = -torch.log(x)
    expected = torch.exp(-torch.einsum("ij,njhw->nihw", a.reshape(3, 3), od))
    assert torch.allclose(out, expected.clamp(0, 1), atol=1e-5)
    assert torch.allclose(od_affine(x, torch.zeros(1, 12, 8, 8), _eye()), x, atol=1e-6)


def test_patch_discriminator_scores_70_px_patches_without_a_sigmoid_or_normalisation():
    d = PatchDiscriminator().eval()
    with torch.no_grad():
        scores = d(torch.rand(1, 3, 256, 256))
    assert scores.shape == (1, 1, 30, 30)
    assert isinstance(d.net[-1], nn.Conv2d)
    assert not any(isinstance(m, (nn.GroupNorm, nn.BatchNorm2d, nn.InstanceNorm2d)) for m in d.net)
    field, jump = 1, 1
    for conv in (m for m in d.net if isinstance(m, nn.Conv2d)):
        field += (conv.kernel_size[0] - 1) * jump
        jump *= conv.stride[0]
    assert field == 70
    # A colour cast changes the scores: per-image normalisation would have removed it.
    x = torch.rand(1, 3, 64, 64) * 0.5
    with torch.no_grad():
        assert not torch.allclose(d(x), d(x + torch.tensor([0.3, 0.0, 0.0])[:, None, None]))


def test_lsgan_and_cycle_losses_match_a_hand_computation():
    fake = torch.tensor([0.0, 1.0, 2.0, 0.5])
    assert lsgan_generator_loss(fake).item() == pytest.approx((1 + 0 + 1 + 0.25) / 4)
    real, fake = torch.tensor([0.5, 1.0]), torch.tensor([0.2, -0.4])
    assert lsgan_discriminator_loss(real, fake).item() == pytest.approx(
        0.5 * ((0.25 + 0.0) / 2 + (0.04 + 0.16) / 2)
    )
    x, rec = torch.tensor([0.0, 0.5, 1.0]), torch.tensor([0.1, 0.5, 0.7])
    assert cycle_loss(x, rec).item() == pytest.approx(0.4 / 3)


def test_segmentation_loss_counts_only_labelled_samples():
    from napari_nucleiseg.segmentation.targets import make_targets
    from napari_nucleiseg.training.seg_train import loss_fn

    lab = np.zeros((32, 32), np.int32)
    lab[4:12, 4:12], lab[16:26, 10:20] = 1, 2
    targets = torch.from_numpy(np.stack([make_targets(lab), make_targets(lab)]))
    logits = torch.randn(2, 3, 32, 32, requires_grad=True)
    every = loss_fn(logits, targets).item()
    assert segmentation_loss(logits, targets).item() == pytest.approx(every, rel=1e-6)
    first = loss_fn(logits[:1], targets[:1]).item()
    junk = targets.clone()
    junk[1] = float("nan")  # an unlabelled sample's targets may hold anything
    loss = segmentation_loss(logits, junk, torch.tensor([True, False]))
    assert loss.item() == pytest.approx(first, rel=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[1] == 0).all()
    none = segmentation_loss(logits, targets, torch.tensor([False, False]))
    assert none.item() == 0.0 and none.requires_grad


def _setup(seed: int = 0, size: int = 32):
    torch.manual_seed(seed)
    g_xy, g_yx = (CycleGenerator(WIDTHS, "light", 3).train() for _ in range(2))
    for g in (g_xy, g_yx):
        with torch.no_grad():
            g.head[-1].weight.normal_(0, 0.1)  # not the identity, so every term is non-zero
    d_x, d_y = PatchDiscriminator((4, 8)), PatchDiscriminator((4, 8))
    return (g_xy, g_yx, d_x, d_y), torch.rand(2, 3, size, size), torch.rand(2, 3, size, size)


def _maps(x, y):
    from napari_nucleiseg.stain.learned import cycle_maps
    from napari_nucleiseg.stain.learned.data import stain_vectors

    def u8(t):
        return (t.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)

    ref = stain_vectors(u8(y))[0]
    return cycle_maps(stain_vectors(u8(x)), stain_vectors(u8(y)), ref)


def test_generator_objective_is_the_weighted_sum_of_its_terms():
    from napari_nucleiseg.segmentation.targets import make_targets
    from napari_nucleiseg.training.seg_train import loss_fn

    (g_xy, g_yx, d_x, d_y), x, y = _setup()
    lab = np.zeros((32, 32), np.int32)
    lab[5:15, 5:15] = 1
    x_mask = torch.from_numpy(np.stack([make_targets(lab)] * 2))
    x_valid = torch.tensor([True, False])
    weights = LossWeights(adversarial=2.0, cycle=3.0, segmentation=4.0, identity=5.0)
    m = _maps(x, y)
    passes = cycle_pass(g_xy, g_yx, x, y, m)
    total, terms = generator_objective(
        passes, d_x, d_y, x, y, x_mask=x_mask, x_valid=x_valid, weights=weights
    )
    with torch.no_grad():
        e = {
            "adversarial_xy": ((d_y(g_xy(x, m.xy)[0]) - 1) ** 2).mean(),
            "adversarial_yx": ((d_x(g_yx(y, m.yx)[0]) - 1) ** 2).mean(),
            "cycle_x": (g_yx.normalise(g_xy.normalise(x, m.xy), m.back_x) - x).abs().mean(),
            "cycle_y": (g_xy.normalise(g_yx.normalise(y, m.yx), m.back_y) - y).abs().mean(),
            "segmentation_x": loss_fn(g_xy(x, m.xy)[1][:1], x_mask[:1]),
            "identity_x": (g_yx.normalise(x, m.same_x) - x).abs().mean(),
            "identity_y": (g_xy.normalise(y, m.same_y) - y).abs().mean(),
        }
    e = {k: v.item() for k, v in e.items()}
    assert set(terms) == set(e) | {"total"}  # no y labels: no segmentation_y term
    for name, value in e.items():
        assert terms[name] == pytest.approx(value, rel=1e-4), name
    weighted = (
        2 * (e["adversarial_xy"] + e["adversarial_yx"])
        + 3 * (e["cycle_x"] + e["cycle_y"])
        + 4 * e["segmentation_x"]
        + 5 * (e["identity_x"] + e["identity_y"])
    )
    assert total.item() == pytest.approx(weighted, rel=1e-4)
    rgb_only = cycle_pass(g_xy, g_yx, x, y, m, segment=False)
    _, terms = generator_objective(rgb_only, d_x, d_y, x, y, x_mask=x_mask, x_valid=x_valid)
    assert "segmentation_x" not in terms  # a step without the nuclei decoder has no such term
    no_identity = cycle_pass(g_xy, g_yx, x, y, m, identity=False)
    with pytest.raises(ValueError, match="identity"):
        generator_objective(no_identity, d_x, d_y, x, y)


def test_discriminator_objective_sums_both_lsgan_losses_on_detached_fakes():
    (g_xy, g_yx, d_x, d_y), x, y = _setup()
    passes = cycle_pass(g_xy, g_yx, x, y, _maps(x, y), identity=False, segment=False)
    total, terms = discriminator_objective(d_x, d_y, x, y, passes.fake_x, passes.fake_y)
    with torch.no_grad():
        dx = 0.5 * (((d_x(x) - 1) ** 2).mean() + (d_x(passes.fake_x) ** 2).mean())
        dy = 0.5 * (((d_y(y) - 1) ** 2).mean() + (d_y(passes.fake_y) ** 2).mean())
    assert terms["discriminator_x"] == pytest.approx(dx.item(), rel=1e-5)
    assert total.item() == pytest.approx((dx + dy).item(), rel=1e-5)
    total.backward()
    assert all(p.grad is None for p in g_xy.parameters())


def test_training_steps_move_x_colours_towards_y():
    """Flat pink X patches whose way to the blue Y style is known (a pair), told the identity
    map: after some steps of the generator objective plus the paired term, G(x) is nearer Y's
    colour (the correction field learns what the map does not say)."""
    torch.manual_seed(0)
    x = torch.tensor([0.85, 0.55, 0.75])[None, :, None, None].expand(2, 3, 16, 16).clone()
    y = torch.tensor([0.55, 0.60, 0.85])[None, :, None, None].expand(2, 3, 16, 16).clone()
    x += 0.03 * torch.rand_like(x)
    y += 0.03 * torch.rand_like(y)
    g_xy, g_yx = (CycleGenerator(WIDTHS, "light", 3).train() for _ in range(2))
    d_x, d_y = PatchDiscriminator((8, 16)), PatchDiscriminator((8, 16))
    opt_g = torch.optim.Adam([*g_xy.parameters(), *g_yx.parameters()], 2e-3, betas=(0.5, 0.999))
    eye = _eye(2)
    m = CycleMaps(eye, eye, eye, eye, eye, eye)

    def gap():
        with torch.no_grad():
            return float((g_xy.normalise(x, eye).mean((0, 2, 3)) - y.mean((0, 2, 3))).abs().sum())

    before = gap()
    for _ in range(30):
        passes = cycle_pass(g_xy, g_yx, x, y, m, segment=False)
        weights = LossWeights(cycle=1, identity=1)
        total, _ = generator_objective(passes, d_x, d_y, x, y, weights=weights)
        total = total + 10 * (passes.fake_y - y).abs().mean()  # the paired term
        opt_g.zero_grad()
        total.backward()
        opt_g.step()
    assert gap() < 0.5 * before, (before, gap())
