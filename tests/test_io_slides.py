"""Slide access on real slides (../shared) and synthetic ones: levels, µm/px, regions, pyramid."""

import pickle
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import shared_slide

from napari_nucleiseg.io import (
    ImplausibleResolutionWarning,
    MissingResolutionWarning,
    SlideError,
    open_slide,
)

REAL = {
    # name: (format, level (w, h) list, mpp or None)
    "CMU-1-Small-Region.svs": ("aperio", [(2220, 2967)], 0.499),
    "tcga-cr-7395-01a-01-ts1.svs": ("aperio", [(4443, 3567), (2221, 1783)], None),
    "boxes.tiff": ("generic-tiff", [(300, 250), (150, 125), (75, 62), (37, 31)], 352.7777798),
    "boxes_0.dcm": ("dicom", [(16, 16)], 0.499),
}


@pytest.mark.real_slides
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_slides_levels_and_mpp(name, quiet):
    fmt, dims, mpp = REAL[name]
    import openslide

    path = shared_slide(name)
    slide = open_slide(path)
    assert slide.format == fmt
    assert [(w, h) for h, w in slide.level_shapes] == dims
    if mpp is None:
        assert slide.mpp is None and slide.mpp_source == "none"
    else:
        assert slide.mpp == pytest.approx(mpp, rel=1e-6) and slide.mpp_source == "file"
    # Pixels agree with OpenSlide's own read of the same region, at every level.
    ref = openslide.OpenSlide(str(path))
    for level, (w, h) in enumerate(dims):
        rw, rh = min(w, 200), min(h, 150)
        ours = slide.read_region(0, 0, rw, rh, level)
        theirs = np.asarray(ref.read_region((0, 0), level, (rw, rh)))
        opaque = theirs[:, :, 3] == 255
        assert np.array_equal(ours[opaque], theirs[:, :, :3][opaque])
        lazy = slide.pyramid()[level][:rh, :rw].compute()
        assert np.array_equal(lazy, ours)


