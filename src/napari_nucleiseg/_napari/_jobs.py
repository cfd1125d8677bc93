"""Background runs for the dock widgets: a core progress generator in napari's ``thread_worker``.

The core yields after every tile (``(done, total)`` tuples, or objects with ``done``/``total``,
which may carry the result so far as ``so_far``; a whole-slide job's progress counts the tiles
segmented as ``segmented``, which is what "tiles done" means to the user: its ``done`` counts
tiles whose labels are merged, which lags behind); anything else it yields (an intermediate
result) goes to ``on_item``, as does a ``so_far``. The widget shows its own status line, a
progress bar with the ETA in the panel itself, and a Cancel button. Cancelling sets
a flag the worker thread checks between tiles, then closes the core generator *in the worker
thread* — so the core's own clean-up (recording finished tiles) runs there and the interface never
waits on it — and the run ends within one tile.
"""

from __future__ import annotations

import atexit
import math
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

#: Returned by a run that was cancelled.
CANCELLED = object()
#: Least seconds between two progress displays.
UPDATE_S = 0.25
#: A run still going after this many seconds gets a napari progress bar.
BAR_AFTER_S = 1.5


def _progress_of(item) -> tuple[int, int] | None:
    """``(tiles finished, tiles in all)`` of a progress item, or None for other items."""
    if isinstance(item, tuple) and len(item) == 2 and all(isinstance(v, int) for v in item):
        return item
    done, total = getattr(item, "done", None), getattr(item, "total", None)
    segmented = getattr(item, "segmented", None)
    if isinstance(segmented, int) and isinstance(done, int):
        done = max(done, segmented)  # tiles segmented: their nuclei are counted already
    if isinstance(done, int) and isinstance(total, int):
        return done, total
    return None


class _Background:
    """Work in a background thread that quitting must stop: set ``cancel``, then wait until the
    work has ended, or, if it is a generator suspended between items (``steps``, driven by a
    worker that has stopped iterating it, as napari's do when the app quits), close it here,
    which runs its own clean-up (a map thread cancelled and joined, finished tiles recorded).

    A process that quits while a worker thread is inside a native runtime (ONNX Runtime, torch)
    is killed in that runtime's C++ code ("terminate called without an active exception", exit
    status 134)."""

    def __init__(self, cancel: threading.Event | None, steps: Generator | None = None):
        self.cancel, self.steps = cancel, steps
        # Guards ``suspended`` and ``closing``: a worker resuming and an exit-time close are
        # never both at the generator. Not held while closing it (its clean-up may end here).
        self.lock = threading.Lock()
        self.suspended = False
        self.closing = False
        self.ended = threading.Event()
        _UNFINISHED.add(self)

    def _close(self) -> None:
        try:
            if self.steps is not None:
                self.steps.close()
        finally:
            self.ended.set()
            _UNFINISHED.discard(self)

    def end(self) -> None:
        """The work is over (closing ``steps`` if it is still open); safe to call twice."""
        with self.lock:
            if self.closing:
                return
            self.closing = True
        self._close()

    def close_if_suspended(self) -> bool:
        """Close the work now if it is suspended between items; whether it was."""
        with self.lock:
            if not self.suspended or self.closing:
                return False
            self.closing = True
        self._close()
        return True

    def stop_at_exit(self, deadline: float) -> None:
        while not self.ended.is_set() and time.monotonic() < deadline:
            if self.close_if_suspended():
                return
            self.ended.wait(0.05)


_UNFINISHED: set = set()
#: Seconds, in all, that quitting waits for background work to end.
EXIT_WAIT_S = 15.0


def _finish_background_work() -> None:
    deadline = time.monotonic() + EXIT_WAIT_S
    entries = list(_UNFINISHED)
    for work in entries:
        if work.cancel is not None:
            work.cancel.set()
    # Runs suspended between items first, whatever the deadline: a slow warm-up waited for
    # first must not leave one of them open. Then the rest, each as long as time is left.
    for stage in (lambda w: w.close_if_suspended(), lambda w: w.stop_at_exit(deadline)):
        for work in entries:
            try:
                stage(work)
            except Exception:  # noqa: BLE001 (one run's clean-up failing must not skip the rest)
                pass


