"""``segment_slide``: every nucleus of a whole slide, streamed to disk, resumable, on threads or
dask.

The driver (this generator) computes the tissue tiles, creates or re-opens the result store, and
hands out tasks (:mod:`.tasks`): segment each tissue tile not yet recorded; merge each level-0
chunk as soon as the tiles around it are recorded; at the end build the coarse levels and stream
the table and outlines. It never holds more than a few tasks' results, so its memory does not grow
with the slide, and it yields a :class:`SlideProgress` after every finished task. Closing the
generator cancels what has not started; what has finished stays recorded and the next call with
the same arguments goes on from there.

Where tasks run: ``scheduler=None`` — a thread pool in this process (``workers`` threads, default
2). It is the default of the GUI and of ``nucleiseg segment`` without ``--scheduler``: on two
cores it is within measurement noise of a local cluster of processes (benchmarks/wholeslide.py),
starts at once and holds one copy of the model; the network runs one pass at a time (it already
uses every core) while the other thread reads, measures, outlines and writes.
``"local"`` — a dask.distributed LocalCluster of ``workers`` single-threaded processes;
``"tcp://host:port"`` (or a ``distributed.Client``) — an existing cluster whose workers see the
slide and the output folder at the same paths. A worker that dies mid-task has its task re-run
elsewhere by dask; tasks are idempotent (atomic writes of deterministic content), so the result
is the same.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..io.errors import SlideError
from . import edit, verify
from . import store as st
from .tasks import (
    LOCAL_BITS,
    Job,
    build_level_chunk,
    key,
    segment_tile,
    sharing_cores_for,
    write_chunk,
)

#: Largest tissue-mask edge (px): the mask's memory is then the same for any slide above ~16 mm
#: (512 px is still 5+ mask pixels across a 480-µm tile on a 50-mm slide).
MASK_MAX_PX = 512


class JobInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGINT) stopped a job; ``str()`` says how many tiles are kept. Still a
    ``KeyboardInterrupt``, so callers that stop on one stop on this (and exit 130)."""

    def __init__(self, message: str, store=None, total=None, tissue=None):
        super().__init__(message)
        self.store, self.total, self.tissue = store, total, tissue

    def recount(self) -> JobInterrupted:
        """The same interruption counted again: once a cluster's workers are closed, a tile
        that was finishing as we stopped is on disk and kept too."""
        return interrupted(self.store, self.total, self.tissue) if self.store else self


def interrupted(store: Path, total: int | None, tissue=None) -> JobInterrupted:
    """The interruption of a job on ``store`` of ``total`` tissue tiles, counting the tile
    records on disk (call once running tasks have ended: theirs count)."""
    if total is None:
        return JobInterrupted(
            "interrupted before the slide's tiles were counted; run the same command to resume"
        )
    kept = st.finished_keys(store, "tiles")
    if tissue is not None:
        kept &= {key(*rc) for rc in tissue}
    return JobInterrupted(
        f"interrupted: {len(kept)} of {total} tiles finished are kept; run the same command "
        "to resume",
        store,
        total,
        tissue,
    )


@dataclass
class SlideProgress:
    """Where a slide's job stands; yielded after every finished task.

    ``done`` counts tissue tiles whose labels are final in the store, ``segmented`` those whose
    nuclei are recorded (a tile is final once its neighbours are segmented too), ``total`` all
    tissue tiles; ``resumed`` tiles were already segmented by an earlier run. ``nuclei`` counts
    kept nuclei of final tiles plus owned nuclei of the others (exact once ``finished``).
    """

    slide: str
    done: int
    total: int
    nuclei: int
    store: Path
    finished: bool = False
    segmented: int = 0
    resumed: int = 0
    stage: str = "segment"
    elapsed: float = 0.0

    @property
    def fraction(self) -> float:
        if self.finished:
            return 1.0
        # Segmenting is most of the work; merging and finishing the rest.
        return (0.8 * self.segmented + 0.2 * self.done) / max(1, self.total)


