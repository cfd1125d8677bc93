"""The result store of one slide: an OME-Zarr (NGFF 0.4) labels pyramid plus its records.

Layout of ``<out>/<stem>.nuclei.zarr``::

    .zattrs            multiscales (y, x in µm), image-label, nucleiseg: identity, finished,
                       summary, outputs (name, size and SHA-256 of each export)
    0/ 1/ 2/ ...       label levels (zarr v2, "/" chunk keys); level 0 = slide level 0 pixels,
                       chunk = one tile core, level k = level 0 sampled every 4**k pixels
    progress/tiles/    r_c.npz   one per segmented tile (its owned nuclei, table rows, outlines)
    progress/chunks/   r_c.json  one per level-0 chunk written (kept ids of that tile, the chunk
                                 file's size and CRC-32)
    progress/levels.json         size and CRC-32 of every coarse chunk, once the pyramid is built

``progress/`` becomes ``records/`` when the job finishes: the records are what the exports and
any damaged chunk are rebuilt from, so a finished store keeps them.

Every file is written to a temporary name beside its target, flushed to disk and renamed over it
(zarr's local store renames too; we fsync each chunk before recording it), so a crash or SIGKILL
never leaves half a file under a real name, and a record exists only once what it records is on
disk. The store is created under a temporary name and renamed into place, so it is either absent
or complete with its identity. A damaged file (a disk error, a truncated copy, a deleted chunk) is
found by the checks in :mod:`.verify` and redone; a second job on the same store is refused by
:class:`StoreLock`.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import time
import uuid
import warnings
import zlib
from pathlib import Path

from ..io.errors import SlideError

#: Bump when the store layout or the merge rule changes: old stores are then refused, not mixed.
STORE_FORMAT = 4  # 2: tiles own nuclei within a small margin outside their core; 3: the tile
# planner's balanced tiles, read boxes clipped to the slide; 4: the runtime in the identity,
# chunk and export checksums, records kept in finished stores
#: Level k of the labels pyramid is level 0 sampled every ``PYRAMID_FACTOR**k`` pixels.
PYRAMID_FACTOR = 4
#: errno values that mean "no room to write".
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class StoreMismatchError(SlideError):
    """The output store holds results of another slide, method, model version or tiling."""


class DiskFullError(SlideError):
    """Writing results failed for lack of space; what was finished stays recorded."""


class StoreLockedError(SlideError):
    """Another job is writing the same result store."""


class StoreRepairWarning(UserWarning):
    """A store's file was missing or damaged and is being redone from what is intact."""


def is_no_space(exc: BaseException) -> bool:
    # Arrow's I/O errors are OSErrors without an errno: recognise them by their message.
    return isinstance(exc, OSError) and (exc.errno in _NO_SPACE or "No space left" in str(exc))


def slide_stem(path) -> str:
    """The name results are saved under: the same rule as ``nucleiseg segment``
    (:func:`~napari_nucleiseg.io.output.output_stem`: ``case.1.svs`` → ``case.1``)."""
    from ..io.output import output_stem

    return output_stem(path)


def store_path(out_dir, slide_path) -> Path:
    return Path(out_dir) / f"{slide_stem(slide_path)}.nuclei.zarr"


# --------------------------------------------------------------------------- atomic files
def fsync_path(path: Path) -> None:
    """Flush a file (or directory entry) to disk; missing paths are ignored."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync directories
        pass
    finally:
        os.close(fd)


def create_aside(path: Path, fill, what: str) -> None:
    """Create the zarr store ``path`` when absent, atomically: ``fill(root_group, folder)`` builds
    it under a temporary name beside it, which is then renamed into place. The rename fails if
    another run created the store meanwhile; that one is then used. A full disk is a
    :class:`DiskFullError` naming ``what``; the temporary folder never stays behind."""
    import zarr

    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        fill(zarr.open_group(str(tmp), mode="w-", zarr_format=2), tmp)
        try:
            os.rename(tmp, path)
            fsync_path(path.parent)
        except OSError:
            if not path.exists():
                raise
    except OSError as exc:
        if is_no_space(exc):
            raise DiskFullError(
                path, f"no space left to create the {what} ({exc.strerror})"
            ) from exc
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


#: What a level's ``.zarray`` must say for its chunks to be read as this run writes them; the
#: rest (compressor, filters, order) is how its chunks are encoded, which older versions of
#: zarr chose otherwise: taken from the store itself, never from today's defaults.
_GEOMETRY = ("shape", "chunks", "dtype", "fill_value", "zarr_format")
_ENCODING = ("compressor", "filters", "order", "dimension_separator")


def _read_json(path: Path):
    """``(value, problem)``: the parsed JSON object in ``path``, or None and why not."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return None, "is missing"
    except (OSError, ValueError):
        return None, "is damaged"
    return (value, None) if isinstance(value, dict) else (None, "is damaged")