@pytest.mark.real_slides
def test_missing_resolution_warns_and_override_wins():
    path = shared_slide("tcga-cr-7395-01a-01-ts1.svs")
    with pytest.warns(MissingResolutionWarning, match="tcga-cr-7395"):
        slide = open_slide(path)
    with pytest.raises(SlideError, match="states no µm/px"):
        slide.read_region_um(0, 0, 10, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an override silences the warning
        over = open_slide(path, mpp=0.25)
    assert over.mpp == 0.25 and over.mpp_source == "override"
    assert over.level_mpp(1) == pytest.approx(0.25 * 2.0005, rel=1e-3)


@pytest.mark.real_slides
def test_implausible_resolution_is_flagged():
    with pytest.warns(ImplausibleResolutionWarning, match="72 dpi"):
        open_slide(shared_slide("boxes.tiff"))


def test_demo_slide_through_openslide(demo):
    slide = open_slide(demo.slide)
    assert slide.backend == "openslide" and slide.format == "generic-tiff"
    assert slide.mpp == pytest.approx(0.5)
    assert slide.level_shapes == ((3072, 4096), (768, 1024), (192, 256))
    assert slide.level_downsamples == pytest.approx((1, 4, 16))


def test_read_region_outside_is_glass_and_inside_matches(demo):
    slide = open_slide(demo.slide)
    h, w = slide.shape
    region = slide.read_region(w - 50, h - 30, 100, 100)
    assert region.shape == (100, 100, 3)
    assert (region[30:, :] == 255).all() and (region[:, 50:] == 255).all()
    inner = slide.read_region(w - 50, h - 30, 50, 30)
    assert np.array_equal(region[:30, :50], inner)
    assert (slide.read_region(-500, -500, 100, 100) == 255).all()
    with pytest.raises(SlideError, match="level 7 does not exist"):
        slide.read_region(0, 0, 10, 10, level=7)


def test_read_region_um_resamples_from_the_right_level(demo):
    slide = open_slide(demo.slide)
    # 200 µm square at 2 µm/px = 100 px, must come from level 1 (2 µm/px) unchanged.
    slide.stats.reset()
    out = slide.read_region_um(400, 300, 200, 200, mpp=2.0)
    assert out.shape == (100, 100, 3)
    assert np.array_equal(out, slide.read_region(200, 150, 100, 100, level=1))
    # At 1 µm/px it is an area average of level 0 (0.5 µm/px).
    out1 = slide.read_region_um(400, 300, 200, 200, mpp=1.0)
    lvl0 = slide.read_region(800, 600, 400, 400, 0).astype(np.float32)
    expected = lvl0.reshape(200, 2, 200, 2, 3).mean(axis=(1, 3))
    assert out1.shape == (200, 200, 3)
    assert np.abs(out1.astype(np.float32) - expected).mean() < 1.0


def test_pyramid_is_lazy_and_counts_only_touched_chunks(demo):
    slide = open_slide(demo.slide)
    pyr = slide.pyramid(chunk=512)
    assert [a.shape for a in pyr] == [(3072, 4096, 3), (768, 1024, 3), (192, 256, 3)]
    slide.stats.reset()
    block = pyr[0][1100:1200, 2100:2200].compute()  # inside one 512 chunk
    assert slide.stats.chunks == 1
    assert np.array_equal(block, slide.read_region(2100, 1100, 100, 100))
    slide.stats.reset()
    pyr[0][500:530, 500:530].compute()  # straddles 4 chunks
    assert slide.stats.chunks == 4


def test_parallel_reads_from_many_threads_are_consistent(demo):
    slide = open_slide(demo.slide)
    boxes = [(x, y) for x in range(0, 4096, 512) for y in range(0, 3072, 512)]
    serial = {b: slide.read_region(b[0], b[1], 512, 512) for b in boxes}
    tids = set()

    def read(b):
        tids.add(threading.get_ident())
        return b, slide.read_region(b[0], b[1], 512, 512)

    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            for b, arr in pool.map(read, boxes):
                assert np.array_equal(arr, serial[b])
    assert len(tids) > 1
    # One handle per reading thread, all sharing one bounded tile cache.
    assert len(slide._handles) >= 2


def test_pyramid_pickles_for_distributed_workers(demo):
    slide = open_slide(demo.slide)
    arr = slide.pyramid()[1]
    clone = pickle.loads(pickle.dumps(arr))
    assert np.array_equal(clone[100:300, 200:500].compute(), arr[100:300, 200:500].compute())
    s2 = pickle.loads(pickle.dumps(slide))
    assert s2.path == slide.path and s2.mpp == slide.mpp


def test_thumbnail_fits_and_comes_from_a_coarse_level(demo):
    slide = open_slide(demo.slide)
    slide.stats.reset()
    th = slide.thumbnail(300)
    assert max(th.shape[:2]) == 300 and th.shape[2] == 3
    assert slide.stats.pixels == 1024 * 768  # read level 1 only, not level 0


def test_ome_tiff_levels_and_physical_size(ome_tiff, he_rgb):
    slide = open_slide(ome_tiff)
    assert slide.backend == "tifffile" and slide.format == "ome-tiff"
    assert slide.mpp == pytest.approx(0.25)
    assert slide.level_shapes == ((600, 800), (300, 400))
    assert np.array_equal(slide.read_region(10, 20, 64, 32), he_rgb[0][20:52, 10:74])
    assert np.array_equal(slide.pyramid(chunk=256)[1].compute(), he_rgb[0][::2, ::2])


def test_ome_zarr_levels_and_physical_size(ome_zarr, he_rgb):
    slide = open_slide(ome_zarr)
    assert slide.backend == "zarr" and slide.format == "ome-zarr"
    assert slide.mpp == pytest.approx(0.25)
    assert slide.level_shapes == ((600, 800), (300, 400))
    assert np.array_equal(slide.read_region(100, 50, 300, 200), he_rgb[0][50:250, 100:400])
    assert np.array_equal(slide.pyramid(chunk=256)[1].compute(), he_rgb[0][::2, ::2])


def test_plain_png_is_a_single_level_slide(png_image, he_rgb):
    with pytest.warns(MissingResolutionWarning, match="field.png"):
        slide = open_slide(png_image)
    assert slide.backend == "image" and slide.level_count == 1 and slide.mpp is None
    assert np.array_equal(slide.read_region(0, 0, 800, 600), he_rgb[0])
    assert open_slide(png_image, mpp=0.25).mpp == 0.25


def test_grey_rgba_and_16bit_images_become_rgb(tmp_path):
    import tifffile
    from PIL import Image

    grey = (np.arange(64 * 64) % 256).reshape(64, 64).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:16, :, 3] = 255  # bottom half fully transparent: composited on white glass
    Image.fromarray(rgba).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "w.tif", (grey.astype(np.uint16) * 200))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = open_slide(tmp_path / "g.png").read_region(0, 0, 64, 64)
        a = open_slide(tmp_path / "a.png").read_region(0, 0, 32, 32)
        w = open_slide(tmp_path / "w.tif").read_region(0, 0, 64, 64)
    assert np.array_equal(g[..., 0], grey) and np.array_equal(g[..., 1], grey)
    assert (a[:16, :, 0] == 200).all() and (a[:16, :, 1] == 0).all() and (a[16:] == 255).all()
    assert w.dtype == np.uint8 and w.shape == (64, 64, 3) and w.max() == 255 and w.min() == 0


