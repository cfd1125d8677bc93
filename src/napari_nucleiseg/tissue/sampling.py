"""Tissue tiles sampled at random from a slide or image: what pseudo-labelling and the learned
normaliser's training read from a project's slides."""

from __future__ import annotations

import numpy as np

#: A sampled tile is kept when at least this share of it is tissue.
MIN_TISSUE = 0.5


def sample_tissue_tiles(path, mpp, tile_um: float, n: int, seed: int):
    """``(rgb, mpp, region_um)`` tiles of ``tile_um`` a side at full resolution: the whole of an
    image no bigger than four tiles, else up to ``n`` random tiles that are mostly tissue (at
    most ``8 n`` tries). ``mpp`` overrides the file's µm/px; ProjectError names a file that
    cannot be read or states none."""
    from ..project.folder import open_with_mpp
    from .mask import tissue_from_rgb

    with open_with_mpp(path, mpp) as slide:
        h, w = slide.shape
        m = slide.mpp
        side = max(64, int(tile_um / m))
        if h * w <= 4 * side * side:
            yield slide.read_region(0, 0, w, h, 0), m, (0, 0, w * m, h * m)
            return
        rng = np.random.default_rng(seed)
        found = tries = 0
        while found < n and tries < 8 * n:
            tries += 1
            y = int(rng.integers(0, max(1, h - side)))
            x = int(rng.integers(0, max(1, w - side)))
            rgb = slide.read_region(x, y, min(side, w - x), min(side, h - y), 0)
            tissue, _ = tissue_from_rgb(rgb, m)
            if tissue.mean() < MIN_TISSUE:
                continue
            found += 1
            yield rgb, m, (x * m, y * m, (x + rgb.shape[1]) * m, (y + rgb.shape[0]) * m)
