"""The Stain panel in a real napari viewer (run under Xvfb): fit on the view, a file or a profile;
a lazy normalised slide at every zoom; H / E / DAB channels; messages instead of crashes."""

import numpy as np
import pytest
from _notifications import fresh_notifications, no_blocking_dialogs  # noqa: F401 (autouse)
from _notifications import messages as _messages

pytestmark = pytest.mark.gui


def _kind(viewer, kind):
    return [l for l in viewer.layers if l.metadata.get("nucleiseg", {}).get("kind") == kind]


@pytest.fixture
def panel(make_napari_viewer, demo):
    from napari_nucleiseg._napari._stain_widget import StainWidget

    viewer = make_napari_viewer()
    widget = StainWidget(viewer)
    viewer.open_sample("napari-nucleiseg", "demo_slide")
    slide = _kind(viewer, "slide")[0]
    widget._layer.value = slide
    viewer.scene.camera.center = (1400 * 0.5, 1500 * 0.5)
    viewer.scene.camera.zoom = 1.0  # 2 slide pixels per screen pixel: level 0 on screen
    return viewer, widget, slide


def _fit(qtbot, widget):
    """Click Fit and wait until the panel is idle (a ticked "show" follows the fit at once)."""
    widget._fit.clicked.emit()
    qtbot.waitUntil(lambda: not widget.jobs.running, timeout=120_000)


def _show(qtbot, widget, on=True):
    widget._show.value = on
    qtbot.waitUntil(lambda: not widget.jobs.running, timeout=120_000)


def test_fit_on_the_view_and_show_the_slide_normalised_lazily(panel, qtbot, tmp_path):
    import dask.array as da

    viewer, widget, slide = panel
    widget._method.value = "macenko"
    _fit(qtbot, widget)
    assert widget.normaliser is not None and "fitted on the current view" in widget._status.value

    _show(qtbot, widget)
    (norm,) = _kind(viewer, "stain_normalised")
    # Same pyramid, same place, computed lazily per chunk.
    assert norm.multiscale and all(isinstance(d, da.Array) for d in norm.data)
    assert [d.shape for d in norm.data] == [d.shape for d in slide.data]
    assert tuple(norm.scale) == tuple(slide.scale) and tuple(norm.translate) == tuple(
        slide.translate
    )
    # One colour mapping for the whole slide: a chunk is the slide-adapted normaliser applied to
    # the slide's chunk, whatever its neighbours, and it really changes the colours.
    adapted = widget.adapted
    assert adapted.adapted and norm.metadata["nucleiseg"]["source"] == adapted.source.to_dict()
    block = np.asarray(slide.data[0][1024:1280, 1024:1280])
    shown = np.asarray(norm.data[0][1024:1280, 1024:1280])
    assert np.array_equal(shown, adapted.transform(block))
    # The layer records that mapping (what the Nuclei panel segments): the same pixels from it.
    from dataclasses import fields

    from napari_nucleiseg.layers import NormalisedStain, recorded_normaliser

    assert {f.name for f in fields(NormalisedStain)} <= set(norm.metadata["nucleiseg"])
    assert np.array_equal(recorded_normaliser(norm.metadata["nucleiseg"]).transform(block), shown)
    assert np.array_equal(np.asarray(norm.data[0][1024:1536, 1024:1536])[:256, :256], shown)
    assert np.abs(shown.astype(int) - block).mean() > 1
    qtbot.wait(200)
    assert viewer.screenshot(canvas_only=True, flash=False)[..., :3].std() > 5

    # Toggling off hides it; a new fit replaces it instead of adding another.
    _show(qtbot, widget, False)
    assert not norm.visible
    _show(qtbot, widget)  # ticked again: shown again (it stayed hidden, the status saying shown)
    (norm,) = _kind(viewer, "stain_normalised")
    assert norm.visible and "shown normalised" in widget._status.value
    widget._method.value = "reinhard"
    _fit(qtbot, widget)
    (again,) = _kind(viewer, "stain_normalised")
    assert again.metadata["nucleiseg"]["method"] == "reinhard"
    assert "reinhard" in again.name and "shown normalised" in widget._status.value
    # Its layer deleted: the panel no longer says it is shown, and the box is unticked.
    viewer.layers.remove(again)
    assert not widget._show.value and "normalised view was closed" in widget._status.value
    _show(qtbot, widget)
    (again,) = _kind(viewer, "stain_normalised")
    assert again.visible and widget._show.value
    assert not any("still running" in m for m in _messages())

    # Save the profile and use it as the reference: the same target.
    path = tmp_path / "ref.json"
    widget._profile_path.value = path
    assert widget._on_save() == path and path.exists()
    before = widget.normaliser.profile.to_dict()
    widget._reference.value = widget._reference.choices[1]
    widget._file.value = path
    widget._method.value = "macenko"  # a profile knows its own method
    _fit(qtbot, widget)
    assert widget.normaliser.profile.to_dict() == before


