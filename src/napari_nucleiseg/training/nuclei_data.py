"""Labelled nuclei images (the shared data-set layout) and the patch sampler with augmentation.

Layout: ``images/<stem>.png`` (RGB), ``labels/<stem>.tif`` (instance labels), ``index.json``
(licence, µm/px, stems). Patches are cut at the model's µm/px with a random scale jitter so the
model also sees slightly larger and smaller nuclei (scanners and objectives differ), then flipped,
rotated, stain-jittered (HED), and brightness/contrast/blur-jittered — reference 000 §3.1.1 plus
stain augmentation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class LabelledImage:
    stem: str
    rgb: np.ndarray
    labels: np.ndarray
    mpp: float


def load_dataset(root: str | Path, stems: list[str] | None = None) -> list[LabelledImage]:
    import tifffile
    from PIL import Image

    root = Path(root)
    index = json.loads((root / "index.json").read_text())
    mpp = float(index.get("mpp") or 0.25)
    out = []
    for row in index["images"]:
        stem = row["stem"]
        if stems is not None and stem not in stems:
            continue
        rgb = np.asarray(Image.open(root / "images" / f"{stem}.png").convert("RGB"))
        labels = tifffile.imread(root / "labels" / f"{stem}.tif")
        out.append(LabelledImage(stem, rgb, labels, mpp))
    if not out:
        raise ValueError(f"{root}: no images found")
    return out


def _padded(img: LabelledImage, side: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """The image and labels, placed at a random offset on a blank canvas at least ``side`` px
    each way when they are smaller. Why: a patch must keep the model's µm/px; cutting a smaller
    patch and resizing it (as before) showed the network small images' nuclei at twice their
    size. The canvas is the image's own background colour (its brightest tenth) with no nuclei."""
    h, w = img.labels.shape
    if h >= side and w >= side:
        return img.rgb, img.labels
    H, W = max(h, side), max(w, side)
    fill = np.percentile(img.rgb.reshape(-1, 3), 90, axis=0).astype(np.uint8)
    rgb = np.empty((H, W, 3), np.uint8)
    rgb[:] = fill
    lab = np.zeros((H, W), img.labels.dtype)
    y, x = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    rgb[y : y + h, x : x + w] = img.rgb
    lab[y : y + h, x : x + w] = img.labels
    return rgb, lab


class PatchSampler:
    """Random augmented patches ``(rgb uint8 (P, P, 3), targets float32 (3, P, P))`` at ``mpp``."""

    def __init__(
        self,
        images: list[LabelledImage],
        mpp: float,
        patch: int = 256,
        seed: int = 0,
        scale_jitter: float = 0.2,
        stain_sigma: float = 0.05,
    ):
        self.images = images
        self.mpp = mpp
        self.patch = patch
        self.rng = np.random.default_rng(seed)
        self.scale_jitter = scale_jitter
        self.stain_sigma = stain_sigma

    def sample(self):
        from PIL import Image

        from ..segmentation.targets import make_targets
        from ..stain.augment import hed_jitter

        rng = self.rng
        img = self.images[rng.integers(len(self.images))]
        # Source pixels per patch pixel, jittered in log scale.
        factor = (self.mpp / img.mpp) * float(
            np.exp(rng.uniform(-self.scale_jitter, self.scale_jitter))
        )
        src = int(round(self.patch * factor))
        full_rgb, full_lab = _padded(img, src, rng)
        h, w = full_lab.shape
        y, x = int(rng.integers(0, h - src + 1)), int(rng.integers(0, w - src + 1))
        rgb = full_rgb[y : y + src, x : x + src]
        lab = full_lab[y : y + src, x : x + src]
        if src != self.patch:
            rgb = np.asarray(
                Image.fromarray(rgb).resize((self.patch, self.patch), Image.Resampling.BILINEAR)
            )
            lab = np.asarray(
                Image.fromarray(lab.astype(np.int32)).resize(
                    (self.patch, self.patch), Image.Resampling.NEAREST
                )
            )
        k = int(rng.integers(4))
        rgb, lab = np.rot90(rgb, k), np.rot90(lab, k)
        if rng.random() < 0.5:
            rgb, lab = rgb[:, ::-1], lab[:, ::-1]
        rgb = np.ascontiguousarray(rgb)
        lab = np.ascontiguousarray(lab)
        if rng.random() < 0.9:
            rgb = hed_jitter(rgb, rng, sigma=self.stain_sigma)
        rgbf = rgb.astype(np.float32)
        if rng.random() < 0.5:  # brightness / contrast
            mean = rgbf.mean()
            rgbf = (rgbf - mean) * rng.uniform(0.8, 1.2) + mean + rng.uniform(-15, 15)
        if rng.random() < 0.2:  # focus blur
            from scipy import ndimage as ndi

            rgbf = ndi.gaussian_filter(rgbf, (rng.uniform(0.3, 1.0),) * 2 + (0,))
        rgb = np.clip(rgbf, 0, 255).astype(np.uint8)
        return rgb, make_targets(lab)

    def batch(self, n: int):
        rgbs, targets = zip(*(self.sample() for _ in range(n)))
        return np.stack(rgbs), np.stack(targets)
