"""The learned stain normaliser's networks and losses (issue 18, reference 002): output contracts
of both generators, the attention gate, CPU-sized weight counts, each loss against a hand
computation, a few real optimisation steps of the cycle objective, and the ONNX twin."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from napari_nucleiseg.stain.learned import (
    AttCycleGenerator,
    AttentionGate,
    LossWeights,
    PatchDiscriminator,
    TransCycleGenerator,
    count_parameters,
    cycle_loss,
    cycle_pass,
    discriminator_objective,
    generator_objective,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    segmentation_loss,
)
from napari_nucleiseg.stain.learned.network import RGB_EPS

# Another process may be training on this machine's two cores; these tests are small anyway.
torch.set_num_threads(1)

GENERATORS = (AttCycleGenerator, TransCycleGenerator)


@pytest.mark.parametrize("generator_class", GENERATORS)
@pytest.mark.parametrize("size", [(64, 64), (64, 96)])
def test_generators_give_rgb_in_unit_range_and_one_mask_channel(generator_class, size):
    torch.manual_seed(0)
    generator = generator_class().eval()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        rgb, mask_logit = generator(x)
    assert rgb.shape == (2, 3, *size)
    assert mask_logit.shape == (2, 1, *size)
    assert torch.isfinite(rgb).all() and torch.isfinite(mask_logit).all()
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    assert rgb.std() > 0.05  # an image, not a constant


@pytest.mark.parametrize("generator_class", GENERATORS)
def test_a_zero_residual_is_the_identity_to_half_a_grey_level(generator_class):
    torch.manual_seed(0)
    generator = generator_class().eval()
    nn.init.zeros_(generator.normalise.head.weight)
    nn.init.zeros_(generator.normalise.head.bias)
    x = torch.rand(1, 3, 32, 32)
    x[0, :, 0, 0], x[0, :, 0, 1] = 0.0, 1.0  # the clamp's worst cases
    with torch.no_grad():
        rgb, _ = generator(x)
    assert (rgb - x).abs().max() <= RGB_EPS + 1e-6


def test_attention_gate_weights_the_skip_by_alpha_in_unit_range():
    torch.manual_seed(0)
    gate = AttentionGate(skip_channels=16, gate_channels=32)
    skip, coarse = torch.randn(2, 16, 32, 24), torch.randn(2, 32, 16, 12)
    gated = gate(skip, coarse)
    alpha = gate.last_alpha
    assert gated.shape == skip.shape
    assert alpha.shape == (2, 1, 32, 24)
    assert alpha.min() >= 0.0 and alpha.max() <= 1.0
    assert alpha.std() > 0.01  # it depends on the input
    torch.testing.assert_close(gated, skip * alpha)
    assert gated.abs().max() > 0.1

    with torch.no_grad():
        gate.psi.bias.fill_(-1e4)  # b_ψ very negative: the gate closes
    assert gate(skip, coarse).abs().max() < 1e-6


@pytest.mark.parametrize("generator_class", GENERATORS)
def test_every_skip_of_both_decoders_is_gated_at_its_own_size(generator_class):
    generator = generator_class().eval()
    with torch.no_grad():
        generator(torch.rand(1, 3, 64, 96))
    for decoder, alphas in generator.attention_maps().items():
        sizes = [tuple(a.shape[-2:]) for a in alphas]
        assert sizes == [(64, 96), (32, 48), (16, 24)], decoder
        assert all(a.min() >= 0 and a.max() <= 1 for a in alphas)


def test_weight_counts_fit_a_cpu():
    teacher, student = AttCycleGenerator(), TransCycleGenerator()
    assert count_parameters(teacher) < 1_000_000
    assert count_parameters(student) < 2_000_000
    assert count_parameters(PatchDiscriminator()) < 500_000
    # The student's encoder is the stronger one (the decoders are identical).
    assert count_parameters(student.encoder) > 2 * count_parameters(teacher.encoder)
    assert count_parameters(student.normalise) == count_parameters(teacher.normalise)


def test_patch_discriminator_scores_70_px_patches_without_a_sigmoid():
    discriminator = PatchDiscriminator().eval()
    with torch.no_grad():
        scores = discriminator(torch.rand(1, 3, 256, 256))
    assert scores.shape == (1, 1, 30, 30)  # CycleGAN's 70×70 PatchGAN map on 256 px
    assert isinstance(discriminator.net[-1], nn.Conv2d)  # raw scores for LSGAN
    field, jump = 1, 1
    for conv in (m for m in discriminator.net if isinstance(m, nn.Conv2d)):
        field += (conv.kernel_size[0] - 1) * jump
        jump *= conv.stride[0]
    assert field == 70


def test_lsgan_losses_match_a_hand_computation():
    fake = torch.tensor([0.0, 1.0, 2.0, 0.5])
    assert lsgan_generator_loss(fake).item() == pytest.approx((1 + 0 + 1 + 0.25) / 4)
    real, fake = torch.tensor([0.5, 1.0]), torch.tensor([0.2, -0.4])
    expected = 0.5 * ((0.25 + 0.0) / 2 + (0.04 + 0.16) / 2)
    assert lsgan_discriminator_loss(real, fake).item() == pytest.approx(expected)


def test_cycle_loss_is_the_mean_absolute_difference():
    x, rec = torch.tensor([0.0, 0.5, 1.0]), torch.tensor([0.1, 0.5, 0.7])
    assert cycle_loss(x, rec).item() == pytest.approx(0.4 / 3)


def _bce(z: float, t: float) -> float:
    return math.log1p(math.exp(z)) - t * z


def test_segmentation_loss_counts_only_strongly_labelled_pixels():
    logits = torch.tensor([[[[0.0, 2.0]]], [[[-1.0, 3.0]]]], requires_grad=True)  # (2, 1, 1, 2)
    target = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # (2, 1, 2)
    every = (_bce(0, 1) + _bce(2, 0) + _bce(-1, 0) + _bce(3, 1)) / 4
    assert segmentation_loss(logits, target).item() == pytest.approx(every, rel=1e-6)

    per_sample = torch.tensor([True, False])
    first = (_bce(0, 1) + _bce(2, 0)) / 2
    assert segmentation_loss(logits, target, per_sample).item() == pytest.approx(first, rel=1e-6)
    # Whatever the unlabelled sample's target holds, the loss does not move.
    other = target.clone()
    other[1] = torch.tensor([[float("nan"), 255.0]])
    loss = segmentation_loss(logits, other, per_sample)
    assert loss.item() == pytest.approx(first, rel=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[1] == 0).all()

    per_pixel = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 1.0]]]])
    diagonal = (_bce(0, 1) + _bce(3, 1)) / 2
    assert segmentation_loss(logits, target, per_pixel).item() == pytest.approx(diagonal, rel=1e-6)

    none = segmentation_loss(logits, target, torch.tensor([False, False]))
    assert none.item() == 0.0 and none.requires_grad


def _tiny_setup(seed: int = 0, size: int = 16):
    torch.manual_seed(seed)
    nets = [AttCycleGenerator((4, 8)), AttCycleGenerator((4, 8))]
    nets += [PatchDiscriminator((4, 8)), PatchDiscriminator((4, 8))]
    x, y = torch.rand(2, 3, size, size), torch.rand(2, 3, size, size)
    return nets, x, y


def test_generator_objective_is_the_weighted_sum_of_its_terms():
    (g_xy, g_yx, d_x, d_y), x, y = _tiny_setup()
    x_mask = (torch.rand(2, 1, 16, 16) > 0.5).float()
    x_valid = torch.tensor([True, False])
    weights = LossWeights(adversarial=2.0, cycle=3.0, segmentation=4.0, identity=5.0)
    cycle = cycle_pass(g_xy, g_yx, x, y)
    total, terms = generator_objective(
        cycle, d_x, d_y, x, y, x_mask=x_mask, x_valid=x_valid, weights=weights
    )
    with torch.no_grad():
        expected = {
            "adversarial_xy": ((d_y(g_xy(x)[0]) - 1) ** 2).mean(),
            "adversarial_yx": ((d_x(g_yx(y)[0]) - 1) ** 2).mean(),
            "cycle_x": (g_yx(g_xy(x)[0])[0] - x).abs().mean(),
            "cycle_y": (g_xy(g_yx(y)[0])[0] - y).abs().mean(),
            "segmentation_x": nn.functional.binary_cross_entropy_with_logits(
                g_xy(x)[1][:1], x_mask[:1]
            ),
            "identity_x": (g_yx(x)[0] - x).abs().mean(),
            "identity_y": (g_xy(y)[0] - y).abs().mean(),
        }
    assert set(terms) == set(expected) | {"total"}  # no y labels: no segmentation_y term
    for name, value in expected.items():
        assert terms[name] == pytest.approx(value.item(), rel=1e-5), name
    e = {k: v.item() for k, v in expected.items()}
    weighted = (
        2 * (e["adversarial_xy"] + e["adversarial_yx"])
        + 3 * (e["cycle_x"] + e["cycle_y"])
        + 4 * e["segmentation_x"]
        + 5 * (e["identity_x"] + e["identity_y"])
    )
    assert total.item() == pytest.approx(weighted, rel=1e-5)
    assert terms["total"] == pytest.approx(weighted, rel=1e-5)

    no_identity = cycle_pass(g_xy, g_yx, x, y, identity=False)
    _, terms = generator_objective(no_identity, d_x, d_y, x, y, weights=LossWeights(identity=0))
    assert "identity_x" not in terms
    with pytest.raises(ValueError, match="identity"):
        generator_objective(no_identity, d_x, d_y, x, y)  # default weights want identity


def test_discriminator_objective_sums_both_lsgan_losses_on_detached_fakes():
    (g_xy, g_yx, d_x, d_y), x, y = _tiny_setup()
    cycle = cycle_pass(g_xy, g_yx, x, y, identity=False)
    total, terms = discriminator_objective(d_x, d_y, x, y, cycle.fake_x, cycle.fake_y)
    with torch.no_grad():
        d_x_loss = 0.5 * (((d_x(x) - 1) ** 2).mean() + (d_x(cycle.fake_x) ** 2).mean())
        d_y_loss = 0.5 * (((d_y(y) - 1) ** 2).mean() + (d_y(cycle.fake_y) ** 2).mean())
    assert terms["discriminator_x"] == pytest.approx(d_x_loss.item(), rel=1e-5)
    assert terms["discriminator_y"] == pytest.approx(d_y_loss.item(), rel=1e-5)
    assert total.item() == pytest.approx((d_x_loss + d_y_loss).item(), rel=1e-5)
    total.backward()
    assert all(p.grad is None for p in g_xy.parameters())  # the generators are not trained here
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in d_y.parameters())


def _two_stains():
    """Two 32 px patches of round nuclei, rendered in a pink H&E style (X) and a bluer one (Y),
    with the nucleus masks."""
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    masks = torch.zeros(2, 1, 32, 32)
    for i, centres in enumerate([((8, 10), (21, 22), (25, 6)), ((12, 24), (24, 12), (6, 6))]):
        for cy, cx in centres:
            masks[i, 0] += ((rows - cy) ** 2 + (cols - cx) ** 2 < 20).float()
    masks = masks.clamp(max=1)

    def paint(background, nucleus):
        bg, nuc = torch.tensor(background)[:, None, None], torch.tensor(nucleus)[:, None, None]
        return masks * nuc + (1 - masks) * bg

    x = paint((0.92, 0.70, 0.82), (0.45, 0.20, 0.50))
    y = paint((0.95, 0.88, 0.92), (0.25, 0.28, 0.62))
    return x, y, masks


def test_a_few_adam_steps_lower_the_cycle_and_segmentation_terms():
    torch.manual_seed(0)
    x, y, masks = _two_stains()
    g_xy, g_yx = AttCycleGenerator(), AttCycleGenerator()
    d_x, d_y = PatchDiscriminator(), PatchDiscriminator()
    opt_g = torch.optim.Adam([*g_xy.parameters(), *g_yx.parameters()], 1e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam([*d_x.parameters(), *d_y.parameters()], 1e-3, betas=(0.5, 0.999))
    labels = dict(x_mask=masks, y_mask=masks, y_valid=torch.tensor([True, False]))
    content = ("cycle_x", "cycle_y", "segmentation_x", "segmentation_y")

    def content_loss():
        with torch.no_grad():
            cycle = cycle_pass(g_xy, g_yx, x, y)
            _, terms = generator_objective(cycle, d_x, d_y, x, y, **labels)
        return sum(terms[k] for k in content), terms

    before, terms_before = content_loss()
    for _ in range(25):
        cycle = cycle_pass(g_xy, g_yx, x, y)
        g_total, _ = generator_objective(cycle, d_x, d_y, x, y, **labels)
        opt_g.zero_grad()
        g_total.backward()
        opt_g.step()
        d_total, _ = discriminator_objective(d_x, d_y, x, y, cycle.fake_x, cycle.fake_y)
        opt_d.zero_grad()
        d_total.backward()
        opt_d.step()
    after, terms_after = content_loss()
    assert after < 0.5 * before, (terms_before, terms_after)
    assert terms_after["segmentation_x"] < terms_before["segmentation_x"]
    assert terms_after["cycle_x"] + terms_after["cycle_y"] < (
        terms_before["cycle_x"] + terms_before["cycle_y"]
    )


@pytest.mark.parametrize("generator_class", GENERATORS)
def test_the_onnx_twin_reproduces_torch_at_another_size(generator_class, tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    generator = generator_class().eval()
    path = tmp_path / "generator.onnx"
    dynamic = {0: "n", 2: "h", 3: "w"}
    # Traced at 32 px and run at 64 px: height and width really are dynamic.
    torch.onnx.export(
        generator,
        torch.rand(1, 3, 32, 32),
        str(path),
        input_names=["rgb"],
        output_names=["normalised", "mask_logit"],
        dynamic_axes={"rgb": dynamic, "normalised": dynamic, "mask_logit": dynamic},
        opset_version=17,
        dynamo=False,
    )
    x = torch.rand(1, 3, 64, 64)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rgb, mask_logit = session.run(None, {"rgb": x.numpy()})
    with torch.no_grad():
        rgb_torch, mask_torch = generator(x)
    np.testing.assert_allclose(rgb, rgb_torch.numpy(), atol=1e-4)
    np.testing.assert_allclose(mask_logit, mask_torch.numpy(), atol=1e-4)
