"""Foreground (tissue) versus glass, computed on a thumbnail."""

from .mask import TissueMask, tissue_mask

__all__ = ["TissueMask", "tissue_mask"]
