"""What the viewer shows by default and the small things around it (run under Xvfb): nuclei
as yellow outlines (a choice of outline/fill and colours), stains in grey under the nuclei, the
tissue mask as an outline without armed paint tools, the scale bar on, keyboard shortcuts,
messages in the user's words."""

import numpy as np
import pytest
from _notifications import fresh_notifications, no_blocking_dialogs  # noqa: F401 (autouse)
from _notifications import messages as _messages

pytestmark = pytest.mark.gui


def _kind(viewer, kind):
    return [l for l in viewer.layers if l.metadata.get("nucleiseg", {}).get("kind") == kind]


@pytest.fixture
def viewer_with_slide(make_napari_viewer, demo):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-nucleiseg", "demo_slide")
    (slide,) = _kind(viewer, "slide")
    viewer.scene.camera.center = (1400 * 0.5, 1500 * 0.5)
    viewer.scene.camera.zoom = 3.0 / 0.5
    return viewer, slide


def _segment_view(qtbot, viewer, slide):
    from napari_nucleiseg._napari._nuclei_widget import NucleiWidget

    widget = NucleiWidget(viewer)
    widget._layer.value = slide
    widget._method.value = "classical"
    widget._run_view.clicked.emit()
    qtbot.waitUntil(lambda: not widget.jobs.running, timeout=120_000)
    qtbot.waitUntil(lambda: widget._last is not None and widget._last.table is not None)
    return widget


def test_nuclei_are_yellow_outlines_and_the_panel_switches_fill_and_colours(
    viewer_with_slide, qtbot
):
    from napari.utils.colormaps import CyclicLabelColormap, DirectLabelColormap

    from napari_nucleiseg.layers import NUCLEI_CONTOUR

    viewer, slide = viewer_with_slide
    widget = _segment_view(qtbot, viewer, slide)
    (layer,) = _kind(viewer, "nuclei")
    assert layer.contour == NUCLEI_CONTOUR and layer.opacity == 1.0
    assert isinstance(layer.colormap, DirectLabelColormap)
    some_id = int(np.asarray(layer.data).max())
    r, g, b, a = layer.colormap.map(some_id)
    assert r > 0.9 and g > 0.8 and b < 0.2 and a == 1  # yellow, whatever the id

    widget._style.value = "filled"
    assert layer.contour == 0 and layer.opacity < 1
    widget._colouring.value = "a colour per nucleus"
    assert isinstance(layer.colormap, CyclicLabelColormap)
    # The outline shortcut toggles back.
    from napari.utils.key_bindings import coerce_keybinding

    from napari_nucleiseg._napari._nuclei_widget import SHORTCUTS

    viewer.keymap[coerce_keybinding(SHORTCUTS["toggle_outlines"])](viewer)
    assert widget._style.value == "outlines" and layer.contour == NUCLEI_CONTOUR


def test_shortcuts_segment_the_view_and_step_through_the_nuclei(viewer_with_slide, qtbot):
    from napari.utils.key_bindings import coerce_keybinding

    from napari_nucleiseg._napari._nuclei_widget import SHORTCUTS

    viewer, slide = viewer_with_slide
    widget = _segment_view(qtbot, viewer, slide)
    (layer,) = _kind(viewer, "nuclei")
    key = {name: viewer.keymap[coerce_keybinding(k)] for name, k in SHORTCUTS.items()}
    centres = []
    for _ in range(3):
        key["next_nucleus"](viewer)
        centres.append(tuple(viewer.scene.camera.center[-2:]))
    key["previous_nucleus"](viewer)
    assert widget.table.currentIndex().row() == 1 and len(set(centres)) == 3
    # The view is centred on the nucleus of the row chosen.
    row = widget.table.columns.row(1)
    cy, cx = viewer.scene.camera.center[-2:]
    r, c = np.round(layer.world_to_data((cy, cx))).astype(int)
    assert np.asarray(layer.data)[r, c] == row["label"]

    # Shift-S segments what is on screen now.
    viewer.scene.camera.center = (1800 * 0.5, 2200 * 0.5)
    before = layer.metadata["nucleiseg"]["box"]
    key["segment_view"](viewer)
    qtbot.waitUntil(lambda: not widget.jobs.running, timeout=120_000)
    (layer,) = _kind(viewer, "nuclei")
    assert layer.metadata["nucleiseg"]["box"] != before