def _store_encoding(path: Path) -> dict | None:
    """How the store at ``path`` encodes chunks, from any readable ``.zarray`` of its arrays
    (folders at its top: walking the whole store would list every chunk)."""
    for array in sorted(p for p in path.iterdir() if p.is_dir()):
        value, _ = _read_json(array / ".zarray")
        if value is not None:
            return {k: value[k] for k in _ENCODING if k in value}
    return None


#: Compressors zarr has written for format-2 arrays by default (blosc-lz4; zstd in zarr
#: 3.0.x) and none: each decodes whatever its family wrote, whatever the level.
_CODEC_FAMILIES = (
    {"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1, "blocksize": 0},
    {"id": "zstd", "level": 0, "checksum": False},
    None,
)


def _chunk_encoding(array: Path, meta: dict) -> dict | None:
    """The compressor that decodes a chunk of the array folder ``array`` (described by the
    ``.zarray`` dict ``meta``) into a whole chunk, when no metadata in the store says; None
    when it has no chunk to try (nothing to misread) or none fits."""
    import itertools
    import math

    import numcodecs
    import numpy as np

    nbytes = math.prod(meta["chunks"]) * np.dtype(meta["dtype"]).itemsize

    chunks = (Path(r, f) for r, _, files in os.walk(array) for f in files if not f[0] == ".")
    for chunk in itertools.islice(chunks, 5):  # a few: one may itself be damaged; not all
        data = chunk.read_bytes()
        for config in _CODEC_FAMILIES:
            try:
                raw = data if config is None else numcodecs.get_codec(dict(config)).decode(data)
            except Exception:  # noqa: BLE001 (not this codec: try the next)
                continue
            if len(memoryview(raw).cast("B")) == nbytes:
                return {"compressor": config, "filters": None}
    return None


def repair_array_metadata(path: Path, fill) -> list[str]:
    """Write again the zarr metadata of the store ``path`` that is missing or cannot be read
    (``.zgroup``; each array's ``.zarray`` and ``.zattrs``; not the root ``.zattrs``, which
    holds our records), and a ``.zarray`` whose geometry differs from what ``fill(root_group)``
    creates in an empty store; every chunk is left as it is. A garbled ``.zarray`` otherwise
    left a store that a resume called done and nothing could read.

    A ``.zarray`` written again keeps the chunk encoding the store states elsewhere (its own,
    or another array's): a store written by another zarr version may use another compressor,
    and metadata naming the wrong one would misread every chunk. Returns a warning line per
    file written."""
    import tempfile

    import zarr

    path = Path(path)
    lines = []
    with tempfile.TemporaryDirectory(prefix="nucleiseg-reference-") as ref:
        fill(zarr.open_group(ref, mode="w-", zarr_format=2))
        wanted = [
            Path(root, name)
            for root, _, files in os.walk(ref)
            for name in files
            if name in (".zgroup", ".zarray", ".zattrs") and not (name == ".zattrs" and root == ref)
        ]
        found = {w: _read_json(path / w.relative_to(ref)) for w in wanted}
        for want, (have, problem) in found.items():
            reference = json.loads(want.read_text())
            if have is not None:
                if want.name != ".zarray" or all(
                    have.get(k) == reference.get(k) for k in _GEOMETRY
                ):
                    continue  # readable, and saying what this run would: left as it is
                problem = "describes another shape, chunking or type"
                reference = {**reference, **{k: have[k] for k in _ENCODING if k in have}}
            elif want.name == ".zarray":
                # Its own chunks first: another array of the store (a heatmap's tissue mask,
                # written again by this version) may be encoded otherwise.
                found_encoding = _chunk_encoding(
                    path / want.parent.relative_to(ref), reference
                ) or _store_encoding(path)
                reference = {**reference, **(found_encoding or {})}
            target = path / want.relative_to(ref)
            target.parent.mkdir(parents=True, exist_ok=True)
            data = json.dumps(reference, indent=2).encode()
            atomic_write(target, lambda f, data=data: f.write(data))
            lines.append(f"{target} {problem}; written again (the data it describes is kept)")
    return lines


def atomic_write(path: Path, write) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, fsync, rename over
    ``path``. On any failure (a full disk, a kill signal's exception) the temporary is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # the original error matters more than a temporary we could not delete
            pass
        raise
    fsync_path(path.parent)


def atomic_json(path: Path, data) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(data).encode()))


