"""Model cards and their files (``<name>.json`` + weights), shipped or user-trained.

Weights are plain tensors (safetensors, ONNX: no pickle, nothing executes on load) and each card
records the architecture, native µm/px, tiling, training data and its licence, metrics and the
SHA-256 of every weights file, checked before every load. Methods built on cards (what the
faces run) are in :mod:`napari_nucleiseg.methods`.
"""

from .registry import (
    DEFAULT_NUCLEI_MODEL,
    MODELS_DIR,
    ModelCard,
    WeightsError,
    card_folders,
    find_card,
    list_cards,
    list_models,
    load_card,
    project_current_model,
    project_models_dir,
    sha256_of,
    user_models_dir,
)

__all__ = [
    "DEFAULT_NUCLEI_MODEL",
    "MODELS_DIR",
    "ModelCard",
    "WeightsError",
    "card_folders",
    "find_card",
    "list_cards",
    "list_models",
    "load_card",
    "project_current_model",
    "project_models_dir",
    "sha256_of",
    "user_models_dir",
]