# --------------------------------------------------------------------------- runners
@contextmanager
def _ctrl_c_waits():
    """Ctrl-C arriving inside the block takes effect as the block ends.

    Why: a ``KeyboardInterrupt`` raised while the pool starts a worker thread (inside ``submit``,
    between the thread's start and its registration) leaves a thread running that the pool's
    ``shutdown(wait=True)`` does not wait for; the job then closes the slide under that thread's
    read and the process dies of a segmentation fault instead of exiting 130 (3 runs in 25
    under load, Ctrl-C just after the first progress line). Masking SIGINT in this thread would
    not help: the kernel hands it to another thread (zarr's, asyncio's) and Python still raises
    it here. So the handler itself is swapped for one that notes the signal, and the original
    handler gets it again on the way out."""
    import signal
    import threading

    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is None  # a handler not set from Python: leave it
    ):
        yield  # signal handlers run in the main thread only: nothing reaches this one
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            signal.raise_signal(signal.SIGINT)


class _Threads:
    kind = "threads"

    def __init__(self, workers: int):
        from concurrent.futures import ThreadPoolExecutor

        self.workers = workers
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="nucleiseg")

    def slots(self) -> int:
        return 2 * self.workers

    def submit(self, fn, *args, key=None):
        # The workers' network passes share the cores instead of taking turns at all of them.
        with _ctrl_c_waits():  # the first calls start the worker threads
            return self.pool.submit(sharing_cores_for, self.workers, fn, *args)

    def wait_any(self, futures):
        from concurrent.futures import FIRST_COMPLETED, wait

        return wait(futures, return_when=FIRST_COMPLETED).done

    def cancel(self, futures) -> None:
        for f in futures:
            f.cancel()

    def close(self) -> None:
        # Waits for the (at most ``workers``) running tasks, through a second Ctrl-C too: no
        # write or slide read outlives the call (a tile takes a second or two).
        with _ctrl_c_waits():
            self.pool.shutdown(wait=True, cancel_futures=True)


def connect(scheduler, workers: int | None = None):
    """A dask client for ``scheduler`` (``"local"``: a new LocalCluster of ``workers``
    single-threaded processes; else the address of a running scheduler): ``(client, cluster)``."""
    from distributed import Client, LocalCluster

    if scheduler == "local":
        # dashboard_address=None only drops the dashboard's pages: the scheduler still serves
        # HTTP (health, metrics, and on :8787 when free) and each worker on a random port. No
        # one asked for a web server, so none is left running: the scheduler's binds to a
        # loopback port of the system's choosing (never 8787) and, with the workers', is closed
        # as soon as the cluster is up.
        cluster = LocalCluster(
            n_workers=workers or os.cpu_count() or 1,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
        )
        client = Client(cluster)
        try:
            client.run(_close_http_server)
            client.run_on_scheduler(_close_http_server)
        except BaseException:
            client.close()
            cluster.close()
            raise
        cluster.scheduler_info.get("services", {}).pop("dashboard", None)
        return client, cluster
    _check_address(scheduler)
    try:
        return Client(scheduler, timeout="20s"), None
    except (OSError, TimeoutError) as exc:
        raise ConnectionError(f"cannot reach the dask scheduler at {scheduler}: {exc}") from exc


def _check_address(scheduler: str) -> None:
    """Refuse what is not a scheduler address ("bogus", "http://x") by its syntax alone, before
    a Client starts an event loop for it (where the error surfaced as a dask traceback, or as
    an assertion in dask's loop runner)."""
    from distributed.comm.addressing import parse_address, parse_host_port
    from distributed.comm.registry import get_backend

    try:
        scheme, location = parse_address(scheduler)
        get_backend(scheme)
        if scheme in ("tcp", "tls", "ws", "wss"):
            parse_host_port(location)
    except ValueError as exc:
        raise ConnectionError(
            f"{scheduler!r} is not a dask scheduler address ({exc}): give HOST:PORT, "
            "tcp://HOST:PORT, or local"
        ) from None