def remove_stale_temporaries(store: Path) -> int:
    """Delete temporary files a killed run left behind (ours ``.*.tmp``, zarr's ``*.partial``)."""
    n = 0
    for root, _, files in os.walk(store):
        for name in files:
            if (name.startswith(".") and name.endswith(".tmp")) or name.endswith(".partial"):
                try:
                    os.unlink(os.path.join(root, name))
                    n += 1
                except FileNotFoundError:
                    pass
    return n


def remove_stale_outputs(out_dir: Path, stem: str) -> int:
    """Delete this slide's temporaries in the output folder that a killed run (or a full disk)
    left: half-written exports and a half-created store. Only this slide's: other slides' jobs
    may be writing theirs beside it. Call under the store's lock."""
    pattern = re.compile(
        rf"^\.{re.escape(stem)}\.nuclei\.(csv|parquet|geojson|zarr)\.[0-9a-f]{{32}}\.tmp$"
    )
    n = 0
    try:
        names = os.listdir(out_dir)
    except FileNotFoundError:
        return 0
    for name in names:
        if pattern.match(name):
            p = Path(out_dir) / name
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            n += 1
    return n


def file_digest(path: Path) -> list[int] | None:
    """``[size, CRC-32]`` of a file, ``None`` when it does not exist: cheap enough to check every
    chunk of a store on every run (chunks are compressed labels, a few hundred kB at most)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return [len(data), zlib.crc32(data)]


def sha256_file(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- the lock
class StoreLock:
    """One job at a time on a store: ``.<store name>.lock`` beside the store, held with
    ``flock`` for the job's life.

    ``flock`` is released by the kernel when its process dies, however it dies (SIGKILL, power
    loss on a local disk), so a lock is never stale in the sense of blocking: a lock file that
    still holds a record when we take it was left by a job that died, and we say so. The file
    is removed when the job ends; the record in it (pid, host, start) is what the refusal shows.
    """

    def __init__(self, store: Path):
        self.store = Path(store)
        self.path = self.store.with_name(f".{self.store.name}.lock")
        self.fd: int | None = None

    def acquire(self) -> StoreLock:
        import fcntl
        import socket

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_record(fd)
                os.close(fd)
                raise StoreLockedError(
                    self.store,
                    f"is being written by another job ({_describe_holder(holder)}); wait for it "
                    "to finish, or stop it and run the same command again to resume",
                ) from None
            except OSError as exc:  # a file system without locks (some network mounts)
                warnings.warn(
                    f"{self.store}: cannot lock it ({exc.strerror}); make sure no other job "
                    "writes it",
                    StoreRepairWarning,
                    stacklevel=5,  # acquire < __enter__ < job._run < segment_slide
                )
                self.fd = fd
                return self
            # Its last holder may have removed the file between our open and our lock: then we
            # locked a file no one else will see, and must lock the one at the path instead.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = _lock_record(fd)
            if previous:
                warnings.warn(
                    f"{self.store}: the job that was writing it ({_describe_holder(previous)}) "
                    "ended without finishing (killed?); taking over its lock and resuming",
                    StoreRepairWarning,
                    stacklevel=5,  # acquire < __enter__ < job._run < segment_slide
                )
            record = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
            os.fsync(fd)
            self.fd = fd
            return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            # Removed while still held, so no other job can lock the old file in between.
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _lock_record(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0)
        return json.loads(data) if data.strip() else {}
    except (OSError, ValueError):
        return {"unreadable": True}


def _describe_holder(rec: dict) -> str:
    if not rec.get("pid"):
        return "its lock file does not say which"
    where = f" on {rec['host']}" if rec.get("host") else ""
    since = f", since {rec['since']}" if rec.get("since") else ""
    return f"pid {rec['pid']}{where}{since}"


# --------------------------------------------------------------------------- identity
def slide_fingerprint(slide) -> dict:
    """What makes a slide this slide: geometry, resolution and a hash of its first and last MiB."""
    import hashlib

    p = Path(slide.path)
    h = hashlib.sha1()
    size = 0
    try:
        if p.is_dir():  # OME-Zarr: the metadata files describe the content
            for f in sorted(p.rglob(".z*"))[:64] + sorted(p.rglob("zarr.json"))[:64]:
                h.update(f.read_bytes())
        else:
            size = p.stat().st_size
            with open(p, "rb") as f:
                h.update(f.read(1 << 20))
                if size > 2 << 20:
                    f.seek(-(1 << 20), os.SEEK_END)
                    h.update(f.read(1 << 20))
    except OSError as exc:
        raise SlideError(p, f"cannot be read: {exc}") from exc
    return {
        "name": p.name,
        "bytes": size,
        "sha1_head_tail": h.hexdigest(),
        "level_shapes": [list(s) for s in slide.level_shapes],
        "mpp": slide.mpp,
    }


def _card_threshold(method: str | None) -> float | None:
    """The detection threshold ``method``'s card was tuned with, or None (not a card model, or
    not found here): the number the user sets to resume a store made with it."""
    from ..methods import get_method

    try:
        return float(get_method(method).default_detection_threshold)
    except Exception:  # noqa: BLE001 - a message's detail, never a reason to fail
        return None


def describe_difference(old: dict, new: dict) -> str:
    """One phrase saying why a store's identity differs from this run's."""
    if old.get("format") != new.get("format"):
        return (
            "it was written by another version of the whole-slide job "
            f"(store format {old.get('format')})"
        )
    o, n = old.get("slide", {}), new.get("slide", {})
    if o != n:
        if o.get("sha1_head_tail") != n.get("sha1_head_tail") or o.get("level_shapes") != n.get(
            "level_shapes"
        ):
            return f"it holds results of another slide ({o.get('name')}, {o.get('bytes')} bytes)"
        return f"it was made at {o.get('mpp')} µm/px, this run uses {n.get('mpp')} µm/px"
    if old.get("method") != new.get("method"):
        om, nm = old.get("method", {}), new.get("method", {})

        def name(m):
            return " ".join(str(m[k]) for k in ("method", "version") if k in m) + (
                f" (weights {m['sha256'][:12]})" if "sha256" in m else ""
            )

        if name(om) == name(nm) and om.get("test_time_flips") != nm.get("test_time_flips"):
            return (
                f"it was made with NUCLEISEG_TTA={om.get('test_time_flips')}, this run uses "
                f"NUCLEISEG_TTA={nm.get('test_time_flips')}"
            )
        if name(om) == name(nm) and om.get("detection_threshold") != nm.get("detection_threshold"):

            def threshold(m):
                own = m.get("detection_threshold")
                if own is not None:
                    return f"detection threshold {own:g}"
                card = _card_threshold(m.get("method"))
                return "the model's own threshold" + (f" ({card:g})" if card is not None else "")

            return (
                f"it was made with {threshold(om)}, this run uses {threshold(nm)} (set the same "
                "threshold to resume it)"
            )
        if name(om) == name(nm) and om.get("runtime") != nm.get("runtime"):
            return (
                f"it was computed with the {om.get('runtime')} runtime, this run would use "
                f"{nm.get('runtime')} (set NUCLEISEG_RUNTIME={om.get('runtime')} to resume it)"
            )
        return f"it was made with {name(om)}, this run uses {name(nm)}"
    if old.get("stain") != new.get("stain"):
        return "it was made with another stain normalisation"
    return (
        f"it was made with tiles of {old.get('tile_px')} px and a {old.get('halo_px')} px halo, "
        f"this run uses {new.get('tile_px')} px and {new.get('halo_px')} px"
    )


# --------------------------------------------------------------------------- the store
def level_shapes(shape: tuple[int, int], tile: int) -> list[tuple[int, int]]:
    """Level 0 is the slide; each next level is 4× smaller, down to one chunk across."""
    shapes = [tuple(shape)]
    while max(shapes[-1]) > tile:
        h, w = shapes[-1]
        shapes.append((-(-h // PYRAMID_FACTOR), -(-w // PYRAMID_FACTOR)))
    return shapes


def _ngff_attrs(shapes, mpp: float) -> dict:
    datasets = [
        {
            "path": str(k),
            "coordinateTransformations": [
                {"type": "scale", "scale": [mpp * PYRAMID_FACTOR**k, mpp * PYRAMID_FACTOR**k]}
            ],
        }
        for k in range(len(shapes))
    ]
    return {
        "multiscales": [
            {
                "version": "0.4",
                "name": "nuclei",
                "axes": [
                    {"name": "y", "type": "space", "unit": "micrometer"},
                    {"name": "x", "type": "space", "unit": "micrometer"},
                ],
                "datasets": datasets,
                "type": "subsample",
                "metadata": {
                    "description": f"level k = level 0 sampled every {PYRAMID_FACTOR}**k pixels "
                    "(labels are never interpolated)"
                },
            }
        ],
        "image-label": {"version": "0.4"},
    }


def create_levels(root, shapes, tile: int, dtype) -> None:
    """The label pyramid's arrays, empty, in the zarr group ``root``."""
    for k, s in enumerate(shapes):
        root.create_array(
            str(k),
            shape=s,
            chunks=(tile, tile),
            dtype=dtype,
            fill_value=0,
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )


