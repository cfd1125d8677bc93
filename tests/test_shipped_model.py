"""The shipped nuclei model: loads offline without pickle, matches its hash, reproduces the metrics
its card records, and tiles seam-free."""

import json

import numpy as np
import pytest
from conftest import SHARED, shared_slide

from napari_nucleiseg.methods import get_method, load_predictor
from napari_nucleiseg.metrics import aggregate, score_image
from napari_nucleiseg.models import DEFAULT_NUCLEI_MODEL, MODELS_DIR, load_card
from napari_nucleiseg.models.registry import sha256_of

TEST_SET = SHARED / "data" / "nuclei" / "monuseg2018_test"


def test_card_is_complete_and_hash_matches():
    card = load_card(DEFAULT_NUCLEI_MODEL)
    weights = MODELS_DIR / card.weights
    # A few MB: the 3.25 M float32 parameters of nuclei-unet-v4 are 13 MB (its int8 ONNX, which
    # runs by default, 3.3 MB).
    assert weights.suffix == ".safetensors" and weights.stat().st_size < 16_000_000
    assert sha256_of(weights) == card.sha256
    assert card.mpp > 0 and card.licence and card.training_data and card.created
    assert {"aji", "f1", "pq"} <= set(card.metrics["monuseg2018_test"])
    assert "monuseg2018_test" not in json.dumps(card.training_data)


def test_shipped_model_reproduces_its_recorded_metrics_on_a_subset():
    if not TEST_SET.exists():
        pytest.skip(f"{TEST_SET} not available (../shared is absent)")
    from napari_nucleiseg.training.nuclei_data import load_dataset

    predictor, card = load_predictor(DEFAULT_NUCLEI_MODEL)
    subset = card.metrics["ci_subset"]
    images = load_dataset(TEST_SET, stems=subset["stems"])
    agg = aggregate(
        [score_image(im.labels, predictor.segment(im.rgb, im.mpp), im.stem) for im in images]
    )
    assert agg["aji"] == pytest.approx(subset["aji"], abs=0.005)
    assert agg["f1"] == pytest.approx(subset["f1"], abs=0.005)


@pytest.fixture(scope="module")
def cmu_crop():
    from napari_nucleiseg.io import open_slide

    slide = open_slide(shared_slide("CMU-1-Small-Region.svs"))
    return slide.read_region(100, 500, 2000, 2000, 0), slide.mpp


@pytest.mark.real_slides
def test_tiled_and_untiled_agree_on_a_2000px_image(cmu_crop):
    from napari_nucleiseg.segmentation.api import segment_image

    rgb, mpp = cmu_crop
    predictor = get_method().predictor
    # Untiled: the network sees the whole 2000x2000 image in one pass.
    one_pass = type(predictor)(
        None,
        predictor.mpp,
        tile=4096,
        settings=predictor.settings,
        session=predictor.session,
        multiple=predictor.multiple,
    )
    whole = one_pass.segment(rgb, mpp)
    # Tiled as the product tiles: 640 px tiles, so the image has 3 seams each way.
    tiled = segment_image(rgb, mpp, tile=640)
    assert whole.max() > 500
    assert score_image(whole, tiled).aji >= 0.99


