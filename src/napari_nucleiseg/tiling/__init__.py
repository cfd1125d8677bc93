"""Tiles for every per-tile job (segmentation, normalisation, heatmaps, attention): the grid,
the planner that sizes it for a method at an input's µm/px, and the ownership/merge rule."""

from .grid import Tile, TileGrid, slide_grid
from .merge import DUPLICATE_OVERLAP, Merger, kept, overlap, owned_nuclei
from .plan import OWNERSHIP_MARGIN_UM, TilePlan, balanced_tile, ownership_margin, plan_tiles

__all__ = [
    "DUPLICATE_OVERLAP",
    "OWNERSHIP_MARGIN_UM",
    "Merger",
    "Tile",
    "TileGrid",
    "TilePlan",
    "balanced_tile",
    "kept",
    "overlap",
    "owned_nuclei",
    "ownership_margin",
    "plan_tiles",
    "slide_grid",
]
