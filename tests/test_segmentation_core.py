"""Classical segmentation, tiled merging, measurements and the segment/eval commands — on the
synthetic slide whose nuclei are known."""

import json
import subprocess
import sys

import numpy as np
import pytest

from napari_nucleiseg.demo.render import render_he
from napari_nucleiseg.metrics import score_image
from napari_nucleiseg.segmentation.classical import segment_classical
from napari_nucleiseg.segmentation.measure import COLUMNS, measure_nuclei
from napari_nucleiseg.segmentation.tiled import segment_tiled
from napari_nucleiseg.tiling import Merger, owned_nuclei


@pytest.fixture(scope="module")
def field():
    return render_he((700, 900), 0.5, seed=11, coverage=1.0)


def test_classical_finds_the_rendered_nuclei(field):
    rgb, truth = field
    s = score_image(truth, segment_classical(rgb, 0.5))
    assert s.f1 > 0.8 and s.aji > 0.6, s.as_row()


def test_empty_glass_and_tiny_inputs_give_no_nuclei():
    glass = np.full((300, 300, 3), 240, np.uint8)
    assert segment_classical(glass, 0.5).max() == 0
    from napari_nucleiseg.segmentation.api import segment_image

    assert segment_image(np.full((1, 1, 3), 200, np.uint8), 0.5, "classical").shape == (1, 1)
    grey = np.full((64, 64), 230, np.uint8)
    assert segment_image(grey, 0.5, "classical").max() == 0


def test_tiled_equals_untiled_and_a_corner_nucleus_stays_whole(field):
    rgb, _ = field
    # Put a nucleus exactly on the corner of four 256 px tiles.
    from napari_nucleiseg.demo.render import H_VEC

    yy, xx = np.mgrid[0:700, 0:900]
    blob = ((yy - 256) ** 2 + (xx - 256) ** 2) <= 9**2
    rgb = rgb.copy()
    rgb[blob] = (250 * np.power(10.0, -0.8 * H_VEC)).astype(np.uint8)
    whole = segment_classical(rgb, 0.5)
    tiled = segment_tiled(rgb, 0.5, segment_classical, tile=256, halo=48)
    assert score_image(whole, tiled).aji > 0.97
    ids = np.unique(tiled[blob])
    assert len(ids) == 1 and ids[0] > 0, ids
    # No doubled nuclei: ids are consecutive and each is one connected piece.
    from scipy import ndimage as ndi

    assert tiled.max() == len(np.unique(tiled)) - 1
    pieces = [ndi.label(tiled == i)[1] for i in np.unique(tiled)[1:][:200]]
    assert max(pieces) == 1


def test_tiles_segmented_ahead_in_threads_give_the_same_map_and_stop_cleanly(field):
    """The next tile is segmented in a worker thread while this one merges; merging stays in
    raster order, so the map is the one a single thread makes. Closing the generator (a
    cancelled run) waits for the tile in flight and leaves no worker behind."""
    import threading

    from napari_nucleiseg.segmentation.tiled import iter_segment_tiled

    rgb, _ = field
    threads_used = set()

    def segment(block, mpp):
        threads_used.add(threading.current_thread().name)
        return segment_classical(block, mpp)

    def drain(gen):
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value

    serial = drain(iter_segment_tiled(rgb, 0.5, segment_classical, tile=256, halo=48, lookahead=0))
    ahead = drain(iter_segment_tiled(rgb, 0.5, segment, tile=256, halo=48, lookahead=2))
    assert np.array_equal(serial, ahead) and serial.max() > 20
    assert len(threads_used) > 1  # the tiles really were spread over worker threads
    gen = iter_segment_tiled(rgb, 0.5, segment_classical, tile=256, halo=48, lookahead=2)
    assert next(gen)[0] == 1
    gen.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("nucleiseg-tile")]


