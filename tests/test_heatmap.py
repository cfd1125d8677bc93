"""Tumour heatmaps on a mosaic slide of real LC25000 tissue whose truth is known to the pixel:
outline Dice, alignment with the slide at two pyramid levels, resume after an interruption,
QuPath GeoJSON, and the ``nucleiseg heatmap`` command's errors.

Real OpenSlide reads of a real tiled TIFF, the shipped classifier, real zarr stores; nothing is
mocked. The mosaic is 6 × 6 cells of 448 µm at 0.5 µm/px: a ring of glass around 4 × 4 cells
of tumour or normal colon (one of them glass), so the tissue mask has glass to tell apart.
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import warnings
from dataclasses import replace

import numpy as np
import pytest

from napari_nucleiseg.classification.heatmap import (
    Heatmap,
    HeatmapCancelled,
    HeatmapError,
    PlacedTissue,
    heatmap_region,
    require_tag,
    slide_tissue,
)
from napari_nucleiseg.classification.outlines import (
    rasterise,
    slide_bounds,
    tumour_regions,
    write_geojson,
)
from napari_nucleiseg.classification.slide_heatmap import (
    compute_slide_heatmap,
    heatmap_slide,
    open_heatmap,
    store_path,
)
from napari_nucleiseg.demo.mosaic import CELL_UM, default_tissue_index, mosaic_slide
from napari_nucleiseg.io import open_slide

#: The classifier under test: None is the shipped default (``tissue-tumour-v3``).
CLASSIFIER = None
G, T, N = "glass", "tumour", "normal"
CORE = [[T, N, N, T], [N, T, G, N], [T, T, N, N], [N, T, T, N]]
LAYOUT = [[G] * 6] + [[G, *row, G] for row in CORE] + [[G] * 6]
MPP = 0.5


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    if not default_tissue_index().exists():
        pytest.skip(f"{default_tissue_index()} not available (../shared is absent)")
    from napari_nucleiseg.methods import get_method

    # Tissue the classifier never saw: the LC25000 groups its card lists as held out.
    held = get_method(CLASSIFIER, kind="classifier").card.training.get("heldout_groups")
    path, truth, truth_mpp = mosaic_slide(
        tmp_path_factory.mktemp("mosaic") / "mosaic.tif", LAYOUT, mpp=MPP, seed=0, groups=held
    )
    return path, truth, truth_mpp


@pytest.fixture(scope="module")
def whole(mosaic, tmp_path_factory):
    """The uninterrupted whole-slide heatmap (defaults: half-patch stride, default blocks)."""
    out = tmp_path_factory.mktemp("heatmap")
    calls = []
    store = compute_slide_heatmap(
        mosaic[0], out, model=CLASSIFIER, progress=lambda d, t: calls.append((d, t))
    )
    return out, store, open_heatmap(store), calls


def test_mosaic_truth_is_the_layout(mosaic):
    path, truth, truth_mpp = mosaic
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(MPP)
        assert slide.shape == (6 * round(CELL_UM / MPP),) * 2
        assert slide.level_count >= 2
    assert truth.shape == (round(6 * CELL_UM / truth_mpp),) * 2
    centre = (np.arange(truth.shape[0]) + 0.5) * truth_mpp // CELL_UM
    tags = np.array(LAYOUT)[centre.astype(int)[:, None], centre.astype(int)[None, :]]
    assert np.array_equal(truth, tags == T)
    assert truth.mean() == pytest.approx(7 / 36, abs=0.01)  # 7 tumour cells of 36


def test_whole_slide_outline_dice(mosaic, whole):
    path, truth, truth_mpp = mosaic
    _, store, hm, calls = whole
    assert hm.finished and hm.mpp == pytest.approx(hm.stride_px * hm.model_mpp)
    assert hm.stride_px == hm.patch_px // 2
    assert calls and calls[-1][0] == calls[-1][1]  # progress(done, total), to the end
    with open_slide(path) as slide:
        bounds = slide_bounds(hm, slide.shape)
        regions = tumour_regions(hm, 0.5, bounds_um=bounds)
        unclipped = tumour_regions(hm, 0.5, bounds_um=bounds, clip_to_tissue=False)
    outline = rasterise(regions, truth.shape, truth_mpp)
    score = dice(outline, truth)
    before = dice(rasterise(unclipped, truth.shape, truth_mpp), truth)
    print(f"outline Dice {score:.4f} ({len(regions)} regions; not kept to the tissue {before:.4f})")
    # Issue 16's bar. tissue-tumour-v3 scores 0.911 here (0.895 with outlines not kept to the
    # tissue: they stopped short of the glass); over ten mosaics (benchmarks/heatmap_speed.py
    # --seeds 10) 0.906, 7 of 10 at 0.9 or more: the rest are benign patches called tumour.
    assert score >= 0.9
    assert score > before
    # Glass is not classified, tissue is: cells a patch or more inside the glass ring are NaN,
    # cells a patch or more inside the tissue are not.
    ii, jj = np.meshgrid(np.arange(hm.shape[0]), np.arange(hm.shape[1]), indexing="ij")
    y, x = hm.centre_um(ii, jj)
    edge = np.minimum(np.minimum(y, x), np.minimum(6 * CELL_UM - y, 6 * CELL_UM - x))
    patch_um = hm.patch_px * hm.model_mpp
    assert np.isnan(hm.p_tumour[edge < CELL_UM - patch_um]).all()
    inside = (edge > CELL_UM + patch_um) & ~((y // CELL_UM == 2) & (x // CELL_UM == 3))
    assert np.isfinite(hm.p_tumour[inside]).mean() > 0.9


def _world_to_level_px(world, slide, level):
    """The level-``level`` pixel napari draws at ``world`` µm (the slide layer placed by
    ``layers.physical_transform``: pixel k centred on ``k·scale + translate``)."""
    from napari_nucleiseg.layers import physical_transform

    (sy, sx), (ty, tx) = physical_transform(slide, slide.level_downsamples[level])
    return np.round((world[0] - ty) / sy).astype(int), np.round((world[1] - tx) / sx).astype(int)


@pytest.mark.parametrize("level", [0, -1])
def test_heatmap_layer_lines_up_with_the_slide(mosaic, whole, level):
    """Map pixel (i, j) drawn with the map's scale/translate sits over the slide pixels of the
    cell the layout puts there: at level 0 and at the coarsest level (two zooms)."""
    path, truth, truth_mpp = mosaic
    hm = whole[2]
    with open_slide(path) as slide:
        level = level % slide.level_count
        ds = slide.level_downsamples[level]
        (scale_y, scale_x), (ty, tx) = hm.layer_transform(slide.mpp)
        # Exact geometry: the top edge of map pixel i (napari: centres at i·scale + translate,
        # edges half a pixel before) is the top edge of level-0 pixel i·mpp/mpp0, whose centre
        # napari puts at (i·mpp/mpp0)·mpp0.
        for i in (1, 7, 8, 30):
            edge_px = i * hm.mpp / slide.mpp
            assert ty + (i - 0.5) * scale_y == pytest.approx(edge_px * slide.mpp - slide.mpp / 2)
            assert tx + (i - 0.5) * scale_x == pytest.approx(edge_px * slide.mpp - slide.mpp / 2)
        ii, jj = np.meshgrid(np.arange(hm.shape[0]), np.arange(hm.shape[1]), indexing="ij")
        world = (ty + ii * scale_y, tx + jj * scale_x)
        py, px = _world_to_level_px(world, slide, level)
        # The level pixel under each map pixel's centre lies in the layout cell that holds the
        # centre of the patch (the cell the map pixel stands for) ...
        cy, cx = (py + 0.5) * ds * slide.mpp, (px + 0.5) * ds * slide.mpp
        my, mx = hm.centre_um(ii, jj)
        clear = (np.abs(my - np.round(my / CELL_UM) * CELL_UM) > ds * slide.mpp) & (
            np.abs(mx - np.round(mx / CELL_UM) * CELL_UM) > ds * slide.mpp
        )  # not on a cell border at this level's resolution
        assert clear.mean() > 0.8
        assert np.array_equal((cy // CELL_UM)[clear], (my // CELL_UM)[clear])
        assert np.array_equal((cx // CELL_UM)[clear], (mx // CELL_UM)[clear])
        # ... and the map's values over those pixels agree with the truth there (the quality bar
        # is the outline test's), better than the same map shifted by one map pixel (half a
        # patch) either way: a misplaced map agrees less.
        tr = truth[(cy // truth_mpp).astype(int), (cx // truth_mpp).astype(int)]
        high = np.nan_to_num(hm.p_tumour, nan=0.0) >= 0.5
        here = dice(high, tr)
        print(f"level {level}: map vs the truth under it, Dice {here:.4f}")
        assert here >= 0.7
        for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            assert dice(np.roll(high, (dy, dx), axis=(0, 1)), tr) < here


def test_view_heatmap_is_the_whole_slide_map_there(mosaic, whole):
    """A view (any µm rectangle) snaps to the slide's grid: same cells, same values."""
    path = mosaic[0]
    hm = whole[2]
    with open_slide(path) as slide:
        view = heatmap_region(CLASSIFIER, slide, 1000.0, 700.0, 600.0, 500.0)
    i0, j0 = (round(o / hm.mpp) for o in view.origin_um)
    assert view.origin_um[0] <= 700.0 < view.origin_um[0] + hm.mpp
    assert view.origin_um[1] <= 1000.0 < view.origin_um[1] + hm.mpp
    assert view.mpp == hm.mpp and view.shape[0] * hm.mpp >= 500.0
    window = hm.probabilities[:, i0 : i0 + view.shape[0], j0 : j0 + view.shape[1]]
    np.testing.assert_allclose(view.probabilities, window, atol=1e-4)
    assert view.layer_transform(MPP)[1][0] == pytest.approx(
        hm.layer_transform(MPP)[1][0] + i0 * hm.mpp
    )


