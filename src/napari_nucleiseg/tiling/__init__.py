"""The tile grid every per-tile job shares (segmentation, normalisation, heatmaps, attention)."""

from .grid import Tile, TileGrid, slide_grid

__all__ = ["Tile", "TileGrid", "slide_grid"]
