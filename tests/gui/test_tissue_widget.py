"""The Tissue panel in a real napari viewer (under Xvfb): outlines tagged on a Shapes layer become
region labels in the project's training store, and a classifier trains in a child process with
a live loss, cancelled without the event loop stalling; heatmaps of the view and of the slide
(the event loop ticking while the slide's runs) and attention."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
from _notifications import fresh_notifications  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.gui


@pytest.fixture
def panel(make_napari_viewer, tmp_path):
    from napari_nucleiseg._napari._tissue_widget import TissueWidget

    viewer = make_napari_viewer()
    widget = TissueWidget(viewer)
    viewer.open_sample("napari-nucleiseg", "demo_slide")
    slide = next(l for l in viewer.layers if l.metadata["nucleiseg"]["kind"] == "slide")
    widget._layer.value = slide
    widget._folder.value = tmp_path / "proj"
    widget._open.clicked.emit()
    assert widget.project is not None and "0 outlined regions" in widget._status.value
    return viewer, widget, slide


def _square(r, c, side):
    return np.array([[r, c], [r, c + side], [r + side, c + side], [r + side, c]], float)


def test_tagged_outlines_become_region_labels(panel):
    viewer, widget, slide = panel
    widget._tags.value = "tumour, normal, stroma"
    assert widget._tag.choices == ("tumour", "normal", "stroma")
    widget._draw.clicked.emit()
    layer = widget.outlines_layer()
    assert layer is not None and layer.mode == "add_polygon"
    assert np.allclose(layer.scale, slide.scale)  # vertices are level-0 pixels
    widget._tag.value = "tumour"
    layer.add_polygons([_square(400, 400, 300)])
    # napari leaves an outline just drawn selected: choosing the next one's tag while drawing
    # must not retag it (it turned the tumour outline "normal").
    layer.selected_data = {0}
    widget._tag.value = "normal"
    assert list(layer.features["tag"]) == ["tumour"]
    layer.add_polygons([_square(500, 600, 300)])  # overlaps the tumour outline's box
    assert list(layer.features["tag"]) == ["tumour", "normal"]
    # With the select tool, choosing a tag with an outline selected retags it.
    layer.mode = "select"
    layer.selected_data = {1}
    widget._tag.value = "stroma"
    assert list(layer.features["tag"]) == ["tumour", "stroma"]
    widget._tag.value = "normal"
    assert list(layer.features["tag"]) == ["tumour", "normal"]
    layer.selected_data = set()

    widget._mpp.value = 1.0
    widget._add.clicked.emit()
    regions = widget.project.store.examples(kind="region")
    assert len(regions) == 2 and "Added 2 outlined regions" in widget._status.value
    mpp = slide.metadata["nucleiseg"]["mpp"]
    side = round(300 * mpp / 1.0)  # 300 level-0 px at the slide's µm/px, stored at 1 µm/px
    first = regions[0]
    assert first.provenance["tags"] == ["normal", "tumour"]
    assert abs(first.shape[0] - side) <= 1 and abs(first.shape[1] - side) <= 1
    labels = first.labels()
    # The tumour outline fills its box; the normal one covers its lower-right part.
    assert (labels == 2).mean() > 0.5 and (labels == 1).mean() > 0.1
    assert (labels == 0).mean() < 0.05
    assert first.provenance["source_hash"] and len(first.provenance["region_um"]) == 4


def test_training_runs_in_the_background_and_cancels(panel, qtbot):
    from qtpy.QtCore import QTimer

    viewer, widget, slide = panel
    widget._draw.clicked.emit()
    layer = widget.outlines_layer()
    widget._tag.value = "tumour"
    layer.add_polygons([_square(300, 300, 400)])
    widget._tag.value = "normal"
    layer.add_polygons([_square(1200, 1200, 400)])
    widget._add.clicked.emit()
    widget._minutes.value = 1.0

    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)
    widget._train.clicked.emit()
    assert widget.jobs.running and widget._cancel.enabled
    qtbot.waitUntil(lambda: len(widget.plot.points) >= 2, timeout=120_000)  # live loss
    widget._cancel.clicked.emit()
    qtbot.waitUntil(lambda: not widget.jobs.running, timeout=60_000)
    timer.stop()
    gaps = np.diff(ticks)
    print(f"\nlongest event-loop gap while training: {gaps.max() * 1000:.0f} ms")
    assert gaps.max() < 0.2
    assert widget.project.current_model("classifier") is None  # cancelled: nothing promoted
    assert "cancelled" in widget._status.value
    assert not list(widget.project.models_dir.glob("classifier-*.json"))


def test_heatmap_and_attention_of_the_view(panel, qtbot):
    from napari_nucleiseg._napari._layers import find_layers

    viewer, widget, slide = panel
    mpp = slide.metadata["nucleiseg"]["mpp"]
    viewer.scene.camera.center = (1000 * mpp, 1000 * mpp)
    viewer.scene.camera.zoom = 1.0 / mpp / 2
    widget._heat_view.clicked.emit()
    qtbot.waitUntil(lambda: not widget.jobs.running, timeout=120_000)
    layers = find_layers(viewer, "heatmap")
    assert len(layers) == 1, widget._status.value
    heat = layers[0]
    values = np.asarray(heat.data)
    assert np.isfinite(values).any() and np.nanmax(values) <= 1 and np.nanmin(values) >= 0
    assert heat.scale[0] > mpp  # one map pixel is a cell of tens of µm
    assert viewer.layers.index(heat) == viewer.layers.index(slide) + 1  # just above the slide
    assert "Tumour probability over" in widget._status.value

    # The whole slide, in a child process, into the results folder: drawn when it ends. The
    # event loop keeps ticking every 20 ms while it runs (up to its last progress report; the
    # map drawn at the end is napari building a layer, not the job).
    from qtpy.QtCore import QTimer

    widget._out.value = widget.project.path.parent / "results"
    ticks, reports = [], []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)
    widget._heat_slide.clicked.emit()
    widget.jobs.worker.yielded.connect(lambda _: reports.append(time.perf_counter()))
    qtbot.waitUntil(lambda: not widget.jobs.running, timeout=300_000)
    timer.stop()
    assert "Whole-slide heatmap written to" in widget._status.value, widget._status.value
    running = np.array([t for t in ticks if t <= reports[-1]])
    gaps = np.diff(running)
    print(
        f"\nlongest event-loop gap while the slide's heatmap ran: {gaps.max() * 1000:.0f} ms "
        f"({len(running)} ticks over {running[-1] - running[0]:.1f} s)"
    )
    assert len(running) > 10 and gaps.max() < 0.2
    whole = find_layers(viewer, "heatmap")
    assert len(whole) == 1 and whole[0].name == "tumour probability (slide)"
    assert np.asarray(whole[0].data).shape[0] > values.shape[0]  # the slide, not the view
    # Its tumour outlines: drawn over the slide in its pixels, and written as QuPath annotations
    # beside the store, the same file `nucleiseg heatmap` writes. The demo slide's tissue is
    # mostly called normal, so outline at a low probability first: there are regions to draw.
    from skimage.measure import points_in_poly

    widget._threshold.value = 0.1
    widget._heat_slide.clicked.emit()  # a finished store: resumed at once, outlined anew
    qtbot.waitUntil(lambda: not widget.jobs.running, timeout=300_000)
    (outlines,) = find_layers(viewer, "tumour-outlines")
    assert tuple(outlines.scale) == tuple(slide.scale)
    assert viewer.layers.index(outlines) == viewer.layers.index(whole[0]) + 1
    parts = list(outlines.features["part"])
    regions = parts.count("region")
    assert regions >= 1 and len(outlines.data) == len(parts)
    stem = Path(slide.metadata["nucleiseg"]["path"]).stem
    written = json.loads((widget._out.value / f"{stem}.tumour.geojson").read_text())
    assert len(written["features"]) == regions
    assert f"{regions} tumour regions" in widget._status.value, widget._status.value
    h, w = slide.level_shapes[0] if slide.multiscale else slide.data.shape[:2]
    for ring in outlines.data:  # inside the slide: level-0 pixel k is centred on k
        assert ring.min() >= -0.5 and ring[:, 0].max() <= h - 0.5 and ring[:, 1].max() <= w - 0.5
    # The file's first region (x, y pixels, pixel i covering [i, i+1)) is the layer's first
    # ring (row, col, pixel k centred on k): half a pixel apart.
    first = np.asarray(written["features"][0]["geometry"]["coordinates"][0])[:-1]
    np.testing.assert_allclose(outlines.data[0], first[:, ::-1] - 0.5, atol=2e-3)
    # Aligned: the map's most tumour-like cell, in world µm, lies inside a drawn region.
    heat = np.asarray(whole[0].data)
    cell = np.unravel_index(np.nanargmax(heat), heat.shape)
    point = outlines.world_to_data(whole[0].data_to_world(cell))
    inside = [points_in_poly([point], r)[0] for r, k in zip(outlines.data, parts) if k == "region"]
    assert any(inside)
    widget._threshold.value = 0.95
    widget._heat_slide.clicked.emit()
    qtbot.waitUntil(lambda: not widget.jobs.running, timeout=300_000)
    (strict,) = find_layers(viewer, "tumour-outlines")
    assert list(strict.features["part"]).count("region") <= regions
    assert "p ≥ 0.95" in widget._status.value, widget._status.value
    # A folder in the way of the file: the outlines are still drawn, and the status says so.
    geojson = widget._out.value / f"{stem}.tumour.geojson"
    geojson.unlink()
    geojson.mkdir()
    widget._heat_slide.clicked.emit()
    qtbot.waitUntil(lambda: not widget.jobs.running, timeout=300_000)
    assert f"outlines not written: {geojson}" in widget._status.value, widget._status.value
    assert len(find_layers(viewer, "tumour-outlines")) == 1

    # Attention: a head trained on the project's outlines (tumour and normal regions).
    widget._draw.clicked.emit()
    layer = widget.outlines_layer()
    widget._tag.value = "tumour"
    layer.add_polygons([_square(200, 200, 500), _square(200, 900, 500)])
    widget._tag.value = "normal"
    layer.add_polygons([_square(1200, 200, 500), _square(1200, 900, 500)])
    widget._add.clicked.emit()
    widget._train_attention.clicked.emit()
    qtbot.waitUntil(lambda: not widget.jobs.running, timeout=120_000)
    assert widget.project.current_model("attention") == "attention-1", widget._status.value
    widget._attention_view.clicked.emit()
    qtbot.waitUntil(lambda: not widget.jobs.running, timeout=120_000)
    att = find_layers(viewer, "attention")
    assert len(att) == 1, widget._status.value
    w = np.asarray(att[0].data)
    finite = w[np.isfinite(w)]
    # Weights times the number of patches: their mean is 1.
    assert finite.size > 3 and abs(finite.mean() - 1) < 1e-3