def test_fit_on_a_reference_image_file(panel, qtbot, png_image):
    viewer, widget, slide = panel
    widget._reference.value = widget._reference.choices[1]
    widget._file.value = png_image
    _fit(qtbot, widget)
    assert widget.normaliser is not None and png_image.name in widget._status.value


def test_deconvolution_channels_are_lazy_layers(panel, qtbot):
    import dask.array as da

    from napari_nucleiseg.stain import deconvolve

    viewer, widget, slide = panel
    widget._channels.clicked.emit()
    layers = _kind(viewer, "stain_channel")
    assert [l.metadata["nucleiseg"]["channel"] for l in layers] == ["haematoxylin", "eosin", "DAB"]
    block = np.asarray(slide.data[0][1024:1280, 1024:1280])
    expected = deconvolve(block)
    for k, lyr in enumerate(layers):
        assert isinstance(lyr.data[0], da.Array) and lyr.data[0].shape == slide.data[0].shape[:2]
        assert np.allclose(np.asarray(lyr.data[0][1024:1280, 1024:1280]), expected[..., k])
    widget._channels.clicked.emit()  # again: replaced, not piled up
    assert len(_kind(viewer, "stain_channel")) == 3

    # Then the slide normalised: the channels, which lie above it and covered it, are hidden.
    widget._method.value = "macenko"
    _fit(qtbot, widget)
    _show(qtbot, widget)
    assert not any(lyr.visible for lyr in _kind(viewer, "stain_channel"))
    assert "stain channels are hidden" in widget._status.value


def test_stain_messages_instead_of_crashes(make_napari_viewer, panel, qtbot, tmp_path):
    from napari_nucleiseg._napari._stain_widget import StainWidget

    empty = StainWidget(make_napari_viewer())
    empty._fit.clicked.emit()
    assert any("No slide open" in m for m in _messages())
    empty._save.clicked.emit()
    assert any("Nothing to save" in m for m in _messages())
    empty._show.value = True
    assert not empty._show.value

    viewer, widget, slide = panel
    _show(qtbot, widget)
    assert any("Fit a normaliser first" in m for m in _messages()) and not widget._show.value
    widget._reference.value = widget._reference.choices[1]
    widget._file.value = ""  # nothing chosen: was read as ".", and every image there fitted on
    widget._fit.clicked.emit()
    assert not widget.jobs.running and widget.normaliser is None
    assert "Choose a reference image" in widget._status.value
    widget._file.value = tmp_path / "missing.json"
    widget._fit.clicked.emit()
    assert any("missing.json" in m for m in _messages())
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    widget._file.value = bad
    _fit(qtbot, widget)
    assert any("bad.json" in m for m in _messages())


def test_stain_panel_docks_from_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-nucleiseg", "Stain")
    assert type(widget).__name__ == "StainWidget"


@pytest.fixture
def tiny_normaliser(tmp_path, monkeypatch):
    """A tiny trained normaliser in the user's model folder (this test's own folder)."""
    from _tiny_normaliser import export_tiny_normaliser

    folder = tmp_path / "user-models"
    monkeypatch.setenv("NUCLEISEG_MODELS_DIR", str(folder))
    # A second one whose card records its style's Lab statistics (colour calibration).
    export_tiny_normaliser(folder, "tiny-stain-lab", reference_lab=[50, 25, -5, 14, 12, 9])
    return export_tiny_normaliser(folder)


