"""The whole-slide job on real components: synthetic pyramidal slides read through OpenSlide, a
real zarr store, real subprocesses killed with SIGKILL, a real dask.distributed scheduler and two
worker processes on 127.0.0.1. Every run is compared with one uninterrupted single-process run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from _stores import tile_records, wait_for_records

MPP = 0.5
SHAPE = (1536, 2048)
#: 256-px tiles: 48 tiles (about 40 with tissue), so runs take seconds yet have many seams.
TILE_UM = 128
STEM = "cohort_a"


def _cli(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "napari_nucleiseg.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )


def _cli_cmd(slide, out, *extra):
    return [
        sys.executable,
        "-m",
        "napari_nucleiseg.cli.main",
        "segment",
        str(slide),
        "--out",
        str(out),
        "--whole-slide",
        "--method",
        "classical",
        "--tile-um",
        str(TILE_UM),
        *map(str, extra),
    ]


def _snapshot(out_dir: Path, stem: str = STEM) -> dict:
    """Everything a run leaves, as comparable values."""
    from napari_nucleiseg.wholeslide import open_labels, read_table

    levels, mpp, meta = open_labels(out_dir / f"{stem}.nuclei.zarr")
    return {
        "levels": [np.asarray(lv) for lv in levels],
        "mpp": mpp,
        "meta": meta,
        "csv": (out_dir / f"{stem}.nuclei.csv").read_text(),
        "geojson": (out_dir / f"{stem}.nuclei.geojson").read_text(),
        "parquet": read_table(out_dir / f"{stem}.nuclei.parquet"),
    }


def _assert_identical(a: dict, b: dict) -> None:
    assert len(a["levels"]) == len(b["levels"])
    for la, lb in zip(a["levels"], b["levels"]):
        assert la.dtype == lb.dtype and np.array_equal(la, lb)
    assert a["csv"] == b["csv"]
    assert a["geojson"] == b["geojson"]
    for c in a["parquet"]:
        assert np.array_equal(a["parquet"][c], b["parquet"][c])


@pytest.fixture(scope="module")
def ws_slide(tmp_path_factory):
    from napari_nucleiseg.demo.render import render_he
    from napari_nucleiseg.demo.slides import write_pyramidal_tiff

    rgb, truth = render_he(SHAPE, MPP, seed=3)
    path = tmp_path_factory.mktemp("slides") / f"{STEM}.tif"
    write_pyramidal_tiff(path, rgb, MPP)
    return path, truth


@pytest.fixture(scope="module")
def reference(ws_slide, tmp_path_factory):
    """One uninterrupted run in this process, one worker thread."""
    from napari_nucleiseg.wholeslide import segment_slide

    out = tmp_path_factory.mktemp("reference")
    progress = list(segment_slide(ws_slide[0], out, method="classical", tile_um=TILE_UM, workers=1))
    assert progress[-1].finished and progress[-1].done == progress[-1].total > 20
    snap = _snapshot(out)
    snap["progress"] = progress
    return snap


# --------------------------------------------------------------------------- results
def test_merge_is_seam_free_with_unique_ids_owned_by_their_tile(ws_slide, reference):
    from scipy import ndimage as ndi
    from skimage.segmentation import relabel_sequential

    from napari_nucleiseg.io import open_slide
    from napari_nucleiseg.metrics import score_image
    from napari_nucleiseg.segmentation.api import segment_image

    lab = reference["levels"][0]
    assert lab.shape == SHAPE and lab.dtype == np.uint32
    ids = np.unique(lab[lab > 0])
    table = reference["parquet"]
    assert np.array_equal(
        np.sort(table["label"]), ids
    )  # one row per nucleus in the map, no doubles
    assert len(ids) == reference["progress"][-1].nuclei == reference["meta"]["summary"]["nuclei"]
    seq = relabel_sequential(lab.astype(np.int64))[0]
    parts = [ndi.label(seq[sl] == i + 1)[1] for i, sl in enumerate(ndi.find_objects(seq))]
    assert max(parts) == 1  # no nucleus cut into pieces at a seam
    # Each id names the tile that owns it: its centroid lies in that tile's core, or within the
    # ownership margin outside it (a corner nucleus may be taken by either tile; see tasks.py).
    from napari_nucleiseg.tiling import OWNERSHIP_MARGIN_UM

    tile_px = reference["meta"]["identity"]["tile_px"]
    cols = -(-SHAPE[1] // tile_px)
    index = table["label"].astype(np.int64) >> 16
    cx, cy = table["centroid_x_um"] / MPP - 0.5, table["centroid_y_um"] / MPP - 0.5
    m = np.ceil(OWNERSHIP_MARGIN_UM / MPP)
    for pos, cell in ((cx, index % cols), (cy, index // cols)):
        assert ((pos >= cell * tile_px - m) & (pos < (cell + 1) * tile_px + m)).all()
    outside = (np.floor(cx / tile_px) != index % cols) | (np.floor(cy / tile_px) != index // cols)
    assert outside.mean() < 0.02  # the margin is an exception, not the rule
    # As accurate against the ground truth as segmenting the whole image in one piece (no seams).
    with open_slide(ws_slide[0]) as s:
        rgb = s.read_region(0, 0, SHAPE[1], SHAPE[0])
    whole = segment_image(rgb, MPP, "classical", tile=max(SHAPE))
    truth = ws_slide[1]
    aji_ws, aji_whole = score_image(truth, seq).aji, score_image(truth, whole).aji
    assert aji_ws > 0.75 and aji_ws >= aji_whole - 0.01, (aji_ws, aji_whole)


def test_store_is_an_aligned_ngff_labels_pyramid(reference):
    import dask.array as da

    from napari_nucleiseg.wholeslide import open_labels

    store = reference["progress"][-1].store
    attrs = json.loads((store / ".zattrs").read_text())
    ms = attrs["multiscales"][0]
    assert ms["version"] == "0.4" and [a["unit"] for a in ms["axes"]] == [
        "micrometer",
        "micrometer",
    ]
    assert "image-label" in attrs
    levels, mpp, meta = open_labels(store)
    assert all(isinstance(lv, da.Array) for lv in levels) and mpp == MPP
    assert meta["identity"]["method"]["method"] == "classical" and meta["finished"]
    for k, d in enumerate(ms["datasets"]):
        assert d["coordinateTransformations"][0]["scale"] == [MPP * 4**k] * 2
        assert np.array_equal(reference["levels"][k], reference["levels"][0][:: 4**k, :: 4**k])
    assert not (store / "progress").exists()  # records go once the result is complete


def test_geojson_is_one_valid_qupath_detection_per_table_row(reference):
    from shapely.geometry import Point, shape

    doc = json.loads(reference["geojson"])
    table = reference["parquet"]
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == len(table["label"])
    for f, label, x, y, area in zip(
        doc["features"],
        table["label"],
        table["centroid_x_um"],
        table["centroid_y_um"],
        table["area_um2"],
    ):
        poly = shape(f["geometry"])
        assert f["geometry"]["type"] == "Polygon" and poly.is_valid
        props = f["properties"]
        assert props["objectType"] == "detection" and props["classification"]["name"] == "Nucleus"
        assert int(props["name"]) == props["measurements"]["label"] == int(label)
        uuid.UUID(f["id"])
        # Level-0 pixel coordinates: the centroid (µm → px) lies inside, the area matches.
        assert poly.buffer(0.5).contains(Point(x / MPP, y / MPP))
        assert 0.75 < poly.area / (area / MPP**2) < 1.05
    assert reference["csv"].splitlines()[0].split(",")[:2] == ["label", "centroid_x_um"]


def test_current_view_exports(he_rgb, tmp_path):
    from shapely.geometry import shape

    from napari_nucleiseg.segmentation.api import segment_image
    from napari_nucleiseg.segmentation.measure import measure_nuclei
    from napari_nucleiseg.wholeslide import export_geojson, export_table, read_table, write_table

    rgb = he_rgb[0]
    labels = segment_image(rgb, MPP, "classical")
    offset = (3000, 1000)  # where the view's pixel (0, 0) is on the slide
    table = measure_nuclei(labels, rgb, MPP, origin_px=offset)
    n = export_geojson(labels, tmp_path / "view.geojson", MPP, offset=offset, table=table)
    write_table(table, tmp_path / "view.parquet")
    assert np.array_equal(
        export_table(labels, tmp_path / "view.csv", MPP, rgb, offset)["label"], table["label"]
    )
    feats = json.loads((tmp_path / "view.geojson").read_text())["features"]
    assert n == len(feats) == labels.max() > 50
    xs = np.concatenate([np.asarray(f["geometry"]["coordinates"][0])[:, 0] for f in feats])
    assert xs.min() >= offset[0] and xs.max() <= offset[0] + rgb.shape[1]
    assert all(shape(f["geometry"]).is_valid for f in feats)
    for name in ("view.parquet", "view.csv"):
        back = read_table(tmp_path / name)
        assert np.array_equal(back["label"], table["label"])
        assert np.allclose(back["area_um2"], table["area_um2"], rtol=1e-5)


# --------------------------------------------------------------------------- interruption
def test_cancelled_in_process_run_resumes_to_the_same_result(ws_slide, reference, tmp_path):
    from napari_nucleiseg.wholeslide import segment_slide

    gen = segment_slide(ws_slide[0], tmp_path, method="classical", tile_um=TILE_UM)
    for p in gen:
        if p.segmented >= 10:
            break
    gen.close()  # what the Cancel button does
    recorded = len(tile_records(tmp_path, STEM))
    assert 10 <= recorded < p.total
    meta = json.loads((p.store / ".zattrs").read_text())["nucleiseg"]
    assert not meta["finished"]
    runs = list(segment_slide(ws_slide[0], tmp_path, method="classical", tile_um=TILE_UM))
    assert runs[0].resumed == recorded and runs[-1].finished
    _assert_identical(_snapshot(tmp_path), reference)


@pytest.mark.parametrize("segmented", [8, 24])
def test_an_unfinished_store_counts_the_nuclei_it_shows_and_shows_the_final_merge(
    ws_slide, reference, tmp_path, segmented
):
    """What the Nuclei panel shows of a cancelled run (``layers.slide_labels_so_far``): its count
    is the number of nuclei drawn (it used to add every tile's owned nuclei, counting twice the
    ones two tiles own at their shared edge: 562 for 550 drawn), and a chunk whose neighbouring
    tissue tiles are all segmented is drawn as the finished run writes it."""
    from napari_nucleiseg.io import open_slide
    from napari_nucleiseg.layers import slide_labels_so_far
    from napari_nucleiseg.wholeslide import segment_slide
    from napari_nucleiseg.wholeslide.job import plan
    from napari_nucleiseg.wholeslide.store import finished_keys

    gen = segment_slide(ws_slide[0], tmp_path, method="classical", tile_um=TILE_UM, workers=1)
    for p in gen:
        if p.segmented >= segmented:
            break
    gen.close()
    levels, tiles, nuclei = slide_labels_so_far(p.store)
    shown = np.asarray(levels[0])
    assert p.segmented <= tiles < p.total  # a tile in flight at Cancel may still be recorded
    assert nuclei == len(np.unique(shown[shown > 0])) > 0

    final = reference["levels"][0]
    with open_slide(ws_slide[0]) as slide:
        kwargs, tissue, _ = plan(slide, method="classical", tile_um=TILE_UM)
    done = {tuple(map(int, k.split("_"))) for k in finished_keys(p.store, "tiles")}
    pending = set(map(tuple, tissue)) - done
    tile, rows, cols = kwargs["tile"], kwargs["rows"], kwargs["cols"]
    complete = [
        (r, c)
        for r in range(rows)
        for c in range(cols)
        if not any((r + dr, c + dc) in pending for dr in (-1, 0, 1) for dc in (-1, 0, 1))
    ]
    merged = finished_keys(p.store, "chunks")
    assert any(f"{r}_{c}" not in merged and (r, c) in done for r, c in complete)
    for r, c in complete:
        box = np.s_[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile]
        assert np.array_equal(shown[box], final[box]), (r, c)


def test_sigkill_mid_slide_then_same_command_gives_the_same_result(ws_slide, reference, tmp_path):
    cmd = _cli_cmd(ws_slide[0], tmp_path)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_records(tmp_path, STEM, 12, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    recorded = len(tile_records(tmp_path, STEM))
    total = reference["progress"][-1].total
    assert recorded < total, "the run finished before it was killed"
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    summary = _snapshot(tmp_path)["meta"]["summary"]
    assert summary["resumed_tiles"] == recorded  # only the unfinished tiles were redone
    _assert_identical(_snapshot(tmp_path), reference)
    store = tmp_path / f"{STEM}.nuclei.zarr"
    assert not [p for p in store.rglob("*") if p.name.endswith((".tmp", ".partial"))]


# --------------------------------------------------------------------------- dask.distributed
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def loopback_cluster():
    """A real scheduler and two single-threaded worker processes (with nannies) on 127.0.0.1."""
    from distributed import Client

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scheduler = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dask",
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-dashboard",
        ],
        **quiet,
    )
    workers = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dask",
            "worker",
            address,
            "--nworkers",
            "2",
            "--nthreads",
            "1",
            "--host",
            "127.0.0.1",
            "--no-dashboard",
            "--memory-limit",
            "0",
        ],
        **quiet,
    )
    client = None
    try:
        client = Client(address, timeout="60s")
        client.wait_for_workers(2, timeout=120)
        yield address, client
    finally:
        if client is not None:
            client.close()
        for p in (workers, scheduler):
            p.terminate()
        for p in (workers, scheduler):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def test_cluster_of_two_workers_gives_the_single_process_labels_even_when_one_dies(
    ws_slide, reference, tmp_path, loopback_cluster
):
    address, client = loopback_cluster
    pids = sorted(client.run(os.getpid).values())
    assert len(pids) == 2 and os.getpid() not in pids
    proc = subprocess.Popen(
        _cli_cmd(ws_slide[0], tmp_path, "--scheduler", address),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_records(tmp_path, STEM, 6, proc)
        os.kill(pids[0], signal.SIGKILL)  # a worker dies mid-slide; dask re-runs its tasks
        killed_at = len(tile_records(tmp_path, STEM))
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert killed_at < reference["progress"][-1].total, (
        "the run finished before the worker was killed"
    )
    snap = _snapshot(tmp_path)
    assert snap["meta"]["summary"]["runner"] == "dask"
    _assert_identical(snap, reference)


# --------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def tiny_slides(tmp_path_factory):
    from napari_nucleiseg.demo.render import render_he
    from napari_nucleiseg.demo.slides import write_pyramidal_tiff

    d = tmp_path_factory.mktemp("tiny")
    paths = []
    for k, seed in enumerate((11, 12)):
        (d / f"set{k}").mkdir()
        rgb, _ = render_he((512, 768), MPP, seed=seed)
        paths.append(d / f"set{k}" / "tiny.tif")  # same name, different slides
        write_pyramidal_tiff(paths[-1], rgb, MPP)
    return paths


def test_store_of_another_slide_method_or_folder_is_refused(tiny_slides, tmp_path):
    from napari_nucleiseg.wholeslide import StoreMismatchError, segment_slide

    a, b = tiny_slides
    list(segment_slide(a, tmp_path, method="classical", tile_um=TILE_UM))
    with pytest.raises(
        StoreMismatchError, match="made with classical, this run uses classical-phansalkar"
    ):
        list(segment_slide(a, tmp_path, method="classical-phansalkar", tile_um=TILE_UM))
    with pytest.raises(StoreMismatchError, match="another slide .*refusing to mix"):
        list(segment_slide(b, tmp_path, method="classical", tile_um=TILE_UM))
    with pytest.raises(StoreMismatchError, match="tiles of 256 px"):
        list(segment_slide(a, tmp_path, method="classical", tile_um=2 * TILE_UM))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "tiny.nuclei.zarr").mkdir()
    (tmp_path / "other" / "tiny.nuclei.zarr" / "data.txt").write_text("someone's files")
    with pytest.raises(StoreMismatchError, match="not a nucleiseg whole-slide result store"):
        list(segment_slide(a, tmp_path / "other", method="classical", tile_um=TILE_UM))
    # The finished store is untouched, and the same call again is a no-op that reports it.
    (p,) = list(segment_slide(a, tmp_path, method="classical", tile_um=TILE_UM))
    assert p.finished and p.nuclei > 20


def test_shipped_model_and_stain_normaliser_are_recorded_and_checked(
    tiny_slides, tmp_path, monkeypatch
):
    from dataclasses import dataclass

    from napari_nucleiseg.models import DEFAULT_NUCLEI_MODEL
    from napari_nucleiseg.wholeslide import StoreMismatchError, segment_slide

    @dataclass
    class Profile:  # what a fitted stain profile records
        method: str
        target: list

    class Brighter:
        """A fixed (chunk-safe) colour transform with a profile, as stain normalisers have."""

        def __init__(self, gain):
            self.profile = Profile("gain", [gain])

        def transform(self, rgb):
            return np.clip(rgb.astype(np.float32) * self.profile.target[0], 0, 255).astype(np.uint8)

    # Tiles of at least twice the shipped model's context (80 µm for nuclei-unet-v4).
    tile_um = 192
    runs = list(segment_slide(tiny_slides[0], tmp_path, tile_um=tile_um, normaliser=Brighter(1.02)))
    assert runs[-1].finished and runs[-1].nuclei > 20
    meta = json.loads((runs[-1].store / ".zattrs").read_text())["nucleiseg"]["identity"]
    assert meta["method"]["model"] == DEFAULT_NUCLEI_MODEL and len(meta["method"]["sha256"]) == 64
    assert meta["stain"] == {"method": "gain", "target": [1.02]}
    assert meta["method"]["test_time_flips"] == os.environ.get("NUCLEISEG_TTA", "auto")
    with pytest.raises(StoreMismatchError, match="another stain normalisation"):
        list(segment_slide(tiny_slides[0], tmp_path, tile_um=tile_um, normaliser=Brighter(1.1)))
    # The flip setting changes labels at 40x: a store made under one is not resumed under another.
    monkeypatch.setenv("NUCLEISEG_TTA", "4")
    with pytest.raises(StoreMismatchError, match="NUCLEISEG_TTA=4"):
        list(segment_slide(tiny_slides[0], tmp_path, tile_um=tile_um, normaliser=Brighter(1.02)))


def test_cohort_of_folder_and_list_routes_and_survives_bad_slides(tiny_slides, he_rgb, tmp_path):
    from PIL import Image

    from napari_nucleiseg.demo import make_large_slide

    cohort = tmp_path / "cohort"
    cohort.mkdir()
    # 12,000 x 10,240 px = 123 MP: a whole slide by size alone; tissue on a 512-px patch.
    make_large_slide(cohort / "big.tif", size=(10_240, 12_000), tissue_box=(4096, 4096, 4608, 4608))
    Image.fromarray(he_rgb[0]).save(cohort / "field.png")
    (cohort / "broken.svs").write_bytes(b"not a slide" * 100)
    listing = tmp_path / "more.txt"
    listing.write_text(f"# two more\n{tiny_slides[0]}\nmissing.svs\n")
    out = _cli(
        "segment",
        cohort,
        listing,
        "--out",
        tmp_path / "res",
        "--mpp",
        "0.5",
        "--method",
        "classical",
    )
    assert out.returncode == 1
    assert (
        "broken.svs" in out.stderr and "missing.svs" in out.stderr and "Traceback" not in out.stderr
    )
    res = tmp_path / "res"
    assert (res / "field.tif").exists() and (res / "field.csv").exists()  # plain images: as before
    assert (res / "tiny.tif").exists()  # a small slide without --whole-slide: as before
    assert json.loads((res / "big.nuclei.zarr" / ".zattrs").read_text())["nucleiseg"]["finished"]
    assert "big.tif" in out.stdout and "done" in out.stdout

    out = _cli(
        "segment",
        tiny_slides[0],
        cohort / "broken.svs",
        "--out",
        tmp_path / "ws",
        "--whole-slide",
        "--method",
        "classical",
        "--tile-um",
        TILE_UM,
    )
    assert (
        out.returncode == 1
        and "failed:" in out.stderr
        and "broken.svs" in out.stderr.split("failed:")[1]
    )
    assert (tmp_path / "ws" / "tiny.nuclei.geojson").exists()
    lines = out.stdout.splitlines()
    assert any(line.startswith("tiny.tif") and " done " in line for line in lines)
    assert any(line.startswith("broken.svs") and "FAILED" in line for line in lines)


def test_full_disk_keeps_finished_tiles_and_says_how_to_resume(tiny_slides, tmp_path):
    import resource

    slide = tiny_slides[0]
    limit = 64 * 1024  # tile records and chunks fit, the outlines file does not

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = _cli_cmd(slide, tmp_path / "out")
    full = subprocess.run(cmd, capture_output=True, text=True, timeout=600, preexec_fn=small_disk)
    assert full.returncode == 1, full.stderr
    assert (
        "disk full while writing results" in full.stderr
        and "run the same command again" in full.stderr
    )
    # One input, one line: the error names the slide; no "failed:" summary repeats it.
    errors = [line for line in full.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "tiny.tif" in errors[0] and "failed:" not in full.stderr
    recorded = len(tile_records(tmp_path / "out", "tiny"))
    assert recorded > 0
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    resumed = _snapshot(tmp_path / "out", "tiny")
    assert resumed["meta"]["summary"]["resumed_tiles"] == recorded
    fresh = subprocess.run(
        _cli_cmd(slide, tmp_path / "fresh"), capture_output=True, text=True, timeout=600
    )
    assert fresh.returncode == 0, fresh.stderr
    _assert_identical(resumed, _snapshot(tmp_path / "fresh", "tiny"))


# --------------------------------------------------------------------------- memory
_PEAK_WRAPPER = r"""
import atexit, os, runpy, sys
def _peak():
    with open("/proc/self/status") as f:
        kb = [line.split()[1] for line in f if line.startswith("VmHWM:")][0]
    with open(os.environ["NUCLEISEG_PEAK_FILE"], "w") as f:
        f.write(kb)