async def _close_http_server(dask_worker=None, dask_scheduler=None) -> None:
    """Stop a dask server's HTTP server (run on its event loop by ``Client.run``). A worker
    process of our own cluster also leaves Ctrl-C to us: the terminal sends SIGINT to the whole
    process group, and a worker dying of it prints a traceback; we stop the job and close the
    cluster (its workers with it) ourselves."""
    server = dask_worker if dask_worker is not None else dask_scheduler
    http = getattr(server, "http_server", None)
    if http is not None:
        http.stop()
    server.services.pop("dashboard", None)
    if dask_worker is not None:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Dask:
    kind = "dask"

    def __init__(self, scheduler, workers: int | None):
        from distributed import Client

        if isinstance(scheduler, Client):
            self.client, self.cluster, self.own = scheduler, None, False
        else:
            (self.client, self.cluster), self.own = connect(scheduler, workers), True
        #: Worker processes on this machine (a cluster made here), whose passes share its cores;
        #: None for a cluster elsewhere, whose machines we do not know.
        self.local = len(self.cluster.workers) if self.cluster is not None else None
        self._slots, self._checked = 4, 0.0

    def slots(self) -> int:
        if time.monotonic() - self._checked > 5:  # workers may join or leave
            self._slots = max(4, 2 * sum(self.client.nthreads().values()))
            self._checked = time.monotonic()
        return self._slots

    def submit(self, fn, *args, key=None):
        if self.local:
            return self.client.submit(
                sharing_cores_for, self.local, fn, *args, key=key, pure=False, retries=1
            )
        return self.client.submit(fn, *args, key=key, pure=False, retries=1)

    def wait_any(self, futures):
        from distributed import wait

        return wait(list(futures), return_when="FIRST_COMPLETED").done

    def cancel(self, futures) -> None:
        if futures:
            self.client.cancel(list(futures))

    def close(self) -> None:
        if self.own:
            self.client.close()
            if self.cluster is not None:
                self.cluster.close()


def make_runner(scheduler=None, workers: int | None = None):
    if scheduler is None:
        return _Threads(workers or min(2, os.cpu_count() or 1))
    return _Dask(scheduler, workers)


# --------------------------------------------------------------------------- the job
def _stain_identity(normaliser):
    if normaliser is None:
        return None
    profile = getattr(normaliser, "profile", None)
    import dataclasses

    if dataclasses.is_dataclass(profile):
        import json

        plain = json.dumps(
            dataclasses.asdict(profile),
            default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v),
        )
        return json.loads(plain)
    if getattr(normaliser, "method", "") == "learned":
        # The model, the slide's stain map and the colour pull: a run resumed with another pull
        # (or model) must not mix tiles of two colour maps. Not the runtime: same colours.
        return {k: v for k, v in normaliser.describe().items() if k != "runtime"}
    return repr(profile if profile is not None else normaliser)


def plan(slide, *, method=None, normaliser=None, tile_um=None, min_tissue: float = 0.01):
    """The tiling and identity of a job, without running it:
    ``(job_kwargs, tissue_keys, identity)``."""
    from ..methods import get_method
    from ..segmentation.api import describe_method
    from ..tiling import TileGrid, plan_tiles
    from ..tissue import tissue_mask

    mpp = slide.mpp
    if mpp is None:
        raise SlideError(
            slide.path, "states no µm/px; give it with --mpp (e.g. 0.25 for 40x, 0.5 for 20x)"
        )
    m = get_method(method)
    info = describe_method(m)
    # The tile planner's tiles (the method's core, balanced over the slide, on its pooling
    # grid), exactly as in-memory segmentation cuts the same pixels.
    tiles = plan_tiles(slide.shape, mpp, m, None if tile_um is None else tile_um / mpp)
    tile, halo = tiles.tile, tiles.halo
    if 2 * halo > tile and max(slide.shape) < 2 * halo:  # the tile shrank to the slide
        h, w = slide.shape
        raise SlideError(
            slide.path,
            f"{w * mpp:g} x {h * mpp:g} µm is smaller than a whole-slide tile can be (twice "
            f"the {m.context_um:g} µm halo, {2 * m.context_um:g} µm): segment it as an image, "
            "without --whole-slide",
        )
    if 2 * halo > tile:
        raise ValueError(
            f"tiles of {tile * mpp:g} µm are too small: they must be at least twice the "
            f"{m.context_um:g} µm halo ({2 * m.context_um:g} µm)"
        )
    grid = TileGrid(slide.shape, tile, halo)
    # A mask of at most 512² px (and ≥ 16 µm/px): a few MB whatever the slide's size.
    tissue = grid.tissue_tiles(tissue_mask(slide, max_size=MASK_MAX_PX), min_tissue)
    dtype = "uint32" if len(grid) <= 2 ** (32 - LOCAL_BITS) else "uint64"
    identity = {
        "format": st.STORE_FORMAT,
        "slide": st.slide_fingerprint(slide),
        "method": info,
        "stain": _stain_identity(normaliser),
        "tile_px": tile,
        "halo_px": halo,
        "min_tissue": min_tissue,
        "mask_max_px": MASK_MAX_PX,
    }
    kwargs = dict(
        mpp=mpp,
        method=method,
        tile=tile,
        halo=halo,
        shape=tuple(slide.shape),
        rows=grid.rows,
        cols=grid.cols,
        dtype=dtype,
        normaliser=normaliser,
    )
    return kwargs, [(t.row, t.col) for t in tissue], identity


