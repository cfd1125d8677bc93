"""The generators and discriminator of reference 002's stain-normalising CycleGAN, sized for a CPU.

Each generator reads an RGB patch and writes two things from one encoder: the patch in the other
stain style (normalisation decoder) and a nucleus-mask logit (segmentation decoder). Both decoders
take the encoder's features through attention-gated skips, so the gates learn where nuclei are and
the colour mapping is steered by the same features that find them.

* :class:`AttCycleGenerator` — the teacher: plain conv–norm–ReLU encoder.
* :class:`TransCycleGenerator` — the student: residual blocks and a small Transformer over the
  bottleneck tokens (the reference uses ResNet-50 + Transformer; this is the CPU-sized version).
* :class:`PatchDiscriminator` — a narrow 70×70 PatchGAN with raw (LSGAN) scores.

Widths default to 16-32-64-128 so that a 256 px patch trains on two cores: the teacher has about
0.7 M weights, the student about 1.4 M. Inputs are (N, 3, H, W) in [0, 1] with H and W multiples
of ``2 ** (len(widths) - 1)``. No Python branch depends on tensor values, so the generators export
to ONNX with dynamic height and width.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

DEFAULT_WIDTHS = (16, 32, 64, 128)
DISCRIMINATOR_WIDTHS = (32, 64, 128)
#: The input is clamped this far inside (0, 1) before its logit is taken: half a grey level of an
#: 8-bit image, so a zero residual reproduces every pixel to within half a grey level.
RGB_EPS = 1.0 / 512


def count_parameters(module: nn.Module) -> int:
    """Number of trainable weights in ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _norm(channels: int) -> nn.GroupNorm:
    # Batches are 1-4 patches on a CPU: BatchNorm's batch statistics would be noise and differ
    # between training and inference. GroupNorm normalises each image on its own, like the
    # InstanceNorm of CycleGAN (which removes per-image contrast, much of it the stain), but
    # stays defined on a 1×1 bottleneck and exports to ONNX as standard operators.
    return nn.GroupNorm(math.gcd(channels, 8), channels)


def _conv_norm_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _norm(cout), nn.ReLU(inplace=True)]


