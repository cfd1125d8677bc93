"""Segmentation metrics (reference 000 §2.3): pixel, object and instance scores."""

from .instance import (
    ImageScores,
    aggregate,
    contingency,
    score_image,
)
from .labels import LabelMapError, check_label_map

__all__ = [
    "ImageScores",
    "LabelMapError",
    "aggregate",
    "check_label_map",
    "contingency",
    "score_image",
]
