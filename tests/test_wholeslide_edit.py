"""Corrections written back into a whole-slide result store (wholeslide.edit), on a real store of
the demo slide: only the touched chunks, table rows and outlines change, the store still
verifies as finished (a rerun of the job says done and keeps the correction), nuclei cut by the
region's edge are refused, and a write killed with SIGKILL leaves the old or the new region."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

TILE_UM = 128  # 256-px chunks on the 0.5 µm/px demo slide: 12 x 16 chunks, three levels
STEM = "demo_he"


def _segment(slide, out):
    from napari_nucleiseg.wholeslide import segment_slide

    return list(segment_slide(slide, out, method="classical", tile_um=TILE_UM))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished store of the demo slide: ``(slide path, output folder)``; copied, never
    changed."""
    from napari_nucleiseg.demo import demo_slide

    slide = demo_slide().slide
    out = tmp_path_factory.mktemp("ws_edit_reference")
    assert _segment(slide, out)[-1].finished
    return slide, out


@pytest.fixture
def store(finished, tmp_path):
    slide, ref = finished
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    return slide, out / f"{STEM}.nuclei.zarr"


def _files(store: Path) -> dict:
    """Every label chunk file of every level: ``{"level/row/col": bytes}``."""
    return {
        str(p.relative_to(store)): p.read_bytes()
        for p in store.glob("[0-9]*/*/*")
        if p.is_file() and not p.name.startswith(".")
    }


def _csv_rows(out: Path) -> dict:
    lines = (out / f"{STEM}.nuclei.csv").read_text().splitlines()[1:]
    return {int(line.split(",")[0]): line for line in lines}


def _problems(slide, store: Path) -> list[str]:
    from napari_nucleiseg.io import open_slide
    from napari_nucleiseg.wholeslide import verify
    from napari_nucleiseg.wholeslide.job import plan
    from napari_nucleiseg.wholeslide.store import read_attrs

    with open_slide(slide) as s:
        kwargs, tissue, _ = plan(s, method="classical", tile_um=TILE_UM)
    rows, cols = kwargs["rows"], kwargs["cols"]
    chunks = {
        (r + dr, c + dc)
        for r, c in tissue
        for dr in (-1, 0, 1)
        for dc in (-1, 0, 1)
        if 0 <= r + dr < rows and 0 <= c + dc < cols
    }
    meta = read_attrs(store)["nucleiseg"]
    return verify.check_finished(store, store.parent, meta, tissue, chunks)


def _touching_pair(labels: np.ndarray, inner: np.ndarray) -> tuple[int, int]:
    """Two different nuclei with 4-neighbouring pixels, both in ``inner`` ids."""
    ok = set(inner.tolist())
    for a, b in ((labels[1:], labels[:-1]), (labels[:, 1:], labels[:, :-1])):
        diff = (a != b) & (a > 0) & (b > 0)
        for x, y in zip(a[diff], b[diff]):
            if int(x) in ok and int(y) in ok:
                return int(x), int(y)
    raise AssertionError("no two touching nuclei in the region")


