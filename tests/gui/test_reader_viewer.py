"""The reader, sample data and Slide widget in a real napari viewer (run under Xvfb)."""

import numpy as np
import pytest
from _notifications import fresh_notifications, no_blocking_dialogs  # noqa: F401 (autouse)
from _notifications import messages as _errors
from conftest import shared_slide

pytestmark = pytest.mark.gui

REAL = {
    "CMU-1-Small-Region.svs": ([(2967, 2220)], 0.499),
    "tcga-cr-7395-01a-01-ts1.svs": ([(3567, 4443), (1783, 2221)], None),
    "boxes.tiff": ([(250, 300), (125, 150), (62, 75), (31, 37)], 352.7777798),
    "boxes_0.dcm": ([(16, 16)], 0.499),
}


@pytest.mark.real_slides
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_slides_open_with_levels_and_um_scale(make_napari_viewer, qtbot, name):
    path = shared_slide(name)
    shapes, mpp = REAL[name]
    viewer = make_napari_viewer(show=True)
    (layer,) = viewer.open(str(path), plugin="napari-nucleiseg")
    assert layer.multiscale and layer.rgb
    assert [tuple(d.shape[:2]) for d in layer.data] == shapes
    expected = mpp if mpp is not None else 1.0
    assert tuple(layer.scale) == pytest.approx((expected, expected), rel=1e-6)
    meta = layer.metadata["nucleiseg"]
    assert meta["kind"] == "slide" and meta["path"] == str(path)
    assert (meta["mpp"] is None) == (mpp is None)
    qtbot.wait(50)
    # The view shows real pixels, not an empty canvas.
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot[..., :3].std() > 5


def test_missing_resolution_becomes_a_notification(make_napari_viewer, tmp_path, png_image):

    viewer = make_napari_viewer()
    p = tmp_path / "nores.tif"
    import tifffile
    from PIL import Image

    tifffile.imwrite(p, np.asarray(Image.open(png_image)), photometric="rgb")
    (layer,) = viewer.open(str(p), plugin="napari-nucleiseg")
    assert any("nores.tif" in m and "no µm/px" in m for m in _errors())
    assert tuple(layer.scale) == (1.0, 1.0)


@pytest.mark.parametrize("content", [b"", b"garbage" * 500])
def test_bad_slide_is_a_notification_not_a_crash(make_napari_viewer, tmp_path, content):
    viewer = make_napari_viewer()
    bad = tmp_path / "broken.svs"
    bad.write_bytes(content)
    layers = viewer.open(str(bad), plugin="napari-nucleiseg")
    assert layers == [] and len(viewer.layers) == 0
    assert any("broken.svs" in m for m in _errors())