def open_or_create(path: Path, identity: dict, shape: tuple[int, int], tile: int, dtype) -> dict:
    """Open the store at ``path`` made with ``identity``, creating it when absent.

    Returns its ``nucleiseg`` attributes. Raises :class:`StoreMismatchError` when the store
    exists with another identity (another slide, method, model version or tiling). Array
    metadata that is missing or damaged is written again (:func:`repair_array_metadata`; a
    :class:`StoreRepairWarning` each).
    """

    path = Path(path)

    shapes = level_shapes(shape, tile)

    def fill(root, tmp: Path) -> None:
        create_levels(root, shapes, tile, dtype)
        (tmp / "progress" / "tiles").mkdir(parents=True)
        (tmp / "progress" / "chunks").mkdir(parents=True)
        root.attrs.update(
            {
                **_ngff_attrs(shapes, identity["slide"]["mpp"]),
                "nucleiseg": {"identity": identity, "finished": False, "levels": len(shapes)},
            }
        )

    create_aside(path, fill, "result store")
    attrs = read_attrs(path)
    meta = attrs.get("nucleiseg")
    if not isinstance(meta, dict) or "identity" not in meta:
        raise StoreMismatchError(
            path,
            "exists and is not a nucleiseg whole-slide result store; "
            "refusing to write into it (choose another --out)",
        )
    if meta["identity"] != identity:
        raise StoreMismatchError(
            path,
            f"{describe_difference(meta['identity'], identity)}; refusing to mix results — "
            "delete the store or choose another --out",
        )
    for line in repair_array_metadata(path, lambda root: create_levels(root, shapes, tile, dtype)):
        # Attributed to whoever iterates segment_slide (< _run_locked < _run < segment_slide).
        warnings.warn(line, StoreRepairWarning, stacklevel=5)
    return meta