@pytest.mark.real_slides
def test_passes_sharing_the_cores_run_side_by_side_with_the_same_maps(cmu_crop):
    """Tiles segmented in parallel each take their share of the cores (a session with fewer
    threads, no lock between them) and get exactly the maps a pass alone gets."""
    import os
    import threading

    from napari_nucleiseg.segmentation.predict import sharing_cores

    rgb, _ = cmu_crop
    blocks = [np.ascontiguousarray(rgb[:512, :512]), np.ascontiguousarray(rgb[700:1212, 900:1412])]
    predictor = get_method().predictor
    alone = [predictor._forward(b) for b in blocks]
    cores = len(os.sched_getaffinity(0))
    with sharing_cores(2):
        shared = predictor._shared_session()
        assert shared is not None and shared is not predictor.session
        assert shared.get_session_options().intra_op_num_threads == max(1, cores // 2)
    assert predictor._shared_session() is None  # outside: a pass alone, on every core

    side_by_side, inside = [None, None], threading.Barrier(2)

    def run(i):
        with sharing_cores(2):
            inside.wait(
                timeout=30
            )  # both threads inside at once: neither waits for the other's pass
            side_by_side[i] = predictor._forward(blocks[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for a, b in zip(alone, side_by_side):
        np.testing.assert_array_equal(a, b)


def test_tiles_sit_on_the_network_grid():
    """Blocks start on multiples of the network's pooling factor (in model pixels), 20x and 40x."""
    from types import SimpleNamespace

    from napari_nucleiseg.tiling import plan_tiles

    net = SimpleNamespace(mpp=0.5, multiple=16, tile_px=1024, context_um=32.0)
    p = plan_tiles(None, 0.499, net)
    assert (p.tile, p.halo, p.align, p.margin) == (1024, 64, 16, 4)
    p = plan_tiles(None, 0.25, net)
    assert (p.tile, p.halo, p.align, p.margin) == (2048, 128, 32, 6)
    assert plan_tiles(None, 0.5, net, tile=600).tile == 608
    # Balanced over an image, still on the grid; a chosen tile is kept as chosen.
    assert plan_tiles((2100, 2100), 0.5, net).tile == 704  # three of 700, not 1024 + 1024 + 52
    assert plan_tiles((2100, 2100), 0.5, net, tile=600).tile == 608


def test_tiles_are_balanced_without_slivers():
    """As many tiles as the largest tile needs, of nearly equal size, still on the grid."""
    from napari_nucleiseg.tiling import balanced_tile

    assert balanced_tile((2100, 2100), 1344, 32) == 1056  # two of ~1050, not 1344 + a 756 sliver
    assert balanced_tile((4000, 4000), 1344, 32) == 1344  # three already even (1344, 1344, 1312)
    assert balanced_tile((4000, 4000), 1536, 32) == 1344  # three, not 1536 + 1536 + 928
    assert (
        balanced_tile((1000, 5000), 1344, 32) == 1280
    )  # the longer side decides: four, not 3 + 1 of 968
    assert balanced_tile((10, 10), 1344, 32) == 32  # never below one grid step
    for shape in ((2100, 2100), (4000, 4000), (1000, 5000), (3001, 2999)):
        t = balanced_tile(shape, 1344, 32)
        assert t % 32 == 0 and t <= 1344
        assert all(-(-side // t) == -(-side // 1344) for side in shape)  # no extra tile


@pytest.mark.real_slides
def test_nucleus_on_a_tile_corner_comes_out_as_one(cmu_crop):
    from scipy import ndimage as ndi

    from napari_nucleiseg.segmentation.api import segment_untiled
    from napari_nucleiseg.segmentation.tiled import segment_tiled

    rgb, mpp = cmu_crop
    rgb = rgb[:1200, :1200]
    whole = segment_untiled(rgb, mpp)
    # Pick a good-sized nucleus near the middle and shift the image so a tile corner sits on it.
    ids, areas = np.unique(whole, return_counts=True)
    ids, areas = ids[1:], areas[1:]
    centres = np.array(ndi.center_of_mass(whole > 0, whole, ids))
    near = np.hypot(centres[:, 0] - 600, centres[:, 1] - 600)
    pick = ids[np.argmin(np.where(areas > np.median(areas), near, np.inf))]
    cy, cx = (int(round(v)) for v in ndi.center_of_mass(whole == pick))
    tile = 400
    shifted = rgb[cy - tile :, cx - tile :]  # the nucleus centre is now at (tile, tile)
    # The reference is the untiled result on the *shifted* image: shifting moves the image against
    # the network's pooling grid, which can change a faint nucleus; only the tiling may differ here.
    ref = segment_untiled(shifted, mpp)
    under = ref[(whole == pick)[cy - tile :, cx - tile :]]
    ref_ids, ref_counts = np.unique(under[under > 0], return_counts=True)
    assert len(ref_ids), "the picked nucleus is not found in the shifted image at all"
    nucleus = ref == ref_ids[np.argmax(ref_counts)]
    tiled = segment_tiled(shifted, mpp, segment_untiled, tile=tile, halo=64)
    inside = tiled[nucleus]
    values, counts = np.unique(inside[inside > 0], return_counts=True)
    assert len(values) == 1, values  # one nucleus, not split between the four tiles
    assert counts[0] > 0.8 * nucleus.sum()


def test_awkward_inputs_with_the_default_model():
    from napari_nucleiseg.demo.render import render_he
    from napari_nucleiseg.segmentation.api import segment_image

    rgb, truth = render_he((300, 300), 0.5, seed=21, coverage=1.0)
    ref = segment_image(rgb, 0.5)
    assert ref.shape == (300, 300) and ref.max() > 10
    grey = rgb.mean(axis=2).astype(np.uint8)
    rgba = np.dstack([rgb, np.full((300, 300), 255, np.uint8)])
    deep = rgb.astype(np.uint16) * 257
    for img in (grey, rgba, deep):
        out = segment_image(img, 0.5)
        assert out.shape == (300, 300) and out.dtype == np.uint32
    assert np.array_equal(segment_image(rgba, 0.5), ref)
    assert np.array_equal(segment_image(deep, 0.5), ref)
    assert segment_image(np.full((256, 256, 3), 245, np.uint8), 0.5).max() == 0  # glass
    assert segment_image(rgb[:5, :7], 0.5).shape == (5, 7)  # tiny
    assert segment_image(rgb, 0.25).shape == (300, 300)  # 40x input


def test_segmenting_with_the_onnx_twin_never_imports_torch():
    """Importing torch was most of a command's start-up time; the ONNX path must not need it."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from napari_nucleiseg.segmentation.api import segment_image\n"
        "from napari_nucleiseg.demo.render import render_he\n"
        "rgb = render_he((300, 300), 0.5, seed=3, coverage=1.0)[0]\n"
        "assert segment_image(rgb, 0.5).max() > 0\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_flip_passes_follow_the_constant_work_rule(monkeypatch):
    """40x into the 20x model: the network covers a quarter of the input's pixels, so four
    flipped passes cost what one pass over a 20x input does; NUCLEISEG_TTA overrides."""
    from napari_nucleiseg.segmentation.predict import flip_passes

    monkeypatch.delenv("NUCLEISEG_TTA", raising=False)
    assert [flip_passes(0.5, m) for m in (0.5, 0.499, 0.35, 0.2527, 0.25, 0.125)] == [
        1,
        1,
        2,
        4,
        4,
        4,
    ]
    monkeypatch.setenv("NUCLEISEG_TTA", "off")
    assert flip_passes(0.5, 0.25) == 1
    monkeypatch.setenv("NUCLEISEG_TTA", "2")
    assert flip_passes(0.5, 0.5) == 2
    monkeypatch.setenv("NUCLEISEG_TTA", "8")
    with pytest.raises(ValueError, match="NUCLEISEG_TTA='8'"):
        flip_passes(0.5, 0.25)


def test_flipped_passes_average_maps_that_line_up(monkeypatch):
    """The flipped passes are flipped back before averaging: on a 40x image the averaged maps
    stay close to the single pass (a misaligned flip would smear every nucleus)."""
    from napari_nucleiseg.demo.render import render_he
    from napari_nucleiseg.metrics import score_image

    rgb, truth = render_he((600, 440), 0.25, seed=8, coverage=1.0)
    predictor = get_method().predictor
    monkeypatch.setenv("NUCLEISEG_TTA", "off")
    one = predictor.maps(rgb, 0.25)
    monkeypatch.setenv("NUCLEISEG_TTA", "auto")
    four = predictor.maps(rgb, 0.25)
    assert one.shape == four.shape == (3, 600, 440)
    assert not np.array_equal(one, four)
    assert np.abs(one - four).mean() < 0.02
    assert score_image(truth, predictor.segment(rgb, 0.25)).aji > 0.6
