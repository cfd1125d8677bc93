"""Model cards: find them (shipped, user folder, project folder, path), read them, hash files.

Nothing here imports from above ``models/``: the methods built on cards live in
:mod:`napari_nucleiseg.methods`, and sessions in :mod:`.runtime`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent
DEFAULT_NUCLEI_MODEL = "nuclei-unet-v5"


class WeightsError(RuntimeError):
    """Weights missing, corrupt, or not matching their model card."""


# What a card may say. A card decides how every input is resampled, cut and thresholded, so a
# field without physical sense (widths [1, 2], tile_px -5) ran before and gave nonsense quietly.
#: Architectures the learned methods can build: nuclei U-Nets (methods.learned) and the tissue
#: classifiers' multi-task network (classification.network).
KNOWN_ARCHITECTURES = ("UNet", "TissueNet", "CycleGenerator")
#: The registry kind of each architecture's cards.
ARCHITECTURE_KINDS = {"UNet": "nuclei", "TissueNet": "classifier", "CycleGenerator": "normaliser"}
#: segmentation.unet.DECODERS (not imported: models/ sits below segmentation/ and torch).
KNOWN_DECODERS = ("double", "light")
#: segmentation.postprocess.PostprocessSettings' fields and their ranges: probabilities, and
#: areas in µm² (the shipped 1 and 8 µm²; a nucleus is 20-200 µm², 1000 would drop every one).
KNOWN_POSTPROCESS = {
    "foreground": (0.0, 1.0),
    "marker_distance": (0.0, 1.0),
    "marker_contour": (0.0, 1.0),
    "min_marker_um2": (0.0, 1000.0),
    "min_area_um2": (0.0, 1000.0),
}
#: Levels of a U-Net (2 is the least that pools at all; 8 pools by 128, a 64 µm step at 0.5
#: µm/px, far coarser than a nucleus) and channels per level: shipped models have 12-384, the
#: smallest network trained here (the tests') 4-64. The head computes three maps from the first
#: level's channels, so fewer than 4 is no model anyone trains; 8192 is a 600 M-parameter layer.
LEVELS_RANGE = (2, 8)
WIDTH_RANGE = (4, 8192)
#: µm/px a model may work at: 0.05 is beyond a light microscope's resolution, 50 makes a nucleus
#: a fraction of a pixel. Shipped and trained models work at 0.25-1.
MPP_RANGE = (0.05, 50.0)
#: Tile core in model pixels (shipped 1024 and 1344): a 16384² pass needs tens of GB.
TILE_PX_MAX = 16384
#: Context a tile needs on every side (shipped 32 and 80 µm): 1 mm is a tenth of a slide.
CONTEXT_UM_MAX = 1000.0
#: The fields naming a file next to the card, and the fields holding its hash.
FILE_FIELDS = {"weights": "sha256", "onnx": "onnx_sha256", "onnx_int8": "onnx_int8_sha256"}
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
    #: A classifier's tags, in the order of its outputs (``tumour`` is the one heatmaps use).
    classes: list = field(default_factory=list)
    #: A learned normaliser's generator beyond its U-Net: ``norm_levels`` (encoder levels its
    #: normalisation decoder reads), ``transformer_layers`` and ``heads`` (the student's).
    generator: dict = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Refuse fields without sense, with a :class:`WeightsError` naming the field
        (:func:`load_card` adds the file). Where the files lie is checked by :func:`load_card`,
        which knows the card's folder."""
        for name in ("name", "version", "architecture", "weights", "sha256", "task"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise WeightsError(f"{name} must be a non-empty text, got {_short(value)}")
        if self.architecture not in KNOWN_ARCHITECTURES:
            raise WeightsError(
                f"architecture {_short(self.architecture)} is not one this version builds "
                f"({', '.join(KNOWN_ARCHITECTURES)})"
            )
        if self.decoder not in KNOWN_DECODERS:
            raise WeightsError(
                f"decoder {_short(self.decoder)} is not one of {', '.join(KNOWN_DECODERS)}"
            )
        widths = self.widths
        lo, hi = LEVELS_RANGE
        if not isinstance(widths, (list, tuple)) or not lo <= len(widths) <= hi:
            raise WeightsError(
                f"widths {_short(widths)}: a U-Net has {lo} to {hi} levels (channels per level)"
            )
        lo, hi = WIDTH_RANGE
        if not all(_is_int(w) and lo <= w <= hi for w in widths):
            raise WeightsError(f"widths {_short(widths)}: channels must be whole numbers {lo}-{hi}")
        if not _is_number(self.mpp) or not MPP_RANGE[0] <= self.mpp <= MPP_RANGE[1]:
            raise WeightsError(
                f"mpp {_short(self.mpp)}: a model works at {MPP_RANGE[0]:g} to {MPP_RANGE[1]:g} "
                "µm/px"
            )
        multiple = 2 ** (len(widths) - 1)
        if not _is_int(self.tile_px) or not 0 < self.tile_px <= TILE_PX_MAX:
            raise WeightsError(
                f"tile_px {_short(self.tile_px)}: the tile core is a whole number of model "
                f"pixels, 1 to {TILE_PX_MAX}"
            )
        if self.tile_px % multiple:
            raise WeightsError(
                f"tile_px {self.tile_px}: must be a multiple of {multiple}, the pooling factor of "
                f"a {len(widths)}-level network"
            )
        if not _is_number(self.context_um) or not 0 < self.context_um <= CONTEXT_UM_MAX:
            raise WeightsError(
                f"context_um {_short(self.context_um)}: the context a tile needs is more than 0 "
                f"and at most {CONTEXT_UM_MAX:g} µm"
            )
        if not isinstance(self.postprocess, dict):
            raise WeightsError(f"postprocess must be a mapping, got {_short(self.postprocess)}")
        for key, value in self.postprocess.items():
            if key not in KNOWN_POSTPROCESS:
                raise WeightsError(
                    f"postprocess: unknown setting {_short(key)}; known: "
                    f"{', '.join(KNOWN_POSTPROCESS)}"
                )
            lo, hi = KNOWN_POSTPROCESS[key]
            if not _is_number(value) or not lo <= value <= hi:
                raise WeightsError(
                    f"postprocess: {key} must be a number from {lo:g} to {hi:g}, got "
                    f"{_short(value)}"
                )
        if self.architecture == "TissueNet" and (
            not isinstance(self.classes, list)
            or len(self.classes) < 2
            or not all(isinstance(c, str) and c.strip() for c in self.classes)
            or len(set(self.classes)) != len(self.classes)
        ):
            raise WeightsError(
                f"classes {_short(self.classes)}: a classifier names two or more distinct tags"
            )
        if self.architecture == "CycleGenerator":
            g = self.generator
            levels = g.get("norm_levels") if isinstance(g, dict) else None
            if not _is_int(levels) or not 2 <= levels <= len(widths):
                raise WeightsError(
                    f"generator {_short(g)}: norm_levels must be a whole number 2-{len(widths)}"
                )
            if not _is_int(g.get("transformer_layers", 0)) or not _is_int(g.get("heads", 4)):
                raise WeightsError(f"generator {_short(g)}: layers and heads are whole numbers")
            ref = g.get("reference_stain")
            if not isinstance(ref, list) or len(ref) != 8 or not all(_is_number(v) for v in ref):
                raise WeightsError(
                    f"generator {_short(g)}: reference_stain must be 8 numbers (the reference "
                    "style's H and E vectors and log amounts)"
                )
            lab = g.get("reference_lab")
            if lab is not None and (
                not isinstance(lab, list)
                or len(lab) != 6
                or not all(_is_number(v) for v in lab)
                or not all(v > 0 for v in lab[3:])
            ):
                raise WeightsError(
                    f"generator {_short(g)}: reference_lab must be 6 finite numbers (the style's "
                    "Lab mean and standard deviation over tissue; the deviations above 0)"
                )
        if not isinstance(self.outputs, (list, tuple)) or not all(
            isinstance(o, str) for o in self.outputs
        ):
            raise WeightsError(f"outputs must be a list of names, got {_short(self.outputs)}")
        for name, hash_field in FILE_FIELDS.items():
            file, digest = getattr(self, name), getattr(self, hash_field)
            if not isinstance(file, str) or not isinstance(digest, str):
                raise WeightsError(f"{name} and {hash_field} must be texts")
            if file and not _SHA256.fullmatch(digest):
                raise WeightsError(
                    f"{hash_field} {_short(digest)}: a SHA-256 is 64 hexadecimal digits"
                )

    def check_files(self, folder: Path) -> None:
        """Refuse file fields that leave ``folder`` (the card's): a card names files beside it,
        and one naming ``../../etc/passwd`` or an absolute path would have it read and hashed."""
        import os
        from pathlib import PureWindowsPath

        root = Path(folder).resolve()
        for name in FILE_FIELDS:
            value = getattr(self, name)
            if not value:
                continue
            if Path(value).is_absolute() or PureWindowsPath(value).is_absolute():
                raise WeightsError(
                    f"{name} {value!r} is an absolute path; a card names its files relative to "
                    "its own folder"
                )
            target = (root / value).resolve()
            if os.path.commonpath([root, target]) != str(root):
                raise WeightsError(
                    f"{name} {value!r} lies outside the card's folder ({target}); a card's "
                    "files must be in its own folder"
                )

    @property
    def kind(self) -> str:
        """The registry's kind: ``nuclei`` (instance segmentation), ``classifier`` (tissue) or
        ``normaliser`` (learned stain normalisation)."""
        return ARCHITECTURE_KINDS[self.architecture]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, ensure_ascii=False)