def read_attrs(path: Path) -> dict:
    try:
        return json.loads((Path(path) / ".zattrs").read_text())
    except FileNotFoundError as exc:
        raise StoreMismatchError(
            path,
            "exists and is not a nucleiseg whole-slide result store; "
            "refusing to write into it (choose another --out)",
        ) from exc
    except (OSError, ValueError) as exc:
        raise StoreMismatchError(
            path, f"exists but its metadata cannot be read ({exc}); refusing to write into it"
        ) from exc


def update_attrs(path: Path, **nucleiseg) -> None:
    """Merge keys into the store's ``nucleiseg`` attributes (atomic rename of ``.zattrs``)."""
    attrs = read_attrs(path)
    attrs["nucleiseg"].update(nucleiseg)
    atomic_write(Path(path) / ".zattrs", lambda f: f.write(json.dumps(attrs, indent=1).encode()))


def finish(path: Path) -> None:
    """The job is done and recorded in ``.zattrs``: ``progress/`` becomes ``records/``, kept so
    that damaged exports or chunks can be rebuilt without segmenting again."""
    path = Path(path)
    progress, records = path / "progress", path / "records"
    if not progress.exists():
        return
    if records.exists():  # left by a run killed while reopening: progress/ is the newer
        shutil.rmtree(records)
    os.rename(progress, records)
    fsync_path(path)


