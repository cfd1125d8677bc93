"""The generators and discriminator of reference 002's stain-normalising CycleGAN, sized for a CPU.

Each generator (:class:`CycleGenerator`) reads an RGB patch and writes two things from one
encoder: the patch in the other stain style (normalisation decoder) and nucleus maps
(segmentation decoder). The encoder and the segmentation decoder are a nuclei
:class:`~napari_nucleiseg.segmentation.unet.UNet` and start from the project's nuclei model: a
CycleGAN trained from scratch on two cores would need days to segment as well as the shipped
model does, and reference 002's product form is "the current model is the teacher". The
normalisation decoder is new: attention-gated skips from the encoder's first levels, so the
colour change is steered by the features that find nuclei.

* teacher (AttCycle): ``transformer_layers=0``; trained with the encoder frozen.
* student (TransCycle): a small Transformer over the bottleneck tokens (zero-initialised, so it
  starts as its teacher) and the encoder trained too. The reference uses ResNet-50 +
  Transformer; this is the CPU-sized version.
* :class:`PatchDiscriminator` — a narrow 70×70 PatchGAN with raw (LSGAN) scores.

Inputs are (N, 3, H, W) in [0, 1] with H and W multiples of ``2 ** (len(widths) - 1)``. No Python
branch depends on tensor values, so the normalisation path exports to ONNX with dynamic height
and width. There is no normalisation layer whose statistics depend on the input (the encoder's
BatchNorm runs with its stored statistics): a chunk of a slide comes out the same whatever
surrounds it beyond the receptive field, so chunks join without seams.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

DISCRIMINATOR_WIDTHS = (32, 64, 128)
#: Channels of the generator's stain-context branch.
STAIN_WIDTH = 16
#: What a generator is told of the stains: a 3×3 optical-density map, row-major (9 numbers).
STAIN_DIMS = 9
#: The input is clamped this far inside (0, 1) before its logit is taken: half a grey level of an
#: 8-bit image, so a zero residual reproduces every pixel to within half a grey level.
RGB_EPS = 1.0 / 512


def count_parameters(module: nn.Module) -> int:
    """Number of trainable weights in ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def od_affine(x: torch.Tensor, coef: torch.Tensor, stain_map: torch.Tensor) -> torch.Tensor:
    """RGB ``x`` (N, 3, H, W) in [0, 1] through a per-pixel affine map of optical densities:
    ``od' = A·od + M·od + b`` with ``od = −ln x``; ``A`` (N, 9) is the slide's map (row-major
    3×3), ``M`` = ``coef[:, :9]`` and ``b`` = ``coef[:, 9:]`` the learned per-pixel correction;
    back to RGB as ``exp(−od')``.

    Why optical densities: by Beer-Lambert a change of stain colours and amounts is a linear map
    of optical densities, so a smooth field of 12 numbers says how another lab's stain becomes
    the reference style, and the pixels' own densities carry every edge through unchanged
    (structure kept). With ``coef`` zero and ``A`` the identity the map is the identity (to half
    a grey level: ``x`` is clamped to ``RGB_EPS`` before the logarithm)."""
    od = -torch.log(x.clamp(RGB_EPS, 1.0))
    a = stain_map.to(x.dtype)[:, :, None, None]
    rows = [
        (a[:, 3 * i : 3 * i + 3] * od).sum(1, keepdim=True)
        + (coef[:, 3 * i : 3 * i + 3] * od).sum(1, keepdim=True)
        for i in range(3)
    ]
    return torch.exp(-(torch.cat(rows, 1) + coef[:, 9:12])).clamp(0.0, 1.0)


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