def test_stains_are_grey_under_the_nuclei_one_at_a_time(viewer_with_slide, qtbot):
    from napari_nucleiseg._napari._stain_widget import StainWidget

    viewer, slide = viewer_with_slide
    _segment_view(qtbot, viewer, slide)
    stain = StainWidget(viewer)
    stain._layer.value = slide
    stain._channels.clicked.emit()
    channels = _kind(viewer, "stain_channel")
    names = [l.name for l in viewer.layers]
    nuclei = _kind(viewer, "nuclei")[0]
    # Just above the slide, under the nuclei.
    assert names.index(slide.name) < min(names.index(c.name) for c in channels)
    assert max(names.index(c.name) for c in channels) < names.index(nuclei.name)
    assert all(c.colormap.name == "gray_r" and c.blending == "translucent" for c in channels)
    assert [c.visible for c in channels] == [True, False, False]
    channels[1].visible = True  # showing eosin hides haematoxylin
    assert [c.visible for c in channels] == [False, True, False]
    stain._channels.clicked.emit()  # again: replaced, not piled up
    assert len(_kind(viewer, "stain_channel")) == 3 and len(viewer.layers) == len(names)


def test_tissue_mask_is_an_outline_and_the_slide_stays_selected(make_napari_viewer, qtbot, demo):
    from napari_nucleiseg._napari._slide_widget import SlideWidget

    viewer = make_napari_viewer()
    widget = SlideWidget(viewer)
    (slide,) = viewer.open(str(demo.slide), plugin="napari-nucleiseg")
    widget._tissue.clicked.emit()
    qtbot.waitUntil(lambda: bool(_kind(viewer, "tissue")), timeout=60_000)
    (tissue,) = _kind(viewer, "tissue")
    assert tissue.contour >= 1 and tissue.mode == "pan_zoom"
    assert viewer.layers.selection.active is slide
    assert "outlined" in widget._status.value


def test_open_without_a_file_asks_for_one_and_messages_use_the_users_words(
    make_napari_viewer, png_image
):
    from napari_nucleiseg._napari._layers import in_user_words
    from napari_nucleiseg._napari._slide_widget import SlideWidget

    viewer = make_napari_viewer()
    widget = SlideWidget(viewer)
    widget._open.clicked.emit()
    assert any(m.startswith("Choose a slide file first") for m in _messages())
    widget._file.value = png_image
    widget._open.clicked.emit()
    said = " ".join(_messages())
    assert "no µm/px" in said and "mpp=" not in said and "--mpp" not in said
    assert "Slide panel" in said
    assert "--mpp" not in in_user_words("x.svs: states no µm/px; give it with --mpp (e.g. 0.25)")
    # A file's name is spelt as it is (it read "Demo_he.tif"); the command line's --out is the
    # panel's results folder.
    assert in_user_words("demo_he.tif: the view shows only glass").startswith("demo_he.tif:")
    assert in_user_words("the view is empty").startswith("The view")
    said = in_user_words(
        "x.zarr: it was made with … refusing to mix results — choose another --out"
    )
    assert "--out" not in said and "another results folder" in said


def test_open_slide_on_a_slide_already_open_selects_it(make_napari_viewer, demo):
    """The field shows the open slide's file, so Open slide used to add it again ("[1]")."""
    from napari_nucleiseg._napari._slide_widget import SlideWidget

    viewer = make_napari_viewer()
    widget = SlideWidget(viewer)
    (slide,) = viewer.open(str(demo.slide), plugin="napari-nucleiseg")
    viewer.layers.selection.active = None
    assert str(widget._file.value) == str(demo.slide)
    widget._open.clicked.emit()
    assert [l for l in viewer.layers] == [slide]
    assert viewer.layers.selection.active is slide and widget._layer.value is slide
    assert "already open" in widget._status.value


@pytest.mark.parametrize("panel", ["Nuclei", "Stain", "Slide"])
def test_the_scale_bar_is_on_whenever_a_panel_opens(make_napari_viewer, panel):
    from napari_nucleiseg._napari._start import _scale_bar

    viewer = make_napari_viewer()
    assert not _scale_bar(viewer).visible
    viewer.window.add_plugin_dock_widget("napari-nucleiseg", panel)
    assert _scale_bar(viewer).visible


def test_pop_ups_show_the_message_without_napari_internals(make_napari_viewer, qtbot):
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from qtpy.QtWidgets import QApplication

    from napari_nucleiseg._napari._slide_widget import SlideWidget

    viewer = make_napari_viewer(show=True)
    widget = SlideWidget(viewer)
    widget._tissue.clicked.emit()  # no slide open: an error pop-up

    def popups():
        return [
            p
            for top in QApplication.topLevelWidgets()
            for p in [top, *top.findChildren(NapariQtNotification)]
            if isinstance(p, NapariQtNotification)
        ]

    qtbot.waitUntil(lambda: bool(popups()), timeout=5_000)
    qtbot.wait(50)
    for popup in popups():
        assert "before computing its tissue mask" in popup.message.text()
        assert "<napari." not in popup.source_label.text()
        assert popup.message.wordWrap()
