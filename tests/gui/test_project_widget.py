"""The Project panel in a real napari viewer (under Xvfb): split, merge and undo on the view's
nuclei, accept the view into the project's training store, then start, watch and cancel a
retraining run in a child process without the event loop stalling."""

import time
from pathlib import Path

import numpy as np
import pytest
from _notifications import fresh_notifications  # noqa: F401 (autouse fixture)
from scipy import ndimage as ndi

pytestmark = pytest.mark.gui


@pytest.fixture
def panels(make_napari_viewer, demo, tmp_path, qtbot):
    from napari_nucleiseg._napari._nuclei_widget import NucleiWidget
    from napari_nucleiseg._napari._project_widget import ProjectWidget

    viewer = make_napari_viewer()
    # Docked as the Plugins menu docks them: napari hands each panel its viewer in a proxy.
    _, nuclei = viewer.window.add_plugin_dock_widget("napari-nucleiseg", "Nuclei")
    _, project = viewer.window.add_plugin_dock_widget("napari-nucleiseg", "Project")
    assert isinstance(nuclei, NucleiWidget) and isinstance(project, ProjectWidget)
    viewer.open_sample("napari-nucleiseg", "demo_slide")
    slide = next(l for l in viewer.layers if l.metadata["nucleiseg"]["kind"] == "slide")
    nuclei._layer.value = slide
    nuclei._method.value = "classical"
    viewer.scene.camera.center = (1400 * 0.5, 1500 * 0.5)
    viewer.scene.camera.zoom = 2.0 / 0.5
    nuclei._run_view.clicked.emit()
    qtbot.waitUntil(
        lambda: not nuclei.jobs.running and project.view_labels() is not None, timeout=60_000
    )
    project._folder.value = tmp_path / "proj"
    project._open.clicked.emit()
    assert project.project is not None and "0 accepted views" in project._summary.value
    return viewer, nuclei, project


def _isolated_nucleus(labels, min_area=60):
    """A nucleus with no other within 3 px of its bounding box, and its box."""
    for i, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        r0, r1 = max(0, box[0].start - 3), box[0].stop + 3
        c0, c1 = max(0, box[1].start - 3), box[1].stop + 3
        window = labels[r0:r1, c0:c1]
        if set(np.unique(window)) <= {0, i} and (labels == i).sum() >= min_area:
            return i, box
    raise AssertionError("no isolated nucleus in the view")


def test_split_merge_undo_and_accept(panels, qtbot):
    viewer, nuclei, project = panels
    layer = project.view_labels()
    before = np.asarray(layer.data).copy()

    # Split: a stroke right across an isolated nucleus, through its middle row.
    nid, (rows, cols) = _isolated_nucleus(before)
    mid = (rows.start + rows.stop) // 2
    touched = project.split_along([[mid, cols.start - 2], [mid, cols.stop + 1]])
    assert touched is not None and touched[0] == nid
    after_split = np.asarray(layer.data)
    new = touched[1]
    assert (after_split == nid).any() and (after_split == new).any()
    assert ((after_split == nid) | (after_split == new)).sum() == (before == nid).sum()

    # Merge the two halves back by clicking one point in each.
    a = np.argwhere(after_split == nid)[0]
    b = np.argwhere(after_split == new)[0]
    assert project.merge_at(a, b) == [nid, new]
    assert not (np.asarray(layer.data) == new).any()

    # Undo (napari's own history): the merge is undone, then the split.
    layer.undo()
    assert np.array_equal(np.asarray(layer.data), after_split)
    layer.undo()
    assert np.array_equal(np.asarray(layer.data), before)

    # Accept: the view's labels and the image under them go to the training store.
    project._accept.clicked.emit()
    (example,) = project.project.store.examples()
    assert np.array_equal(example.labels(), np.asarray(layer.data))
    assert example.image().shape[:2] == example.labels().shape
    assert example.provenance["source_hash"].startswith("sha256")
    assert len(example.provenance["region_um"]) == 4
    assert "1 accepted view (" in project._summary.value