def test_single_level_big_image_gets_lazy_overview_levels(tmp_path):
    """A pyramid-less 9000 px TIFF still gives napari a small overview level, computed lazily."""
    import tifffile

    from napari_nucleiseg.layers import slide_layer

    rgb = np.zeros((9000, 4000, 3), np.uint8)
    rgb[:, :, 0] = (np.arange(9000) % 256)[:, None]
    tifffile.imwrite(tmp_path / "flat.tif", rgb, tile=(512, 512), photometric="rgb")
    slide = open_slide(tmp_path / "flat.tif", mpp=0.5)
    assert slide.level_count == 1
    data, kwargs, kind = slide_layer(slide)
    assert [d.shape[:2] for d in data] == [(9000, 4000), (2250, 1000)]
    slide.stats.reset()
    corner = np.asarray(data[1][:64, :64])  # inside one 512 px overview chunk = 4x4 level-0 chunks
    assert slide.stats.chunks == 16  # of the 144 the level has
    assert corner.dtype == np.uint8
    assert np.allclose(
        corner[:, 0, 0], rgb[:256, :4, 0].reshape(64, 4, 4).mean(axis=(1, 2)), atol=1
    )


@pytest.mark.real_slides
@pytest.mark.parametrize("name", ["boxes.tiff", "tcga-cr-7395-01a-01-ts1.svs"])
def test_coarse_levels_have_no_seams_between_chunks(name, quiet):
    """Non-integer downsamples (4.016, 2.0005) must not shift chunks by sub-pixel amounts."""
    slide = open_slide(shared_slide(name))
    for level in range(1, slide.level_count):
        h, w = slide.level_shapes[level]
        whole = slide.read_region(0, 0, w, h, level)
        for chunk in (16, 100, 512):
            assert np.array_equal(slide.pyramid(chunk)[level].compute(), whole), (level, chunk)
        # Windows away from the origin agree with the whole-level read too.
        rng = np.random.default_rng(0)
        for _ in range(20):
            y, x = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
            assert np.array_equal(slide.read_region(x, y, 8, 8, level), whole[y : y + 8, x : x + 8])


def test_pickled_pyramids_survive_more_slides_than_the_reopen_cache(demo):
    from napari_nucleiseg.io import _REOPEN_MAX

    arrays = [
        pickle.loads(pickle.dumps(open_slide(demo.slide, mpp=0.5 + i / 100).pyramid()[2]))
        for i in range(_REOPEN_MAX + 3)
    ]
    first = arrays[0].compute()
    assert first.shape == (192, 256, 3) and np.array_equal(first, arrays[-1].compute())


def test_plain_image_reads_are_copies(png_image, quiet):
    slide = open_slide(png_image)
    a = slide.read_region(0, 0, 50, 50)
    a[:] = 0
    assert slide.read_region(0, 0, 50, 50).max() > 0


def test_unexpected_library_errors_are_named_slide_errors(tmp_path, ome_zarr):
    import json as _json

    # NGFF allows long axis names: "channel" must work.
    meta = _json.loads((ome_zarr / ".zattrs").read_text())
    meta["multiscales"][0]["axes"][0]["name"] = "channel"
    (ome_zarr / ".zattrs").write_text(_json.dumps(meta))
    assert open_slide(ome_zarr).level_count == 2
    # A multiscale pointing at a missing dataset is a clear error, not a KeyError.
    meta["multiscales"][0]["datasets"][0]["path"] = "nope"
    del meta["multiscales"][0]["axes"]
    (ome_zarr / ".zattrs").write_text(_json.dumps(meta))
    with pytest.raises(SlideError, match="field.zarr: .*missing"):
        open_slide(ome_zarr)


def test_pyramid_less_large_tiff_warns_and_thumbnails_in_strips(tmp_path):
    import tifffile

    from napari_nucleiseg.io import NoPyramidWarning

    data = np.zeros((17000, 600, 3), np.uint8)
    data[:8500] = 200
    tifffile.imwrite(
        tmp_path / "tall.tif", data, tile=(512, 512), photometric="rgb", compression="zlib"
    )
    with pytest.warns(NoPyramidWarning, match="tall.tif"):
        slide = open_slide(tmp_path / "tall.tif", mpp=0.5)
    th = slide.thumbnail(512)
    assert th.shape[0] == 512 and abs(int(th[100, 10, 0]) - 200) <= 1 and th[400, 10, 0] == 0


def test_display_pyramid_keeps_chunks_large(tmp_path):
    import dask.array as da

    from napari_nucleiseg.layers import display_pyramid

    lv = display_pyramid([da.zeros((40000, 40000, 3), np.uint8, chunks=(512, 512, 3))])
    assert [l.shape[0] for l in lv] == [40000, 10000, 2500]
    assert all(l.chunksize[0] >= 512 for l in lv)
