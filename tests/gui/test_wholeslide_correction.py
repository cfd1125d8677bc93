"""Correcting a whole-slide result in a real napari viewer (under Xvfb): the Project panel cuts
the view from the result store into an editable layer on the slide, its delete tool works on it,
and "Save to slide result" writes the correction into the store, its table and the whole-slide
layer, which redraws from the store."""

import numpy as np
import pytest
from _notifications import fresh_notifications  # noqa: F401 (autouse fixture)
from _notifications import messages as _messages

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def result(demo, tmp_path_factory):
    from napari_nucleiseg.wholeslide import segment_slide

    out = tmp_path_factory.mktemp("ws_gui")
    assert list(segment_slide(demo.slide, out, method="classical", tile_um=128))[-1].finished
    return out / "demo_he.nuclei.zarr"


def test_correct_a_view_of_the_slide_result_and_save_it_back(
    make_napari_viewer, result, qtbot, tmp_path, demo
):
    from napari_nucleiseg._napari._nuclei_widget import NucleiWidget
    from napari_nucleiseg._napari._project_widget import TOOLS, ProjectWidget
    from napari_nucleiseg._napari._wholeslide_edit import EDIT_SCOPE
    from napari_nucleiseg.io import open_slide
    from napari_nucleiseg.wholeslide import open_labels, read_table
    from napari_nucleiseg.wholeslide.edit import edit_log

    viewer = make_napari_viewer()
    project = ProjectWidget(viewer)
    viewer.open_sample("napari-nucleiseg", "demo_slide")
    slide_layer = next(l for l in viewer.layers if l.metadata["nucleiseg"]["kind"] == "slide")

    # The result as the Nuclei panel shows it when its run ends: layer, count, table, exports.
    nuclei = NucleiWidget(viewer)
    nuclei._ask_save_path = lambda title, default, _filter: tmp_path / "after.csv"
    parquet = result.parent / "demo_he.nuclei.parquet"
    nuclei._on_slide_done(open_slide(demo.slide), (result, read_table(parquet)))
    before = len(nuclei._last.table["label"])
    (whole,) = [l for l in viewer.layers if l.metadata["nucleiseg"].get("scope") == "slide"]
    levels, _, meta = open_labels(result)
    viewer.layers.selection.active = whole
    viewer.scene.camera.center = (1500 * 0.5, 1500 * 0.5)
    viewer.scene.camera.zoom = 4.0 / 0.5

    project._slide_edit.clicked.emit()
    (layer,) = [l for l in viewer.layers if l.metadata["nucleiseg"].get("scope") == EDIT_SCOPE]
    assert project.view_labels() is layer and viewer.layers.selection.active is layer
    x0, y0, x1, y1 = layer.metadata["nucleiseg"]["region_px"]
    assert x0 <= 1500 <= x1 and y0 <= 1500 <= y1
    # Aligned with the slide: its pixel (0, 0) lies on level-0 pixel (x0, y0).
    assert np.allclose(layer.data_to_world((0, 0)), slide_layer.data_to_world((y0, x0)))
    assert np.array_equal(np.asarray(layer.data), np.asarray(levels[0][y0:y1, x0:x1]))
    # It is not a view to accept as training data (Accept raised KeyError 'mpp' on it).
    project._folder.value = tmp_path / "proj"
    project._open.clicked.emit()
    viewer.layers.selection.active = layer
    project._accept.clicked.emit()
    assert any("corrects the whole-slide result" in m for m in _messages())
    assert not project.project.store.examples(kind="strong")

    # Delete the nucleus in the middle of the view with the panel's tool (a click).
    project._tool.value = TOOLS[1]
    data = np.asarray(layer.data)
    ids, counts = np.unique(data[data > 0], return_counts=True)
    edge = set(np.concatenate([data[0], data[-1], data[:, 0], data[:, -1]]).tolist())
    gone = int(next(i for i, n in sorted(zip(ids, counts), key=lambda t: -t[1]) if i not in edge))
    r, c = np.argwhere(data == gone)[0]
    assert project.delete_at((r, c)) == [gone]
    assert not (np.asarray(layer.data) == gone).any()

    project._slide_save.clicked.emit()
    assert "Saved to the slide result" in project._status.value, project._status.value
    assert layer not in viewer.layers
    assert edit_log(result)[-1]["deleted"] == [gone]
    shown = np.asarray(whole.data[0][y0:y1, x0:x1])
    assert not (shown == gone).any() and (shown > 0).any()
    csv = (result.parent / "demo_he.nuclei.csv").read_text()
    assert f"\n{gone}," not in csv
    # The Nuclei panel follows: its count, table and exports (they kept the deleted nucleus).
    assert len(nuclei._last.table["label"]) == before - 1
    assert f"{before - 1:,} nuclei" in nuclei._count.value
    assert gone not in nuclei._last.table["label"]
    nuclei._on_export_csv()
    assert f"\n{gone}," not in (tmp_path / "after.csv").read_text()
