"""Methods built on a model card: a U-Net's maps, post-processed into nuclei.

The card is the whole of a learned method on disk (architecture, µm/px, tiling, post-processing,
hashes), so a model trained at run time — in a user's folder or a project — is a method in every
face as soon as its card is written.
"""

from __future__ import annotations

import math
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..models import ModelCard, WeightsError, load_card, sha256_of
from .base import NucleiMethod

#: Detection thresholds a user may choose (foreground probability). Outside it a model finds
#: next to nothing (above) or draws the background in (below).
DETECTION_RANGE = (0.05, 0.95)


class CardMethod(NucleiMethod):
    """A nuclei model from its card; weights are checked and loaded on first use.

    One setting of its post-processing is the user's: the **detection threshold**, the
    foreground probability above which a pixel is nucleus (the card's tuned value by default).
    Lower finds fainter nuclei and draws every nucleus larger; higher keeps only the confident
    ones. :meth:`with_detection_threshold` gives the model with another one: a method of its own
    (its :meth:`describe` says so, so a whole-slide store is never resumed with another), which
    shares this one's loaded network.
    """

    def __init__(
        self, card: ModelCard, card_path: Path, source: str, detection_threshold=None, base=None
    ):
        self.card = card
        self.card_path = Path(card_path)
        self.source = source
        self.name = card.name
        self.mpp = float(card.mpp)
        self.multiple = 2 ** (len(card.widths) - 1)
        self.tile_px = int(card.tile_px)
        self.context_um = float(card.context_um)
        self.outputs = ("nuclei instance labels", *card.outputs)
        #: One predictor per runtime it was loaded for: the runtime is decided afresh at each
        #: use (``NUCLEISEG_RUNTIME`` may change in a process), exactly as :meth:`describe`
        #: decides it, so what outputs record is what computed them.
        self._predictors: dict[str, object] = {}
        self._loading = threading.Lock()
        #: None: the card's own threshold. Else the user's, and ``_base`` the card's method,
        #: whose network this one uses.
        self.detection_threshold = detection_threshold
        self._base = base
        self._variants: dict[float, CardMethod] = {}

    @property
    def default_detection_threshold(self) -> float:
        """The threshold the card was tuned with."""
        from ..segmentation.postprocess import PostprocessSettings

        return float(self.card.postprocess.get("foreground", PostprocessSettings().foreground))

    def with_detection_threshold(self, threshold: float | None) -> CardMethod:
        """This model with another detection threshold (None or the card's own: the model as
        shipped). One object per threshold, so a warmed-up method stays warm."""
        base = self._base or self
        if threshold is None:
            return base
        # 0.1 + 0.2 and 0.3 are one threshold: one method, one record, one resumable store.
        threshold = round(float(threshold), 4)
        if threshold == round(base.default_detection_threshold, 4):
            return base
        lo, hi = DETECTION_RANGE
        if not lo <= threshold <= hi:
            from .base import MethodError

            raise MethodError(
                f"{self.name}: detection threshold {threshold:g} is outside {lo:g}-{hi:g} (a "
                f"foreground probability; the model's own is {base.default_detection_threshold:g})"
            )
        with _VARIANTS_LOCK:  # not the loading lock: asking must not wait for a model to load
            variant = base._variants.get(threshold)
            if variant is None:
                variant = type(base)(base.card, base.card_path, base.source, threshold, base)
                base._variants[threshold] = variant
        return variant

    def __reduce__(self):
        # Sent to a worker process (a whole-slide job in a child process or on a cluster) as
        # where it comes from, not as its loaded network and locks. A shipped model by its
        # card's file name, found in the worker's own installation (the package may live
        # elsewhere there); a worker with another version is refused by the tile's identity
        # check. Other models by their card's path, which the worker must be able to read.
        if type(self) is not CardMethod:
            raise TypeError(
                f"{type(self).__name__} ({self.name}): a subclass of CardMethod must define "
                "__reduce__ to be sent to another process"
            )
        from ..models import MODELS_DIR

        shipped = self.source == "shipped" and self.card_path.parent == MODELS_DIR.resolve()
        where = self.card_path.name if shipped else str(self.card_path)
        return _card_method_at, (where, self.source, self.detection_threshold)

    def runtime(self, warn: bool = True) -> str:
        """What computes this model here (``onnx-int8``, ``onnx-fp32``, ``torch``; see
        :func:`~napari_nucleiseg.models.runtime.runtime_for`), without loading it."""
        from ..models.runtime import runtime_for

        return runtime_for(self.card, self.card_path.parent, warn=warn)

    @property
    def predictor(self):
        """The :class:`~napari_nucleiseg.segmentation.predict.Predictor` (loaded once per
        runtime)."""
        if self._base is not None:
            return self._base.predictor
        runtime = self.runtime(warn=False)  # describe() (every output records it) warns
        predictor = self._predictors.get(runtime)
        if predictor is None:
            with self._loading:
                predictor = self._predictors.get(runtime)
                if predictor is None:
                    predictor = load_predictor(self.card_path, runtime=runtime)[0]
                    self._predictors[runtime] = predictor
        return predictor

    def segment(self, rgb: np.ndarray, mpp: float) -> np.ndarray:
        from ..io.image_backend import to_rgb_uint8

        settings = None
        if self.detection_threshold is not None:
            settings = replace(self.predictor.settings, foreground=self.detection_threshold)
        return self.predictor.segment(to_rgb_uint8(rgb), mpp, settings=settings)

    def warm_up(self) -> None:
        self.predictor  # noqa: B018  (loads and checks the weights)

    def describe(self) -> dict:
        from ..segmentation.predict import tta_mode

        c = self.card
        # The flip rule changes the labels of inputs finer than the model: a whole-slide store
        # written under one setting must not be resumed under another.
        info = {
            "method": self.name,
            "model": c.name,
            "version": c.version,
            "sha256": c.sha256,
            "model_mpp": c.mpp,
            "test_time_flips": tta_mode(),
            # int8 and float32 give slightly different nuclei: the runtime is part of what made a
            # result, and a fallback from the one asked for (file missing, no onnxruntime) shows.
            "runtime": self.runtime(),
        }
        if self.detection_threshold is not None:  # absent for the card's own: old stores match
            info["detection_threshold"] = self.detection_threshold
        return info