def _logit(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(RGB_EPS, 1.0 - RGB_EPS)
    return torch.log(x) - torch.log1p(-x)


class AttentionGate(nn.Module):
    """Additive attention gate of reference 002 on a skip connection:
    ``α = sigmoid(ψᵀ ReLU(Wxᵀ x + Wgᵀ g + b_g) + b_ψ)``, output ``x · α``.

    ``x`` is the skip feature (N, Cx, H, W); ``g`` the coarser gating feature (N, Cg, h, w) from
    the decoder below, whose projection is upsampled to (H, W). The last α (N, 1, H, W), detached,
    stays on the module as :attr:`last_alpha` for inspection and display."""

    def __init__(self, skip_channels: int, gate_channels: int, inter_channels: int | None = None):
        super().__init__()
        inter = inter_channels or max(1, skip_channels // 2)
        self.w_x = nn.Conv2d(skip_channels, inter, 1, bias=False)
        self.w_g = nn.Conv2d(gate_channels, inter, 1, bias=True)  # its bias is b_g
        self.psi = nn.Conv2d(inter, 1, 1, bias=True)  # its bias is b_ψ
        self.last_alpha: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        g_up = F.interpolate(self.w_g(g), size=x.shape[-2:], mode="bilinear", align_corners=False)
        alpha = torch.sigmoid(self.psi(F.relu(self.w_x(x) + g_up)))
        self.last_alpha = alpha.detach()
        return x * alpha


class _Decoder(nn.Module):
    """From the deepest feature up: gate the skip with the current feature, upsample the feature
    (bilinear then convolution: no checkerboard artefacts of transposed convolutions, which a
    colour map would show), concatenate, two conv–norm–ReLU; a 1×1 head at full resolution."""

    def __init__(self, widths: tuple[int, ...], out_channels: int):
        super().__init__()
        pairs = list(zip(reversed(widths[:-1]), reversed(widths[1:])))
        self.gates = nn.ModuleList(AttentionGate(w_skip, w_deep) for w_skip, w_deep in pairs)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                *_conv_norm_relu(w_skip + w_deep, w_skip), *_conv_norm_relu(w_skip, w_skip)
            )
            for w_skip, w_deep in pairs
        )
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        g = features[-1]
        for gate, block, skip in zip(self.gates, self.blocks, reversed(features[:-1])):
            up = F.interpolate(g, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            g = block(torch.cat([gate(skip, g), up], 1))
        return self.head(g)


class _TwoDecoderGenerator(nn.Module):
    """What both generators share: the two decoders and the output contract. Subclasses set
    ``self.encoder``, whose forward gives one feature map per width, finest first."""

    def __init__(self, widths: tuple[int, ...]):
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        self.normalise = _Decoder(self.widths, 3)
        self.segment = _Decoder(self.widths, 1)

    @property
    def multiple(self) -> int:
        """Height and width must be multiples of this."""
        return 2 ** (len(self.widths) - 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (N, 3, H, W) in [0, 1] → ``(rgb, mask_logit)``: rgb (N, 3, H, W) in [0, 1],
        mask_logit (N, 1, H, W)."""
        features = self.encoder(x)
        # The normalisation decoder predicts a residual in logit space: rgb = sigmoid(logit(x) + r).
        # A zero residual is the identity, so nuclear outlines pass through unchanged and the
        # decoder only has to learn the colour change (the structure must survive: SSIM of the
        # haematoxylin channel ≥ 0.9). A residual added in RGB and then clamped would have no
        # gradient wherever it overshoots, which is every near-white background pixel; a plain
        # sigmoid output would have to rebuild every edge through the decoder.
        rgb = torch.sigmoid(_logit(x) + self.normalise(features))
        return rgb, self.segment(features)

    def attention_maps(self) -> dict[str, list[torch.Tensor | None]]:
        """Each decoder's last α, finest level first (after a forward pass)."""
        return {
            "normalise": [g.last_alpha for g in reversed(self.normalise.gates)],
            "segment": [g.last_alpha for g in reversed(self.segment.gates)],
        }


class _PlainEncoder(nn.Module):
    """Two conv–norm–ReLU per level; every level after the first starts with a stride-2 conv."""

    def __init__(self, widths: tuple[int, ...]):
        super().__init__()
        chans = (3, *widths)
        self.levels = nn.ModuleList(
            nn.Sequential(
                *_conv_norm_relu(chans[i], chans[i + 1], stride=1 if i == 0 else 2),
                *_conv_norm_relu(chans[i + 1], chans[i + 1]),
            )
            for i in range(len(widths))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level in self.levels:
            x = level(x)
            features.append(x)
        return features


class AttCycleGenerator(_TwoDecoderGenerator):
    """The AttCycle teacher's generator: a plain encoder, attention-gated skips, RGB and mask
    decoders. About 0.7 M weights with the default widths."""

    def __init__(self, widths: tuple[int, ...] = DEFAULT_WIDTHS):
        super().__init__(widths)
        self.encoder = _PlainEncoder(self.widths)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3×3 convolutions and a shortcut; 1×1 projection when the shape
    changes). Basic rather than ResNet-50's bottleneck blocks: at 16-128 channels a 1×1 squeeze
    would leave too few channels to be worth it."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            *_conv_norm_relu(cin, cout, stride),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            _norm(cout),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def sinusoidal_positions_2d(height: int, width: int, channels: int, like: torch.Tensor):
    """(height · width, channels) fixed 2-D positional code: half the channels encode the row,
    half the column, each as sin/cos pairs at geometrically spaced frequencies. Defined for any
    bottleneck size, so patches of any size share one Transformer."""
    quarter = channels // 4
    freqs = torch.exp(
        torch.arange(quarter, dtype=like.dtype, device=like.device) * (-math.log(10000.0) / quarter)
    )
    rows = torch.arange(height, dtype=like.dtype, device=like.device)[:, None] * freqs
    cols = torch.arange(width, dtype=like.dtype, device=like.device)[:, None] * freqs
    row_code = torch.cat([rows.sin(), rows.cos()], 1)[:, None, :].expand(-1, width, -1)
    col_code = torch.cat([cols.sin(), cols.cos()], 1)[None, :, :].expand(height, -1, -1)
    return torch.cat([row_code, col_code], 2).reshape(-1, 4 * quarter)


class TransformerLayer(nn.Module):
    """Pre-norm Transformer encoder layer (multi-head self-attention, then a GELU MLP, each
    residual) on (N, L, C) tokens. Written out rather than ``nn.TransformerEncoderLayer``:
    ``nn.MultiheadAttention`` traces to ONNX with the token count fixed, and the student must
    run on chunks of any size; here every reshape keeps the token axis as ``-1``."""

    def __init__(self, channels: int, heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.heads = heads
        self.norm_attn = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.norm_mlp = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(
            nn.Linear(channels, mlp_ratio * channels),
            nn.GELU(),
            nn.Linear(mlp_ratio * channels, channels),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n, _, c = tokens.shape
        qkv = self.qkv(self.norm_attn(tokens)).reshape(n, -1, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, heads, L, C / heads)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, -1, c)
        tokens = tokens + self.proj(attended)
        return tokens + self.mlp(self.norm_mlp(tokens))


class _ResidualTransformerEncoder(nn.Module):
    """Stem, ``blocks_per_level`` basic blocks per level (the first of each later level with
    stride 2), then ``layers`` Transformer layers over the bottleneck's tokens: every position
    sees the whole patch, which convolutions alone reach only at the deepest level."""

    def __init__(self, widths: tuple[int, ...], blocks_per_level: int, layers: int, heads: int):
        super().__init__()
        if widths[-1] % 4 or widths[-1] % heads:
            raise ValueError(
                f"the last width ({widths[-1]}) must divide by 4 and by heads ({heads})"
            )
        self.stem = nn.Sequential(*_conv_norm_relu(3, widths[0]))
        chans = (widths[0], *widths)
        self.levels = nn.ModuleList(
            nn.Sequential(
                BasicBlock(chans[i], chans[i + 1], stride=1 if i == 0 else 2),
                *(BasicBlock(chans[i + 1], chans[i + 1]) for _ in range(blocks_per_level - 1)),
            )
            for i in range(len(widths))
        )
        # Pre-norm layers (normalise before attention and MLP) train more steadily than post-norm
        # ones at small batch sizes; a final LayerNorm since pre-norm leaves the output unscaled.
        self.transformer = nn.Sequential(
            *(TransformerLayer(widths[-1], heads) for _ in range(layers)), nn.LayerNorm(widths[-1])
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for level in self.levels:
            x = level(x)
            features.append(x)
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2) + sinusoidal_positions_2d(h, w, c, x)
        features[-1] = self.transformer(tokens).transpose(1, 2).reshape(n, c, h, w)
        return features


class TransCycleGenerator(_TwoDecoderGenerator):
    """The TransCycle student's generator: residual encoder + Transformer bottleneck (``layers``
    layers, ``heads`` heads), the same two attention-gated decoders and forward contract as
    :class:`AttCycleGenerator`. About 1.4 M weights with the defaults."""

    def __init__(
        self,
        widths: tuple[int, ...] = DEFAULT_WIDTHS,
        blocks_per_level: int = 2,
        layers: int = 2,
        heads: int = 4,
    ):
        super().__init__(widths)
        self.encoder = _ResidualTransformerEncoder(self.widths, blocks_per_level, layers, heads)


class PatchDiscriminator(nn.Module):
    """PatchGAN of pix2pix/CycleGAN, narrow: 4×4 convolutions with stride 2 at each of
    ``widths``, one more at the last width with stride 1, then a stride-1 score layer. With three
    widths each score sees a 70×70 input patch (a 256 px patch gives a 30×30 map). Raw scores, no
    sigmoid: the LSGAN losses square them."""

    def __init__(self, widths: tuple[int, ...] = DISCRIMINATOR_WIDTHS):
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        # No normalisation on the first layer (as in pix2pix): it would wipe out the very colour
        # statistics the discriminator has to judge.
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), _norm(cout)]
            layers += [nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(widths[-1], widths[-1], 4, 1, 1, bias=False), _norm(widths[-1])]
        layers += [nn.LeakyReLU(0.2, True), nn.Conv2d(widths[-1], 1, 4, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] → (N, 1, h, w) real/fake scores."""
        return self.net(x)
