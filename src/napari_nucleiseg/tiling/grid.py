"""A regular grid of tiles over a slide, in level-0 pixels, with a halo for context.

Every per-tile model reads ``tile.read_box`` (core plus halo, so convolutions and nuclei near the
edge see their neighbourhood) and owns only ``tile.box`` (the core), which partitions the slide:
each pixel belongs to exactly one tile. Whole-slide jobs visit ``grid.tissue_tiles(mask)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Tile:
    row: int
    col: int
    x: int
    y: int
    width: int
    height: int
    halo: int = 0

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Core region ``(x0, y0, x1, y1)`` in level-0 pixels (exclusive ends)."""
        return (self.x, self.y, self.x + self.width, self.y + self.height)

    @property
    def read_box(self) -> tuple[int, int, int, int]:
        """Core plus halo on every side; may extend past the slide (reads there are glass)."""
        h = self.halo
        return (self.x - h, self.y - h, self.x + self.width + h, self.y + self.height + h)

    @property
    def key(self) -> str:
        """Stable name, e.g. for recording finished tiles in a result store."""
        return f"{self.row}_{self.col}"


class TileGrid:
    """Tiles of ``tile`` × ``tile`` level-0 pixels covering a ``(height, width)`` slide."""

    def __init__(self, shape: tuple[int, int], tile: int, halo: int = 0):
        if tile <= 0:
            raise ValueError(f"tile size must be positive, got {tile}")
        if halo < 0:
            raise ValueError(f"halo must be non-negative, got {halo}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.tile = int(tile)
        self.halo = int(halo)
        self.rows = math.ceil(self.shape[0] / self.tile)
        self.cols = math.ceil(self.shape[1] / self.tile)

    def __len__(self) -> int:
        return self.rows * self.cols

    def __getitem__(self, rc: tuple[int, int]) -> Tile:
        r, c = rc
        if not (0 <= r < self.rows and 0 <= c < self.cols):
            raise IndexError(f"tile {rc} outside a {self.rows}x{self.cols} grid")
        y, x = r * self.tile, c * self.tile
        return Tile(
            r,
            c,
            x,
            y,
            min(self.tile, self.shape[1] - x),
            min(self.tile, self.shape[0] - y),
            self.halo,
        )

    def __iter__(self) -> Iterator[Tile]:
        for r in range(self.rows):
            for c in range(self.cols):
                yield self[r, c]

    def tissue_tiles(self, mask, min_fraction: float = 0.01) -> list[Tile]:
        """Tiles whose core holds at least ``min_fraction`` tissue according to a
        :class:`~napari_nucleiseg.tissue.TissueMask`."""
        return [t for t in self if mask.fraction_in(*t.box) >= min_fraction]


def slide_grid(
    slide, tile_um: float | None = None, halo_um: float = 0.0, tile_px: int | None = None
) -> TileGrid:
    """A grid over a slide's level 0 with tiles given in µm (or in pixels when it has no µm/px)."""
    if tile_px is None:
        if tile_um is None:
            raise ValueError("give tile_um or tile_px")
        mpp = slide._require_mpp()
        tile_px = max(1, round(tile_um / mpp))
        halo_px = round(halo_um / mpp)
    else:
        halo_px = round(halo_um / slide.mpp) if (halo_um and slide.mpp) else 0
    return TileGrid(slide.shape, tile_px, halo_px)
