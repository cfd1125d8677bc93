"""Shipped model weights and their model cards (``<name>.safetensors`` + ``<name>.json``).

Weights are plain tensors (safetensors: no pickle, nothing executes on load) and each card records
the architecture, native µm/px, training data and its licence, metrics and the SHA-256 of the
weights file, which is checked before every load.
"""

from .registry import (
    DEFAULT_NUCLEI_MODEL,
    MODELS_DIR,
    ModelCard,
    WeightsError,
    list_models,
    load_card,
    load_predictor,
)

__all__ = [
    "MODELS_DIR",
    "DEFAULT_NUCLEI_MODEL",
    "ModelCard",
    "WeightsError",
    "list_models",
    "load_card",
    "load_predictor",
]
