"""The tile planner: how any per-tile job cuts an image at some µm/px for a method.

One rule for in-memory segmentation, the current view and whole-slide jobs. A method states its
resolution, the pooling multiple its input must respect, its tile core (in its own pixels) and
the context a tile needs (µm); :func:`plan_tiles` turns those into input pixels:

- A pooling network is not shift-invariant: a block 2 px off its neighbour's grid predicts
  visibly different maps (tiled vs untiled AJI fell to 0.79). So tiles and halos are multiples of
  the input pixels that map to ``multiple`` model pixels, and every block sits on one grid
  anchored at the image's (slide's) origin. Exact where the resolution ratio makes that a whole
  number (20x and 40x inputs to a 20x model), the nearest grid otherwise.
- Tiles are balanced: 2100 px in tiles of up to 1344 is two of 1056, not 1344 and a 756 sliver
  that pays a network pass (and its halo) for little image.
- Read boxes (core + halo) are clipped to the image: a tile at the border sees what the image
  has, nothing invented. A whole slide and the same pixels in memory are cut alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .grid import TileGrid

#: A tile also owns the nuclei whose centroid lies this far outside its core (µm): two tiles'
#: centroids of one nucleus differ by a pixel or two of the model (0.5 µm/px), and at 1.5 µm a
#: nucleus on a tile corner is owned by at least one of them (see :mod:`.merge`).
OWNERSHIP_MARGIN_UM = 1.5
#: An input may be at most this many times coarser (µm/px) than the method works at. A method
#: resamples its input to its own µm/px, and every face plans its tiles here first, so this is the
#: one check: past 8x (4 µm/px for a 0.5 µm/px model) a nucleus of 5-10 µm spans 1-2 input pixels,
#: nothing is left to segment, and the upsampled image is 64x the input's pixels (a 500² input
#: given as 40 µm/px became 40,000² at 0.5 µm/px and ran for over 10 minutes in 2.6 GB). Such a
#: µm/px is nearly always a typo or a thumbnail's.
MAX_UPSAMPLING = 8.0
#: And at most this many times finer: 0.5 / 64 µm/px is beyond any light microscope (about
#: 0.1 µm/px at 100x oil), and a µm/px like 1e-9 would otherwise make tiles and halos of billions
#: of pixels.
MAX_DOWNSAMPLING = 64.0


class ResolutionError(ValueError):
    """An input's µm/px is implausible for the method (see :data:`MAX_UPSAMPLING`); the message
    names both resolutions and the factor."""


@dataclass(frozen=True)
class TilePlan:
    """Tiling of one input, all in input pixels."""

    tile: int
    halo: int
    #: Grid step: tiles and halos are multiples of it (the method's pooling grid).
    align: int
    #: Ownership margin around a tile's core (:data:`OWNERSHIP_MARGIN_UM`).
    margin: int

    def grid(self, shape: tuple[int, int]) -> TileGrid:
        return TileGrid(shape, self.tile, self.halo)

    def fits_one_pass(self, shape: tuple[int, int]) -> bool:
        """True when the whole input is no larger than one tile with its context: it is then
        segmented in one pass, which is what the tiles would add up to."""
        return shape[0] <= self.tile + 2 * self.halo and shape[1] <= self.tile + 2 * self.halo


def balanced_tile(shape: tuple[int, int], tile: int, align: int = 1) -> int:
    """The tile edge (at most ``tile``, rounded up to ``align``) that cuts ``shape`` into as
    many tiles as ``tile`` would, but of nearly equal size."""
    ny, nx = (max(1, math.ceil(side / tile)) for side in shape)
    even = max(math.ceil(shape[0] / ny), math.ceil(shape[1] / nx))
    return min(tile, max(align, -(-even // align) * align))


def ownership_margin(mpp: float, halo: int) -> int:
    """:data:`OWNERSHIP_MARGIN_UM` in pixels at ``mpp``: at least 1, at most a quarter halo."""
    return max(1, min(halo // 4, math.ceil(OWNERSHIP_MARGIN_UM / mpp)))


def plan_tiles(
    shape: tuple[int, int] | None, mpp: float, method, tile: int | None = None, balance: bool = True
) -> TilePlan:
    """Tiling for an input of ``shape`` (rows, cols) at ``mpp`` µm/px for ``method`` (anything
    with ``mpp``, ``multiple``, ``tile_px`` and ``context_um``: a registry method).

    ``tile`` (input pixels) overrides the method's core; it is still put on the grid. Without
    ``shape`` (or with ``balance=False``) tiles are not balanced.
    """
    if not (mpp > 0 and math.isfinite(mpp)):
        raise ValueError(f"µm/px must be a positive number, got {mpp!r}")
    check_resolution(mpp, method)
    f = mpp / float(method.mpp)  # method pixels per input pixel
    align = max(1, int(round(int(method.multiple) / f)))
    chosen = tile is not None
    size = tile if chosen else int(method.tile_px) / f
    size = max(align, int(round(size / align)) * align)
    halo = max(1, int(round(float(method.context_um) / mpp / align))) * align
    if balance and shape is not None and not chosen:
        size = balanced_tile(shape, size, align)
    return TilePlan(size, halo, align, ownership_margin(mpp, halo))


def check_resolution(mpp: float, method) -> None:
    """Refuse an input at ``mpp`` µm/px that ``method`` would have to upsample more than
    :data:`MAX_UPSAMPLING` times (or downsample more than :data:`MAX_DOWNSAMPLING` times)."""
    f = mpp / float(method.mpp)
    name = getattr(method, "name", "the method")
    if f > MAX_UPSAMPLING:
        raise ResolutionError(
            f"the input at {mpp:g} µm/px is {f:.3g}x coarser than {name} works at "
            f"({float(method.mpp):g} µm/px): more than the {MAX_UPSAMPLING:g}x it may be "
            "upsampled (nuclei would be a pixel or two across); check the µm/px given (e.g. "
            "0.25 for 40x, 0.5 for 20x)"
        )
    if f < 1 / MAX_DOWNSAMPLING:
        raise ResolutionError(
            f"the input at {mpp:g} µm/px is {1 / f:.3g}x finer than {name} works at "
            f"({float(method.mpp):g} µm/px): more than the {MAX_DOWNSAMPLING:g}x it may be "
            "downsampled (finer than any light microscope); check the µm/px given (e.g. 0.25 "
            "for 40x, 0.5 for 20x)"
        )
