"""Synthetic H&E slides with known nuclei: the built-in demo and large test slides."""

from .slides import DemoSlide, demo_slide, make_large_slide, read_label_pyramid

__all__ = ["DemoSlide", "demo_slide", "make_large_slide", "read_label_pyramid"]
