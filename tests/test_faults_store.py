"""Faults on the output side of the whole-slide job: every result store heals or refuses.

Real stores on a synthetic pyramidal slide (read through OpenSlide), damaged the ways disks,
users and kill signals damage them: chunks and records deleted or truncated, exports deleted or
cut short, jobs killed with SIGKILL and SIGINT at several points, a second job started on a store
another one holds, a resume under another runtime or flip setting. Each case checks what the user
sees (a warning or error line naming the file, the exit code) and that the healed result is the
one an uninterrupted run gives, byte for byte.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from _stores import tile_records, wait_for_records

MPP = 0.5
#: 5 x 6 tiles of 256 px (128 µm): runs take seconds with the classical method, yet a killed
#: run leaves finished, segmented-only and untouched tiles.
SHAPE = (1280, 1536)
TILE_UM = 128
STEM = "faults"


def _segment(slide, out, **kwargs):
    from napari_nucleiseg.wholeslide import segment_slide

    return list(segment_slide(slide, out, method="classical", tile_um=TILE_UM, workers=1, **kwargs))


def _partial(slide, out, chunks: int):
    """An unfinished store: the run stops (as Cancel does) once ``chunks`` tiles are final."""
    from napari_nucleiseg.wholeslide import segment_slide

    gen = segment_slide(slide, out, method="classical", tile_um=TILE_UM, workers=1)
    for p in gen:
        if p.done >= chunks:
            break
    gen.close()
    assert not p.finished and p.segmented < p.total
    return p


def _snapshot(out: Path) -> dict:
    from napari_nucleiseg.wholeslide import open_labels, read_table

    levels, _, meta = open_labels(out / f"{STEM}.nuclei.zarr")
    return {
        "levels": [np.asarray(lv) for lv in levels],
        "meta": meta,
        "csv": (out / f"{STEM}.nuclei.csv").read_bytes(),
        "geojson": (out / f"{STEM}.nuclei.geojson").read_bytes(),
        "parquet": read_table(out / f"{STEM}.nuclei.parquet"),
    }


def _assert_identical(a: dict, b: dict) -> None:
    assert len(a["levels"]) == len(b["levels"])
    for la, lb in zip(a["levels"], b["levels"]):
        assert la.dtype == lb.dtype and np.array_equal(la, lb)
    assert a["csv"] == b["csv"] and a["geojson"] == b["geojson"]
    assert a["parquet"].keys() == b["parquet"].keys()
    for c in a["parquet"]:
        assert np.array_equal(a["parquet"][c], b["parquet"][c]), c


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
        "--workers",
        "1",
        *map(str, extra),
    ]


def _start(cmd, **kwargs):
    # SIGINT as a terminal's Ctrl-C delivers it, even when the suite itself runs as a background
    # job (which ignores SIGINT, and a Python child would keep ignoring it).
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **kwargs,
    )


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    from napari_nucleiseg.demo.render import render_he
    from napari_nucleiseg.demo.slides import write_pyramidal_tiff

    rgb, _ = render_he(SHAPE, MPP, seed=21)
    path = tmp_path_factory.mktemp("slides") / f"{STEM}.tif"
    write_pyramidal_tiff(path, rgb, MPP)
    return path


@pytest.fixture(scope="module")
def reference(slide, tmp_path_factory):
    """One uninterrupted run: ``(snapshot, its output folder)`` (copied, never changed)."""
    out = tmp_path_factory.mktemp("reference")
    runs = _segment(slide, out)
    assert runs[-1].finished and runs[-1].total >= 16 and runs[-1].nuclei > 100
    return _snapshot(out), out


def _finished_copy(reference, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(reference[1], out)
    return out


def _warned(record, pattern: str) -> list[str]:
    from napari_nucleiseg.wholeslide import StoreRepairWarning

    lines = [str(w.message) for w in record if issubclass(w.category, StoreRepairWarning)]
    assert any(re.search(pattern, line) for line in lines), (pattern, lines)
    return lines


# --------------------------------------------------------------------------- damaged stores
def _first_chunk_with_labels(store: Path) -> str:
    for rec in sorted((store / "progress" / "chunks").glob("*.json")):
        if json.loads(rec.read_text())["nonzero"]:
            return rec.stem
    raise AssertionError("no chunk with labels written yet")


@pytest.mark.parametrize(
    "damage",
    ["chunk deleted", "chunk truncated", "chunk record cut", "tile record cut", "tile record gone"],
)
def test_an_unfinished_store_with_damaged_files_is_healed_on_resume(
    slide, reference, tmp_path, damage
):
    """Was: a deleted chunk gave "done" with nuclei in the tables but not in the labels; a cut
    tile record stopped every later run with BadZipFile, naming the slide."""
    p = _partial(slide, tmp_path, chunks=8)
    store = p.store
    k = _first_chunk_with_labels(store)
    r, c = k.split("_")
    chunk = store / "0" / r / c
    if damage == "chunk deleted":
        target, expect = (
            chunk,
            rf"{re.escape(str(chunk))} is missing; chunk {k} will be written again",
        )
        chunk.unlink()
    elif damage == "chunk truncated":
        target, expect = chunk, rf"{re.escape(str(chunk))} is damaged .*chunk {k} will be written"
        chunk.write_bytes(chunk.read_bytes()[:40])
    elif damage == "chunk record cut":
        target = store / "progress" / "chunks" / f"{k}.json"
        expect = rf"{re.escape(str(target))} is damaged; chunk {k} will be written again"
        target.write_text(target.read_text()[:5])
    else:
        target = tile_records(tmp_path, STEM)[len(tile_records(tmp_path, STEM)) // 2]
        expect = (
            rf"{re.escape(str(target))} is damaged .*tile {target.stem} will be segmented again"
        )
        if damage == "tile record gone":  # an empty file, as a full disk can leave
            target.write_bytes(b"")
        else:
            target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = _segment(slide, tmp_path)
    _warned(caught, expect)
    assert runs[-1].finished
    _assert_identical(_snapshot(tmp_path), reference[0])


@pytest.mark.parametrize(
    "damage",
    [
        "csv deleted",
        "geojson truncated",
        "parquet changed",
        "chunk deleted",
        "coarse chunk deleted",
        "tile record cut",
    ],
)
def test_a_finished_store_checks_itself_and_rebuilds_what_is_damaged(
    reference, slide, tmp_path, damage
):
    """Was: "done", exit 0, with the CSV or GeoJSON missing or short, or a chunk of labels gone."""
    out = _finished_copy(reference, tmp_path)
    store = out / f"{STEM}.nuclei.zarr"
    if damage == "csv deleted":
        target = out / f"{STEM}.nuclei.csv"
        target.unlink()
        expect = rf"{re.escape(str(target))} is missing; the exports will be written again"
    elif damage == "geojson truncated":
        target = out / f"{STEM}.nuclei.geojson"
        target.write_bytes(target.read_bytes()[:-1000])
        expect = rf"{re.escape(str(target))} is incomplete or changed"
    elif damage == "parquet changed":
        target = out / f"{STEM}.nuclei.parquet"
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
        expect = rf"{re.escape(str(target))} has changed since it was written"
    elif damage == "chunk deleted":
        k = next(
            rec.stem
            for rec in sorted((store / "records" / "chunks").glob("*.json"))
            if json.loads(rec.read_text())["nonzero"]
        )
        target = store / "0" / Path(*k.split("_"))
        target.unlink()
        expect = rf"{re.escape(str(target))} is missing; chunk {k} will be written again"
    elif damage == "coarse chunk deleted":
        target = store / "1" / "0" / "0"
        target.unlink()
        expect = rf"{re.escape(str(target))} is missing; the coarse levels will be built again"
    else:
        target = sorted((store / "records" / "tiles").glob("*.npz"))[7]
        target.write_bytes(target.read_bytes()[:100])
        expect = rf"{re.escape(str(target))} is damaged .*will be segmented again"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = _segment(slide, out)
    _warned(caught, expect)
    assert runs[-1].finished and runs[-1].nuclei == reference[0]["meta"]["summary"]["nuclei"]
    _assert_identical(_snapshot(out), reference[0])
    # Whole again: the next run is a quiet "done".
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (again,) = _segment(slide, out)
    assert again.finished and not [w for w in caught if "will be" in str(w.message)]


@pytest.mark.parametrize("damage", [".zgroup garbled", "0/.zarray garbled", "1/.zarray gone"])
def test_damaged_array_metadata_is_written_again_and_the_labels_kept(
    reference, slide, tmp_path, damage
):
    """Was: "done", exit 0, and a store that nothing could read (``info``: "a multiscale level
    is missing"). The metadata is written again from the run's plan; no chunk is touched."""
    out = _finished_copy(reference, tmp_path)
    store = out / f"{STEM}.nuclei.zarr"
    name, how = damage.split(" ")
    target = store / name
    if how == "gone":
        target.unlink()
    else:
        target.write_text("{not json")
    chunks = {p: p.read_bytes() for p in (store / "0").rglob("*") if p.is_file()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = _segment(slide, out)
    what = "missing" if how == "gone" else "damaged"
    _warned(caught, rf"{re.escape(str(target))} is {what}; written again")
    assert runs[-1].finished and runs[-1].resumed == runs[-1].total  # nothing segmented again
    assert all(p.read_bytes() == data for p, data in chunks.items() if p.name != ".zarray")
    _assert_identical(_snapshot(out), reference[0])


def test_metadata_written_again_keeps_the_chunk_encoding_the_store_uses(tmp_path):
    """A store written by another zarr version may encode chunks with another compressor than
    today's default: a level's metadata written again names the store's own, or every chunk
    of that level would be misread."""
    import numcodecs
    import zarr

    from napari_nucleiseg.wholeslide.store import create_levels, repair_array_metadata

    shapes, tile = [(64, 96), (16, 24)], 32
    store = tmp_path / "old.zarr"
    root = zarr.open_group(str(store), mode="w", zarr_format=2)
    data = []
    for k, shape in enumerate(shapes):
        arr = root.create_array(
            str(k),
            shape=shape,
            chunks=(tile, tile),
            dtype="uint32",
            fill_value=0,
            compressors=numcodecs.Zstd(level=3),  # not what create_levels picks today
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
        arr[...] = np.arange(shape[0] * shape[1], dtype="uint32").reshape(shape) + 7 * k
        data.append(arr[...])
    (store / "1" / ".zarray").write_text("{not json")
    lines = repair_array_metadata(store, lambda r: create_levels(r, shapes, tile, "uint32"))
    assert lines == [
        f"{store / '1' / '.zarray'} is damaged; written again (the data it describes is kept)"
    ]
    again = zarr.open_group(str(store), mode="r")
    for k in range(2):
        np.testing.assert_array_equal(again[str(k)][...], data[k])
    assert repair_array_metadata(store, lambda r: create_levels(r, shapes, tile, "uint32")) == []
    # Every level's metadata gone: the encoding is found by decoding a chunk of each.
    for k in range(2):
        (store / str(k) / ".zarray").unlink()
    lines = repair_array_metadata(store, lambda r: create_levels(r, shapes, tile, "uint32"))
    assert len(lines) == 2 and all("is missing; written again" in line for line in lines)
    again = zarr.open_group(str(store), mode="r")
    for k in range(2):
        np.testing.assert_array_equal(again[str(k)][...], data[k])


def test_a_finished_store_keeps_the_records_its_exports_are_rebuilt_from(reference):
    store = reference[1] / f"{STEM}.nuclei.zarr"
    assert not (store / "progress").exists()
    assert (
        len(list((store / "records" / "tiles").glob("*.npz")))
        == reference[0]["meta"]["summary"]["tissue_tiles"]
    )
    outputs = reference[0]["meta"]["outputs"]
    for kind in ("csv", "parquet", "geojson"):
        f = reference[1] / outputs[kind]["file"]
        assert f.stat().st_size == outputs[kind]["bytes"] and len(outputs[kind]["sha256"]) == 64


def test_a_store_killed_while_tidying_up_or_reopening_is_finished_quietly(
    reference, slide, tmp_path
):
    """``finished`` in .zattrs with the records still in progress/: a kill between the two
    steps of finishing, or of reopening a damaged store."""
    out = _finished_copy(reference, tmp_path)
    store = out / f"{STEM}.nuclei.zarr"
    os.rename(store / "records", store / "progress")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (p,) = _segment(slide, out)
    assert p.finished and not caught
    assert (store / "records").is_dir() and not (store / "progress").exists()


def test_a_record_damaged_during_a_run_is_named_not_a_zip_error(reference, tmp_path):
    """Was: BadZipFile, with only the slide named."""
    from napari_nucleiseg.wholeslide import DamagedRecordError
    from napari_nucleiseg.wholeslide.tasks import load_tile

    store = _finished_copy(reference, tmp_path) / f"{STEM}.nuclei.zarr"
    os.rename(store / "records", store / "progress")
    rec = sorted((store / "progress" / "tiles").glob("*.npz"))[2]
    rec.write_bytes(rec.read_bytes()[:50])
    r, c = (int(v) for v in rec.stem.split("_"))
    with pytest.raises(DamagedRecordError, match=rf"{re.escape(str(rec))} is missing or damaged"):
        load_tile(store, r, c)


# --------------------------------------------------------------------------- temporaries
def test_stale_temporaries_of_this_slide_are_cleared_and_others_left(reference, slide, tmp_path):
    """Was: ``*.tmp`` files of a killed run stayed in --out for good."""
    p = _partial(slide, tmp_path, chunks=4)
    hexname = "0123456789abcdef0123456789abcdef"
    ours = [
        tmp_path / f".{STEM}.nuclei.csv.{hexname}.tmp",
        tmp_path / f".{STEM}.nuclei.geojson.{hexname}.tmp",
        p.store / f"..zattrs.{hexname}.tmp",
        p.store / "progress" / "tiles" / f".0_0.npz.{hexname}.tmp",
    ]
    for f in ours:
        f.write_text("half a file")
    half_store = tmp_path / f".{STEM}.nuclei.zarr.{hexname}.tmp"
    (half_store / "0").mkdir(parents=True)
    other = tmp_path / f".another.nuclei.csv.{hexname}.tmp"  # another slide's job may be running
    other.write_text("not ours")
    runs = _segment(slide, tmp_path)
    assert runs[-1].finished
    assert not any(f.exists() for f in ours) and not half_store.exists() and other.exists()
    _assert_identical(_snapshot(tmp_path), reference[0])


def test_writers_leave_no_temporary_when_the_disk_fills(tmp_path, monkeypatch):
    """Was: a Parquet writer failing to start left the CSV's temporary behind, and a failure
    while closing (the last rows into a full disk) left both."""
    import pyarrow.parquet as pq

    from napari_nucleiseg.wholeslide.export import GeoJSONWriter, TableWriter
    from napari_nucleiseg.wholeslide.store import atomic_write

    full = OSError(errno.ENOSPC, "No space left on device")

    def no_space(*args, **kwargs):
        raise full

    def interrupted(f):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(pq, "ParquetWriter", no_space)
        with pytest.raises(OSError, match="No space"):
            TableWriter(tmp_path / "a.csv", tmp_path / "a.parquet")
    with monkeypatch.context() as m:
        w = GeoJSONWriter(tmp_path / "a.geojson")
        m.setattr(os, "fsync", no_space)
        with pytest.raises(OSError, match="No space"):
            with w:
                pass
    with pytest.raises(OSError, match="No space"):
        atomic_write(tmp_path / "b.json", lambda f: no_space())
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "b.json", interrupted)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- a second job
def test_a_second_job_on_the_same_store_is_refused_at_once_without_touching_it(
    reference, slide, tmp_path
):
    """Was: no lock; the second job failed later on a progress file the first had moved."""
    out = tmp_path / "out"
    first = _start(_cli_cmd(slide, out))
    try:
        wait_for_records(out, STEM, 3, first)
        first.send_signal(signal.SIGSTOP)  # holds the store, frozen: nothing changes under us
        store = out / f"{STEM}.nuclei.zarr"
        before = {p: p.stat().st_mtime_ns for p in store.rglob("*")}
        t0 = time.monotonic()
        second = subprocess.run(_cli_cmd(slide, out), capture_output=True, text=True, timeout=120)
        took = time.monotonic() - t0
        after = {p: p.stat().st_mtime_ns for p in store.rglob("*")}
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr
    errors = [line for line in second.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, second.stderr
    assert re.search(
        rf"{re.escape(str(store))}: is being written by another job \(pid {first.pid} on .*, "
        r"since .*\); wait for it to finish",
        errors[0],
    ), errors[0]
    assert before == after and took < 60
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    _assert_identical(_snapshot(out), reference[0])
    assert not (out / f".{STEM}.nuclei.zarr.lock").exists()


@pytest.mark.parametrize("after", [1, 9, 18])
def test_a_job_killed_at_any_point_leaves_a_lock_the_next_run_takes_over(
    reference, slide, tmp_path, after
):
    out = tmp_path / "out"
    proc = _start(_cli_cmd(slide, out))
    try:
        wait_for_records(out, STEM, after, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    lock = out / f".{STEM}.nuclei.zarr.lock"
    assert json.loads(lock.read_text())["pid"] == proc.pid
    assert len(tile_records(out, STEM)) < reference[0]["meta"]["summary"]["tissue_tiles"]
    again = subprocess.run(_cli_cmd(slide, out), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"the job that was writing it (pid {proc.pid}" in again.stderr
    assert "ended without finishing" in again.stderr
    _assert_identical(_snapshot(out), reference[0])
    assert not lock.exists() and not list(out.glob(".*.tmp"))


# --------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_exits_130_says_what_is_kept_and_the_same_command_resumes(
    reference, slide, tmp_path
):
    """Was: exit 0 after Ctrl-C, so ``nucleiseg segment ... && next_step`` carried on."""
    out = tmp_path / "out"
    copy = tmp_path / "second" / "other.tif"  # a cohort: the second slide must not start
    copy.parent.mkdir()
    shutil.copy(slide, copy)
    cmd = _cli_cmd(slide, out)
    cmd.insert(5, str(copy))
    proc = _start(cmd)
    try:
        wait_for_records(out, STEM, 6, proc)
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    kept = len(tile_records(out, STEM))
    total = reference[0]["meta"]["summary"]["tissue_tiles"]
    assert 6 <= kept < total
    lines = [line for line in stderr.splitlines() if line.startswith("interrupted")]
    assert lines == [
        f"interrupted: {kept} of {total} tiles finished are kept; run the same command to resume"
    ], stderr
    assert "Traceback" not in stderr and not (out / "other.nuclei.zarr").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    snap = _snapshot(out)
    assert snap["meta"]["summary"]["resumed_tiles"] == kept
    _assert_identical(snap, reference[0])


# --------------------------------------------------------------------------- runtime, flips
@pytest.fixture(scope="module")
def small_slide(tmp_path_factory):
    from napari_nucleiseg.demo.render import render_he
    from napari_nucleiseg.demo.slides import write_pyramidal_tiff

    rgb, _ = render_he((640, 640), MPP, seed=4)
    path = tmp_path_factory.mktemp("small") / "small.tif"
    write_pyramidal_tiff(path, rgb, MPP)
    return path


@pytest.mark.parametrize(
    "setting, changed, message",
    [
        (
            ("NUCLEISEG_RUNTIME", "onnx-fp32"),
            ("NUCLEISEG_RUNTIME", "torch"),
            "it was computed with the onnx-fp32 runtime, this run would use torch "
            r"\(set NUCLEISEG_RUNTIME=onnx-fp32 to resume it\); refusing to mix",
        ),
        (
            ("NUCLEISEG_RUNTIME", "onnx-fp32"),
            ("NUCLEISEG_RUNTIME", "onnx-int8"),
            "computed with the onnx-fp32 runtime, this run would use onnx-int8",
        ),
        (("NUCLEISEG_TTA", "off"), ("NUCLEISEG_TTA", "4"), "made with NUCLEISEG_TTA=off"),
    ],
)
def test_a_resume_under_another_runtime_or_flip_setting_is_refused(
    small_slide, tmp_path, monkeypatch, setting, changed, message
):
    """Was (runtime): killed at 8 of 21 tiles and resumed with NUCLEISEG_RUNTIME=torch, the
    store mixed two runtimes (26 nuclei fewer, 232,689 level-0 pixels different)."""
    from napari_nucleiseg.wholeslide import StoreMismatchError, segment_slide

    monkeypatch.setenv(*setting)
    gen = segment_slide(small_slide, tmp_path, tile_um=160, workers=1)
    for p in gen:
        if p.segmented >= 1:
            break
    gen.close()
    assert not p.finished
    identity = json.loads((p.store / ".zattrs").read_text())["nucleiseg"]["identity"]["method"]
    if setting[0] == "NUCLEISEG_RUNTIME":
        assert identity["runtime"] == setting[1]
    listing = sorted(p.store.rglob("*"))
    monkeypatch.setenv(*changed)
    with pytest.raises(StoreMismatchError, match=rf"{re.escape(str(p.store))}: .*{message}"):
        list(segment_slide(small_slide, tmp_path, tile_um=160, workers=1))
    assert sorted(p.store.rglob("*")) == listing  # refused before touching it


@pytest.fixture
def my_models(tmp_path, monkeypatch):
    """A copy of nuclei-unet-v3 as the user's ``my-unet``, its int8 ONNX file missing."""
    from napari_nucleiseg.models import MODELS_DIR

    folder = tmp_path / "models"
    folder.mkdir()
    card = json.loads((MODELS_DIR / "nuclei-unet-v3.json").read_text())
    card["name"] = "my-unet"
    for k in ("weights", "onnx"):
        shutil.copy(MODELS_DIR / card[k], folder / card[k])
    (folder / "my-unet.json").write_text(json.dumps(card))
    monkeypatch.setenv("NUCLEISEG_MODELS_DIR", str(folder))
    return folder / card["onnx_int8"]


def test_a_runtime_fallback_is_a_warning_and_is_recorded(my_models, monkeypatch):
    """Was: with the int8 file missing or onnxruntime absent, PyTorch ran silently and no
    output said so."""
    from napari_nucleiseg.methods import get_method
    from napari_nucleiseg.segmentation.api import describe_method

    monkeypatch.setenv("NUCLEISEG_RUNTIME", "onnx-int8")
    with pytest.warns(
        RuntimeWarning,
        match=rf"model 'my-unet': {re.escape(str(my_models))} is missing; computing with "
        "onnx-fp32 instead of onnx-int8",
    ):
        info = describe_method("my-unet")
    assert info["runtime"] == "onnx-fp32"
    # What describe() records is what computes: the float32 session, not int8, not PyTorch.
    assert get_method("my-unet").predictor.runtime == "onnxruntime"
    monkeypatch.setenv("NUCLEISEG_RUNTIME", "onnx-fp32")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.warns(
        RuntimeWarning,
        match="model 'my-unet': onnxruntime is not installed .*computing with torch instead of "
        "onnx-fp32",
    ):
        assert describe_method("my-unet")["runtime"] == "torch"


def test_a_cluster_worker_that_would_compute_otherwise_refuses(small_slide):
    from napari_nucleiseg.io import SlideError, open_slide
    from napari_nucleiseg.wholeslide.job import plan
    from napari_nucleiseg.wholeslide.tasks import Job, segment_tile

    with open_slide(small_slide) as s:
        kwargs, tissue, identity = plan(s, method="classical", tile_um=TILE_UM)
        other = {**identity["method"], "runtime": "torch"}
        job = Job(slide=s, store="unused", method_identity=other, **kwargs)
        with pytest.raises(SlideError, match="would compute tile 0_0 differently"):
            segment_tile(job, 0, 0)


# --------------------------------------------------------------------------- no dashboard
def test_a_local_cluster_serves_no_http(tmp_path):
    """Was: --scheduler local served HTTP on 127.0.0.1:8787 although no dashboard was asked for."""
    import socket

    from napari_nucleiseg.wholeslide.job import connect

    client, cluster = connect("local", 1)
    try:
        assert cluster.dashboard_link == ""
        scheduler = cluster.scheduler
        # tornado keeps a stopped server's sockets in its table, closed.
        listening = [s for s in scheduler.http_server._sockets.values() if s.fileno() != -1]
        assert not listening and "dashboard" not in scheduler.services
        port = scheduler.http_server.port
        with socket.socket() as s:
            assert port != 8787 and s.connect_ex(("127.0.0.1", port)) != 0
        serving = client.run(
            lambda dask_worker: any(
                s.fileno() != -1 for s in dask_worker.http_server._sockets.values()
            )
        )
        assert serving and not any(serving.values())
        assert client.submit(sum, [1, 2]).result() == 3  # and the cluster works
    finally:
        client.close()
        cluster.close()


def test_the_cli_says_a_repair_in_one_warning_line(reference, slide, tmp_path):
    """What a store repair looks like on the command line: ``warning: <file> …`` and nothing
    else (Python's default form adds the source line that raised it)."""
    out = _finished_copy(reference, tmp_path)
    (out / f"{STEM}.nuclei.csv").unlink()
    run = subprocess.run(_cli_cmd(slide, out), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    warned = [ln for ln in run.stderr.splitlines() if "is missing" in ln]
    assert warned and all(ln.startswith("warning: ") for ln in warned), run.stderr
    assert f"{STEM}.nuclei.csv" in warned[0]
    assert "Warning:" not in run.stderr and ".py:" not in run.stderr, run.stderr


def test_whole_slide_stores_are_named_as_plain_outputs():
    """The name less its last suffix, as ``segment`` names its outputs: ``case.1.svs`` and
    ``case.2.svs`` get two stores (the first dot used to cut both to ``case``)."""
    from napari_nucleiseg.io.output import output_stem
    from napari_nucleiseg.wholeslide.store import store_path

    assert store_path("o", "a/case.1.svs").name == "case.1.nuclei.zarr"
    assert store_path("o", "case.2.svs") != store_path("o", "case.1.svs")
    assert store_path("o", "x.ome.tiff").name == f"{output_stem('x.ome.tiff')}.nuclei.zarr"


def test_a_resume_with_another_detection_threshold_is_refused(small_slide, tmp_path):
    """A store made with the user's detection threshold is finished only with that threshold:
    the message says which threshold made it, not 'made with nuclei-unet-v5, this run uses
    nuclei-unet-v5'."""
    from napari_nucleiseg.methods import get_method, with_detection_threshold
    from napari_nucleiseg.wholeslide import StoreMismatchError, segment_slide

    low = with_detection_threshold("nuclei-unet-v5", 0.3)
    gen = segment_slide(small_slide, tmp_path, method=low, tile_um=160, workers=1)
    for p in gen:
        if p.segmented >= 1:
            break
    gen.close()
    assert not p.finished
    listing = sorted(p.store.rglob("*"))
    own = get_method("nuclei-unet-v5").default_detection_threshold
    with pytest.raises(
        StoreMismatchError,
        match=rf"{re.escape(str(p.store))}: it was made with detection threshold 0.3, this run "
        rf"uses the model's own threshold \({own:g}\) \(set the same threshold to resume it\); "
        "refusing to mix",
    ):
        list(segment_slide(small_slide, tmp_path, method="nuclei-unet-v5", tile_um=160, workers=1))
    assert sorted(p.store.rglob("*")) == listing
    finished = list(segment_slide(small_slide, tmp_path, method=low, tile_um=160, workers=1))[-1]
    assert finished.finished and finished.resumed >= 1


@pytest.mark.parametrize("address", ["bogus", "http://x"])
def test_a_scheduler_that_is_not_an_address_is_named_in_one_line(address):
    """Was: ValueError tracebacks from dask ("missing port number", "unknown address scheme")."""
    from napari_nucleiseg.wholeslide.job import connect

    with pytest.raises(ConnectionError, match=r"is not a dask scheduler address") as err:
        connect(address)
    assert address in str(err.value) and "\n" not in str(err.value)
