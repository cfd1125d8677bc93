"""Corrections written back into a finished whole-slide result store, for one region only.

:func:`read_region_labels` cuts level-0 labels out of a store; an annotator corrects them (the
:mod:`napari_nucleiseg.correction` tools, napari's brush); :func:`write_region_labels` writes
them back. What a write changes, and nothing else:

- the level-0 chunks whose pixels changed, and the coarse-level chunks above them (level k is
  level 0 sampled every ``4**k`` pixels, :func:`~.tasks.build_level_chunk`'s rule, applied to
  the samples that fall in the region);
- the rows of the nuclei deleted, changed or added in the table (CSV, Parquet) and the outlines
  (GeoJSON), measured as the job measures them (:func:`~napari_nucleiseg.segmentation.measure.
  measure_nuclei` with the slide's pixels when the slide is given; without it the haematoxylin
  column of those rows is empty);
- the digests the store's checks compare with (:mod:`.verify`: the chunk records, ``levels.json``,
  the exports' size and SHA-256 in ``.zattrs``), so the corrected store verifies as finished and
  a rerun of the job says "done" instead of rebuilding the old result.

**Ids.** A nucleus keeps its id when the corrected labels still use it (changed shape or not);
an id the region did not hold (a painted nucleus, a split's new half) is a new nucleus and gets a
fresh global id. Fresh ids number *virtual tiles past the grid*: ``(rows * cols) << LOCAL_BITS``
+ 1, + 2, ... — no tile of the slide has that index, so no segmentation (not a resumed or healed
one either) can produce them. The next one is kept in the edit log; a store whose dtype cannot
hold more refuses the edit.

**Nuclei on the region's edge.** A nucleus that the region's edge cuts (it has pixels on the
region's outermost rows or columns, where those are not the slide's edge) is *locked*: the write
refuses to change it, naming it, because its pixels outside the region would be left behind.
:func:`whole_nuclei_box` grows a view to the bounding boxes of the nuclei it touches, so every
nucleus seen in the view is whole and editable; only nuclei outside the view, cut by the grown
box, are locked.

**Crash safety.** Everything new (chunks, records, exports, attributes, the log) is first written
under ``edits/pending/``; then ``edits/pending/COMMIT.json`` (the list of renames) is written
atomically — the commit point — and the files are renamed into place. A kill before the commit
leaves the old region (the pending folder is dropped by the next read or write); a kill after it
is completed by the next read or write (:func:`recover`), so a region is always wholly old or
wholly new. Writes hold the store's :class:`~.store.StoreLock`: no job runs meanwhile.

**Edit log.** ``edits/log.json`` lists every correction (who, when, the region, the ids deleted,
changed and added) and ``edits/NNNN.npz`` keeps the region's labels before and after it, so a
correction is never silently lost: it can be audited, replayed or undone from the log. A job that
rebuilds a *damaged* chunk or export rebuilds it from its tile records, i.e. uncorrected; it
then writes every logged correction again, in log order (:func:`replay`: the labels "after" of
each, with the ids the correction gave them, no new log entry), so the corrections come back. A
marker (``edits/replay.json``) is written before the rebuilt store is marked finished and removed
once every correction is written again: a run killed in between replays them next time.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np

from . import store as st
from .tasks import LOCAL_BITS

#: Folder of the edit log, inside the store.
EDITS = "edits"
#: Marker, in :data:`EDITS`, of a rebuilt store whose logged corrections are not written again yet.
REPLAY = "replay.json"


class RegionEditError(ValueError):
    """A correction that cannot be written as given (the message says why)."""


# --------------------------------------------------------------------------- the store's shape
def _array_meta(store: Path, level: int) -> dict:
    return json.loads((Path(store) / str(level) / ".zarray").read_text())


def _geometry(store: Path) -> dict:
    attrs = st.read_attrs(store)
    meta = attrs.get("nucleiseg")
    if not isinstance(meta, dict) or "multiscales" not in attrs:
        raise RegionEditError(f"{store} is not a nucleiseg whole-slide result store")
    ms = attrs["multiscales"][0]
    zarray = _array_meta(store, 0)
    shape = tuple(zarray["shape"])
    tile = int(zarray["chunks"][0])
    rows, cols = -(-shape[0] // tile), -(-shape[1] // tile)
    return {
        "attrs": attrs,
        "meta": meta,
        "levels": len(ms["datasets"]),
        "shape": shape,
        "tile": tile,
        "dtype": np.dtype(zarray["dtype"]),
        "mpp": float(ms["datasets"][0]["coordinateTransformations"][0]["scale"][-1]),
        "first_fresh": ((rows * cols) << LOCAL_BITS) + 1,
    }


def _open(store: Path, level: int, mode: str = "r"):
    import zarr

    return zarr.open_array(str(Path(store) / str(level)), mode=mode)


# --------------------------------------------------------------------------- reading
def read_region_labels(store, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Level-0 labels of the region ``[x0, x1) × [y0, y1)`` (slide level-0 pixels, clipped to
    the slide). A correction a killed write left half-applied is completed first."""
    store = Path(store)
    if (store / EDITS / "pending").exists():
        with st.StoreLock(store):
            recover(store)
    g = _geometry(store)
    h, w = g["shape"]
    x0, y0, x1, y1 = max(0, int(x0)), max(0, int(y0)), min(w, int(x1)), min(h, int(y1))
    if x1 <= x0 or y1 <= y0:
        raise RegionEditError(f"the region ({x0}, {y0})-({x1}, {y1}) is outside the slide")
    return np.asarray(_open(store, 0)[y0:y1, x0:x1])