def segment_slide(
    slide,
    out_dir,
    *,
    method: str | None = None,
    mpp: float | None = None,
    normaliser=None,
    tile_um: float | None = None,
    scheduler=None,
    workers: int | None = None,
    min_tissue: float = 0.01,
) -> Iterator[SlideProgress]:
    """Segment every nucleus of a whole slide into ``<out_dir>/<stem>.nuclei.zarr`` (+ .csv,
    .parquet, .geojson), yielding progress after every finished task.

    Parameters
    ----------
    slide
        Path of the slide, or an opened :class:`~napari_nucleiseg.io.Slide`.
    out_dir
        Folder for the result store and exports (created if missing).
    method
        Model name (default: the shipped model), ``"classical"`` or ``"classical-phansalkar"``.
    mpp
        µm/px of a slide that does not state it (or overriding what it states).
    normaliser
        A fitted stain normaliser (``.transform(rgb) -> rgb``) applied to each tile first.
    tile_um
        Tile core edge in µm (default: the method's own core, balanced over the slide).
    scheduler, workers
        ``None``: ``workers`` threads here (default 2); ``"local"``: a LocalCluster of ``workers``
        processes; ``"tcp://host:port"`` or a ``distributed.Client``: that cluster.

    Raises
    ------
    SlideError
        The slide cannot be read (named), or states no µm/px.
    StoreMismatchError
        The output store holds another slide's, method's, model version's or tiling's results.
    DiskFullError
        No space left; finished tiles stay recorded, the same call resumes.
    """
    from ..io import slide_for_job

    with slide_for_job(slide, mpp) as slide:
        yield from _run(
            slide, Path(out_dir), method, normaliser, tile_um, scheduler, workers, min_tissue
        )


def _run(slide, out_dir, method, normaliser, tile_um, scheduler, workers, min_tissue):
    path = st.store_path(out_dir, slide.path)
    # The lock comes first: a second job on this store stops here, having touched nothing.
    with st.StoreLock(path):
        # Temporaries a killed run left in the output folder are ours to clear (under the lock).
        st.remove_stale_outputs(out_dir, st.slide_stem(slide.path))
        yield from _run_locked(
            slide, path, out_dir, method, normaliser, tile_um, scheduler, workers, min_tissue
        )


#: Repair lines shown one by one; beyond this many (a records folder deleted whole) the rest
#: are counted, not listed.
MAX_REPAIR_LINES = 20


def _warn(lines) -> None:
    import warnings

    # Attributed to whoever iterates segment_slide (_warn < _run_locked < _run < segment_slide).
    for line in lines[:MAX_REPAIR_LINES]:
        warnings.warn(line, st.StoreRepairWarning, stacklevel=5)
    if len(lines) > MAX_REPAIR_LINES:
        warnings.warn(
            f"... and {len(lines) - MAX_REPAIR_LINES} more files like these, redone the same way",
            st.StoreRepairWarning,
            stacklevel=5,
        )