def test_merge_drops_a_duplicate_seen_from_the_neighbour():
    merger = Merger(np.zeros((20, 40), np.uint32))
    a = np.zeros((20, 24), np.int32)
    a[5:15, 16:24] = 1  # cut by tile A's read box edge; centroid x = 19.5, in A's core (x < 20)
    crop, origin = owned_nuclei(a, (0, 0), (0, 0, 20, 20), margin=2, halo=12)
    assert merger.add(crop, origin) == 1
    b = np.zeros((20, 24), np.int32)
    b[5:15, 0:9] = 1  # the same nucleus from tile B (read box from x = 16): centroid x = 20
    crop, origin = owned_nuclei(b, (16, 0), (20, 0, 40, 20), margin=2, halo=12)
    assert merger.add(crop, origin) == 0  # a duplicate: covered by A's nucleus
    assert set(np.unique(merger.out)) == {0, 1}


def test_a_tile_owns_nuclei_near_its_core_that_it_saw_whole():
    lab = np.zeros((30, 30), np.int32)
    lab[10:14, 10:14] = 1  # centroid inside the core (8..22)
    lab[10:14, 23:25] = 2  # centroid x = 24, within the margin (2) of the core's end at 22
    lab[25:29, 25:29] = 3  # centroid 27: outside core + margin
    lab[2:22, 2:6] = 4  # centroid inside, but 20 px tall: more than halo - margin, not seen whole
    crop, origin = owned_nuclei(lab, (100, 200), (108, 208, 122, 222), margin=2, halo=12)
    assert origin == (110, 210) and set(np.unique(crop)) == {0, 1, 2}


def test_measurements_in_micrometres():
    labels = np.zeros((40, 60), np.uint32)
    labels[10:20, 30:50] = 7  # 10 x 20 px rectangle
    rgb = np.full((40, 60, 3), 255, np.uint8)
    rgb[labels > 0] = (60, 40, 140)
    t = measure_nuclei(labels, rgb, 0.5, origin_px=(1000, 2000))
    assert list(t) == COLUMNS and t["label"].tolist() == [7]
    assert t["area_um2"][0] == pytest.approx(200 * 0.25)
    assert t["centroid_x_um"][0] == pytest.approx((1000 + 40) * 0.5)
    assert t["centroid_y_um"][0] == pytest.approx((2000 + 15) * 0.5)
    assert t["mean_haematoxylin_od"][0] > 0.3
    assert 0.8 < t["solidity"][0] <= 1.0


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "napari_nucleiseg.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_segment_and_eval_commands(tmp_path, field):
    import tifffile
    from PIL import Image

    rgb, truth = field
    Image.fromarray(rgb).save(tmp_path / "f1.png")
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "f2.png")
    (tmp_path / "gt").mkdir()
    for stem in ("f1", "f2"):
        tifffile.imwrite(tmp_path / "gt" / f"{stem}.tif", truth)
    out = _cli(
        "segment",
        tmp_path / "f1.png",
        tmp_path / "f2.png",
        "--out",
        tmp_path / "pred",
        "--mpp",
        "0.5",
        "--method",
        "classical",
    )
    assert out.returncode == 0, out.stderr
    lab = tifffile.imread(tmp_path / "pred" / "f1.tif")
    assert lab.shape == rgb.shape[:2] and lab.dtype in (np.uint16, np.uint32)
    with tifffile.TiffFile(tmp_path / "pred" / "f1.tif") as tf:
        assert json.loads(tf.pages[0].description)["method"] == "classical"
    header = (tmp_path / "pred" / "f1.csv").read_text().splitlines()
    assert header[0].split(",") == COLUMNS and len(header) - 1 == lab.max()
    ev = _cli("eval", tmp_path / "pred", tmp_path / "gt")
    assert ev.returncode == 0, ev.stderr
    final = json.loads(ev.stdout.strip().splitlines()[-1])
    assert final["images"] == 2 and final["aji"] > 0.6 and "aggregate" in ev.stdout


def test_segment_needs_a_resolution(tmp_path, field):
    from PIL import Image

    Image.fromarray(field[0]).save(tmp_path / "nores.png")
    out = _cli("segment", tmp_path / "nores.png", "--out", tmp_path / "o", "--method", "classical")
    assert out.returncode == 1 and "nores.png" in out.stderr and "--mpp" in out.stderr