def test_demo_sample_aligns_slide_and_ground_truth(make_napari_viewer, demo):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-nucleiseg", "demo_slide")
    slide = next(lyr for lyr in viewer.layers if lyr.metadata["nucleiseg"]["kind"] == "slide")
    truth = next(
        lyr for lyr in viewer.layers if lyr.metadata["nucleiseg"]["kind"] == "ground_truth"
    )
    assert tuple(slide.scale) == (0.5, 0.5) and tuple(truth.scale) == (0.5, 0.5)
    assert tuple(slide.translate) == tuple(truth.translate)
    assert [d.shape[:2] for d in slide.data] == [d.shape for d in truth.data]
    # A nucleus centre in world µm hits the same id in the ground truth at every level.
    labels0 = np.asarray(truth.data[0][1000:1400, 1000:1400])
    ys, xs = np.nonzero(labels0)
    y, x = ys[len(ys) // 2] + 1000, xs[len(xs) // 2] + 1000
    world = np.array([y, x]) * 0.5 + np.array(truth.translate)
    for lyr in (slide, truth):
        assert np.allclose(lyr.world_to_data(world), (y, x))
    assert str(slide.units[0]) == "micrometer"


def test_slide_widget_info_tissue_and_override(make_napari_viewer, qtbot, demo):
    from napari_nucleiseg._napari._slide_widget import SlideWidget

    viewer = make_napari_viewer()
    widget = SlideWidget(viewer)
    assert "No slide open" in widget._info.value
    (layer,) = viewer.open(str(demo.slide), plugin="napari-nucleiseg")
    assert widget._layer.value is layer
    assert "0.5 µm/px (file)" in widget._info.value and "4096 x 3072" in widget._info.value

    widget._tissue.clicked.emit()
    assert widget._cancel.enabled  # a background run, with a Cancel button
    qtbot.waitUntil(
        lambda: any(l.metadata.get("nucleiseg", {}).get("kind") == "tissue" for l in viewer.layers),
        timeout=20000,
    )
    assert not widget._cancel.enabled
    tissue = next(l for l in viewer.layers if l.metadata["nucleiseg"]["kind"] == "tissue")
    # Drawn finer than computed (its edge smoothed): scale from the layer's display downsample.
    dy, dx = tissue.metadata["nucleiseg"]["display_downsample"]
    assert dy < tissue.metadata["nucleiseg"]["downsample"]
    assert tuple(tissue.scale) == pytest.approx((0.5 * dy, 0.5 * dx))
    # Pixel-edge alignment: the mask's first pixel starts where the slide's first pixel starts.
    left_edge_mask = tissue.translate[1] - tissue.scale[1] / 2
    left_edge_slide = layer.translate[1] - layer.scale[1] / 2
    assert left_edge_mask == pytest.approx(left_edge_slide)
    assert "Tissue:" in widget._status.value

    # Running again replaces the layer instead of piling up copies.
    widget._tissue.clicked.emit()
    qtbot.waitUntil(lambda: not widget.jobs.running, timeout=20000)
    assert sum(l.metadata.get("nucleiseg", {}).get("kind") == "tissue" for l in viewer.layers) == 1

    widget._mpp.value = 0.25
    widget._apply_mpp.clicked.emit()
    assert tuple(layer.scale) == (0.25, 0.25)
    assert "0.25 µm/px (override)" in widget._info.value
    # 0 means no override: applying it goes back to the file's µm/px.
    widget._mpp.value = 0
    widget._apply_mpp.clicked.emit()
    assert tuple(layer.scale) == (0.5, 0.5)
    assert "0.5 µm/px (file)" in widget._info.value


def _shown_text(spin_box) -> str:
    """What the user reads in a magicgui spin box."""
    from qtpy.QtWidgets import QAbstractSpinBox

    native = spin_box.native
    if not isinstance(native, QAbstractSpinBox):
        native = native.findChild(QAbstractSpinBox)
    return native.lineEdit().text()


def test_slide_panel_shows_the_loaded_slide_and_what_0_um_per_px_means(
    make_napari_viewer, qtbot, demo
):
    from pathlib import Path

    from napari_nucleiseg._napari._slide_widget import SlideWidget

    viewer = make_napari_viewer()
    widget = SlideWidget(viewer)
    viewer.open_sample("napari-nucleiseg", "demo_slide")
    # The path field names the slide that is loaded (not an empty box).
    assert Path(widget._file.value) == Path(demo.slide)
    # No override: the box says the µm/px comes from the file; its tooltip says what 0 means.
    assert _shown_text(widget._mpp) == "from the file"
    assert "0 (shown as 'from the file') means no override" in widget._mpp.tooltip
    widget._mpp.value = 0.2527
    widget._apply_mpp.clicked.emit()
    assert _shown_text(widget._mpp) == "0.2527"
    # A second slide, selected: its own path and µm/px (none overridden).
    viewer.open(str(demo.slide), plugin="napari-nucleiseg")
    assert Path(widget._file.value) == Path(demo.slide)
    assert _shown_text(widget._mpp) == "from the file"
    first = next(l for l in viewer.layers if l.name == "demo H&E slide")
    widget._layer.value = first
    assert _shown_text(widget._mpp) == "0.2527"


def test_widget_without_slide_says_so(make_napari_viewer):
    from napari_nucleiseg._napari._slide_widget import SlideWidget

    viewer = make_napari_viewer()
    widget = SlideWidget(viewer)
    widget._tissue.clicked.emit()
    assert any("before computing its tissue mask" in m for m in _errors())
    widget._apply_mpp.clicked.emit()
    assert any("before setting its µm/px" in m for m in _errors())


def test_widget_open_errors_and_moved_files_are_notifications(
    make_napari_viewer, tmp_path, demo, png_image
):
    import shutil

    from napari_nucleiseg._napari._slide_widget import SlideWidget

    viewer = make_napari_viewer()
    widget = SlideWidget(viewer)
    widget._file.value = tmp_path / "missing.svs"
    widget._open.clicked.emit()
    assert any("missing.svs: no such file" in m for m in _errors())
    # A plain PNG opens through the panel as a single-level slide (warning: no µm/px).
    widget._file.value = png_image
    widget._open.clicked.emit()
    assert [l.metadata["nucleiseg"]["format"] for l in viewer.layers] == ["png"]
    assert any("no µm/px" in m for m in _errors())
    # The slide's file disappears: asking for its tissue mask says so instead of raising.
    moved = tmp_path / "moved.tif"
    shutil.copy(demo.slide, moved)
    widget._file.value = moved
    widget._open.clicked.emit()
    widget._layer.value = viewer.layers[-1]
    moved.unlink()
    notification_count = len(_errors())
    widget._tissue.clicked.emit()
    assert any("moved.tif: no such file" in m for m in _errors()[notification_count:])


def test_override_rescales_layers_drawn_over_the_slide(make_napari_viewer, qtbot, demo):
    from napari_nucleiseg._napari._slide_widget import SlideWidget

    viewer = make_napari_viewer()
    widget = SlideWidget(viewer)
    viewer.open_sample("napari-nucleiseg", "demo_slide")
    slide = next(l for l in viewer.layers if l.metadata["nucleiseg"]["kind"] == "slide")
    widget._layer.value = slide
    widget._tissue.clicked.emit()
    qtbot.waitUntil(
        lambda: any(l.metadata.get("nucleiseg", {}).get("kind") == "tissue" for l in viewer.layers),
        timeout=20000,
    )
    widget._mpp.value = 0.2527
    widget._apply_mpp.clicked.emit()
    assert tuple(slide.scale) == pytest.approx((0.2527, 0.2527))
    for lyr in viewer.layers:
        if lyr is slide:
            continue
        # Same physical extent as the slide, and the same left/top pixel edge.
        ext_slide = np.asarray(slide.extent.world)
        ext_other = np.asarray(lyr.extent.world)
        assert np.allclose(ext_other[1] - ext_other[0], ext_slide[1] - ext_slide[0], rtol=0.02), (
            lyr.name
        )
        edge = lyr.translate[1] - lyr.scale[1] / 2
        assert edge == pytest.approx(slide.translate[1] - slide.scale[1] / 2), lyr.name


def test_plugin_widget_docks_from_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-nucleiseg", "Slide")
    assert type(widget).__name__ == "SlideWidget"