atexit.register(_finish_background_work)


def wait_at_exit(cancel: threading.Event | None = None) -> Callable[[], None]:
    """Register background work that quitting must cancel (``cancel``) and wait for; returns the
    function the work calls, in a ``finally``, when it has ended."""
    return _Background(cancel).end


class JobFailed(Exception):
    """A run's RuntimeError, passed on as one the thread worker reports (see :func:`_drive`)."""


def _drive(steps: Generator, cancel: threading.Event, counted: list):
    """Runs in the worker thread: pass the core's items on, stop between tiles when cancelled.

    ``counted[0]`` is the latest progress as the worker has it: the interface learns of it only
    when it gets round to the queued report, which on a busy interface is tiles later.
    Registered for quitting (:class:`_Background`) only once it runs: a run queued but never
    started has nothing native to stop.
    """
    work = _Background(cancel, steps)
    try:
        while True:
            with work.lock:  # resumed: an exit-time close waits for the next item, or the end
                work.suspended = False
                closing = work.closing
            if cancel.is_set() or closing:
                return CANCELLED
            try:
                item = next(steps)
            except StopIteration as stop:
                return stop.value
            except RuntimeError as exc:
                # napari's (superqt's) thread worker drops a RuntimeError without ever reporting
                # the run as failed or finished, which would leave the panel busy for good; a
                # WeightsError, a child process's JobError are RuntimeErrors. Same message.
                raise JobFailed(str(exc)) from exc
            prog = _progress_of(item)
            if prog is not None:
                counted[0] = prog
            with work.lock:
                work.suspended = True
            yield item
    finally:
        work.end()


def then_in_worker(steps: Generator, finish: Callable[[Any], Any]):
    """Pass a job's progress on; when its last item says it finished, return ``finish(last)``,
    run here, in the worker thread (reading a large result must not make the interface wait).
    Returns None when the job ended unfinished; closing this closes ``steps``."""
    last = None
    try:
        for last in steps:
            yield last
    finally:
        steps.close()
    if not getattr(last, "finished", False):
        return None
    return finish(last)


def format_seconds(s: float, tenths: bool = False) -> str:
    """``12 s``, ``3 min 05 s``, ``1 h 02 min``; ``?`` when unknown (NaN, inf). ``tenths`` gives
    ``0.4 s`` under 10 s, for a time taken: a view segmented in under half a second read "done
    in 0 s". Estimates (ETA) stay whole seconds, so a bar repainted many times a second does not
    flicker."""
    if not math.isfinite(s):
        return "?"
    if tenths and s < 9.95:
        return f"{max(0.0, s):.1f} s"
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