def test_the_click_tool_follows_the_views_nuclei_layer(panels, qtbot):
    """Was: a tool chosen before the view was segmented again stayed on the old layer (or on
    none), and clicks on the new nuclei did nothing, without a word."""
    viewer, nuclei, project = panels
    project._tool.value = "delete a nucleus"
    first = project.view_labels()
    assert project._on_mouse in first.mouse_drag_callbacks
    # The view's layer gone, then a new one segmented: the tool moves to it.
    viewer.layers.remove(first)
    assert project.view_labels() is None and project._hooked is None
    viewer.scene.camera.center = (1300 * 0.5, 1400 * 0.5)
    nuclei._run_view.clicked.emit()
    qtbot.waitUntil(lambda: not nuclei.jobs.running, timeout=60_000)
    assert project._on_mouse in project.view_labels().mouse_drag_callbacks


def test_retraining_runs_in_the_background_and_cancels(panels, qtbot):
    from qtpy.QtCore import QTimer

    viewer, nuclei, project = panels
    project._accept.clicked.emit()
    model_before = project.project.current_model()
    project._minutes.value = 1.0

    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)
    project._retrain.clicked.emit()
    assert project.jobs.running and project._cancel.enabled
    qtbot.waitUntil(lambda: len(project.plot.points) >= 2, timeout=120_000)  # live loss
    project._cancel.clicked.emit()
    qtbot.waitUntil(lambda: not project.jobs.running, timeout=60_000)
    timer.stop()
    gaps = np.diff(ticks)
    print(f"\nlongest event-loop gap while retraining: {gaps.max() * 1000:.0f} ms")
    assert gaps.max() < 0.2
    assert project.project.current_model() == model_before  # cancelled: nothing promoted
    status = project._status.value
    assert "cancelled after" in status and " s;" in status and "model is unchanged" in status

    # Resume goes on with the same run (no second run folder), in the background again.
    runs = sorted(p.name for p in project.project.runs_dir.iterdir())
    assert len(runs) == 1
    project._resume.clicked.emit()
    assert project.jobs.running
    qtbot.waitUntil(lambda: len(project.plot.points) >= 1, timeout=120_000)
    project._cancel.clicked.emit()
    qtbot.waitUntil(lambda: not project.jobs.running, timeout=60_000)
    assert sorted(p.name for p in project.project.runs_dir.iterdir()) == runs
    assert project.project.current_model() == model_before


def test_an_accepted_view_reopens_is_edited_in_place_and_deleted(panels, qtbot):
    from napari_nucleiseg._napari._layers import tag

    viewer, nuclei, project = panels
    view = project.view_labels()
    scale, translate = np.array(view.scale), np.array(view.translate)
    project._accept.clicked.emit()
    (example,) = project.project.store.examples()
    assert project._views.value == example.id and len(project._views.choices) == 1
    assert "nuclei" in project._views.native.currentText()

    # Closed and panned away: Open brings the example back where it was cut from, selected.
    viewer.layers.remove(view)
    viewer.scene.camera.center = (10.0, 10.0)
    project._reopen.clicked.emit()
    layer = project.view_labels()
    assert layer is not None and viewer.layers.selection.active is layer
    assert tag(layer)["example"] == example.id and tag(layer)["scope"] == "view-example"
    assert np.array_equal(np.asarray(layer.data), example.labels())
    assert np.allclose(layer.scale, scale) and np.allclose(layer.translate, translate)
    x0, y0, x1, y1 = example.provenance["region_um"]
    cy, cx = viewer.scene.camera.center[-2:]
    assert x0 < cx < x1 and y0 < cy < y1
    assert f"Opened example {example.id}" in project._status.value

    # Edit (delete one nucleus) and accept: the same example, one nucleus fewer, same split.
    nid, (rows, cols) = _isolated_nucleus(np.asarray(layer.data))
    point = np.argwhere(np.asarray(layer.data) == nid)[0]
    assert project.delete_at(point) == [nid]
    # Open again before accepting: the corrections stay (it used to bring back the stored one).
    corrected = np.array(layer.data, copy=True)
    project._reopen.clicked.emit()
    assert project.view_labels() is layer and np.array_equal(np.asarray(layer.data), corrected)
    assert "already open, with your corrections" in project._status.value
    assert tag(layer)["unsaved"]  # quitting now would ask first
    project._accept.clicked.emit()
    assert not tag(layer)["unsaved"]  # stored in the project
    assert project._status.value.startswith(f"Updated example {example.id}")
    (edited,) = project.project.store.examples()
    assert (edited.id, edited.split) == (example.id, example.split)
    assert edited.nuclei == example.nuclei - 1
    assert np.array_equal(edited.labels(), np.asarray(layer.data))
    assert edited.provenance["edits"][0]["nuclei_before"] == example.nuclei
    assert "1 accepted view (" in project._summary.value

    # Delete: the first click asks, the second deletes; the layer no longer updates it.
    project._delete.clicked.emit()
    assert "click Delete again" in project._status.value
    assert len(project.project.store.examples()) == 1
    project._delete.clicked.emit()
    assert project.project.store.examples() == []
    assert list(project._views.choices) == [] and "0 accepted views" in project._summary.value
    assert "example" not in tag(layer)
    assert f"Deleted example {example.id}" in project._status.value