def test_a_learned_normaliser_is_listed_and_shows_the_slide_normalised(
    tiny_normaliser, panel, qtbot
):
    import dask.array as da

    from napari_nucleiseg.stain.lazy import adapt_to_levels
    from napari_nucleiseg.stain.learned_normaliser import load_learned

    viewer, widget, slide = panel
    assert list(widget._method.choices) == ["macenko", "reinhard", "vahadane", "ruifrok", "learned"]
    widget._method.value = "learned"
    # The shipped default first, then the user's models.
    first, *users = widget._model.choices
    assert first == "stain-cycle-v1" and sorted(users) == ["tiny-stain", "tiny-stain-lab"]
    widget._model.value = "tiny-stain"
    # A model and its colour pull instead of a reference; nothing to fit (said, not failed).
    assert not widget._model.native.isHidden() and widget._reference.native.isHidden()
    assert not widget._calibration.native.isHidden() and widget._calibration.value == 0.5
    widget._fit.clicked.emit()
    assert "needs no fitting" in widget._status.value and not widget.jobs.running
    assert not any("fit" in m.lower() for m in _messages())

    _show(qtbot, widget)
    (norm,) = _kind(viewer, "stain_normalised")
    meta = norm.metadata["nucleiseg"]
    assert meta["method"] == "learned" and meta["source"]["card"].endswith("tiny-stain.json")
    assert meta["slide"] == slide.metadata["nucleiseg"]["path"]
    assert "tiny-stain" in norm.name and "learned normaliser tiny-stain" in widget._status.value
    # Lazy, the slide's pyramid, in the slide's place.
    assert norm.multiscale and all(isinstance(d, da.Array) for d in norm.data)
    assert [d.shape for d in norm.data] == [d.shape for d in slide.data]
    assert np.allclose(norm.scale, slide.scale) and np.allclose(norm.translate, slide.translate)
    # Adapted once to the whole slide (its stain measured in the background, recorded).
    normaliser = adapt_to_levels(load_learned("tiny-stain"), list(slide.data))
    assert widget.adapted.adapted and widget.adapted.token() == normaliser.token()
    assert np.allclose(meta["source"]["stain"], normaliser.source_stain)
    # The record gives the very same mapping back (what "normalise stain first" applies).
    from napari_nucleiseg.layers import recorded_normaliser

    assert recorded_normaliser(meta).token() == normaliser.token()
    # The model's colours: what LearnedNormaliser.transform gives the same region (read with a
    # margin of context, cut off again), and unlike the raw slide.
    raw = np.asarray(slide.data[0][896:1408, 896:1408])
    expected = normaliser.transform(raw, mpp=0.5)[128:384, 128:384]
    shown = np.asarray(norm.data[0][1024:1280, 1024:1280])
    assert shown.dtype == np.uint8 and shown.shape == expected.shape
    assert np.abs(shown.astype(int) - expected).max() <= 2
    assert np.abs(shown.astype(int) - raw[128:384, 128:384]).mean() > 3
    coarse = np.asarray(norm.data[-1])  # every level, at its own µm/px
    assert np.abs(coarse.astype(int) - np.asarray(slide.data[-1])).mean() > 3
    qtbot.wait(200)
    assert viewer.screenshot(canvas_only=True, flash=False)[..., :3].std() > 5
    assert meta["source"]["calibration"] is None  # its card has no style statistics to pull to
    assert "no colour pull" in widget._status.value

    # A model whose card has them: the view is redrawn with the pull set in the panel (and
    # again when it changes), and the layer's record gives that very mapping back.
    for model, pull in (("tiny-stain-lab", 0.5), ("tiny-stain-lab", 1.0)):
        widget._model.value, widget._calibration.value = model, pull
        qtbot.waitUntil(lambda: not widget.jobs.running, timeout=60000)
        (norm,) = _kind(viewer, "stain_normalised")
        meta = norm.metadata["nucleiseg"]
        assert meta["source"]["card"].endswith("tiny-stain-lab.json")
        assert meta["source"]["calibration"]["strength"] == pull
        assert f"colour pull {pull:g}" in widget._status.value
        assert recorded_normaliser(meta).token() == widget.adapted.token()

    # Unticked: hidden; a classical fit afterwards replaces it (one normalised view).
    _show(qtbot, widget, False)
    assert not norm.visible
    widget._method.value = "reinhard"
    assert widget._model.native.isHidden() and not widget._reference.native.isHidden()
    assert widget._calibration.native.isHidden()
    _fit(qtbot, widget)
    _show(qtbot, widget)
    (again,) = _kind(viewer, "stain_normalised")
    assert again.metadata["nucleiseg"]["method"] == "reinhard"
    assert not any("still running" in m for m in _messages())


def test_learned_normaliser_messages(panel, qtbot, tmp_path, monkeypatch):
    from _tiny_normaliser import export_tiny_normaliser

    from napari_nucleiseg.models import registry

    viewer, widget, slide = panel
    # No normaliser model at all (an install without the shipped one, no user models): said in
    # the status line, and Show does nothing else.
    monkeypatch.setattr(registry, "MODELS_DIR", tmp_path / "no-shipped-models")
    monkeypatch.setenv("NUCLEISEG_MODELS_DIR", str(tmp_path / "none"))
    widget._method.value = "learned"
    assert widget._model.value is None
    assert "No learned normaliser installed" in widget._status.value
    widget._show.value = True
    assert not widget._show.value and not _kind(viewer, "stain_normalised")
    assert any("No learned normaliser installed" in m for m in _messages())

    # A card whose network file was damaged: one line naming it, nothing shown.
    folder = tmp_path / "broken"
    card = export_tiny_normaliser(folder, name="broken-stain")
    onnx = card.with_suffix(".onnx")
    onnx.write_bytes(onnx.read_bytes()[:-16] + bytes(16))
    monkeypatch.setenv("NUCLEISEG_MODELS_DIR", str(folder))
    widget._method.value = "macenko"
    widget._method.value = "learned"
    assert widget._model.value == "broken-stain"
    _show(qtbot, widget)
    assert not widget._show.value and not _kind(viewer, "stain_normalised")
    line = [m for m in _messages() if "broken-stain" in m]
    assert line and "\n" not in line[-1] and "does not match" in line[-1]
    assert "does not match" in widget._status.value

    # Saving a profile makes no sense for a trained model: said.
    widget._save.clicked.emit()
    assert any("no stain profile to save" in m for m in _messages())