def test_interrupted_run_resumes_without_recomputing(mosaic, whole, tmp_path):
    """Stopped by a progress callback that raises, then by Cancel: the next runs compute only
    the blocks not recorded, the recorded ones stay as they were, and the map equals an
    uninterrupted run's (with other blocks: the cells and reads are the same)."""
    path = mosaic[0]
    reference = whole[2]

    class Stop(Exception):
        pass

    def stop_after(k):
        def progress(done, total):
            if done >= k:
                raise Stop

        return progress

    kwargs = dict(model=CLASSIFIER, block=8, workers=1)
    with pytest.raises(Stop):
        compute_slide_heatmap(path, tmp_path, progress=stop_after(2), **kwargs)
    store = store_path(tmp_path, path)
    records = sorted((store / "blocks").glob("*.json"))
    assert 2 <= len(records)
    first = {r.name: (r.stat().st_mtime_ns, r.read_bytes()) for r in records}
    assert not open_heatmap(store).finished

    cancel = threading.Event()

    def progress(done, total):
        if done >= len(records) + 2:
            cancel.set()

    with pytest.raises(HeatmapCancelled, match="kept"):
        compute_slide_heatmap(path, tmp_path, progress=progress, cancel=cancel, **kwargs)
    kept = len(list((store / "blocks").glob("*.json")))
    assert len(records) < kept

    runs = list(heatmap_slide(path, tmp_path, **kwargs))
    total = runs[-1].total
    assert runs[0].resumed == kept and runs[-1].finished
    assert runs[-1].computed == total - kept > 0  # no block computed twice
    for r in records:  # the first run's blocks were neither recomputed nor rewritten
        assert (r.stat().st_mtime_ns, r.read_bytes()) == first[r.name]
    resumed = open_heatmap(store)
    assert resumed.finished
    np.testing.assert_allclose(resumed.probabilities, reference.probabilities, atol=1e-5)
    # Run again: a finished store is checked and returned without computing anything.
    again = list(heatmap_slide(path, tmp_path, **kwargs))
    assert len(again) == 1 and again[0].finished and again[0].computed == 0