def test_an_example_reopens_its_slide_and_not_once_the_file_changed(
    make_napari_viewer, he_rgb, tmp_path
):
    from _notifications import messages
    from PIL import Image

    from napari_nucleiseg._napari._layers import find_layers, tag
    from napari_nucleiseg._napari._project_widget import ProjectWidget

    viewer = make_napari_viewer()
    project = ProjectWidget(viewer)
    rgb, labels = he_rgb
    Image.fromarray(rgb).save(tmp_path / "crop.png")
    Image.fromarray(labels.astype(np.uint16)).save(tmp_path / "crop_labels.png")
    project._folder.value = tmp_path / "proj"
    project._open.clicked.emit()
    example, _ = project.project.add_label_files(
        tmp_path / "crop.png", tmp_path / "crop_labels.png", mpp=0.5
    )
    project._refresh()
    assert project._views.value == example.id

    # Not open in the viewer: the image is opened (with the µm/px it was stored with) and the
    # labels lie on it pixel for pixel.
    project._reopen.clicked.emit()
    (slide,) = find_layers(viewer, "slide")
    assert tag(slide)["mpp"] == 0.5
    layer = project.view_labels()
    assert np.allclose(layer.scale, slide.scale) and np.allclose(layer.translate, slide.translate)
    assert np.array_equal(np.asarray(layer.data), labels)

    # The file changed since: said, and nothing opened.
    rgb2 = rgb.copy()
    rgb2[0, 0] = 255 - rgb2[0, 0]
    Image.fromarray(rgb2).save(tmp_path / "crop.png")
    viewer.layers.remove(layer)
    before = len(viewer.layers)
    project._reopen.clicked.emit()
    assert any("has changed since" in m and example.id in m for m in messages())
    assert len(viewer.layers) == before and project.view_labels() is None


@pytest.fixture
def project_panel(make_napari_viewer, demo, tmp_path):
    """A Project panel with a project open and the demo slide open (no nuclei run)."""
    from napari_nucleiseg._napari._project_widget import ProjectWidget

    viewer = make_napari_viewer()
    panel = ProjectWidget(viewer)
    viewer.open_sample("napari-nucleiseg", "demo_slide")
    panel._folder.value = tmp_path / "proj"
    panel._open.clicked.emit()
    assert panel.project is not None and "0 reference-style slides" in panel._summary.value
    return viewer, panel


