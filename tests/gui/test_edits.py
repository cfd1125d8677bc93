"""Correcting the view's nuclei in a real napari viewer (run under Xvfb): painting, erasing,
merging and undoing update the count and the table at once, the exports hold what is on screen
(never an empty outline), and segmenting the view again over corrections asks first."""

import csv
import json

import numpy as np
import pytest
from _notifications import fresh_notifications, no_blocking_dialogs  # noqa: F401 (autouse)
from scipy import ndimage as ndi

pytestmark = pytest.mark.gui


def _view_layers(viewer):
    return [
        lyr
        for lyr in viewer.layers
        if lyr.metadata.get("nucleiseg", {}).get("kind") == "nuclei"
        and lyr.metadata["nucleiseg"].get("scope", "").startswith("view")
    ]


@pytest.fixture
def segmented(make_napari_viewer, demo, tmp_path, qtbot):
    """The demo slide's view segmented (classical method), the Save-as dialog answered with
    the name it offers (the user clicking Save)."""
    from napari_nucleiseg._napari._nuclei_widget import NucleiWidget

    viewer = make_napari_viewer()
    widget = NucleiWidget(viewer)
    widget._out.value = tmp_path / "exports"
    offered = []
    widget._ask_save_path = lambda title, default, _filter: offered.append(default) or default
    viewer.open_sample("napari-nucleiseg", "demo_slide")
    slide = next(l for l in viewer.layers if l.metadata["nucleiseg"]["kind"] == "slide")
    widget._layer.value = slide
    widget._method.value = "classical"
    viewer.scene.camera.center = (1400 * 0.5, 1500 * 0.5)
    viewer.scene.camera.zoom = 3.0 / 0.5
    _segment(qtbot, widget)
    (layer,) = _view_layers(viewer)
    widget.offered = offered
    return viewer, widget, layer


def _segment(qtbot, widget):
    widget._run_view.clicked.emit()
    qtbot.waitUntil(lambda: not widget.jobs.running, timeout=120_000)
    qtbot.waitUntil(lambda: widget._last is not None and widget._last.table is not None)


def _edit(layer, mask, value):
    """Change the pixels under ``mask`` to ``value`` as napari's tools do: one undoable step."""
    with layer.block_history():
        layer.data_setitem(np.nonzero(mask), value)


def _table_ids(widget):
    t = widget.table.columns
    return set(int(v) for v in t._cols[t._names.index("label")])


def _layer_ids(layer):
    data = np.asarray(layer.data)
    return set(int(v) for v in np.unique(data[data > 0]))