def whole_nuclei_box(store, x0: int, y0: int, x1: int, y1: int) -> tuple[int, int, int, int]:
    """The box ``(x0, y0, x1, y1)`` grown to hold whole every nucleus that the given one touches
    (clipped to the slide): cut from the store, every nucleus in view can be corrected."""
    from scipy import ndimage as ndi

    store = Path(store)
    g = _geometry(store)
    h, w = g["shape"]
    x0, y0, x1, y1 = max(0, int(x0)), max(0, int(y0)), min(w, int(x1)), min(h, int(y1))
    # A nucleus spans at most a halo (tasks: owned nuclei); merged ones may span two.
    m = 2 * int(g["meta"].get("identity", {}).get("halo_px", g["tile"] // 2))
    bx0, by0, bx1, by1 = max(0, x0 - m), max(0, y0 - m), min(w, x1 + m), min(h, y1 + m)
    big = read_region_labels(store, bx0, by0, bx1, by1)
    inner = big[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]
    ids = np.unique(inner)
    ids = ids[ids != 0]
    if not len(ids):
        return x0, y0, x1, y1
    compact = np.zeros(big.shape, np.int32)
    hit = np.isin(big, ids)
    compact[hit] = np.searchsorted(ids, big[hit]) + 1
    for sl in ndi.find_objects(compact):
        if sl is None:
            continue
        y0, y1 = min(y0, by0 + sl[0].start), max(y1, by0 + sl[0].stop)
        x0, x1 = min(x0, bx0 + sl[1].start), max(x1, bx0 + sl[1].stop)
    return x0, y0, x1, y1


def edit_log(store) -> list[dict]:
    """The corrections written into ``store``, oldest first (empty: none)."""
    return _read_log(Path(store))["edits"]


def _read_log(store: Path) -> dict:
    try:
        return json.loads((store / EDITS / "log.json").read_text())
    except FileNotFoundError:
        return {"next_id": None, "edits": []}


# --------------------------------------------------------------------------- crash safety
def recover(store) -> str | None:
    """Finish or drop a correction a killed write left in ``edits/pending/``: completed when it
    was committed, dropped when not. Returns what was done (None: nothing pending). Call under
    the store's lock; it does not take the lock itself (the job calls it holding it)."""
    store = Path(store)
    pending = store / EDITS / "pending"
    if not pending.exists():
        return None
    commit = pending / "COMMIT.json"
    try:
        manifest = json.loads(commit.read_text())
    except (FileNotFoundError, ValueError):  # never committed: the old region stands
        shutil.rmtree(pending, ignore_errors=True)
        return "dropped"
    _apply(store.parent, manifest)
    commit.unlink(missing_ok=True)
    st.fsync_path(pending)
    shutil.rmtree(pending, ignore_errors=True)
    return "completed"


def _apply(out: Path, manifest: dict) -> None:
    """Rename the staged files into place (idempotent: a file already moved is skipped)."""
    dirs = set()
    for src, dst in manifest["files"]:
        target = out / dst
        if src is None:  # the new chunk is all background: zarr keeps no file for it
            target.unlink(missing_ok=True)
        elif (out / src).exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(out / src, target)
        dirs.add(target.parent)
    for d in dirs:
        st.fsync_path(d)


# --------------------------------------------------------------------------- writing
def write_region_labels(
    store,
    x0: int,
    y0: int,
    new_labels: np.ndarray,
    *,
    slide=None,
    user: str | None = None,
    note: str = "",
) -> dict:
    """Write corrected level-0 labels of the region whose pixel ``(0, 0)`` is slide pixel
    ``(x0, y0)`` back into a finished result store (see the module's notes for what changes).

    ``slide``: the slide (a path or an opened slide) whose pixels measure the haematoxylin of
    new and changed nuclei; ``user``: who corrects (default: the login name), for the log.
    Returns ``{"edit": n or None, "deleted": [...], "changed": [...], "added": [...]}`` (global
    ids; ``edit`` None when nothing changed). Raises :class:`RegionEditError` for a region
    outside the slide, an unfinished store, or a change to a nucleus cut by the region's edge;
    :class:`~.store.StoreLockedError` while a job writes the store.
    """
    store = Path(store)
    new = np.asarray(new_labels)
    if new.ndim != 2:
        raise RegionEditError(f"labels must be a 2-D array, not {new.shape}")
    if new.size and new.min() < 0:
        raise RegionEditError("labels must not be negative")
    with st.StoreLock(store):
        recover(store)
        g = _geometry(store)
        if not g["meta"].get("finished"):
            raise RegionEditError(
                f"{store}: the whole-slide job has not finished; run it to the end before "
                "correcting its result"
            )
        h, w = g["shape"]
        x0, y0 = int(x0), int(y0)
        x1, y1 = x0 + new.shape[1], y0 + new.shape[0]
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h or not new.size:
            raise RegionEditError(
                f"the region ({x0}, {y0})-({x1}, {y1}) is not inside the slide ({w} x {h} px)"
            )
        old = np.asarray(_open(store, 0)[y0:y1, x0:x1])
        region = (x0, y0, x1, y1)
        _check_edge(old, new, region, (h, w))
        final, deleted, changed, added, next_id = _assign_ids(store, g, old, new)
        result = {"edit": None, "deleted": deleted, "changed": changed, "added": added}
        if not (deleted or changed or added):
            return result
        log = _read_log(store)
        n = len(log["edits"]) + 1
        entry = {
            "edit": n,
            "user": user or _login(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "region_px": list(region),
            "deleted": deleted,
            "changed": changed,
            "added": added,
            "labels": f"{EDITS}/{n:04d}.npz",
            **({"note": note} if note else {}),
        }
        log = {"next_id": next_id, "edits": [*log["edits"], entry]}
        _stage_and_commit(store, g, old, final, region, slide, entry, log)
        result["edit"] = n
        return result


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _check_edge(old, new, region, shape) -> None:
    """Refuse changes to nuclei the region's edge cuts (their outside pixels would stay)."""
    x0, y0, x1, y1 = region
    h, w = shape
    frame = np.zeros(old.shape, bool)
    if y0 > 0:
        frame[0, :] = True
    if y1 < h:
        frame[-1, :] = True
    if x0 > 0:
        frame[:, 0] = True
    if x1 < w:
        frame[:, -1] = True
    cut = np.unique(old[frame])
    cut = cut[cut != 0]
    if not len(cut):
        return
    # A cut nucleus is unchanged when no pixel differs where either version has its id.
    diff = old != new
    moved = np.union1d(np.unique(old[diff]), np.unique(new[diff]))
    bad = [int(i) for i in np.intersect1d(cut, moved)]
    if bad:
        raise RegionEditError(
            f"nuclei {', '.join(map(str, bad))} cross the edge of the region being corrected "
            "and cannot be changed in it: correct a region that holds them whole "
            "(whole_nuclei_box, or 'Correct this view' with them in view)"
        )


def _assign_ids(store, g, old, new):
    """The corrected labels with global ids, and the ids deleted, changed and added."""
    old_ids = np.unique(old)
    old_ids = old_ids[old_ids != 0]
    values, inverse = np.unique(new, return_inverse=True)
    inverse = inverse.reshape(new.shape)
    is_old = np.isin(values, old_ids)
    fresh = [int(v) for v, o in zip(values, is_old) if v != 0 and not o]
    log = _read_log(store)
    next_id = int(log["next_id"] or g["first_fresh"])
    last = next_id + len(fresh) - 1
    if fresh and last > np.iinfo(g["dtype"]).max:
        raise RegionEditError(
            f"{store} holds {g['dtype']} labels and has no fresh ids left for {len(fresh)} new "
            "nuclei"
        )
    mapped = values.astype(np.uint64)
    added = []
    for k in np.nonzero((values != 0) & ~is_old)[0]:
        mapped[k] = next_id
        added.append(next_id)
        next_id += 1
    final = mapped[inverse].astype(g["dtype"])
    kept = old_ids[np.isin(old_ids, values)]
    deleted = [int(i) for i in old_ids[~np.isin(old_ids, values)]]
    diff = old != final
    touched = np.union1d(np.unique(old[diff]), np.unique(final[diff]))
    changed = [int(i) for i in np.intersect1d(touched, kept)]
    return final, deleted, changed, added, next_id


def _chunk_range(lo: int, hi: int, tile: int) -> range:
    return range(lo // tile, (hi - 1) // tile + 1)


def _stage_and_commit(store, g, old, final, region, slide, entry, log) -> None:
    out = store.parent
    pending = store / EDITS / "pending"
    shutil.rmtree(pending, ignore_errors=True)
    (pending / "files").mkdir(parents=True)
    files: list[list] = []  # [staged path or None, target], relative to ``out``

    def rel(p: Path) -> str:
        return str(Path(p).relative_to(out))

    def stage_file(target: Path, write) -> Path:
        staged = pending / "files" / rel(target)
        staged.parent.mkdir(parents=True, exist_ok=True)
        st.atomic_write(staged, write)
        files.append([rel(staged), rel(target)])
        return staged

    # 1. label chunks, level 0 and the coarse levels above them
    x0, y0, x1, y1 = region
    tile = g["tile"]
    digests: dict[int, dict[str, list | None]] = {}
    nonzero: dict[str, bool] = {}
    for level in range(g["levels"]):
        f = st.PYRAMID_FACTOR**level
        # Level ``level`` pixel (a, b) is level-0 pixel (a * f, b * f).
        a0, a1 = -(-y0 // f), -(-y1 // f)
        b0, b1 = -(-x0 // f), -(-x1 // f)
        if a1 <= a0 or b1 <= b0:
            continue
        samples = final[a0 * f - y0 : a1 * f - y0 : f, b0 * f - x0 : b1 * f - x0 : f]
        src = _open(store, level)
        staged_dir = pending / "arrays" / str(level)
        staged_dir.mkdir(parents=True)
        shutil.copyfile(store / str(level) / ".zarray", staged_dir / ".zarray")
        dst = None
        lh, lw = src.shape
        for i in _chunk_range(a0, a1, tile):
            for j in _chunk_range(b0, b1, tile):
                cy0, cx0 = i * tile, j * tile
                cy1, cx1 = min(cy0 + tile, lh), min(cx0 + tile, lw)
                before = np.asarray(src[cy0:cy1, cx0:cx1])
                after = before.copy()
                oy0, oy1, ox0, ox1 = max(a0, cy0), min(a1, cy1), max(b0, cx0), min(b1, cx1)
                after[oy0 - cy0 : oy1 - cy0, ox0 - cx0 : ox1 - cx0] = samples[
                    oy0 - a0 : oy1 - a0, ox0 - b0 : ox1 - b0
                ]
                if np.array_equal(before, after):
                    continue  # only chunks whose pixels change are rewritten
                if dst is None:
                    import zarr

                    dst = zarr.open_array(str(staged_dir), mode="r+")
                dst[cy0:cy1, cx0:cx1] = after
                staged = st.chunk_file(staged_dir.parent, level, i, j)
                target = st.chunk_file(store, level, i, j)
                if staged.exists():
                    st.fsync_path(staged)
                    files.append([rel(staged), rel(target)])
                else:
                    files.append([None, rel(target)])
                digests.setdefault(level, {})[f"{i}_{j}"] = st.file_digest(staged)
                if level == 0:
                    nonzero[f"{i}_{j}"] = bool(after.any())
    for d in (pending / "arrays").glob("*/*"):
        st.fsync_path(d)

    # 2. the records the store's checks compare the chunks with
    records = store / "records"
    for k, digest in digests.get(0, {}).items():
        path = records / "chunks" / f"{k}.json"
        try:
            rec = json.loads(path.read_text())
        except FileNotFoundError:  # a chunk no tissue tile reaches: the checks never look
            continue
        rec.update(file=digest, nonzero=nonzero[k])
        stage_file(path, lambda fh, rec=rec: fh.write(json.dumps(rec).encode()))
    if g["levels"] > 1:
        path = records / "levels.json"
        levels = json.loads(path.read_text())
        for level in range(1, g["levels"]):
            for k, digest in digests.get(level, {}).items():
                if digest is not None or k in levels.get(str(level), {}):
                    levels.setdefault(str(level), {})[k] = digest
        stage_file(path, lambda fh: fh.write(json.dumps(levels).encode()))

    # 3. the exports: rows of deleted and changed nuclei out, new and changed ones in (the rows
    # of added ones too: a replay may find them there already)
    removed = set(entry["deleted"]) | set(entry["changed"]) | set(entry["added"])
    table, rings = _measure(final, entry["changed"] + entry["added"], region, g["mpp"], slide)
    outputs = {k: dict(v) for k, v in g["meta"].get("outputs", {}).items()}
    staged_out = pending / "files" / "exports"
    staged_out.mkdir(parents=True)
    count = None
    for kind in ("csv", "parquet", "geojson"):
        rec = outputs.get(kind)
        if not isinstance(rec, dict) or "file" not in rec:
            continue
        src = out / rec["file"]
        staged = staged_out / rec["file"]
        if kind == "csv":
            count = _rewrite_csv(src, staged, removed, table)
        elif kind == "parquet":
            count = _rewrite_parquet(src, staged, removed, table)
        else:
            seed = g["meta"]["identity"]["slide"]["sha1_head_tail"]
            _rewrite_geojson(src, staged, removed, table, rings, seed)
        outputs[kind] = {
            "file": rec["file"],
            "bytes": staged.stat().st_size,
            "sha256": st.sha256_file(staged),
        }
        files.append([rel(staged), rel(src)])

    # 4. the edit log, the labels before and after (not for a replay: ``log`` None), the
    # store's attributes
    if log is not None:

        def save_npz(fh):
            np.savez_compressed(fh, region_px=np.array(region), before=old, after=final)

        stage_file(store / entry["labels"], save_npz)
        stage_file(
            store / EDITS / "log.json", lambda fh: fh.write(json.dumps(log, indent=1).encode())
        )
    attrs = g["attrs"]
    summary = dict(g["meta"].get("summary", {}))
    if count is not None:
        summary["nuclei"] = count
    attrs["nucleiseg"] = {
        **g["meta"],
        "outputs": outputs,
        "summary": summary,
        "edits": len(log["edits"]) if log is not None else g["meta"].get("edits", 0),
    }
    stage_file(store / ".zattrs", lambda fh: fh.write(json.dumps(attrs, indent=1).encode()))

    # 5. commit, then move everything into place
    manifest = {"edit": entry["edit"], "files": files}
    st.atomic_json(pending / "COMMIT.json", manifest)
    _apply(out, manifest)
    (pending / "COMMIT.json").unlink()
    st.fsync_path(pending)
    shutil.rmtree(pending, ignore_errors=True)


# --------------------------------------------------------------------------- replay
def has_log(store) -> bool:
    """Whether ``store`` holds corrections (a log, or the labels of one)."""
    edits = Path(store) / EDITS
    return (edits / "log.json").exists() or any(edits.glob("[0-9]*.npz"))


def mark_replay(store) -> None:
    """Note that the logged corrections must be written again (:func:`replay`)."""
    (Path(store) / EDITS).mkdir(parents=True, exist_ok=True)
    st.atomic_json(Path(store) / EDITS / REPLAY, {"since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def replay_pending(store) -> bool:
    return (Path(store) / EDITS / REPLAY).exists()


def clear_replay(store) -> None:
    (Path(store) / EDITS / REPLAY).unlink(missing_ok=True)
    st.fsync_path(Path(store) / EDITS)


def replay(store, *, slide=None) -> list[str]:
    """Write every logged correction of a finished ``store`` again, in log order: the region's
    labels "after" (ids as the correction gave them), the rows of its nuclei, the digests; no
    new log entry. What a job does after rebuilding damaged parts from the tile records.

    Returns one line for each correction that could not be written again (its log or labels
    unreadable), naming the store and the file; the files are kept. Call under the store's lock
    (it does not take it); each correction is committed as :func:`write_region_labels` commits.
    """
    store = Path(store)
    log_path = store / EDITS / "log.json"
    try:
        entries = _read_log(store)["edits"]
        if not isinstance(entries, list):
            raise ValueError("it holds no list of edits")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [
            f"{store}: the corrections' log {log_path} cannot be read ({exc}); its corrections "
            "are not in the rebuilt result (the log and edits/*.npz are kept)"
        ]
    if not entries and any((store / EDITS).glob("[0-9]*.npz")):
        return [
            f"{store}: the corrections' log {log_path} is missing; the corrections in "
            f"{store / EDITS}/*.npz are not in the rebuilt result (the files are kept)"
        ]
    lines = []
    for n, entry in enumerate(entries, 1):
        labels = store / EDITS / f"{n:04d}.npz"
        try:
            labels = store / entry["labels"]
            _replay_one(store, entry, labels, slide)
        except (
            OSError,
            ValueError,
            KeyError,
            TypeError,
            EOFError,
            zipfile.BadZipFile,
        ) as exc:
            if isinstance(exc, OSError) and st.is_no_space(exc):
                raise
            lines.append(
                f"{store}: correction {n} ({labels}) could not be written again "
                f"({type(exc).__name__}: {exc}); it is not in the rebuilt result (its files are "
                "kept)"
            )
    return lines


def _replay_one(store: Path, entry: dict, labels: Path, slide) -> None:
    g = _geometry(store)
    x0, y0, x1, y1 = (int(v) for v in entry["region_px"])
    with np.load(labels) as z:
        final = np.asarray(z["after"])
    h, w = g["shape"]
    if final.shape != (y1 - y0, x1 - x0) or x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        raise RegionEditError(f"its labels ({final.shape}) do not fit its region")
    if final.dtype.kind not in "ui" or (final.size and final.min() < 0):
        raise RegionEditError(f"its labels are not labels ({final.dtype})")
    final = final.astype(g["dtype"])
    old = np.asarray(_open(store, 0)[y0:y1, x0:x1])
    ids = {k: [int(i) for i in entry[k]] for k in ("deleted", "changed", "added")}
    _stage_and_commit(
        store, g, old, final, (x0, y0, x1, y1), slide, {"edit": entry["edit"], **ids}, None
    )


# --------------------------------------------------------------------------- exports
def _measure(final, ids, region, mpp, slide):
    """Table rows and outlines of ``ids`` (global) in the corrected region, by label order."""
    from ..segmentation.measure import COLUMNS, measure_nuclei
    from .export import outlines

    ids = np.array(sorted(ids), np.uint64)
    if not len(ids):
        return {c: np.zeros(0, np.uint64 if c == "label" else float) for c in COLUMNS}, []
    x0, y0, x1, y1 = region
    # Measured on 1..n (measure and outlines index arrays by id); a nucleus touching the
    # region's edge is one the edge does not cut (checked), so all of it is here.
    compact = np.zeros(final.shape, np.int32)
    hit = np.isin(final, ids)
    compact[hit] = np.searchsorted(ids, final[hit].astype(np.uint64)) + 1
    rgb = None
    if slide is not None:
        rgb = _read_rgb(slide, region)
    table = measure_nuclei(compact, rgb, mpp, origin_px=(x0, y0))
    rings = outlines(compact, table["label"], offset=(x0, y0))
    table["label"] = ids[np.asarray(table["label"], np.int64) - 1]
    return table, rings


def _read_rgb(slide, region) -> np.ndarray:
    x0, y0, x1, y1 = region
    if hasattr(slide, "read_region"):
        return np.asarray(slide.read_region(x0, y0, x1 - x0, y1 - y0, 0))[..., :3]
    import warnings

    from ..io import open_slide

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opened = open_slide(slide)
    try:
        return np.asarray(opened.read_region(x0, y0, x1 - x0, y1 - y0, 0))[..., :3]
    finally:
        opened.close()


def _rewrite_csv(src: Path, dst: Path, removed: set, table: dict) -> int:
    """Stream ``src`` into ``dst`` without the rows of ``removed``, with ``table``'s rows merged
    in label order (the job writes rows by label). Returns the number of rows."""
    from .export import _csv_rows

    new = _csv_rows(table).encode().splitlines(keepends=True)
    labels = [int(x) for x in np.asarray(table["label"])]
    k, count = 0, 0

    def write(fh):
        nonlocal k, count
        with open(src, "rb") as f:
            fh.write(f.readline())  # the header
            for line in f:
                label = int(line.split(b",", 1)[0])
                while k < len(new) and labels[k] < label:
                    fh.write(new[k])
                    k, count = k + 1, count + 1
                if label in removed:
                    continue
                fh.write(line)
                count += 1
        while k < len(new):
            fh.write(new[k])
            k, count = k + 1, count + 1

    st.atomic_write(dst, write)
    return count


def _rewrite_parquet(src: Path, dst: Path, removed: set, table: dict) -> int:
    import pyarrow.parquet as pq

    from ..segmentation.measure import COLUMNS
    from .export import TableWriter

    t = pq.read_table(src)
    label_type = str(t.schema.field("label").type)
    cols = {c: t.column(c).to_numpy() for c in COLUMNS}
    keep = ~np.isin(cols["label"].astype(np.uint64), np.array(sorted(removed), np.uint64))
    merged = {
        c: np.concatenate([cols[c][keep], np.asarray(table[c]).astype(cols[c].dtype)])
        for c in COLUMNS
    }
    order = np.argsort(merged["label"], kind="stable")
    with TableWriter(None, dst, label_type) as w:
        for s in range(0, len(order), TableWriter.ROW_GROUP):
            w.add({c: merged[c][order[s : s + TableWriter.ROW_GROUP]] for c in COLUMNS})
    return int(len(order))


_NAME = re.compile(rb'"name":"(\d+)"')


def _rewrite_geojson(src: Path, dst: Path, removed, table: dict, rings, seed: str) -> None:
    """Stream the FeatureCollection (one feature a line, as :class:`~.export.GeoJSONWriter`
    writes it) without ``removed``'s features, with the new ones merged in label order."""
    from .export import GeoJSONWriter

    labels = [int(x) for x in np.asarray(table["label"])]
    rows = [{c: np.asarray(v)[k : k + 1] for c, v in table.items()} for k in range(len(labels))]
    k = 0
    with GeoJSONWriter(dst, seed) as w, open(src, "rb") as f:
        f.readline()  # the collection's opening line
        for line in f:
            body = line.rstrip(b"\r\n")
            if body.endswith(b","):
                body = body[:-1]
            if not body.startswith(b"{"):  # the closing "]}"
                continue
            m = _NAME.search(body)
            label = int(m.group(1)) if m else int(json.loads(body)["properties"]["name"])
            while k < len(labels) and labels[k] < label:
                w.add(rows[k], [rings[k]])
                k += 1
            if label in removed:
                continue
            if w.count:
                w.f.write(",\n")
            w.f.write(body.decode("utf-8"))
            w.count += 1
        while k < len(labels):
            w.add(rows[k], [rings[k]])
            k += 1
