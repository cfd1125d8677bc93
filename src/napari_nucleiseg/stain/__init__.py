"""Stain separation (and, later, normalisation): optical density and colour deconvolution."""

from .deconvolution import HED_FROM_RGB, RGB_FROM_HED, haematoxylin_od, od_from_rgb, rgb_to_hed

__all__ = ["HED_FROM_RGB", "RGB_FROM_HED", "haematoxylin_od", "od_from_rgb", "rgb_to_hed"]
