"""Model registry: find, verify and load shipped (or user-trained) nuclei models."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent
DEFAULT_NUCLEI_MODEL = "nuclei-unet-v4"


class WeightsError(RuntimeError):
    """Weights missing, corrupt, or not matching their model card."""


@dataclass
class ModelCard:
    name: str
    version: str
    architecture: str
    widths: list
    mpp: float
    sha256: str
    weights: str
    task: str = "nuclei instance segmentation"
    outputs: list = field(default_factory=lambda: ["foreground", "contour", "distance"])
    training_data: list = field(default_factory=list)
    licence: str = ""
    metrics: dict = field(default_factory=dict)
    postprocess: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    created: str = ""
    notes: str = ""
    onnx: str = ""
    onnx_sha256: str = ""
    decoder: str = "double"
    onnx_int8: str = ""
    onnx_int8_sha256: str = ""
    #: Tile core in model pixels (a network pass is the core plus the context on both sides), and
    #: the context (µm) a tile needs on every side for tiled maps to match an untiled pass: a
    #: deeper network sees farther (see training.export).
    tile_px: int = 1024
    context_um: float = 32.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, ensure_ascii=False)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _card_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".json" and p.exists():
        return p
    candidate = MODELS_DIR / f"{name_or_path}.json"
    if candidate.exists():
        return candidate
    raise WeightsError(
        f"no model named {name_or_path!r}; available: {', '.join(list_models()) or 'none'}"
    )


def list_models() -> list[str]:
    return sorted(p.stem for p in MODELS_DIR.glob("*.json"))


def load_card(name_or_path: str | Path) -> ModelCard:
    path = _card_path(name_or_path)
    data = json.loads(path.read_text())
    known = ModelCard.__dataclass_fields__
    return ModelCard(**{k: v for k, v in data.items() if k in known})


#: ``NUCLEISEG_RUNTIME``: ``auto`` (the int8 ONNX model when shipped, else float32 ONNX, else
#: PyTorch), ``onnx-fp32`` (float32 ONNX), or ``torch``.
RUNTIMES = ("auto", "onnx-fp32", "torch")


def _onnx_session(card: ModelCard, folder: Path):
    """An ONNX Runtime session for the card's ONNX twin (int8 when shipped), or None (not
    shipped, no runtime, or ``NUCLEISEG_RUNTIME=torch``)."""
    import os

    runtime = os.environ.get("NUCLEISEG_RUNTIME", "auto")
    if runtime not in RUNTIMES:
        raise WeightsError(f"NUCLEISEG_RUNTIME={runtime!r}: use one of {', '.join(RUNTIMES)}")
    if not card.onnx or runtime == "torch":
        return None
    try:
        import onnxruntime  # noqa: F401  (optional: without it, the PyTorch weights run)
    except ImportError:
        return None
    name, expected = card.onnx, card.onnx_sha256
    if card.onnx_int8 and runtime == "auto":
        name, expected = card.onnx_int8, card.onnx_int8_sha256
    path = folder / name
    if not path.exists():
        return None
    digest = sha256_of(path)
    if digest != expected:
        raise WeightsError(
            f"{path}: SHA-256 {digest[:12]}… does not match the model card "
            f"({expected[:12]}…); refusing to load it"
        )
    session = open_session(path)
    session.nucleiseg_precision = "int8" if name == card.onnx_int8 else "float32"
    return session


def open_session(path: Path, threads: int | None = None):
    """An ONNX Runtime session (CPU) for a model file already checked against its card, using
    ``threads`` cores (default: every core this process may run on)."""
    import onnxruntime as ort

    from ..segmentation.predict import usable_cores

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or usable_cores()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # No memory pattern: ONNX Runtime plans one per input shape, and the pass that records it is
    # slow (a first 1664² block: 1.6 s instead of 0.6-0.8). Tiles and views come in many shapes,
    # each seen once or twice, so the plan rarely pays back: in interleaved runs the 4000² region
    # took 5.3-6.5 s without it against 6.8-7.6 s with it (whole command: 7.3-8.9 s against
    # 9.1-9.4 s in a slower hour), same labels.
    opts.enable_mem_pattern = False
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    session.nucleiseg_path = str(path)
    return session


def load_predictor(name_or_path: str | Path = DEFAULT_NUCLEI_MODEL, **kwargs):
    """A :class:`~napari_nucleiseg.segmentation.predict.Predictor` for a registered model, after
    checking the weights' SHA-256 against the card. Loads without pickle (safetensors, and the
    ONNX twin for ONNX Runtime when present; ``NUCLEISEG_RUNTIME=torch`` forces PyTorch). With
    the ONNX twin, PyTorch is not even imported: that is most of a command's start-up time."""
    from ..segmentation.postprocess import PostprocessSettings
    from ..segmentation.predict import Predictor

    card_path = _card_path(name_or_path)
    card = load_card(card_path)
    weights = card_path.parent / card.weights
    if not weights.exists():
        raise WeightsError(f"{weights}: weights file missing for model {card.name!r}")
    digest = sha256_of(weights)
    if digest != card.sha256:
        raise WeightsError(
            f"{weights}: SHA-256 {digest[:12]}… does not match the model card ({card.sha256[:12]}…); "
            "the file is corrupt or was replaced — refusing to load it"
        )
    settings = (
        PostprocessSettings(**card.postprocess) if card.postprocess else PostprocessSettings()
    )
    session = _onnx_session(card, card_path.parent)
    kwargs.setdefault("tile", int(card.tile_px))
    kwargs.setdefault("halo", int(math.ceil(card.context_um / card.mpp)))
    if session is not None:
        multiple = 2 ** (len(card.widths) - 1)

        def make_session(
            threads: int, path=Path(session.nucleiseg_path), precision=session.nucleiseg_precision
        ):
            shared = open_session(path, threads)
            shared.nucleiseg_precision = precision
            return shared

        return Predictor(
            None,
            card.mpp,
            settings=settings,
            session=session,
            multiple=multiple,
            make_session=make_session,
            **kwargs,
        ), card
    from safetensors.torch import load_file

    from ..segmentation.unet import UNet, fuse_for_inference

    model = UNet(tuple(card.widths), decoder=card.decoder)
    try:
        model.load_state_dict(load_file(str(weights)))
    except Exception as exc:
        raise WeightsError(
            f"{weights}: weights do not fit the {card.architecture} {card.widths}: {exc}"
        ) from exc
    return Predictor(fuse_for_inference(model), card.mpp, settings=settings, **kwargs), card
