"""Stain separation, normalisation and augmentation.

* :func:`deconvolve` — Ruifrok-Johnston haematoxylin / eosin / DAB optical densities.
* :func:`make_normaliser` — Reinhard, Macenko, Vahadane (own sparse-NMF solver) and Ruifrok
  normalisers with ``fit`` / ``adapt`` / ``transform``; :class:`StainProfile` saves a fitted
  target as JSON; :func:`load_target` reads a profile or fits a reference image.
* :func:`normalise_levels` — a lazy normalised view of every pyramid level (dask ``map_blocks``).
* :mod:`.augment` — HED jitter for training.
"""

from .deconvolution import (
    HED_FROM_RGB,
    RGB_FROM_HED,
    deconvolve,
    haematoxylin_od,
    hed_to_rgb,
    od_from_rgb,
    rgb_to_hed,
)
from .errors import StainError
from .lazy import adapt_to_slide, normalise_levels, sample_levels, sample_slide
from .normalise import (
    MacenkoNormaliser,
    Normaliser,
    ReinhardNormaliser,
    RuifrokNormaliser,
    VahadaneNormaliser,
    load_target,
    make_normaliser,
    normalise_image,
    normaliser_from_profile,
)
from .profile import METHODS, STAIN_METHODS, StainProfile, average_profiles

__all__ = [
    "HED_FROM_RGB",
    "RGB_FROM_HED",
    "deconvolve",
    "haematoxylin_od",
    "hed_to_rgb",
    "od_from_rgb",
    "rgb_to_hed",
    "StainError",
    "adapt_to_slide",
    "normalise_levels",
    "sample_levels",
    "sample_slide",
    "MacenkoNormaliser",
    "Normaliser",
    "ReinhardNormaliser",
    "RuifrokNormaliser",
    "VahadaneNormaliser",
    "load_target",
    "make_normaliser",
    "normalise_image",
    "normaliser_from_profile",
    "METHODS",
    "STAIN_METHODS",
    "StainProfile",
    "average_profiles",
]