def test_mark_a_slide_as_the_reference_style(project_panel):
    import json

    from _notifications import messages

    viewer, panel = project_panel
    panel._train_norm.clicked.emit()  # not before a reference slide: said, nothing started
    assert not panel.jobs.running
    assert any("No reference-style slide" in m for m in messages())
    assert "Mark the slide as reference style" in panel._status.value

    panel._mark_reference.clicked.emit()
    slide = next(l for l in viewer.layers if l.metadata["nucleiseg"]["kind"] == "slide")
    path = slide.metadata["nucleiseg"]["path"]
    (entry,) = json.loads((panel.project.path / "project.json").read_text())["slides"]
    assert entry["path"] == str(Path(path).resolve()) and entry["reference"] is True
    assert panel.reference_slides() == [entry["path"]]
    assert Path(path).name in panel._status.value and "reference" in panel._status.value
    assert "1 reference-style slide;" in panel._summary.value
    panel._mark_reference.clicked.emit()  # again: still one slide, still the reference
    assert len(panel.project.slides) == 1 and panel.project.slides[0]["reference"] is True


def test_normaliser_training_is_started_reported_and_resumed(project_panel, qtbot, monkeypatch):
    """The buttons' wiring, with the child process's items played back (the training itself is
    tested in the core): progress, the live loss, the result in the status line, Resume."""
    from _notifications import messages

    from napari_nucleiseg._napari import _process
    from napari_nucleiseg.training.normaliser_train import normaliser_steps
    from napari_nucleiseg.training.retrain import RetrainProgress

    viewer, panel = project_panel
    calls = []
    result = {
        "model": "proj-stain-1",
        "role": "teacher",
        "promoted": True,
        "mask_aji": 0.612,
        "teacher_mask_aji": None,
        "lab_distance_before": 9.5,
        "lab_distance_after": 3.25,
        "h_ssim": 0.931,
    }

    closed = []

    def played(fn, *args, **kwargs):
        calls.append((fn, args, kwargs))
        try:
            yield RetrainProgress(1, 12, "train", (1, 0.9))
            yield RetrainProgress(2, 12, "train", (2, 0.7))
            if kwargs.get("resume"):
                raise _process.JobError("the run's checkpoint is damaged", "ProjectError")
            if kwargs.get("minutes") == 1.0:  # a long run, cancelled
                for i in range(3, 10_000):
                    time.sleep(0.02)
                    yield RetrainProgress(min(i, 60), 60, "train", (i, 0.5))
            yield result
        finally:
            closed.append(len(calls))

    monkeypatch.setattr(_process, "in_subprocess", played)
    panel._mark_reference.clicked.emit()
    panel._minutes.value = 0.5
    panel._train_norm.clicked.emit()
    qtbot.waitUntil(lambda: not panel.jobs.running, timeout=30_000)
    assert calls == [(normaliser_steps, (str(panel.project.path),), {"minutes": 0.5})]
    assert [p for p, _ in panel.plot.points] == [1, 2]
    status = panel._status.value
    assert "proj-stain-1 is now the project's normaliser" in status
    assert "mask AJI 0.612" in status and "against the teacher" not in status
    assert "Lab distance to the reference 9.50 → 3.25" in status and "SSIM 0.931" in status

    # Resume: nothing to resume without an unfinished run; with one, it is continued, and an
    # error in the child ends the run with one line instead of leaving the panel busy.
    panel._resume_norm.clicked.emit()
    assert "nothing to resume" in panel._status.value and len(calls) == 1
    run = panel.project.runs_dir / "normaliser-20250101T000000Z"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "state.json").write_text('{"finished": false}')
    panel._resume_norm.clicked.emit()
    qtbot.waitUntil(lambda: not panel.jobs.running, timeout=30_000)
    assert calls[-1] == (normaliser_steps, (str(panel.project.path),), {"resume": True})
    assert "checkpoint is damaged" in panel._status.value
    assert any("checkpoint is damaged" in m for m in messages())

    # Cancel: the child's run is closed (it keeps its checkpoint), the normaliser unchanged.
    panel._minutes.value = 1.0
    panel._train_norm.clicked.emit()
    qtbot.waitUntil(lambda: len(panel.plot.points) >= 3, timeout=30_000)
    panel._cancel.clicked.emit()
    qtbot.waitUntil(lambda: not panel.jobs.running, timeout=30_000)
    assert closed == [1, 2, 3] and panel.project.current_model("normaliser") is None
    assert "cancelled after" in panel._status.value
    assert "the project's normaliser is unchanged" in panel._status.value


