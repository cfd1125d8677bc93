"""Learned stain normalisers from their cards (kind ``normaliser``): the registry's face of
:class:`~napari_nucleiseg.stain.learned_normaliser.LearnedNormaliser`.

A normaliser card holds the X→Y generator of a stain CycleGAN (safetensors, both decoders) and
the ONNX twin of its normalisation path; hashes are checked before every load, as for nuclei
models. Its nuclei decoder is measured on the card (``metrics``) but segmenting is the nuclei
models' job.
"""

from __future__ import annotations

from pathlib import Path

from ..models import ModelCard
from .base import Method

#: The shipped learned normaliser (trained by scripts/train_normaliser.py).
DEFAULT_NORMALISER_MODEL = "stain-cycle-v1"


class NormaliserMethod(Method):
    kind = "normaliser"
    outputs = ("rgb",)

    def __init__(self, card: ModelCard, card_path: Path, source: str):
        self.card = card
        self.card_path = Path(card_path)
        self.source = source
        self.name = card.name
        self.mpp = float(card.mpp)
        self.tile_px = int(card.tile_px)
        self.context_um = float(card.context_um)
        self.multiple = 2 ** (int(card.generator["norm_levels"]) - 1)

    def normaliser(self, runtime: str | None = None, calibration: float | None = None):
        """A :class:`~napari_nucleiseg.stain.learned_normaliser.LearnedNormaliser` (the
        network opens on its first block; ``calibration``: its colour pull, None: default)."""
        from ..stain.learned_normaliser import LearnedNormaliser

        return LearnedNormaliser(self.card, self.card_path, self.source, runtime, calibration)

    def describe(self) -> dict:
        c = self.card
        return {
            "method": self.name,
            "model": c.name,
            "version": c.version,
            "sha256": c.sha256,
            "model_mpp": c.mpp,
        }
