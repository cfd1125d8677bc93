"""The widgets' job runner in a Qt event loop (run under Xvfb): a run that ends frees the runner
before its done callback runs, so the next step can start from there (a stain fit, then its
normalised view) and is not taken for the run that just ended."""

import threading

import pytest
from _notifications import fresh_notifications, no_blocking_dialogs  # noqa: F401 (autouse)
from _notifications import messages as _messages

pytestmark = pytest.mark.gui


def _steps(value, gate=None):
    yield 0, 1
    if gate is not None:
        gate.wait(10)
    yield 1, 1
    return value


def test_a_run_started_when_the_last_one_is_done_runs(qtbot):
    from magicgui.widgets import PushButton

    from napari_nucleiseg._napari._jobs import JobRunner

    cancel = PushButton(text="Cancel")
    lines = []
    runner = JobRunner(lines.append, cancel)
    gate = threading.Event()
    seen, results = [], []

    def then(value):
        seen.append((value, runner.running))
        runner.start("second", _steps(2, gate), on_done=results.append)

    runner.start("first", _steps(1), on_done=then)
    qtbot.waitUntil(lambda: bool(seen), timeout=10_000)
    assert seen == [(1, False)]  # the first run is over when its done callback runs
    assert not any("still running" in m for m in _messages())
    # The first run's last signals (it has finished) arrive now: the second is still going.
    qtbot.wait(300)
    assert runner.running and runner.title == "second" and cancel.enabled
    gate.set()
    qtbot.waitUntil(lambda: bool(results), timeout=10_000)
    qtbot.waitUntil(lambda: not runner.running, timeout=10_000)
    assert results == [2] and not cancel.enabled
    assert lines[-1].startswith("second: done")


def test_a_run_that_fails_frees_the_runner_before_saying_so(qtbot):
    from napari_nucleiseg._napari._jobs import JobRunner

    runner = JobRunner(lambda _: None)

    def broken():
        yield 0, 1
        raise ValueError("no tissue")

    seen = []
    runner.start("fit", broken(), on_error=lambda exc: seen.append((str(exc), runner.running)))
    qtbot.waitUntil(lambda: bool(seen), timeout=10_000)
    assert seen == [("no tissue", False)]