def test_geojson_is_qupath_annotations_inside_the_slide(mosaic, whole, tmp_path):
    path = mosaic[0]
    hm = whole[2]
    with open_slide(path) as slide:
        h0, w0 = slide.shape
        regions = tumour_regions(hm, 0.5, bounds_um=slide_bounds(hm, slide.shape))
        out = write_geojson(regions, tmp_path / "t.geojson", slide.mpp)
    data = json.loads(out.read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == len(regions) >= 1
    for f in data["features"]:
        assert f["geometry"]["type"] == "Polygon"
        props = f["properties"]
        assert props["objectType"] == "annotation"
        assert props["classification"]["name"] == "Tumor"
        assert len(props["classification"]["color"]) == 3
        for ring in f["geometry"]["coordinates"]:
            xy = np.asarray(ring)
            assert len(xy) >= 4 and (xy[0] == xy[-1]).all()  # closed
            assert (xy[:, 0] >= 0).all() and (xy[:, 0] <= w0).all()
            assert (xy[:, 1] >= 0).all() and (xy[:, 1] <= h0).all()
        assert props["measurements"]["Area µm^2"] > 0


def _synthetic(p_tumour: np.ndarray, stride=56, patch=112) -> Heatmap:
    p = np.asarray(p_tumour, np.float32)
    return Heatmap(np.stack([1 - p, p]), ["normal", "tumour"], stride * 1.0, (0.0, 0.0),
                   stride, patch, 1.0, MPP)  # fmt: skip


def test_outline_holes_and_small_regions():
    """A tumour ring around a normal lake of 6 × 6 cells is one polygon with one hole; a
    one-cell island and a one-cell lake (under a patch's area) are dropped and filled."""
    p = np.zeros((30, 30))
    p[4:20, 4:20] = 1.0
    p[9:15, 9:15] = 0.0  # the lake: 336 µm across
    p[6, 6] = 0.0  # a one-cell lake
    p[25, 25] = 1.0  # a one-cell island
    p[0, 29] = np.nan
    regions = tumour_regions(_synthetic(p), 0.5, average=False)
    assert len(regions) == 1 and len(regions[0].holes) == 1
    r = regions[0]
    expected = (16 * 56) ** 2 - (6 * 56) ** 2  # the iso-line runs between cell centres
    assert r.area_um2 == pytest.approx(expected, rel=0.03)
    assert r.mean_p == pytest.approx(1.0, abs=0.02)
    inside = rasterise(regions, (30 * 7, 30 * 7), 8.0)
    assert inside[12 * 7, 6 * 7] and not inside[12 * 7, 12 * 7] and inside[6 * 7 + 3, 6 * 7 + 3]
    assert not inside[25 * 7 + 3, 25 * 7 + 3]


def _on_mask(p_tumour, mask, mask_mpp, origin=(0.0, 0.0), map_origin=(0.0, 0.0)) -> Heatmap:
    mpp = mask_mpp if isinstance(mask_mpp, tuple) else (mask_mpp, mask_mpp)
    return replace(
        _synthetic(p_tumour), origin_um=map_origin, tissue_mask=PlacedTissue(mask, mpp, origin)
    )


def test_outline_keeps_to_the_tissue():
    """A disk of tissue (600 µm radius), classified where a cell's centre lies in it: all
    tumour, the outline is the disk, not the iso-line out to the first unclassified cell;
    tumour on its left half only, the half disk. Without the mask, the outline is the iso-line
    out to the first unclassified cell, a polygon of cell centres around the disk."""
    mask_mpp, radius = 8.0, 600.0
    yy, xx = (np.mgrid[0:210, 0:210] + 0.5) * mask_mpp
    mask = np.hypot(yy - 840, xx - 840) <= radius
    cy, cx = (np.mgrid[0:30, 0:30] + 0.5) * 56.0
    classified = np.hypot(cy - 840, cx - 840) <= radius
    p = np.where(classified, 1.0, np.nan)
    disk_um2 = np.pi * radius**2
    kept = tumour_regions(_on_mask(p, mask, mask_mpp), 0.5, average=False)
    assert len(kept) == 1 and kept[0].area_um2 == pytest.approx(disk_um2, rel=0.02)
    loose = tumour_regions(_on_mask(p, mask, mask_mpp), 0.5, average=False, clip_to_tissue=False)
    on_disk = dice(rasterise(kept, mask.shape, mask_mpp), mask)
    assert on_disk > 0.99 and on_disk > dice(rasterise(loose, mask.shape, mask_mpp), mask)
    half = tumour_regions(_on_mask(np.where(cx < 840, p, 0.0), mask, mask_mpp), 0.5)
    assert len(half) == 1 and half[0].area_um2 == pytest.approx(disk_um2 / 2, rel=0.05)
    # Lumina narrower than two patches (80 and 150 µm) inside the tumour are tumour; a lake
    # of 500 µm is a hole.
    for side in (80, 150):
        lumen = mask & ~((np.abs(yy - 840) < side / 2) & (np.abs(xx - 700) < side / 2))
        (with_lumen,) = tumour_regions(_on_mask(p, lumen, mask_mpp), 0.5, average=False)
        assert not with_lumen.holes, side
    lake = mask & ~(np.hypot(yy - 840, xx - 840) < 250)
    (with_lake,) = tumour_regions(_on_mask(p, lake, mask_mpp), 0.5, average=False)
    assert len(with_lake.holes) == 1


@pytest.mark.parametrize(
    "mask_mpp, origin, map_origin",
    [
        (8.0, (0.0, 0.0), (0.0, 0.0)),
        ((8.0, 4.0), (40.0, 24.0), (0.0, 0.0)),  # anisotropic, a mask placed off the corner
        (8.0, (0.0, 0.0), (112.0, 168.0)),  # a view's map: its first cell off the corner
        (100.0, (0.0, 0.0), (0.0, 0.0)),  # a large slide's mask, coarser than the map
    ],
)
def test_outline_edges_are_where_the_tissue_and_the_map_put_them(mask_mpp, origin, map_origin):
    """Tissue ends at x = 1200 µm (a mask pixel edge), tumour gives way to normal at x = 616 µm
    (halfway between two cell centres, where the iso-line runs), all rows tumour-or-normal the
    same: the region's right edge is the tissue's, its left edge the map's, to a fraction of a
    pixel — whatever the mask's µm/px, placement or coarseness."""
    my, mx = mask_mpp if isinstance(mask_mpp, tuple) else (mask_mpp, mask_mpp)
    oy, ox = origin
    rows, cols = round((1680 - oy) / my), round((1680 - ox) / mx)
    xc = ox + (np.arange(cols) + 0.5) * mx
    mask = np.broadcast_to(xc < 1200, (rows, cols)).copy()
    cx = map_origin[1] + (np.arange(30) + 0.5) * 56.0
    p = np.broadcast_to(np.where(cx < 1200 + 28, np.where(cx > 616, 1.0, 0.0), np.nan), (30, 30))
    (region,) = tumour_regions(
        _on_mask(p, mask, mask_mpp, origin, map_origin), 0.5, average=False, min_area_um2=1e4
    )
    x = region.exterior[:, 0]
    # The tissue's edge: the field steps from 1 to 0 between two pixel centres, so the iso-line
    # is the pixel edge.
    assert x.max() == pytest.approx(1200, abs=0.5)
    # The map's border: linear between cell centres, so exact wherever the mask's (refined)
    # pixels sample it; a sample off by half a pixel, or the mask's coarse pixels, would miss.
    assert x.min() == pytest.approx(616, abs=1.0)


def test_whole_slide_store_keeps_its_tissue_mask(mosaic, whole, tmp_path):
    """The store holds the mask the run used, views carry theirs, and a store written before
    masks were kept gets it on the next run, without computing a block again."""
    path = mosaic[0]
    out, store, hm, _ = whole
    with open_slide(path) as slide:
        expected = slide_tissue(slide)
        view = heatmap_region(CLASSIFIER, slide, 1000.0, 700.0, 600.0, 500.0)
    dy, dx = expected.downsample_yx
    for carried in (hm.tissue_mask, view.tissue_mask):
        np.testing.assert_array_equal(carried.mask, expected.mask)
        assert carried.mpp == pytest.approx((dy * MPP, dx * MPP))
    old = tmp_path / store.name
    shutil.copytree(store, old)
    shutil.rmtree(old / "tissue")
    attrs = json.loads((old / ".zattrs").read_text())
    del attrs["nucleiseg"]["tissue_mpp"]
    (old / ".zattrs").write_text(json.dumps(attrs))
    assert open_heatmap(old).tissue_mask is None
    runs = list(heatmap_slide(path, tmp_path, model=CLASSIFIER))
    assert runs[-1].finished and runs[-1].computed == 0
    np.testing.assert_array_equal(open_heatmap(old).tissue_mask.mask, expected.mask)


def test_damaged_array_metadata_of_a_heatmap_store_is_written_again(mosaic, whole, tmp_path):
    """Was: a traceback (``JSONDecodeError``) on the next run. Nothing is computed again."""
    from napari_nucleiseg.wholeslide import StoreRepairWarning

    path = mosaic[0]
    out, store, hm, _ = whole
    copy = tmp_path / store.name
    shutil.copytree(store, copy)
    for name in (".zgroup", "probabilities/.zarray", "tissue/.zarray"):
        (copy / name).write_text("{not json")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = list(heatmap_slide(path, tmp_path, model=CLASSIFIER))
    lines = [str(w.message) for w in caught if issubclass(w.category, StoreRepairWarning)]
    assert lines == [
        f"{copy / '.zgroup'} is damaged; written again (the data it describes is kept)",
        f"{copy / 'probabilities' / '.zarray'} is damaged; written again (the data it "
        "describes is kept)",
    ]
    assert runs[-1].finished and runs[-1].computed == 0
    again = open_heatmap(copy)
    np.testing.assert_array_equal(again.probabilities, hm.probabilities)
    np.testing.assert_array_equal(again.tissue_mask.mask, hm.tissue_mask.mask)


def test_overlapping_patches_are_averaged_by_coverage():
    p = np.full((5, 5), np.nan)
    p[1:4, 1:4] = 0.0
    p[2, 2] = 1.0
    half = _synthetic(p).averaged()
    # Cell (2, 2): its own patch (weight 1) and 8 neighbours (½ and ¼): 1 / (1 + 4·½ + 4·¼).
    assert half.p_tumour[2, 2] == pytest.approx(1 / 4)
    # Cell (1, 1): neighbours outside the tissue (NaN) do not count.
    assert half.p_tumour[1, 1] == pytest.approx(0.25 / (1 + 2 * 0.5 + 0.25))
    assert np.isnan(half.p_tumour[0, 0])
    full = _synthetic(p, stride=112).averaged()
    np.testing.assert_array_equal(full.probabilities, _synthetic(p, stride=112).probabilities)


def test_a_model_without_a_tumour_class_is_refused_by_name():
    assert require_tag(["normal", "tumour"]) == 1
    with pytest.raises(HeatmapError, match="no 'tumour' class.*normal, stroma"):
        require_tag(["normal", "stroma"], model="model 'x'")


# --------------------------------------------------------------------------- the command
def _cli(argv) -> int:
    """``nucleiseg ARGV`` through the real parser (the ``heatmap`` command added when the
    package's parser does not register it yet)."""
    import napari_nucleiseg.cli.main as cli
    from napari_nucleiseg.cli.heatmap import add_parser

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "heatmap" not in sub.choices:
        add_parser(sub, cli.HelpFormatter)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def test_cli_writes_store_and_geojson(mosaic, whole, capsys):
    """On the finished store of the same slide, model and settings: nothing is recomputed."""
    out = whole[0]
    argv = ["heatmap", str(mosaic[0]), "--out", str(out)]
    if CLASSIFIER is not None:
        argv += ["--model", str(CLASSIFIER)]
    assert _cli(argv) == 0
    captured = capsys.readouterr()
    line = captured.out.strip()
    assert line.count("\n") == 0 and "tumour regions" in line
    geojson = out / "mosaic.tumour.geojson"
    assert line.endswith(str(geojson)) and json.loads(geojson.read_text())["features"]


def test_cli_missing_slide_is_one_line(tmp_path, capsys):
    missing = tmp_path / "nope.svs"
    assert _cli(["heatmap", str(missing), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(missing) in err[0]
    assert not (tmp_path / "o").exists()


def test_cli_unwritable_out_is_one_line(mosaic, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        assert _cli(["heatmap", str(mosaic[0]), "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and str(blocker) in err[0]


def test_a_slide_stating_an_implausible_mpp_is_refused_before_any_work(tmp_path, capsys):
    """Was: boxes.tiff (352.8 µm/px, a 72 dpi default) planned 5,921 blocks and ran for a
    quarter of an hour; segmenting refuses it at once."""
    from conftest import shared_slide

    from napari_nucleiseg.cli.main import main

    boxes = shared_slide("boxes.tiff")
    out = tmp_path / "maps"
    assert main(["heatmap", str(boxes), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {boxes}: the input at 352.778 µm/px is 353x coarser than")
    assert "--mpp" in err[0]  # the warning says how to give the real one
    assert not out.exists()