def test_docked_panels_act_on_the_selected_layer(make_napari_viewer, demo, tmp_path):
    """Was: napari wraps a docked panel's viewer in a proxy that wraps every layer read through
    it anew, so the Project panel's "is this the selected layer" never matched and it acted on
    the top layer (Accept stored an uncorrected view; "Mark as reference" marked another
    slide), and a newly opened slide stayed unchosen in the Nuclei and Stain panels."""
    viewer = make_napari_viewer()
    panels = {
        name: viewer.window.add_plugin_dock_widget("napari-nucleiseg", name)[1]
        for name in ("Nuclei", "Stain", "Slide", "Tissue", "Project")
    }
    (first,) = viewer.open(str(demo.slide), plugin="napari-nucleiseg")
    copy = tmp_path / "second.tif"
    copy.write_bytes(Path(demo.slide).read_bytes())
    (second,) = viewer.open(str(copy), plugin="napari-nucleiseg")
    for name, panel in panels.items():
        assert panel.viewer is viewer, name
        if hasattr(panel, "_layer"):  # the slide opened last is every panel's slide
            assert panel._layer.value is second, name
    viewer.layers.selection.active = first
    assert panels["Project"].slide_layer() is first
    viewer.layers.selection.active = second
    assert panels["Project"].slide_layer() is second


def test_the_project_model_is_offered_and_run_by_the_nuclei_and_stain_panels(
    panels, qtbot, make_napari_viewer
):
    """Was: "Use this model" said the project now segments with its model, but the Nuclei panel
    listed only shipped models and went on running the shipped default (and the Stain panel
    never listed a project's normaliser)."""
    import json
    import shutil

    from napari_nucleiseg.methods import default_method_name
    from napari_nucleiseg.models.registry import MODELS_DIR, project_models_dir

    viewer, nuclei, project = panels
    folder = project_models_dir(project.project.path)
    folder.mkdir(parents=True, exist_ok=True)
    card = json.loads((MODELS_DIR / f"{default_method_name()}.json").read_text())
    for key in ("weights", "onnx", "onnx_int8"):
        shutil.copy(MODELS_DIR / card[key], folder / card[key])
    card["name"] = "proj-nuclei-1"
    (folder / "proj-nuclei-1.json").write_text(json.dumps(card))
    project._refresh()
    assert "proj-nuclei-1" in nuclei._method.choices
    assert nuclei._method.value == "classical"  # the user's, until the project changes model
    project._models.value = "proj-nuclei-1"
    project._use.clicked.emit()
    assert nuclei._method.value == "proj-nuclei-1"
    nuclei._run_view.clicked.emit()
    qtbot.waitUntil(lambda: not nuclei.jobs.running, timeout=120_000)
    (layer,) = [
        l
        for l in viewer.layers
        if l.metadata.get("nucleiseg", {}).get("scope") == "view" and l.visible
    ]
    assert "proj-nuclei-1" in str(layer.metadata["nucleiseg"]["method"]), layer.metadata

    # The Stain panel's learned normalisers: the project's too, its own chosen when it changes.
    _, stain = viewer.window.add_plugin_dock_widget("napari-nucleiseg", "Stain")
    card = json.loads((MODELS_DIR / "stain-cycle-v1.json").read_text())
    for key in ("weights", "onnx"):
        shutil.copy(MODELS_DIR / card[key], folder / card[key])
    card["name"] = "proj-normaliser-1"
    (folder / "proj-normaliser-1.json").write_text(json.dumps(card))
    project.project.set_current_model("proj-normaliser-1", "normaliser")
    project._refresh()
    assert stain._model.value == "proj-normaliser-1"
    # A panel opened after the project was starts from it; another window's does not.
    _, later = viewer.window.add_plugin_dock_widget("napari-nucleiseg", "Nuclei")
    assert "proj-nuclei-1" in later._method.choices and later._method.value == "proj-nuclei-1"
    other = make_napari_viewer()
    _, elsewhere = other.window.add_plugin_dock_widget("napari-nucleiseg", "Nuclei")
    project._refresh()
    assert "proj-nuclei-1" not in elsewhere._method.choices


