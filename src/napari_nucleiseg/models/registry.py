"""Model cards: find them (shipped, user folder, project folder, path), read them, hash files.

Nothing here imports from above ``models/``: the methods built on cards live in
:mod:`napari_nucleiseg.methods`, and sessions in :mod:`.runtime`.
"""

from __future__ import annotations

import hashlib
import json
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

    @property
    def kind(self) -> str:
        """The registry's kind for this card's task (only nuclei models exist so far)."""
        return "nuclei" if "nuclei" in self.task else self.task

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, ensure_ascii=False)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def user_models_dir() -> Path:
    """The user's own model folder: ``$NUCLEISEG_MODELS_DIR``, else
    ``$XDG_DATA_HOME/napari-nucleiseg/models`` (``~/.local/share/napari-nucleiseg/models``). A
    card placed there is a method in every face, by its name."""
    import os

    env = os.environ.get("NUCLEISEG_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "napari-nucleiseg" / "models"


def project_models_dir(project) -> Path:
    """A project folder's models (a project is a folder; its models live in ``models/``)."""
    return Path(project) / "models"


def project_current_model(project, kind: str = "nuclei") -> str | None:
    """The model a project uses for ``kind`` (``project.json``: ``{"models": {kind: name}}``)."""
    path = Path(project) / "project.json"
    if not path.exists():
        return None
    try:
        current = json.loads(path.read_text()).get("models", {}).get(kind)
    except (OSError, ValueError, AttributeError) as exc:
        raise WeightsError(f"{path}: not a readable project file ({exc})") from exc
    return current or None


def card_folders(project=None) -> list[tuple[Path, str]]:
    """Where cards are looked up by name, most specific first: ``(folder, source)``."""
    folders = []
    if project is not None:
        folders.append((project_models_dir(project), "project"))
    folders += [(user_models_dir(), "user"), (MODELS_DIR, "shipped")]
    return folders


def find_card(name_or_path: str | Path, project=None) -> tuple[Path, str]:
    """``(card path, source)`` for a model name (project, user, then shipped folder) or a path
    to a card (``.json``) or to a folder holding exactly one."""
    p = Path(name_or_path)
    if p.suffix == ".json" and p.is_file():
        return p, "path"
    if p.is_dir():
        cards = sorted(p.glob("*.json"))
        if len(cards) == 1:
            return cards[0], "path"
        if cards:
            raise WeightsError(f"{p}: holds {len(cards)} model cards; name one of them")
    for folder, source in card_folders(project):
        candidate = folder / f"{name_or_path}.json"
        if candidate.is_file():
            return candidate, source
    names = ", ".join(c.name for c in list_cards(project=project)) or "none"
    raise WeightsError(f"no model named {str(name_or_path)!r}; available: {names}")


def list_cards(kind: str | None = None, project=None) -> list[ModelCard]:
    """Every readable card (shipped, then user, then project), of ``kind`` when given. A card
    that cannot be read is skipped with a warning naming it."""
    import warnings

    out, seen = [], set()
    for folder, _source in reversed(card_folders(project)):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            try:
                card = load_card(path)
            except (WeightsError, OSError, ValueError, TypeError) as exc:
                warnings.warn(f"{path}: not a model card ({exc}); skipped", stacklevel=2)
                continue
            if (kind is None or card.kind == kind) and card.name not in seen:
                seen.add(card.name)
                out.append(card)
    return out


def list_models() -> list[str]:
    """Names of the models shipped in the package."""
    return sorted(p.stem for p in MODELS_DIR.glob("*.json"))


def load_card(name_or_path: str | Path, project=None) -> ModelCard:
    path = find_card(name_or_path, project)[0]
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or "name" not in data:
        raise WeightsError(f"{path}: not a model card (no name)")
    known = ModelCard.__dataclass_fields__
    try:
        return ModelCard(**{k: v for k, v in data.items() if k in known})
    except TypeError as exc:
        raise WeightsError(f"{path}: not a model card ({exc})") from exc
