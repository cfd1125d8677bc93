"""Methods built on a model card: a U-Net's maps, post-processed into nuclei.

The card is the whole of a learned method on disk (architecture, µm/px, tiling, post-processing,
hashes), so a model trained at run time — in a user's folder or a project — is a method in every
face as soon as its card is written.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np

from ..models import ModelCard, WeightsError, load_card, sha256_of
from .base import NucleiMethod


class CardMethod(NucleiMethod):
    """A nuclei model from its card; weights are checked and loaded on first use."""

    def __init__(self, card: ModelCard, card_path: Path, source: str):
        self.card = card
        self.card_path = Path(card_path)
        self.source = source
        self.name = card.name
        self.mpp = float(card.mpp)
        self.multiple = 2 ** (len(card.widths) - 1)
        self.tile_px = int(card.tile_px)
        self.context_um = float(card.context_um)
        self.outputs = ("nuclei instance labels", *card.outputs)
        self._predictor = None
        self._loading = threading.Lock()

    @property
    def predictor(self):
        """The :class:`~napari_nucleiseg.segmentation.predict.Predictor` (loaded once)."""
        if self._predictor is None:
            with self._loading:
                if self._predictor is None:
                    self._predictor = load_predictor(self.card_path)[0]
        return self._predictor

    def segment(self, rgb: np.ndarray, mpp: float) -> np.ndarray:
        from ..io.image_backend import to_rgb_uint8

        return self.predictor.segment(to_rgb_uint8(rgb), mpp)

    def warm_up(self) -> None:
        self.predictor  # noqa: B018  (loads and checks the weights)

    def describe(self) -> dict:
        from ..segmentation.predict import tta_mode

        c = self.card
        # The flip rule changes the labels of inputs finer than the model: a whole-slide store
        # written under one setting must not be resumed under another.
        return {
            "method": self.name,
            "model": c.name,
            "version": c.version,
            "sha256": c.sha256,
            "model_mpp": c.mpp,
            "test_time_flips": tta_mode(),
        }


_CACHE: dict[tuple[str, float], CardMethod] = {}
_CACHE_LOCK = threading.Lock()


def card_method(card_path: Path, source: str) -> CardMethod:
    """The method for a card file, one object per card (and per version of the file, so a
    retrained model written over its card is picked up)."""
    card_path = Path(card_path).resolve()
    try:
        key = (str(card_path), card_path.stat().st_mtime)
    except OSError as exc:
        raise WeightsError(f"{card_path}: cannot read the model card ({exc.strerror})") from exc
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = CardMethod(load_card(card_path), card_path, source)
        return _CACHE[key]


def load_predictor(name_or_path: str | Path, project=None, **kwargs):
    """``(Predictor, card)`` for a model, after checking the weights' SHA-256 against the card.
    Loads without pickle (safetensors, and the ONNX twin for ONNX Runtime when present;
    ``NUCLEISEG_RUNTIME=torch`` forces PyTorch). With the ONNX twin, PyTorch is not even
    imported: that is most of a command's start-up time."""
    from ..models import find_card
    from ..models.runtime import onnx_session, open_session
    from ..segmentation.postprocess import PostprocessSettings
    from ..segmentation.predict import Predictor

    card_path = find_card(name_or_path, project)[0]
    card = load_card(card_path)
    weights = card_path.parent / card.weights
    if not weights.exists():
        raise WeightsError(f"{weights}: weights file missing for model {card.name!r}")
    digest = sha256_of(weights)
    if digest != card.sha256:
        raise WeightsError(
            f"{weights}: SHA-256 {digest[:12]}… does not match the model card "
            f"({card.sha256[:12]}…); the file is corrupt or was replaced — refusing to load it"
        )
    settings = (
        PostprocessSettings(**card.postprocess) if card.postprocess else PostprocessSettings()
    )
    session = onnx_session(card, card_path.parent)
    kwargs.setdefault("tile", int(card.tile_px))
    kwargs.setdefault("halo", int(math.ceil(card.context_um / card.mpp)))
    multiple = 2 ** (len(card.widths) - 1)
    if session is not None:
        path, precision = Path(session.nucleiseg_path), session.nucleiseg_precision

        def make_session(threads: int):
            shared = open_session(path, threads)
            shared.nucleiseg_precision = precision
            return shared

        predictor = Predictor(
            None,
            card.mpp,
            settings=settings,
            session=session,
            multiple=multiple,
            make_session=make_session,
            **kwargs,
        )
        return predictor, card
    from safetensors.torch import load_file

    from ..segmentation.unet import UNet, fuse_for_inference

    model = UNet(tuple(card.widths), decoder=card.decoder)
    try:
        model.load_state_dict(load_file(str(weights)))
    except Exception as exc:  # torch raises RuntimeError/KeyError/...: name the file either way
        raise WeightsError(
            f"{weights}: weights do not fit the {card.architecture} {card.widths}: {exc}"
        ) from exc
    return Predictor(fuse_for_inference(model), card.mpp, settings=settings, **kwargs), card