atexit.register(_peak)
sys.argv = ["nucleiseg"] + sys.argv[1:]
runpy.run_module("napari_nucleiseg.cli.main", run_name="__main__")
"""


@pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="reads the peak from /proc (Linux)"
)
def test_peak_memory_does_not_grow_with_the_slide(tmp_path):
    """The same patch of tissue on a 20,000² and a 60,000² slide: the same peak RSS (± 20 %).
    (benchmarks/wholeslide.py measures it with 4096² px of tissue and the default tiles.)"""
    from napari_nucleiseg.demo import make_large_slide

    peaks, nuclei = {}, {}
    for n in (20_000, 60_000):
        slide = make_large_slide(
            tmp_path / f"s{n}.tif", size=(n, n), tissue_box=(8192, 8192, 9216, 9216)
        )
        out = tmp_path / f"out{n}"
        env = dict(os.environ, NUCLEISEG_PEAK_FILE=str(tmp_path / f"peak{n}"))
        run = subprocess.run(
            [
                sys.executable,
                "-c",
                _PEAK_WRAPPER,
                "segment",
                slide,
                "--out",
                out,
                "--whole-slide",
                "--method",
                "classical",
                "--tile-um",
                "256",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert run.returncode == 0, run.stderr
        peaks[n] = int((tmp_path / f"peak{n}").read_text()) / 1024
        nuclei[n] = int(run.stdout.strip().splitlines()[-1].split(": ")[1].split(" nuclei")[0])
        slide.unlink()
    assert nuclei[20_000] == nuclei[60_000] > 50  # the same work on both
    assert abs(peaks[60_000] - peaks[20_000]) / peaks[20_000] < 0.2, peaks


@pytest.mark.real_slides
def test_whole_slide_job_keeps_every_nucleus_on_a_tile_corner(tmp_path):
    """Two tiles segment a nucleus on their shared corner each with its own context, so their
    centroids of it can differ by a pixel or two; with strict centroid-in-core ownership a
    nucleus could then be owned by no tile and vanish (3 of 26 corner nuclei did, tiles of 192
    and 224 px on this crop). Every nucleus the untiled pass finds within 10 px of a tile corner
    must come out of the whole-slide job, as one nucleus. The model is nuclei-unet-v3, whose
    32-µm context allows tiles this small; nuclei-unet-v4 needs 80 µm, so tiles of at least 160 µm,
    which leaves this crop too few corners to test."""
    method = "nuclei-unet-v3"
    from conftest import shared_slide
    from scipy import ndimage as ndi

    from napari_nucleiseg.demo.slides import write_pyramidal_tiff
    from napari_nucleiseg.io import open_slide
    from napari_nucleiseg.segmentation.api import segment_untiled
    from napari_nucleiseg.wholeslide import open_labels, segment_slide

    with open_slide(shared_slide("CMU-1-Small-Region.svs")) as s:
        mpp = s.mpp
        crop = s.read_region(100, 500, 1536, 1536, 0)
    path = tmp_path / "corners.tif"
    write_pyramidal_tiff(path, crop, mpp)
    with open_slide(path) as s:  # the reference sees the slide's own (JPEG) pixels
        ref = segment_untiled(s.read_region(0, 0, 1536, 1536, 0), mpp, method)
    ids = np.unique(ref[ref > 0])
    centres = np.array(ndi.center_of_mass(ref > 0, ref, ids)) + 0.5
    checked = 0
    for tile in (192, 224):
        out = tmp_path / f"tile{tile}"
        list(segment_slide(path, out, tile_um=tile * mpp, workers=1, method=method))
        levels, _, meta = open_labels(out / "corners.nuclei.zarr")
        assert meta["identity"]["tile_px"] == tile
        lab = np.asarray(levels[0])
        corner = np.round(centres / tile) * tile
        off = np.abs(centres - corner)
        # Corners where four tiles meet: on the slide's edge a nucleus may belong to a glass tile
        # (under 1 % tissue), which a whole-slide job does not visit.
        inner = ((corner > 0) & (corner < 1536)).all(axis=1)
        for i in ids[(np.hypot(off[:, 0], off[:, 1]) < 10) & inner]:
            nucleus = ref == i
            values, counts = np.unique(lab[nucleus], return_counts=True)
            counts = counts[values > 0]
            assert counts.size and counts.max() >= 0.5 * nucleus.sum(), (tile, i, "missing")
            assert np.sort(counts)[-2:-1].sum() <= 0.2 * nucleus.sum(), (tile, i, "split")
            checked += 1
    assert checked >= 15


def test_geojson_never_writes_an_empty_polygon(tmp_path):
    """An id in the table whose pixels are gone (deleted or merged away by hand) is left out of
    the GeoJSON instead of being written as the empty polygon [[]] QuPath cannot read."""
    import json

    from napari_nucleiseg.segmentation.measure import measure_nuclei
    from napari_nucleiseg.wholeslide.export import GeoJSONWriter, outlines

    labels = np.zeros((40, 40), np.uint32)
    labels[5:15, 5:15] = 1
    labels[20:30, 20:30] = 2
    table = measure_nuclei(labels, np.full((40, 40, 3), 200, np.uint8), 0.5)
    labels[labels == 2] = 0  # nucleus 2 deleted after it was measured
    writer = GeoJSONWriter(tmp_path / "x.geojson")
    writer.add(table, outlines(labels, ids=table["label"]))
    writer.close()
    features = json.loads((tmp_path / "x.geojson").read_text())["features"]
    assert [f["properties"]["name"] for f in features] == ["1"]
    assert all(len(f["geometry"]["coordinates"][0]) >= 4 for f in features)
