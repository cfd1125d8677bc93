"""The multi-task tissue network of reference 001, sized for a CPU.

A shared encoder of ESP blocks (a 1×1 reduction, then a pyramid of dilated 3×3 convolutions with
rates 1, 2, 3 and 5, fused), a segmentation decoder with PSP pooling (bins 1, 2, 3 and 5, bilinear
upsampling) giving per-pixel class logits, and a classification head (two 1×1 convolutions on the
pooled encoder features) giving per-patch class logits. The pooled features are also the patch
embedding that attention pooling (reference 003) weighs.

The dilated pyramid sees far for few weights: a 112 µm patch at 1 µm/px goes through the whole
network in a few milliseconds on one core, which is what a whole-slide heatmap needs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

#: Dilation rates of the ESP pyramid and PSP bins (reference 001).
ESP_RATES = (1, 2, 3, 5)
PSP_BINS = (1, 2, 3, 5)
#: Channels after the stem and at each of the three ESP levels (each level halves the size).
DEFAULT_WIDTHS = (16, 32, 64, 128)


def _bn_act(c: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(c), nn.PReLU(c))


class ESPBlock(nn.Module):
    """Reduce to ``cout // 4`` channels (1×1, with ``stride``), four dilated 3×3 branches, fused
    hierarchically (each branch adds the previous sum, which removes the gridding artefacts of
    plain dilated stacks), concatenated; a residual connection when the shape allows it."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        d = cout // len(ESP_RATES)
        first = cout - d * (len(ESP_RATES) - 1)  # widths that do not divide by 4 still add up
        self.reduce = nn.Conv2d(cin, d, 3 if stride > 1 else 1, stride, 1 if stride > 1 else 0)
        self.branches = nn.ModuleList(
            nn.Conv2d(d, first if i == 0 else d, 3, padding=r, dilation=r, bias=False)
            for i, r in enumerate(ESP_RATES)
        )
        self.residual = stride == 1 and cin == cout
        self.out = _bn_act(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.reduce(x)
        outs = [b(r) for b in self.branches]
        fused = [outs[0]]
        total = outs[1]
        fused.append(total)
        for o in outs[2:]:
            total = total + o
            fused.append(total)
        y = torch.cat(fused, 1)
        if self.residual:
            y = y + x
        return self.out(y)


class Encoder(nn.Module):
    """Stem (3×3, stride 2) then three levels, each an ESP block with stride 2 and ``depth``
    more ESP blocks: total stride 16."""

    def __init__(self, widths=DEFAULT_WIDTHS, depths=(1, 2, 2)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), _bn_act(widths[0]))
        levels = []
        for cin, cout, depth in zip(widths[:-1], widths[1:], depths):
            blocks = [ESPBlock(cin, cout, stride=2)]
            blocks += [ESPBlock(cout, cout) for _ in range(depth)]
            levels.append(nn.Sequential(*blocks))
        self.levels = nn.Sequential(*levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.levels(self.stem(x))


class PSPDecoder(nn.Module):
    """Pool the encoder features into 1, 2, 3 and 5 bins, a 1×1 convolution each, upsample,
    concatenate with the features, classify each pixel, upsample to the input size."""

    def __init__(self, cin: int, classes: int):
        super().__init__()
        branch = max(8, cin // len(PSP_BINS))
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(cin, branch, 1, bias=False), nn.ReLU())
            for b in PSP_BINS
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(cin + branch * len(PSP_BINS), cin, 3, padding=1, bias=False),
            _bn_act(cin),
            nn.Conv2d(cin, classes, 1),
        )

    def forward(self, f: torch.Tensor, size) -> torch.Tensor:
        h, w = f.shape[-2:]
        pooled = [
            F.interpolate(b(f), size=(h, w), mode="bilinear", align_corners=False)
            for b in self.branches
        ]
        logits = self.fuse(torch.cat([f, *pooled], 1))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class TissueNet(nn.Module):
    """Input (N, 3, H, W) RGB in [0, 1] at the model's µm/px, any H, W ≥ 32.

    ``forward`` gives ``(class logits (N, C), embedding (N, D))``; ``segment`` gives per-pixel
    class logits (N, C, H, W) from the PSP decoder. Both share the encoder."""

    def __init__(self, classes: int, widths=DEFAULT_WIDTHS):
        super().__init__()
        self.classes = int(classes)
        self.widths = tuple(widths)
        self.encoder = Encoder(self.widths)
        d = self.widths[-1]
        self.seg = PSPDecoder(d, self.classes)
        # Reference 001's classification head: two 1×1 convolutions on the pooled features.
        self.head = nn.Sequential(
            nn.Conv2d(d, d, 1), nn.ReLU(), nn.Dropout(0.2), nn.Conv2d(d, self.classes, 1)
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.encoder(x), 1)

    def classify_embedding(self, e: torch.Tensor) -> torch.Tensor:
        return self.head(e.reshape(e.shape[0], -1, 1, 1)).flatten(1)

    def forward(self, x: torch.Tensor):
        e = self.embed(x)
        return self.classify_embedding(e), e.flatten(1)

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        return self.seg(self.encoder(x), x.shape[-2:])

    def both(self, x: torch.Tensor):
        """Class logits and per-pixel logits from one encoder pass (multi-task training)."""
        f = self.encoder(x)
        e = F.adaptive_avg_pool2d(f, 1)
        return self.classify_embedding(e), self.seg(f, x.shape[-2:])