def reopen(path: Path) -> None:
    """A finished store that failed its checks goes back to unfinished, to be resumed. The
    records move first: a run killed in between finds ``finished`` with ``progress/``, which
    :func:`finish` tidies and the checks then reopen again."""
    path = Path(path)
    progress, records = path / "progress", path / "records"
    if records.exists():
        if progress.exists():
            shutil.rmtree(progress)
        os.rename(records, progress)
        fsync_path(path)
    (progress / "tiles").mkdir(parents=True, exist_ok=True)
    (progress / "chunks").mkdir(parents=True, exist_ok=True)
    update_attrs(path, finished=False)


def tile_record(store: Path, key: str) -> Path:
    return Path(store) / "progress" / "tiles" / f"{key}.npz"


def chunk_record(store: Path, key: str) -> Path:
    return Path(store) / "progress" / "chunks" / f"{key}.json"


def finished_keys(store: Path, kind: str) -> set[str]:
    """Keys of the tiles (``kind="tiles"``) or chunks (``"chunks"``) a previous run recorded."""
    d = Path(store) / "progress" / kind
    suffix = ".npz" if kind == "tiles" else ".json"
    if not d.is_dir():
        return set()
    return {
        n[: -len(suffix)] for n in os.listdir(d) if n.endswith(suffix) and not n.startswith(".")
    }


def chunk_file(store: Path, level: int, row: int, col: int) -> Path:
    return Path(store) / str(level) / str(row) / str(col)


# --------------------------------------------------------------------------- reading
def open_labels(store_path) -> tuple[list, float, dict]:
    """Lazy multiscale labels of a result store, for napari: ``(levels, mpp, meta)``.

    ``levels`` are dask arrays, finest first (level 0 = slide level 0 pixels), read chunk by chunk
    on demand; ``mpp`` is µm per level-0 pixel; ``meta`` is the store's ``nucleiseg`` attributes
    (identity: slide, method, model version; ``finished``; ``summary``). Coarse levels are filled
    when the job finishes; level 0 grows as tiles finish.
    """
    import dask.array as da
    import zarr

    path = Path(store_path)
    attrs = read_attrs(path)
    if "nucleiseg" not in attrs or "multiscales" not in attrs:
        raise SlideError(path, "is not a nucleiseg whole-slide result store")
    group = zarr.open_group(str(path), mode="r")
    ms = attrs["multiscales"][0]
    levels = [da.from_zarr(group[d["path"]]) for d in ms["datasets"]]
    mpp = float(ms["datasets"][0]["coordinateTransformations"][0]["scale"][-1])
    return levels, mpp, attrs["nucleiseg"]