def _replay(path: Path, slide) -> None:
    """Write the store's logged corrections again (after a rebuild); a correction that cannot be
    is one warning line, and the marker stays so the next run tries again."""
    import warnings

    lines = edit.replay(path, slide=slide)
    # Attributed to whoever iterates segment_slide (_replay < _run_locked < _run < segment_slide).
    for line in lines:
        warnings.warn(line, st.StoreRepairWarning, stacklevel=5)
    if not lines:
        edit.clear_replay(path)


def _run_locked(slide, path, out_dir, method, normaliser, tile_um, scheduler, workers, min_tissue):
    t_start = time.perf_counter()
    kwargs, tissue, identity = plan(
        slide, method=method, normaliser=normaliser, tile_um=tile_um, min_tissue=min_tissue
    )
    # A correction (wholeslide.edit) a killed save committed is finished, one it had not
    # committed dropped, before anything reads the store: else the checks would find its chunks
    # changed and rebuild them uncorrected. recover does not take the store's lock (held here).
    edit.recover(path)
    meta = st.open_or_create(path, identity, kwargs["shape"], kwargs["tile"], kwargs["dtype"])
    name = str(slide.path)
    total = len(tissue)
    job = Job(
        slide=slide,
        store=str(path),
        levels=int(meta.get("levels", 1)),
        method_identity=identity["method"],
        **kwargs,
    )
    st.remove_stale_temporaries(path)
    if meta.get("finished"):
        st.finish(path)  # a run killed while tidying up left progress/ beside the flag
        chunks = {nb for rc in tissue for nb in job.neighbours(*rc)}
        problems = verify.check_finished(path, out_dir, meta, tissue, chunks)
        if not problems:
            if edit.replay_pending(path):  # killed while writing the corrections again
                _replay(path, slide)
                meta = st.read_attrs(path)["nucleiseg"]
            n = int(meta.get("summary", {}).get("nuclei", 0))
            yield SlideProgress(name, total, total, n, path, True, total, total, "done", 0.0)
            return
        # Whatever is damaged was deleted by the check; the job redoes it like an interrupted
        # run would, from the records that are intact.
        _warn(problems)
        st.reopen(path)
    progress_dir = path / "progress"
    _warn(verify.check_records(path, progress_dir, thorough=True))
    (progress_dir / "levels.json").unlink(missing_ok=True)  # the pyramid is built again anyway
    state = _State(job, tissue)
    progress = lambda stage: SlideProgress(  # noqa: E731
        name,
        len(state.chunk_done & state.tissue),
        total,
        state.nuclei(),
        path,
        False,
        len(state.seg_done),
        state.resumed,
        stage,
        time.perf_counter() - t_start,
    )
    runner = None
    try:
        try:
            yield progress("segment")
            runner = make_runner(scheduler, workers)
            yield from _segment_and_merge(runner, job, state, progress)
            levels = yield from _build_pyramid(runner, job, state, progress)
            st.atomic_json(progress_dir / "levels.json", levels)
            yield progress("tables")
            n, outputs = _write_exports(job, state, path, out_dir, identity)
            summary = {
                "nuclei": n,
                "tissue_tiles": total,
                "tiles": job.rows * job.cols,
                "tile_px": job.tile,
                "halo_px": job.halo,
                "seconds_last_run": round(time.perf_counter() - t_start, 2),
                "resumed_tiles": state.resumed,
                "runner": runner.kind,
            }
            # The exports (and any rebuilt chunk) come from the tile records, without the
            # corrections: noted before the store says finished, so they are written again
            # below or, killed before that, by the next run.
            corrected = edit.has_log(path)
            if corrected:
                edit.mark_replay(path)
            st.update_attrs(path, finished=True, summary=summary, outputs=outputs)
            st.finish(path)
        finally:
            # Waits for running tasks: their tiles are recorded before we count them below.
            if runner is not None:
                runner.close()
    except KeyboardInterrupt:
        raise interrupted(path, total, state.tissue) from None
    except OSError as exc:
        if st.is_no_space(exc):
            raise st.DiskFullError(
                path,
                f"disk full while writing results ({exc.strerror}); "
                f"{len(state.chunk_done & state.tissue)} "
                f"of {total} tiles are finished and {len(state.seg_done)} segmented, and they stay "
                "recorded: free some space and run the same command again to resume",
            ) from exc
        raise
    if corrected:
        _replay(path, slide)
        n = int(st.read_attrs(path)["nucleiseg"].get("summary", {}).get("nuclei", n))
    yield SlideProgress(
        name,
        total,
        total,
        n,
        path,
        True,
        len(state.seg_done),
        state.resumed,
        "done",
        time.perf_counter() - t_start,
    )