class PatchDiscriminator(nn.Module):
    """PatchGAN of pix2pix/CycleGAN, narrow: 4×4 convolutions with stride 2 at each of
    ``widths``, one more at the last width with stride 1, then a stride-1 score layer. With three
    widths each score sees a 70×70 input patch (a 256 px patch gives a 30×30 map). Raw scores, no
    sigmoid: the LSGAN losses square them.

    No normalisation layers: per-image normalisation (instance or group norm) removes each
    channel's mean over the patch, and a patch's mean colour is exactly what a stain
    discriminator must judge; batch norm on batches of two would be noise."""

    def __init__(self, widths: tuple[int, ...] = DISCRIMINATOR_WIDTHS):
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        layers: list[nn.Module] = []
        cin = 3
        for cout in self.widths:
            layers += [nn.Conv2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2, True)]
            cin = cout
        layers += [nn.Conv2d(cin, cin, 4, 1, 1), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(cin, 1, 4, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] → (N, 1, h, w) real/fake scores."""
        return self.net(x)


class CycleGenerator(nn.Module):
    """One generator of the cycle: a nuclei U-Net (encoder + segmentation decoder, 3 logit maps:
    foreground, contour, distance) and a normalisation decoder over the encoder's first
    ``norm_levels`` levels with attention-gated skips.

    The normalisation decoder writes a smooth field of optical-density maps (:func:`od_affine`),
    not pixels: its last layer starts at zero, so a new generator is the identity, nuclear
    outlines pass through unchanged and training only has to learn the colour change (the
    structure must survive: SSIM of the haematoxylin channel ≥ 0.9). A first version predicted a
    residual in logit space from the decoder's features: it learnt nothing in 200 iterations
    (paired L1 flat at 0.077), because a residual that is the product of a zero layer and small
    features starts with vanishing gradients; the coefficients of an OD map multiply the
    densities themselves.
    """

    def __init__(
        self,
        widths: tuple[int, ...],
        decoder: str = "light",
        norm_levels: int = 4,
        transformer_layers: int = 0,
        heads: int = 4,
    ):
        super().__init__()
        from ...segmentation.unet import UNet

        self.widths = tuple(int(w) for w in widths)
        if not 2 <= norm_levels <= len(self.widths):
            raise ValueError(f"norm_levels must be 2-{len(self.widths)}, got {norm_levels}")
        self.norm_levels = int(norm_levels)
        self.unet = UNet(self.widths, 3, decoder)
        self.transformer_layers = int(transformer_layers)
        deep = self.widths[-1]
        if transformer_layers:
            if deep % 4 or deep % heads:
                raise ValueError(f"the last width ({deep}) must divide by 4 and by heads ({heads})")
            self.transformer = nn.ModuleList(
                TransformerLayer(deep, heads) for _ in range(transformer_layers)
            )
            for layer in self.transformer:  # each layer starts as the identity: student = teacher
                nn.init.zeros_(layer.proj.weight)
                nn.init.zeros_(layer.proj.bias)
                nn.init.zeros_(layer.mlp[-1].weight)
                nn.init.zeros_(layer.mlp[-1].bias)
        nw = self.widths[: self.norm_levels]
        # Decoder blocks (3×3 convolutions) from the deepest level read down to half
        # resolution, each skip attention-gated by the level below.
        pairs = list(zip(reversed(nw[1:-1]), reversed(nw[2:])))
        self.gates = nn.ModuleList(AttentionGate(w_skip, w_deep) for w_skip, w_deep in pairs)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(w_skip + w_deep, w_skip, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(w_skip, w_skip, 3, padding=1),
                nn.ReLU(inplace=True),
            )
            for w_skip, w_deep in pairs
        )
        # Stain context of its own: the nuclei encoder was trained to ignore stain (colour
        # augmentation), so its features say little about which stain a patch is in. A small
        # trainable branch reads the input's colours at a quarter of the resolution with a
        # growing receptive field (dilations 1, 2, 4: about 60 px); no pooling over the whole
        # input, so a block of a slide is normalised the same whatever its size.
        self.stain = nn.Sequential(
            nn.AvgPool2d(4),
            nn.Conv2d(3, STAIN_WIDTH, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(STAIN_WIDTH, STAIN_WIDTH, 3, padding=2, dilation=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(STAIN_WIDTH, STAIN_WIDTH, 3, padding=4, dilation=4),
            nn.ReLU(inplace=True),
        )
        # The head writes, at half resolution, the 12 coefficients of an affine map of optical
        # densities (3×3 matrix + offset, see _normalise); they are enlarged to full resolution.
        # Its last layer starts at zero: the identity map.
        # It is told the slide's stain map A (a Macenko-style map from the source stain to the
        # target's, measured once per slide: see .data.stain_map), which the output starts
        # from; the network learns the correction. Why: a local network alone could not tell
        # which way to turn a patch (paired L1 flat over 150 iterations on re-stained patches),
        # and told the stain vectors only, it learnt slowly (0.072 → 0.062 in 200). One map per
        # slide, so blocks join without seams.
        self.head = nn.Sequential(
            nn.Conv2d(nw[1] + STAIN_WIDTH + STAIN_DIMS, 32, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 12, 1),
        )
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    @property
    def multiple(self) -> int:
        """Height and width must be multiples of this."""
        return 2 ** (len(self.widths) - 1)

    def _encode(self, x: torch.Tensor, levels: int) -> list[torch.Tensor]:
        features = []
        for i, block in enumerate(self.unet.down[:levels]):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            features.append(x)
        return features

    def _normalise(
        self, x: torch.Tensor, features: list[torch.Tensor], stain: torch.Tensor
    ) -> torch.Tensor:
        g = features[self.norm_levels - 1]
        for gate, block, skip in zip(
            self.gates, self.blocks, reversed(features[1 : self.norm_levels - 1])
        ):
            up = F.interpolate(g, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            g = block(torch.cat([gate(skip, g), up], 1))
        context = F.interpolate(
            self.stain(x), size=g.shape[-2:], mode="bilinear", align_corners=False
        )
        told = stain[:, :, None, None].expand(-1, -1, g.shape[-2], g.shape[-1])
        coef = self.head(torch.cat([g, context, told.to(g.dtype)], 1))
        coef = F.interpolate(coef, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return od_affine(x, coef, stain)

    def _segment(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        if self.transformer_layers:
            n, c, h, w = x.shape
            # The positions steer attention but are taken off again: with its output layers at
            # zero the Transformer is then exactly the identity, and a student starts as its
            # teacher.
            positions = sinusoidal_positions_2d(h, w, c, x)
            tokens = x.flatten(2).transpose(1, 2) + positions
            for layer in self.transformer:
                tokens = layer(tokens)
            x = (tokens - positions).transpose(1, 2).reshape(n, c, h, w)
        for block, skip in zip(self.unet.up, reversed(features[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([skip, x], dim=1))
        return self.unet.head(x)

    def forward(self, x: torch.Tensor, stain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (N, 3, H, W) in [0, 1] and the slide's stain map (N, STAIN_DIMS) → ``(rgb,
        logits)``: rgb (N, 3, H, W) in [0, 1] in the other style, logits (N, 3, H, W)
        [foreground, contour, distance]."""
        features = self._encode(x, len(self.widths))
        return self._normalise(x, features, stain), self._segment(features)

    def normalise(self, x: torch.Tensor, stain: torch.Tensor) -> torch.Tensor:
        """The RGB output only: runs just the encoder levels the normalisation decoder reads."""
        return self._normalise(x, self._encode(x, self.norm_levels), stain)

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """The segmentation logits only (what a nuclei predictor runs)."""
        return self._segment(self._encode(x, len(self.widths)))

    def attention_maps(self) -> list[torch.Tensor | None]:
        """The normalisation decoder's last α per gate, finest level first (after a pass)."""
        return [g.last_alpha for g in reversed(self.gates)]

    def freeze_statistics(self) -> CycleGenerator:
        """Put every BatchNorm in eval mode (stored statistics, not the batch's), also while the
        rest trains: batches of two patches would give noisy statistics, and a normaliser whose
        output depended on the batch would not be one."""
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self


class NormalisePath(nn.Module):
    """``CycleGenerator.normalise`` as a module's forward (for ONNX export and predictors)."""

    def __init__(self, generator: CycleGenerator):
        super().__init__()
        self.generator = generator

    def forward(self, x: torch.Tensor, stain: torch.Tensor) -> torch.Tensor:
        return self.generator.normalise(x, stain)


class SegmentPath(nn.Module):
    """``CycleGenerator.segment`` as a module's forward: the mask decoder as a nuclei network
    (a :class:`~napari_nucleiseg.segmentation.predict.Predictor` runs it like a U-Net)."""

    def __init__(self, generator: CycleGenerator):
        super().__init__()
        self.generator = generator
        self.multiple = generator.multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator.segment(x)


# --------------------------------------------------------------------------- making and loading
def new_generator(widths, decoder, norm_levels, transformer_layers=0, heads=4) -> CycleGenerator:
    """A fresh generator (channels-last, the layout training and inference use)."""
    g = CycleGenerator(tuple(widths), decoder, norm_levels, transformer_layers, heads)
    return g.to(memory_format=torch.channels_last)


def load_generator(card, folder) -> CycleGenerator:
    """The generator of a normaliser card, in eval mode (weights checked against the card's
    SHA-256; safetensors, no pickle)."""
    from pathlib import Path

    from safetensors.torch import load_file

    from ...models.registry import WeightsError, sha256_of

    path = Path(folder) / card.weights
    if sha256_of(path) != card.sha256:
        raise WeightsError(f"{path}: SHA-256 does not match its model card; refusing to load it")
    g = new_generator(
        card.widths,
        card.decoder,
        card.generator["norm_levels"],
        card.generator.get("transformer_layers", 0),
        card.generator.get("heads", 4),
    )
    g.load_state_dict(load_file(str(path)))
    return g.eval()
