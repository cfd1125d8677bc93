"""The classical nuclei methods: haematoxylin threshold + watershed, no weights (the floor a
learned model must beat, and what runs where no model fits)."""

from __future__ import annotations

import numpy as np

from .base import NucleiMethod


class ClassicalMethod(NucleiMethod):
    """Otsu (global) or Phansalkar (local, reference 004) threshold on haematoxylin + watershed.

    Sizes are in µm, so it works at any resolution; 0.5 µm/px is where it was tuned, and its
    tiles are planned there like a 20x model's.
    """

    mpp = 0.5
    multiple = 1
    tile_px = 1024
    #: Wider than any nucleus, so a tile sees every nucleus it owns whole.
    context_um = 24.0
    source = "built-in"

    def __init__(self, name: str, threshold: str):
        self.name = name
        self.threshold = threshold

    def segment(self, rgb: np.ndarray, mpp: float) -> np.ndarray:
        from ..io.image_backend import to_rgb_uint8
        from ..segmentation.classical import segment_classical

        return segment_classical(to_rgb_uint8(rgb), mpp, self.threshold)


CLASSICAL_METHODS = {
    "classical": ClassicalMethod("classical", "otsu"),
    "classical-phansalkar": ClassicalMethod("classical-phansalkar", "phansalkar"),
}