class _State:
    """What is recorded: segmented tiles, written chunks, nuclei counts (from records on resume)."""

    def __init__(self, job: Job, tissue):
        import json

        import numpy as np

        self.job = job
        self.tissue = set(tissue)
        self.order = sorted(self.tissue, key=lambda rc: job.index(*rc))
        # Chunks to write: every tissue tile and every tile next to one (a nucleus owned by a
        # tissue tile may reach into its neighbour's chunk).
        self.chunks = {nb for rc in self.tissue for nb in job.neighbours(*rc)}
        self.seg_done, self.chunk_done, self.nonzero, self.owned = set(), set(), set(), {}
        self.count = 0
        seg_keys, chunk_keys = (
            st.finished_keys(job.store, "tiles"),
            st.finished_keys(job.store, "chunks"),
        )
        for rc in self.order:
            if key(*rc) in seg_keys:
                with np.load(st.tile_record(job.store, key(*rc))) as z:
                    self.tile_done(rc, int(z["owned"]))
        for rc in self.chunks:
            if key(*rc) in chunk_keys:
                rec = json.loads(st.chunk_record(job.store, key(*rc)).read_text())
                self.chunk_written(rc, len(rec["kept"]), rec["nonzero"])
        self.resumed = len(self.seg_done)

    def tile_done(self, rc, owned: int) -> None:
        self.seg_done.add(rc)
        self.owned[rc] = owned
        self.count += owned

    def chunk_written(self, rc, kept: int, nonzero: bool) -> None:
        self.chunk_done.add(rc)
        if rc in self.tissue:  # its owned nuclei less the duplicates dropped
            self.count += kept - self.owned.get(rc, 0)
        if nonzero:
            self.nonzero.add(rc)

    def nuclei(self) -> int:
        return self.count

    def sources(self, rc):
        return [nb for nb in self.job.neighbours(*rc) if nb in self.tissue]

    def chunk_ready(self, rc) -> bool:
        return rc not in self.chunk_done and all(nb in self.seg_done for nb in self.sources(rc))


def _segment_and_merge(runner, job: Job, state: _State, progress):
    run = uuid.uuid4().hex[:8]
    stem = st.slide_stem(job.slide.path)
    to_segment = [rc for rc in state.order if rc not in state.seg_done]
    to_segment.reverse()  # pop() from the end = raster order
    ready = sorted(
        (rc for rc in state.chunks if state.chunk_ready(rc)), key=lambda rc: job.index(*rc)
    )
    queued = set(ready)
    inflight: dict = {}
    try:
        while to_segment or ready or inflight:
            # Merging first: it frees the tile records' neighbours soonest and streams results out.
            while (ready or to_segment) and len(inflight) < runner.slots():
                if ready:
                    rc = ready.pop(0)
                    f = runner.submit(
                        write_chunk,
                        job,
                        *rc,
                        state.sources(rc),
                        key=f"nucleiseg-merge-{stem}-{key(*rc)}-{run}",
                    )
                    inflight[f] = ("chunk", rc)
                else:
                    rc = to_segment.pop()
                    f = runner.submit(
                        segment_tile, job, *rc, key=f"nucleiseg-tile-{stem}-{key(*rc)}-{run}"
                    )
                    inflight[f] = ("tile", rc)
            for f in runner.wait_any(inflight):
                kind, rc = inflight.pop(f)
                result = f.result()  # re-raises the task's error (SlideError, OSError, ...)
                if kind == "tile":
                    state.tile_done(rc, result["owned"])
                    for nb in job.neighbours(*rc):
                        if nb in state.chunks and nb not in queued and state.chunk_ready(nb):
                            ready.append(nb)
                            queued.add(nb)
                    ready.sort(key=lambda x: job.index(*x))
                else:
                    state.chunk_written(rc, result["kept"], result["nonzero"])
                yield progress(
                    "segment"
                    if to_segment or any(k == "tile" for k, _ in inflight.values())
                    else "merge"
                )
    finally:
        if inflight:
            runner.cancel(list(inflight))