def test_paint_erase_merge_and_undo_update_the_table_and_the_exports(segmented, qtbot):
    viewer, widget, layer = segmented
    data = np.asarray(layer.data)
    ids = sorted(_layer_ids(layer))
    n0 = len(ids)
    assert _table_ids(widget) == set(ids)

    # Erase one nucleus whole, merge two touching ones (fill one with the other's id), and
    # paint a new one on background far from any nucleus.
    gone = ids[len(ids) // 2]
    _edit(layer, data == gone, 0)
    dilated = ndi.binary_dilation(data > 0, iterations=1)
    pairs = [
        (a, b)
        for a in ids
        if a != gone
        for b in np.unique(data[ndi.binary_dilation(data == a, iterations=2)])
        if b not in (0, a, gone)
    ]
    keep, merged = (int(v) for v in pairs[0])
    area_keep, area_merged = int((data == keep).sum()), int((data == merged).sum())
    _edit(layer, data == merged, keep)
    far = ndi.distance_transform_edt(~dilated)
    r, c = np.unravel_index(np.argmax(far), far.shape)
    assert far[r, c] > 8
    yy, xx = np.ogrid[: data.shape[0], : data.shape[1]]
    disc = (yy - r) ** 2 + (xx - c) ** 2 <= 6**2
    new = int(data.max()) + 1
    _edit(layer, disc, new)

    expected = (set(ids) - {gone, merged}) | {new}
    qtbot.waitUntil(lambda: _table_ids(widget) == expected, timeout=10_000)
    assert _layer_ids(layer) == expected
    assert f"{n0 - 1:,} nuclei in view" in widget._count.value  # -1 -1 (merged) +1
    t = widget.table.columns
    row = {int(lab): i for i, lab in enumerate(t._cols[t._names.index("label")])}
    area = t._cols[t._names.index("area_um2")]
    mpp = widget._last.result.plan.mpp
    assert area[row[keep]] == pytest.approx((area_keep + area_merged) * mpp * mpp)
    assert area[row[new]] == pytest.approx(int(disc.sum()) * mpp * mpp)

    # The exports hold exactly what the layer holds.
    rows = list(csv.DictReader(open(widget._on_export_csv())))
    assert {int(r["label"]) for r in rows} == expected
    by_label = {int(r["label"]): r for r in rows}
    assert float(by_label[new]["area_um2"]) == pytest.approx(int(disc.sum()) * mpp * mpp)
    gj = json.load(open(widget._on_export_geojson()))
    feats = gj["features"]
    assert {int(f["properties"]["name"]) for f in feats} == expected
    assert all(len(f["geometry"]["coordinates"][0]) >= 4 for f in feats)  # no empty outline
    import zarr

    root = zarr.open_group(str(widget._on_export_labels()), mode="r")
    assert np.array_equal(root["0"][:], np.asarray(layer.data))
    # Offered names say what and where, in words.
    names = [p.name for p in widget.offered]
    assert (
        names[0].startswith("demo") and " view " in names[0] and names[0].endswith(" µm edited.csv")
    )

    # Undo (Ctrl-Z) takes the painted nucleus back out, and the table follows.
    layer.undo()
    qtbot.waitUntil(lambda: new not in _table_ids(widget), timeout=10_000)
    assert _table_ids(widget) == expected - {new} == _layer_ids(layer)


def test_an_existing_file_is_replaced_only_when_the_user_says_so(segmented, qtbot):
    viewer, widget, layer = segmented
    first = widget._on_export_csv()
    first.write_text("mine")
    widget._ask_overwrite = lambda path: False
    assert widget._on_export_csv() is None and first.read_text() == "mine"
    widget._ask_overwrite = lambda path: True
    assert widget._on_export_csv() == first and first.read_text().startswith("label,")


def test_segmenting_again_over_corrections_asks_and_can_keep_them(segmented, qtbot):
    from napari_nucleiseg._napari._nuclei_widget import CANCEL, DISCARD, KEEP

    viewer, widget, layer = segmented
    # Not corrected: no question.
    asked = []
    widget._ask_keep_edits = lambda outcome: asked.append(outcome) or DISCARD
    _segment(qtbot, widget)
    assert not asked

    (layer,) = _view_layers(viewer)
    gone = sorted(_layer_ids(layer))[0]
    _edit(layer, np.asarray(layer.data) == gone, 0)
    qtbot.waitUntil(lambda: gone not in _table_ids(widget), timeout=10_000)
    corrected = np.array(layer.data, copy=True)

    # Cancel: nothing runs, the corrections stay.
    widget._ask_keep_edits = lambda outcome: asked.append(outcome) or CANCEL
    widget._run_view.clicked.emit()
    assert len(asked) == 1 and not widget.jobs.running
    assert np.array_equal(np.asarray(layer.data), corrected)

    # Keep edits: the corrected layer stays, renamed; the new result is a new layer.
    widget._ask_keep_edits = lambda outcome: asked.append(outcome) or KEEP
    viewer.scene.camera.center = (1800 * 0.5, 2200 * 0.5)
    _segment(qtbot, widget)
    assert len(asked) == 2
    names = sorted(lyr.name for lyr in _view_layers(viewer))
    assert names == ["nuclei (view)", "nuclei (view, edited)"]
    kept = next(lyr for lyr in _view_layers(viewer) if lyr.name == "nuclei (view, edited)")
    assert kept is layer and np.array_equal(np.asarray(kept.data), corrected)
    # The kept layer's table and exports are still there: choose it as the result.
    widget._results.value = kept
    assert gone not in _table_ids(widget) and _table_ids(widget) == _layer_ids(kept)

    # Discard: the corrected layer is replaced by the new result.
    fresh = next(lyr for lyr in _view_layers(viewer) if lyr.name == "nuclei (view)")
    _edit(fresh, np.asarray(fresh.data) == sorted(_layer_ids(fresh))[0], 0)
    widget._results.value = fresh
    qtbot.waitUntil(lambda: widget._last.edited, timeout=10_000)
    widget._ask_keep_edits = lambda outcome: asked.append(outcome) or DISCARD
    _segment(qtbot, widget)
    assert len(asked) == 3 and len(_view_layers(viewer)) == 2


def test_corrections_survive_a_closed_panel_and_an_edit_before_the_table(segmented, qtbot):
    """Was: a Nuclei panel closed and opened again replaced the corrected view without asking
    (the panel, not the layer, knew it was corrected); and an erase made after the labels
    appeared but before their table did was never counted, so the next run replaced it."""
    from napari_nucleiseg._napari._nuclei_widget import CANCEL, NucleiWidget

    viewer, widget, layer = segmented
    gone = sorted(_layer_ids(layer))[0]
    _edit(layer, np.asarray(layer.data) == gone, 0)
    qtbot.waitUntil(lambda: gone not in _table_ids(widget), timeout=10_000)
    second = sorted(_layer_ids(layer))[0]
    _edit(layer, np.asarray(layer.data) == second, 0)
    qtbot.waitUntil(lambda: second not in _table_ids(widget), timeout=10_000)
    assert "corrected by hand: 2 changed" in widget._count.value  # both edits, not the last
    corrected = np.array(layer.data, copy=True)
    widget.close()
    again = NucleiWidget(viewer)  # the panel opened again (a new one, as napari makes it)
    again._layer.value = widget._layer.value
    again._method.value = "classical"
    asked = []
    again._ask_keep_edits = lambda outcome: asked.append(outcome) or CANCEL
    again._run_view.clicked.emit()
    assert len(asked) == 1 and asked[0].layer is layer and not again.jobs.running
    assert np.array_equal(np.asarray(layer.data), corrected)

    # An edit between the labels and the table: counted when the table arrives.
    viewer.layers.remove(layer)
    shown = []
    original = again._show_view_labels

    def erase_on_arrival(slide, result):
        original(slide, result)
        (fresh,) = _view_layers(viewer)
        first = sorted(_layer_ids(fresh))[0]
        _edit(fresh, np.asarray(fresh.data) == first, 0)
        shown.append(first)

    again._show_view_labels = erase_on_arrival
    _segment(qtbot, again)
    (fresh,) = _view_layers(viewer)
    assert shown and shown[0] not in _layer_ids(fresh)
    assert shown[0] not in _table_ids(again) and _table_ids(again) == _layer_ids(fresh)
    assert fresh.metadata["nucleiseg"].get("edited")
    again._run_view.clicked.emit()
    assert len(asked) == 2 and asked[1].layer is fresh

    # Labels shown whose table never came (what Cancel or a failed measurement leaves), then
    # corrected: asked too (nothing re-measured them, so they counted as uncorrected).
    slide, result = again._last.slide, again._last.result
    viewer.layers.remove(fresh)
    original(slide, result)  # the labels step alone, as a run cancelled before its table
    (partial,) = _view_layers(viewer)
    assert again._outcomes[id(partial)].table is None
    first = sorted(_layer_ids(partial))[0]
    _edit(partial, np.asarray(partial.data) == first, 0)
    again._run_view.clicked.emit()
    assert len(asked) == 3 and asked[2].layer is partial


def test_quitting_over_unsaved_corrections_asks_first(
    segmented, qtbot, monkeypatch, make_napari_viewer
):
    """Was: napari closed without a word over corrected nuclei stored nowhere."""
    from qtpy.QtGui import QCloseEvent

    import napari_nucleiseg._napari._unsaved as unsaved

    viewer, widget, layer = segmented
    window = viewer.window._qt_window
    guard = window._nucleiseg_quit_guard
    asked = []
    monkeypatch.setattr(unsaved, "ask_quit", lambda w, names: asked.append(names) or False)

    def quit_from_menu():  # napari's Quit / Close Window: close(confirm_need=True), whose
        # close event the guard sees flagged (napari's own question is not asked here)
        window._nucleiseg_users_close = True
        event = QCloseEvent()
        try:
            return guard.eventFilter(window, event), event.isAccepted()
        finally:
            window._nucleiseg_users_close = False

    assert quit_from_menu() == (False, True) and not asked  # nothing corrected: no question
    gone = sorted(_layer_ids(layer))[0]
    _edit(layer, np.asarray(layer.data) == gone, 0)
    assert layer.metadata["nucleiseg"]["unsaved"]
    assert quit_from_menu() == (True, False)  # "Cancel": the window stays
    assert asked == [[layer.name]]
    # A close a program makes (viewer.close(), scripts) is not asked about.
    event = QCloseEvent()
    assert not guard.eventFilter(window, event) and len(asked) == 1
    # napari's File > Close Window itself (its own question off): asked, and Cancel keeps it.
    from napari.settings import get_settings

    monkeypatch.setattr(get_settings().application, "confirm_close_window", False)
    window.close(quit_app=False, confirm_need=True)
    assert len(asked) == 2 and hasattr(viewer.window, "_qt_window")
    asked.pop()

    # Quit closes every window: another window's unsaved corrections are asked about too.
    other = make_napari_viewer()
    elsewhere = other.add_labels(
        np.zeros((8, 8), np.uint32),
        name="corrected elsewhere",
        metadata={"nucleiseg": {"kind": "nuclei", "scope": "view"}},
    )
    unsaved.mark(elsewhere)
    window._quit_app = True
    try:
        assert quit_from_menu() == (True, False)
    finally:
        window._quit_app = False
    assert asked[-1] == [layer.name, "corrected elsewhere"]
    unsaved.mark(elsewhere, False)
    asked.pop()

    # Exported as outlines: stored in a file, so quitting asks no more.
    widget._export_geojson.clicked.emit()
    assert not layer.metadata["nucleiseg"]["unsaved"]
    assert quit_from_menu() == (False, True) and len(asked) == 1