def test_delete_merge_add_change_only_their_chunks_rows_and_outlines(store):
    from napari_nucleiseg.correction import delete, merge
    from napari_nucleiseg.wholeslide import StoreRepairWarning, open_labels, read_table
    from napari_nucleiseg.wholeslide.edit import (
        edit_log,
        read_region_labels,
        whole_nuclei_box,
        write_region_labels,
    )

    slide, path = store
    out = path.parent
    before_files, before_rows = _files(path), _csv_rows(out)
    # A view across the corner of four chunks (256 px), grown to whole nuclei.
    x0, y0, x1, y1 = whole_nuclei_box(path, 1400, 1400, 1680, 1640)
    assert x0 <= 1400 and y0 <= 1400 and x1 >= 1680 and y1 >= 1640
    old = read_region_labels(path, x0, y0, x1, y1)
    inner = np.unique(old[1:-1, 1:-1])
    edge = set(np.unique(np.concatenate([old[0], old[-1], old[:, 0], old[:, -1]])).tolist())
    inner = np.array([i for i in inner if i and i not in edge])
    a, b = _touching_pair(old, inner)
    gone = next(int(i) for i in inner if i not in (a, b))
    new, _ = delete(old, gone)
    new, _ = merge(new, a, b)
    # A new nucleus: a disc on background, as painted with a fresh label.
    yy, xx = np.mgrid[: new.shape[0], : new.shape[1]]
    free = np.argwhere((new == 0)[8:-8, 8:-8])
    cy, cx = free[len(free) // 2] + 8
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= 16) & (new == 0)
    new[disc] = 7  # any id the region does not hold is a new nucleus

    done = write_region_labels(path, x0, y0, new, slide=slide, user="tester")

    assert done["deleted"] == sorted([gone, b]) and done["changed"] == [a]
    (fresh,) = done["added"]
    assert fresh > int(max(before_rows)) and fresh >> 16 == 12 * 16  # past the 12 x 16 grid
    # Level 0: the region holds the correction (the painted id replaced by the fresh one).
    levels, _, meta = open_labels(path)
    lv = [np.asarray(x) for x in levels]
    expect = new.astype(old.dtype)
    expect[disc] = fresh
    assert np.array_equal(lv[0][y0:y1, x0:x1], expect)
    # Coarse levels are level 0 sampled every 4**k pixels, as the job builds them.
    for k in (1, 2):
        assert np.array_equal(lv[k], lv[0][:: 4**k, :: 4**k])
    # Only chunks under the region changed, at every level.
    after_files = _files(path)
    changed = {k for k in before_files.keys() | after_files.keys() if
               before_files.get(k) != after_files.get(k)}  # fmt: skip
    assert any(k.startswith("0/") for k in changed) and any(k.startswith("1/") for k in changed)
    for k in changed:
        level, r, c = map(int, k.split("/"))
        f, t = 4**level, 256
        assert r * t * f < y1 and (r + 1) * t * f > y0 and c * t * f < x1 and (c + 1) * t * f > x0
    # The table: the deleted and merged-away rows gone, the merged one measured again (bigger),
    # the new one added, every other row as it was, byte for byte.
    rows = _csv_rows(out)
    assert gone not in rows and b not in rows and fresh in rows
    area = lambda line: float(line.split(",")[3])  # noqa: E731
    assert area(rows[a]) > area(before_rows[a])
    assert area(rows[fresh]) == pytest.approx(disc.sum() * 0.25)
    assert {k: v for k, v in rows.items() if k not in (a, fresh)} == {
        k: v for k, v in before_rows.items() if k not in (a, b, gone)
    }
    assert list(rows) == sorted(rows)
    assert meta["summary"]["nuclei"] == len(rows)
    parquet = read_table(out / f"{STEM}.nuclei.parquet")
    assert [int(v) for v in parquet["label"]] == list(rows)
    geo = json.loads((out / f"{STEM}.nuclei.geojson").read_text())
    names = [int(f["properties"]["name"]) for f in geo["features"]]
    assert names == list(rows)
    ring = np.array(next(f for f in geo["features"] if f["properties"]["name"] == str(fresh))[
        "geometry"]["coordinates"][0])  # fmt: skip
    assert x0 + cx - 5 < ring[:, 0].mean() < x0 + cx + 6
    # The log says who changed what where; the labels before and after are kept.
    (entry,) = edit_log(path)
    assert entry["user"] == "tester" and entry["region_px"] == [x0, y0, x1, y1]
    with np.load(path / entry["labels"]) as z:
        assert np.array_equal(z["before"], old) and np.array_equal(z["after"], expect)
    assert not (path / "edits" / "pending").exists()
    # The store verifies as finished; the same job again says done and keeps the correction.
    assert _problems(slide, path) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreRepairWarning)
        runs = _segment(slide, out)
    assert len(runs) == 1 and runs[0].stage == "done" and runs[0].nuclei == len(rows)
    assert np.array_equal(np.asarray(open_labels(path)[0][0])[y0:y1, x0:x1], expect)
    assert _csv_rows(out) == rows


def test_a_nucleus_cut_by_the_region_edge_is_refused_and_nothing_changes(store):
    from napari_nucleiseg.wholeslide.edit import (
        RegionEditError,
        read_region_labels,
        write_region_labels,
    )

    slide, path = store
    before = _files(path)
    old = read_region_labels(path, 1400, 1400, 1680, 1640)
    cut = int(next(v for v in old[0] if v))
    new = old.copy()
    new[new == cut] = 0
    with pytest.raises(RegionEditError, match=f"nuclei {cut}.*edge of the region"):
        write_region_labels(path, 1400, 1400, new)
    assert _files(path) == before
    # Unchanged labels are no correction at all.
    assert write_region_labels(path, 1400, 1400, old)["edit"] is None
    assert _files(path) == before and not (path / "edits" / "log.json").exists()