def _short(value, limit: int = 60) -> str:
    """``repr`` cut to a line: a message must stay one line whatever a card holds."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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

    # A name in two folders is the card find_card gives for it (the most specific folder's):
    # looked up most specific first, listed shipped first.
    found: list[list[ModelCard]] = []
    seen: set[str] = set()
    for folder, _source in card_folders(project):
        found.append(out := [])
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            try:
                card = load_card(path)
            except (WeightsError, OSError, ValueError, TypeError) as exc:
                text = str(exc)  # load_card's refusals name the card already
                if not text.startswith(str(path)):
                    text = f"{path}: not a model card ({text})"
                warnings.warn(f"{text}; skipped", stacklevel=2)
                continue
            if (kind is None or card.kind == kind) and card.name not in seen:
                seen.add(card.name)
                out.append(card)
    return [card for cards in reversed(found) for card in cards]


def list_models() -> list[str]:
    """Names of the models shipped in the package."""
    return sorted(p.stem for p in MODELS_DIR.glob("*.json"))


def load_card(name_or_path: str | Path, project=None) -> ModelCard:
    """The card for a model name or card path, its fields checked for sense and its files for
    lying in its folder; every refusal is one :class:`WeightsError` naming the file and field."""
    path = find_card(name_or_path, project)[0]
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path}: not a readable model card ({exc})") from None
    if not isinstance(data, dict) or "name" not in data:
        raise WeightsError(f"{path}: not a model card (no name)")
    known = ModelCard.__dataclass_fields__
    try:
        card = ModelCard(**{k: v for k, v in data.items() if k in known})
        card.check_files(path.parent)
    except TypeError as exc:
        raise WeightsError(f"{path}: not a model card ({exc})") from None
    except WeightsError as exc:
        raise WeightsError(f"{path}: {exc}") from None
    return card