def _mouse(viewer, kind, yx):
    """A real Qt mouse event on the canvas at world point ``yx`` (left button)."""
    from qtpy.QtCore import QEvent, QPointF, Qt
    from qtpy.QtGui import QMouseEvent
    from qtpy.QtWidgets import QApplication

    canvas = viewer.window._qt_viewer.canvas.native
    cy, cx = viewer.scene.camera.center[-2:]
    zoom = viewer.scene.camera.zoom
    at = QPointF(
        (yx[1] - cx) * zoom + canvas.width() / 2, (yx[0] - cy) * zoom + canvas.height() / 2
    )
    where = QPointF(canvas.mapToGlobal(at.toPoint()))
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    typ, button, held = {
        "hover": (QEvent.Type.MouseMove, none, none),
        "press": (QEvent.Type.MouseButtonPress, left, left),
        "move": (QEvent.Type.MouseMove, none, left),
        "release": (QEvent.Type.MouseButtonRelease, left, none),
    }[kind]
    QApplication.sendEvent(
        canvas, QMouseEvent(typ, at, where, button, held, Qt.KeyboardModifier.NoModifier)
    )


def test_split_along_a_line_drawn_with_the_mouse(panels, qtbot):
    """Was: the split tool left the camera panning, so a drag moved the slide under the cursor,
    the line stayed on one point, and every split "crossed no nucleus"."""
    from napari_nucleiseg._napari._project_widget import TOOLS

    viewer, nuclei, project = panels
    viewer.window.show()
    qtbot.waitUntil(lambda: viewer.window._qt_viewer.canvas.native.width() > 200, timeout=5_000)
    layer = project.view_labels()
    labels = np.asarray(layer.data).copy()
    nid, (rows, cols) = _isolated_nucleus(labels, min_area=120)
    # The nucleus in the middle of the canvas, large enough to draw across.
    to_world = lambda r, c: np.asarray(layer.data_to_world((r, c)))[-2:]  # noqa: E731
    mid = ((rows.start + rows.stop) / 2, (cols.start + cols.stop) / 2)
    viewer.scene.camera.center = tuple(to_world(*mid))
    viewer.scene.camera.zoom = 8.0
    qtbot.wait(100)
    project._tool.value = TOOLS[3]
    assert not viewer.scene.camera.mouse_pan
    # Another layer selected and this one again (napari then sets the camera's panning from
    # the layer's): still locked.
    slide = next(l for l in viewer.layers if l.metadata["nucleiseg"]["kind"] == "slide")
    viewer.layers.selection.active = slide
    viewer.layers.selection.active = layer
    assert not viewer.scene.camera.mouse_pan
    centre = tuple(viewer.scene.camera.center)
    start, end = to_world(mid[0], cols.start - 3), to_world(mid[0], cols.stop + 3)
    _mouse(viewer, "hover", start)
    _mouse(viewer, "press", start)
    for t in np.linspace(0, 1, 12)[1:]:
        _mouse(viewer, "move", start + t * (end - start))
        qtbot.wait(10)
    _mouse(viewer, "release", end)
    qtbot.wait(100)
    assert tuple(viewer.scene.camera.center) == centre  # the drag drew; it did not pan
    after = np.asarray(layer.data)
    inside = after[labels == nid]
    assert len(np.unique(inside[inside > 0])) == 2, project._status.value
    project._tool.value = TOOLS[0]  # another tool: the view pans again
    assert viewer.scene.camera.mouse_pan

    # The panel closed with napari's ✕ (napari does not delete it) while the tool is chosen:
    # the tool is put down, the view pans, and it does not come back on a layer change.
    project._tool.value = TOOLS[3]
    assert not viewer.scene.camera.mouse_pan
    viewer.window.remove_dock_widget(project.native)
    assert viewer.scene.camera.mouse_pan and project._on_mouse not in layer.mouse_drag_callbacks
    viewer.layers.selection.active = slide
    viewer.layers.selection.active = layer
    assert viewer.scene.camera.mouse_pan and project._on_mouse not in layer.mouse_drag_callbacks