def test_fresh_ids_never_repeat_across_corrections(store):
    from napari_nucleiseg.wholeslide.edit import edit_log, read_region_labels, write_region_labels

    slide, path = store
    added = []
    for x in (300, 2300):
        old = read_region_labels(path, x, 2700, x + 40, 2740)
        new = old.copy()
        for k, value in enumerate((5, 6)):  # two painted nuclei, on background only
            square = np.zeros(new.shape, bool)
            square[4 + 12 * k : 10 + 12 * k, 4:10] = True
            new[square & (old == 0)] = value
        added += write_region_labels(path, x, 2700, new)["added"]
    assert len(added) == len(set(added)) >= 4
    assert [len(e["added"]) for e in edit_log(path)] == [len(added) // 2] * 2
    assert _problems(slide, path) == []


_KILL = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from napari_nucleiseg.wholeslide import edit, store as st
    from napari_nucleiseg.correction import delete

    path, when = sys.argv[1], sys.argv[2]
    old = edit.read_region_labels(path, *edit.whole_nuclei_box(path, 1400, 1400, 1680, 1640))
    box = edit.whole_nuclei_box(path, 1400, 1400, 1680, 1640)
    ids = [int(i) for i in np.unique(old[40:-40, 40:-40]) if i]
    new = old
    for i in ids[:3]:
        new, _ = delete(new, i)
    if when == "before commit":
        real = st.atomic_json
        def atomic_json(p, data):
            if str(p).endswith("COMMIT.json"):
                os.kill(os.getpid(), signal.SIGKILL)
            real(p, data)
        st.atomic_json = atomic_json
    else:
        real, n = os.replace, [0]
        def replace(a, b):
            if "pending" in str(a) and "pending" not in str(b):  # moving into place
                n[0] += 1
                if n[0] > 3:
                    os.kill(os.getpid(), signal.SIGKILL)
            real(a, b)
        edit.os.replace = replace
    edit.write_region_labels(path, box[0], box[1], new)
    """
)


@pytest.mark.parametrize("when", ["before commit", "mid-rename"])
def test_a_write_killed_leaves_the_old_or_the_new_region_and_the_store_opens(store, when):
    from napari_nucleiseg.wholeslide import open_labels
    from napari_nucleiseg.wholeslide.edit import read_region_labels, whole_nuclei_box

    slide, path = store
    before_files, before_rows = _files(path), _csv_rows(path.parent)
    box = whole_nuclei_box(path, 1400, 1400, 1680, 1640)
    old = read_region_labels(path, *box)
    proc = subprocess.run([sys.executable, "-c", _KILL, str(path), when], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    assert (path / "edits" / "pending").exists()
    if when == "mid-rename":  # killed with some files of the correction in place, not all
        assert _files(path) != before_files and _csv_rows(path.parent) == before_rows
    now = read_region_labels(path, *box)  # the next read finishes or drops the correction
    assert not (path / "edits" / "pending").exists()
    if when == "before commit":
        assert np.array_equal(now, old)
        assert _files(path) == before_files and _csv_rows(path.parent) == before_rows
    else:
        assert len(np.unique(now)) == len(np.unique(old)) - 3
        assert len(_csv_rows(path.parent)) == len(before_rows) - 3
    assert open_labels(path)[2]["finished"]
    assert _problems(slide, path) == []


def test_a_save_killed_after_its_commit_is_finished_by_the_next_job_run(store):
    """The job itself completes a committed save (edit.recover) instead of finding its chunks
    changed and rebuilding them uncorrected."""
    from napari_nucleiseg.wholeslide import StoreRepairWarning
    from napari_nucleiseg.wholeslide.edit import read_region_labels, whole_nuclei_box

    slide, path = store
    out = path.parent
    before_rows = _csv_rows(out)
    box = whole_nuclei_box(path, 1400, 1400, 1680, 1640)
    old = read_region_labels(path, *box)
    proc = subprocess.run([sys.executable, "-c", _KILL, str(path), "mid-rename"])
    assert proc.returncode == -9
    assert (path / "edits" / "pending" / "COMMIT.json").exists()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StoreRepairWarning)
        runs = _segment(slide, out)
    # The killed save's lock is taken over; nothing is rebuilt: the save is finished.
    assert [w for w in caught if "taking over its lock" not in str(w.message)] == []
    assert len(runs) == 1 and runs[0].stage == "done"
    assert not (path / "edits" / "pending").exists()
    now = read_region_labels(path, *box)
    assert len(np.unique(now)) == len(np.unique(old)) - 3
    rows = _csv_rows(out)
    assert len(rows) == len(before_rows) - 3 and runs[0].nuclei == len(rows)
    assert _problems(slide, path) == []


def _correct(slide, path):
    """Delete one nucleus and paint a new one in a region; returns what the result must hold."""
    from napari_nucleiseg.correction import delete
    from napari_nucleiseg.wholeslide.edit import (
        read_region_labels,
        whole_nuclei_box,
        write_region_labels,
    )

    x0, y0, x1, y1 = whole_nuclei_box(path, 1400, 1400, 1680, 1640)
    old = read_region_labels(path, x0, y0, x1, y1)
    edge = set(np.unique(np.concatenate([old[0], old[-1], old[:, 0], old[:, -1]])).tolist())
    gone = next(int(i) for i in np.unique(old[40:-40, 40:-40]) if i and i not in edge)
    new, _ = delete(old, gone)
    free = np.argwhere((new == 0)[8:-8, 8:-8])
    cy, cx = free[len(free) // 2] + 8
    yy, xx = np.mgrid[: new.shape[0], : new.shape[1]]
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= 16) & (new == 0)
    new[disc] = 7
    done = write_region_labels(path, x0, y0, new, slide=slide)
    (fresh,) = done["added"]
    expect = new.astype(old.dtype)
    expect[disc] = fresh
    ys, xs = np.nonzero(old == gone)
    chunk = ((y0 + int(ys[0])) // 256, (x0 + int(xs[0])) // 256)  # a chunk the deleted one is in
    return (x0, y0, x1, y1), expect, gone, fresh, chunk


@pytest.mark.parametrize("damage", ["a level-0 chunk", "the CSV"])
def test_a_repair_of_a_corrected_store_writes_the_corrections_again(store, damage):
    from napari_nucleiseg.wholeslide import StoreRepairWarning, open_labels
    from napari_nucleiseg.wholeslide import store as st
    from napari_nucleiseg.wholeslide.edit import edit_log

    slide, path = store
    out = path.parent
    (x0, y0, x1, y1), expect, gone, fresh, chunk = _correct(slide, path)
    corrected_rows = _csv_rows(out)
    assert gone not in corrected_rows and fresh in corrected_rows
    log = (path / "edits" / "log.json").read_bytes()
    if damage == "the CSV":
        (out / f"{STEM}.nuclei.csv").unlink()
    else:
        st.chunk_file(path, 0, *chunk).unlink()
    with pytest.warns(StoreRepairWarning) as caught:
        runs = _segment(slide, out)
    assert runs[-1].finished and runs[-1].stage == "done" and len(runs) > 1
    assert all("could not be written again" not in str(w.message) for w in caught)
    # Healed, and corrected: the region's labels, the rows, the coarse levels, the ids.
    lv = [np.asarray(x) for x in open_labels(path)[0]]
    assert np.array_equal(lv[0][y0:y1, x0:x1], expect)
    for k in (1, 2):
        assert np.array_equal(lv[k], lv[0][:: 4**k, :: 4**k])
    rows = _csv_rows(out)
    assert gone not in rows and fresh in rows
    assert rows.keys() == corrected_rows.keys() and runs[-1].nuclei == len(rows)
    assert (path / "edits" / "log.json").read_bytes() == log and len(edit_log(path)) == 1
    assert not (path / "edits" / "replay.json").exists()
    assert _problems(slide, path) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreRepairWarning)
        again = _segment(slide, out)
    assert len(again) == 1 and again[0].stage == "done" and _csv_rows(out) == rows


def test_a_correction_that_cannot_be_written_again_is_one_warning_and_kept(store):
    from napari_nucleiseg.wholeslide import StoreRepairWarning

    slide, path = store
    out = path.parent
    _correct(slide, path)
    npz = path / "edits" / "0001.npz"
    npz.write_bytes(npz.read_bytes()[:100])  # the labels after are damaged
    (out / f"{STEM}.nuclei.csv").unlink()
    with pytest.warns(StoreRepairWarning) as caught:
        runs = _segment(slide, out)
    assert runs[-1].finished
    (line,) = [str(w.message) for w in caught if "could not be written again" in str(w.message)]
    assert str(path) in line and str(npz) in line
    assert npz.exists() and (path / "edits" / "log.json").exists()
    # Not silently lost: the next run tries again and says so again.
    assert (path / "edits" / "replay.json").exists()
    with pytest.warns(StoreRepairWarning, match="0001.npz"):
        _segment(slide, out)
