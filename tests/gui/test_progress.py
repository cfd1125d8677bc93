"""Whole-slide progress in a real napari viewer (run under Xvfb): tiles are counted as they
finish, in the panel's own bar with an ETA; Cancel shows the nuclei of the finished tiles and
says how many they are; the next run says it is resuming."""

import re

import numpy as np
import pytest
from _notifications import fresh_notifications, no_blocking_dialogs  # noqa: F401 (autouse)

pytestmark = pytest.mark.gui


@pytest.fixture
def panel(make_napari_viewer, demo, tmp_path):
    from napari_nucleiseg._napari._nuclei_widget import NucleiWidget

    viewer = make_napari_viewer()
    widget = NucleiWidget(viewer)
    widget._out.value = tmp_path / "results"
    viewer.open_sample("napari-nucleiseg", "demo_slide")
    slide = next(l for l in viewer.layers if l.metadata["nucleiseg"]["kind"] == "slide")
    widget._layer.value = slide
    widget._method.value = "classical"
    return viewer, widget


def _slide_layer(viewer):
    return [
        l
        for l in viewer.layers
        if l.metadata.get("nucleiseg", {}).get("kind") == "nuclei"
        and l.metadata["nucleiseg"].get("scope") == "slide"
    ]


def test_tiles_counted_as_they_finish_cancel_shows_them_and_the_next_run_resumes(
    panel, qtbot, monkeypatch
):
    viewer, widget = panel
    seen = []  # what the panel showed at each progress report: (tiles segmented, bar, count)
    widget._run_slide.clicked.emit()
    assert not widget.progress.isHidden()  # the panel's own bar, from the start
    widget.jobs.worker.yielded.connect(
        lambda p: seen.append((p.segmented, widget.progress.format(), widget._count.value))
    )
    qtbot.waitUntil(
        lambda: widget._slide_progress is not None and widget._slide_progress.segmented >= 2,
        timeout=300_000,
    )
    p = widget._slide_progress
    # The count the user reads is the tiles segmented, as they finish (not 0 until the end).
    assert f"({p.segmented}/{p.total} tiles)" in widget._count.value
    assert f"{p.segmented}/{p.total} tiles" in widget._status.value
    assert widget.progress.format().startswith(f"{p.segmented}/{p.total} tiles")
    assert widget.progress.value() > 0
    widget._cancel.clicked.emit()
    qtbot.waitUntil(lambda: "kept and shown" in widget._status.value, timeout=300_000)
    assert not widget.jobs.running and widget.progress.isHidden()

    # One message, one count: the tiles finished and the nuclei in them, kept and shown.
    status = widget._status.value
    m = re.search(r"cancelled after (\d+)/(\d+) tiles; ([\d,]+) nuclei in the finished", status)
    assert m, status
    tiles, total, nuclei = int(m[1]), int(m[2]), int(m[3].replace(",", ""))
    assert p.segmented <= tiles < total and nuclei > 0
    assert "kept and shown" in status and "Run it again" in status
    (layer,) = _slide_layer(viewer)
    shown = np.asarray(layer.data[0])
    ids = np.unique(shown[shown > 0])
    assert len(ids) == nuclei  # the count is of the nuclei drawn
    # Every progress line counted tiles segmented, never fewer than the last one.
    counts = [s for s, _, _ in seen]
    assert counts == sorted(counts) and counts[-1] >= 1

    # Again: it says it resumes, from the tiles kept.
    widget._run_slide.clicked.emit()
    qtbot.waitUntil(lambda: "resuming" in widget._count.value, timeout=300_000)
    assert f"resuming: {tiles} of {total} tiles already done" in widget._count.value
    widget._cancel.clicked.emit()
    qtbot.waitUntil(lambda: "kept and shown" in widget._status.value, timeout=300_000)

    m = re.search(r"after (\d+)/\d+ tiles; ([\d,]+) nuclei", widget._status.value)
    tiles2, nuclei2 = int(m[1]), int(m[2].replace(",", ""))
    assert tiles2 >= tiles

    # A slide too large to hold its overviews in memory still shows its nuclei zoomed far out:
    # one small overview (the store's own coarse levels fill in only at the end).
    import napari_nucleiseg.layers as layers_module

    monkeypatch.setattr(layers_module, "LIVE_OVERVIEW_MAX_PX", 1_000_000)
    levels, tiles_now, nuclei_now = layers_module.slide_labels_so_far(widget._slide_progress.store)
    assert isinstance(levels[-1], np.ndarray) and levels[-1].shape[0] * 16 >= levels[0].shape[0]
    assert (levels[-1] > 0).any() and (tiles_now, nuclei_now) == (tiles2, nuclei2)


def test_a_slide_closed_while_its_whole_slide_run_goes_on_gets_no_layer(panel, qtbot):
    """Was: the run went on and, at its end, drew a whole-slide layer and table for the closed
    slide over whatever was open, without a word."""
    viewer, widget = panel
    widget._run_slide.clicked.emit()
    qtbot.waitUntil(lambda: widget._slide_progress is not None, timeout=300_000)
    slide = next(l for l in viewer.layers if l.metadata["nucleiseg"]["kind"] == "slide")
    viewer.layers.remove(slide)
    left = list(viewer.layers)  # (a live drawing made before the close may be among them)
    qtbot.waitUntil(lambda: not widget.jobs.running, timeout=300_000)
    qtbot.wait(300)
    assert list(viewer.layers) == left
    assert "its layer was closed" in widget._status.value, widget._status.value