def _card_method_at(where: str, source: str, detection_threshold):
    """The method a pickled :class:`CardMethod` stands for (see ``CardMethod.__reduce__``)."""
    if source == "shipped":  # a file name, or a path (MODELS_DIR / an absolute path is it)
        from ..models import MODELS_DIR

        where = str(MODELS_DIR / where)
    return card_method(Path(where), source).with_detection_threshold(detection_threshold)


#: Guards every model's cache of threshold variants (brief: a dict lookup and an object).
_VARIANTS_LOCK = threading.Lock()


_CACHE: dict[tuple[str, float], CardMethod] = {}
_CACHE_LOCK = threading.Lock()


def card_method(card_path: Path, source: str):
    """The method for a card file, one object per card (and per version of the file, so a
    retrained model written over its card is picked up)."""
    card_path = Path(card_path).resolve()
    try:
        key = (str(card_path), card_path.stat().st_mtime)
    except OSError as exc:
        raise WeightsError(f"{card_path}: cannot read the model card ({exc.strerror})") from exc
    with _CACHE_LOCK:
        if key not in _CACHE:
            card = load_card(card_path)
            if card.kind == "classifier":
                from .classifier import ClassifierMethod

                _CACHE[key] = ClassifierMethod(card, card_path, source)
            elif card.kind == "normaliser":
                from .normaliser import NormaliserMethod

                _CACHE[key] = NormaliserMethod(card, card_path, source)
            else:
                _CACHE[key] = CardMethod(card, card_path, source)
        return _CACHE[key]


def load_predictor(name_or_path: str | Path, project=None, runtime: str | None = None, **kwargs):
    """``(Predictor, card)`` for a model, after checking the weights' SHA-256 against the card.
    Loads without pickle (safetensors, and the ONNX twin for ONNX Runtime when present;
    ``NUCLEISEG_RUNTIME=torch`` forces PyTorch). With the ONNX twin, PyTorch is not even
    imported: that is most of a command's start-up time. ``runtime`` (default:
    :func:`~napari_nucleiseg.models.runtime.runtime_for`, which warns of a fallback) is the
    runtime to load for."""
    from ..models import find_card
    from ..models.runtime import onnx_session, open_session, runtime_for
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
    session = onnx_session(card, card_path.parent, runtime or runtime_for(card, card_path.parent))
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