class JobRunner:
    """One run at a time for a widget, with progress, ETA and cancel.

    Parameters
    ----------
    status : callable
        ``status(text)`` shows a line in the widget.
    cancel_button : magicgui PushButton, optional
        Enabled while a run is going.
    bar : QProgressBar, optional
        The panel's own progress bar (tiles and ETA), shown while a run is going. Without one,
        napari's progress bar (in its activity dock) is used for runs that last.
    """

    def __init__(self, status: Callable[[str], None], cancel_button=None, bar=None):
        self._status = status
        self._cancel_button = cancel_button
        self._bar = bar
        if bar is not None:
            bar.setVisible(False)
        self.worker = None
        self.title = ""
        self._cancel = threading.Event()
        self._pbar = None
        self._started = 0.0
        self._done = (0, 0)
        self._unit = "tiles"
        self._counted = [(0, 0)]
        #: Tiles the worker had finished when Cancel was pressed (None: not cancelled).
        self.done_at_cancel = None
        self._first = None
        self._shown = 0.0
        self._ended = True
        #: The panel is gone (closed, or its window quit): a run still going is cancelled and
        #: what it reports afterwards is dropped, since it would touch deleted Qt widgets.
        self._gone = False
        if cancel_button is not None:
            cancel_button.enabled = False
            cancel_button.changed.connect(self.cancel)
            cancel_button.native.destroyed.connect(self._panel_gone)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def busy_message(self) -> str:
        done, total = self._done
        where = f" ({done}/{total} {self._unit})" if total > 1 else ""  # not "(0/1 tiles)"
        return (
            f"{self.title}{where} is still running: wait for it to finish, or press Cancel first."
        )

    def start(
        self,
        title: str,
        steps: Generator,
        *,
        on_item: Callable[[Any], None] | None = None,
        on_progress: Callable[[Any], None] | None = None,
        on_done: Callable[[Any], None] | None = None,
        on_cancelled: Callable[[], None] | None = None,
        on_error: Callable[[Exception], None] | None = None,
        cancelled_note: str | Callable[[], str] = "",
    ):
        """Run ``steps`` in a worker thread; returns the worker, or None (after saying why) when a
        run is already going. ``cancelled_note`` tells the user what a cancel leaves behind (a
        function: asked once the run has stopped, e.g. to count what was kept)."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_warning

        if self.running:
            show_warning(self.busy_message())
            steps.close()
            return None
        self.title = title
        self._cancel = threading.Event()
        self._started = time.perf_counter()
        self._done = (0, 0)
        self._unit = "tiles"
        self._counted = [(0, 0)]
        self.done_at_cancel = None
        self._first = None
        self._shown = 0.0
        self._status(f"{title}: starting…")
        worker = create_worker(
            _drive, steps, self._cancel, self._counted, _start_thread=False, _ignore_errors=True
        )
        # Each signal names its worker: a run started from a done callback must not take the
        # signals of the run that just ended (its ``finished`` arrives after ``returned``).
        worker.yielded.connect(
            lambda item, w=worker: self._on_yielded(w, item, on_item, on_progress)
        )
        worker.returned.connect(
            lambda value, w=worker: self._on_returned(
                w, value, on_done, on_cancelled, cancelled_note
            )
        )
        worker.errored.connect(lambda exc, w=worker: self._on_errored(w, exc, on_error))
        worker.finished.connect(lambda w=worker: self._end(w))
        self.worker = worker
        self._ended = False
        if self._cancel_button is not None:
            self._cancel_button.enabled = True
        # napari's progress bar (with its ETA and Cancel) appears only for runs that last: a run
        # of a second or two needs none, and while a bar is up napari animates an activity
        # indicator, which costs CPU the run could use (a lot with software OpenGL).
        from qtpy.QtCore import QTimer

        self._pbar = None
        if self._bar is not None:
            self._bar.setRange(0, 0)  # busy until the first tile is counted
            self._bar.setFormat("starting…")
            self._bar.setVisible(True)
        else:
            QTimer.singleShot(int(BAR_AFTER_S * 1000), lambda w=worker: self._make_bar(w))
        worker.start()
        return worker

    def _make_bar(self, worker) -> None:
        from napari.utils import cancelable_progress

        if self.worker is not worker or self._ended or self._gone or self._pbar is not None:
            return
        done, total = self._done
        # napari processes pending events while it adds a bar: progress handled meanwhile is
        # applied to it below.
        bar = cancelable_progress(total=total, desc=self.title, cancel_callback=self.cancel)
        if self.worker is not worker or self._ended:
            bar.close()
            return
        self._pbar = bar
        self._update_bar(*self._done)

    def _panel_gone(self, _=None) -> None:
        self._gone = True
        self._cancel.set()

    def cancel(self, _=None) -> None:
        if not self.running:
            return
        if not self._cancel.is_set():
            self.done_at_cancel = self._counted[0][0]
        self._cancel.set()
        self._status(f"{self.title}: cancelling after the current tile…")

    # ------------------------------------------------------------------ main-thread callbacks
    def _on_yielded(self, worker, item, on_item, on_progress) -> None:
        if self._gone:
            return
        prog = _progress_of(item)
        if prog is None:
            if on_item is not None:
                on_item(item)
            return
        if self._ended or self.worker is not worker:  # delivered late: the run is over
            return
        so_far = getattr(item, "so_far", None)
        if so_far is not None and on_item is not None:
            on_item(so_far)
        done, total = prog
        self._done = (done, total)
        self._unit = getattr(item, "unit", "tiles")  # a retraining counts seconds
        # Bursts of progress (a job finishing many small tasks at once) are shown a few times a
        # second, not each: every update repaints the bar and the panel.
        now = time.perf_counter()
        if now - self._shown < UPDATE_S and done < total:
            return
        self._shown = now
        text = f"{self.title}: {done}/{total} {self._unit}"
        eta = self._eta(item, done, total)
        if eta is not None:
            text += f" · ETA {format_seconds(eta)}"
        self._status(text)
        self._update_bar(done, total)
        self._update_panel_bar(item, done, total, eta)
        if on_progress is not None:
            on_progress(item)

    def _eta(self, item, done: int, total: int) -> float | None:
        """Seconds left, from the rate since this run started (tiles finished by an earlier,
        resumed run do not count as speed). A core progress object with a ``fraction`` of the
        work (which weighs stages by their cost) is preferred over the tile count."""
        now = time.perf_counter()
        frac = getattr(item, "fraction", None)
        frac = float(frac) if isinstance(frac, (int, float)) else (done / total if total else None)
        if frac is None:
            return None
        if self._first is None:
            self._first = (now, frac)
            return None
        t0, f0 = self._first
        if frac >= 1 or frac <= f0 or now - t0 < 0.5:
            return None
        return (now - t0) / (frac - f0) * (1 - frac)

    def _update_panel_bar(self, item, done: int, total: int, eta) -> None:
        if self._bar is None or not total:
            return
        frac = getattr(item, "fraction", None)
        frac = float(frac) if isinstance(frac, (int, float)) else done / total
        self._bar.setRange(0, 1000)
        self._bar.setValue(int(round(1000 * min(1.0, max(0.0, frac)))))
        text = f"{done}/{total} {self._unit}"
        if eta is not None:
            text += f" · ETA {format_seconds(eta)}"
        self._bar.setFormat(text)

    def _update_bar(self, done: int, total: int) -> None:
        if self._pbar is None:
            return
        if self._pbar.total != total:
            self._pbar.total = total
        if done > self._pbar.n:
            self._pbar.update(done - self._pbar.n)

    def _end(self, worker) -> None:
        """The run of ``worker`` is over: no longer running, its bar closed, Cancel disabled.

        Done *before* the run's done/cancelled/error callback is called, so that callback sees the
        runner free and may start the next step at once (a fit, then its normalised view).
        """
        if self.worker is not worker or self._gone:
            return
        self._ended = True
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        if self._bar is not None:
            self._bar.setVisible(False)
        self.worker = None
        if self._cancel_button is not None:
            self._cancel_button.enabled = False

    def _on_returned(self, worker, value, on_done, on_cancelled, note="") -> None:
        if self._gone:
            return
        self._end(worker)
        elapsed = format_seconds(time.perf_counter() - self._started, tenths=True)
        if value is CANCELLED:
            # The worker's own count: every tile it finished, reported or not yet shown.
            done, total = self._done = self._counted[0]
            note = note() if callable(note) else note
            self._status(
                f"{self.title}: cancelled after {done}/{total} {self._unit}"
                f"{'; ' + note if note else ''}."
            )
            if on_cancelled is not None:
                on_cancelled()
            return
        self._status(f"{self.title}: done in {elapsed}.")
        if on_done is not None:
            on_done(value)

    def _on_errored(self, worker, exc, on_error) -> None:
        from napari.utils.notifications import show_error

        from ._layers import in_user_words

        if self._gone:
            return
        self._end(worker)
        self._status(f"{self.title}: {in_user_words(exc)}")
        if on_error is not None:
            on_error(exc)
        else:
            show_error(in_user_words(exc))
