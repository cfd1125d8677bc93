"""Segmentation metrics (reference 000 §2.3): pixel, object and instance scores."""

from .instance import (
    ImageScores,
    aggregate,
    contingency,
    score_image,
)

__all__ = ["ImageScores", "aggregate", "contingency", "score_image"]