def _build_pyramid(runner, job: Job, state: _State, progress):
    """Build the coarse levels; returns ``{level: {"i_j": [size, CRC-32] or None}}`` of every
    chunk written, for the store's later checks."""
    run = uuid.uuid4().hex[:8]
    stem = st.slide_stem(job.slide.path)
    nonzero = set(state.nonzero)
    digests: dict[str, dict] = {}
    for level in range(1, job.levels):
        digests[str(level)] = written = {}
        coarse = sorted({(i // st.PYRAMID_FACTOR, j // st.PYRAMID_FACTOR) for i, j in nonzero})
        futures = {
            runner.submit(
                build_level_chunk,
                job.store,
                level,
                i,
                j,
                job.tile,
                key=f"nucleiseg-level{level}-{stem}-{i}_{j}-{run}",
            ): (i, j)
            for i, j in coarse
        }
        nonzero = set()
        try:
            while futures:
                for f in runner.wait_any(futures):
                    ij = futures.pop(f)
                    any_label, written[key(*ij)] = f.result()
                    if any_label:
                        nonzero.add(ij)
        finally:
            if futures:
                runner.cancel(list(futures))
        yield progress("pyramid")
    return digests


def _write_exports(job: Job, state: _State, path: Path, out_dir: Path, identity):
    """Stream the kept nuclei of every tile, in tile order, into the CSV, Parquet and GeoJSON.
    Returns the number of nuclei and, per export, its file name, size and SHA-256 (what the
    store's checks compare it with later)."""

    import numpy as np

    from ..segmentation.measure import COLUMNS
    from .export import GeoJSONWriter, TableWriter
    from .tasks import DamagedRecordError, load_tile

    stem = st.slide_stem(job.slide.path)
    label_type = "uint32" if job.dtype == "uint32" else "uint64"
    files = {kind: out_dir / f"{stem}.nuclei.{kind}" for kind in ("csv", "parquet", "geojson")}
    with (
        TableWriter(files["csv"], files["parquet"], label_type) as tw,
        GeoJSONWriter(files["geojson"], identity["slide"]["sha1_head_tail"]) as gw,
    ):
        for rc in state.order:
            rec = verify.read_chunk_record(st.chunk_record(job.store, key(*rc)))
            if rec is None:  # checked at the start of the run: damaged since
                raise DamagedRecordError(
                    f"{st.chunk_record(job.store, key(*rc))} is missing or damaged; run the "
                    "same command again: the store checks its records and redoes this chunk"
                )
            kept = rec["kept"]
            if not kept:
                continue
            rec = load_tile(job.store, *rc)
            rows = np.asarray(kept, np.int64) - 1  # local id i is row i - 1 of the tile's table
            base = np.uint64(job.index(*rc)) << np.uint64(LOCAL_BITS)
            table = {c: rec[f"col_{c}"][rows] for c in COLUMNS}
            table["label"] = base + table["label"].astype(np.uint64)
            offs, xy = rec["ring_offsets"], rec["ring_xy"]
            tw.add(table)
            gw.add(table, [xy[offs[i] : offs[i + 1]] for i in rows])
    outputs = {
        kind: {"file": f.name, "bytes": f.stat().st_size, "sha256": st.sha256_file(f)}
        for kind, f in files.items()
    }
    return tw.count, outputs
