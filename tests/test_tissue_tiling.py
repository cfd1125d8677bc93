"""Tissue mask and tile grid: glass versus tissue, and tiles that partition the slide."""

import numpy as np
import pytest
from conftest import shared_slide

from napari_nucleiseg.demo.render import tissue_shape
from napari_nucleiseg.io import open_slide
from napari_nucleiseg.tiling import TileGrid, slide_grid
from napari_nucleiseg.tissue import tissue_mask
from napari_nucleiseg.tissue.mask import tissue_from_rgb


def test_demo_tissue_mask_matches_the_rendered_tissue(demo):
    from napari_nucleiseg.demo.slides import DEMO_SEED, DEMO_SHAPE

    slide = open_slide(demo.slide)
    m = tissue_mask(slide)
    assert m.mpp == pytest.approx(16.0, rel=0.05)
    truth = tissue_shape(np.random.default_rng(DEMO_SEED), DEMO_SHAPE)
    d = int(round(m.downsample))
    truth_small = (
        truth[: m.mask.shape[0] * d, : m.mask.shape[1] * d]
        .reshape(m.mask.shape[0], d, m.mask.shape[1], d)
        .mean(axis=(1, 3))
        > 0.5
    )
    agreement = (truth_small == m.mask).mean()
    assert agreement > 0.95, agreement


def test_glass_only_and_all_tissue_images():
    glass = np.full((200, 200, 3), 243, np.uint8) + np.random.default_rng(0).integers(
        0, 3, (200, 200, 3)
    ).astype(np.uint8)
    assert not tissue_from_rgb(glass, 16.0)[0].any()
    tissue = np.zeros((200, 200, 3), np.uint8)
    tissue[...] = (200, 120, 180)
    tissue[:5, :5] = 250  # a little glass so the white estimate is realistic
    assert tissue_from_rgb(tissue, 16.0)[0].mean() > 0.95


@pytest.mark.real_slides
def test_real_slide_mask_is_plausible(quiet):
    slide = open_slide(shared_slide("CMU-1-Small-Region.svs"))
    m = tissue_mask(slide)
    assert 0.2 < m.fraction < 0.6
    # The right-hand margin of this crop is glass.
    assert m.mask[:, -5:].mean() < 0.2


def test_grid_partitions_the_slide_exactly():
    grid = TileGrid((1000, 1300), tile=256, halo=32)
    cover = np.zeros((1000, 1300), np.int32)
    for t in grid:
        x0, y0, x1, y1 = t.box
        cover[y0:y1, x0:x1] += 1
        rx0, ry0, rx1, ry1 = t.read_box
        assert (rx0, ry0) == (x0 - 32, y0 - 32) and (rx1, ry1) == (x1 + 32, y1 + 32)
    assert (cover == 1).all()
    assert len(grid) == 4 * 6 and grid[3, 5].width == 1300 - 5 * 256
    with pytest.raises(IndexError):
        grid[4, 0]


def test_tissue_tiles_skip_glass(demo):
    slide = open_slide(demo.slide)
    grid = slide_grid(slide, tile_um=256, halo_um=16)
    assert grid.tile == 512 and grid.halo == 32
    m = tissue_mask(slide)
    tiles = grid.tissue_tiles(m)
    assert 0 < len(tiles) < len(grid)
    # Every skipped tile is (nearly) glass in the slide itself.
    kept = {t.key for t in tiles}
    for t in grid:
        if t.key not in kept:
            region = slide.read_region(t.x, t.y, t.width, t.height, 0)
            assert (region.min(axis=2) > 200).mean() > 0.98
