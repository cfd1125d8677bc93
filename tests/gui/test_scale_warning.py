"""A wrong µm/px fails loudly in the Nuclei panel: the TCGA slide (states none; about 1 µm/px)
given 0.5 µm/px in the Slide panel and segmented whole gets a warning with the µm/px its nuclei
suggest, and a button that applies it; the CMU slide's view at its own 0.499 µm/px gets none."""

import pytest
from _notifications import fresh_notifications  # noqa: F401 (autouse fixture)
from _notifications import messages as _messages
from conftest import shared_slide

pytestmark = pytest.mark.gui


def _open(viewer, qtbot, name, mpp=None):
    from napari_nucleiseg._napari._nuclei_widget import NucleiWidget
    from napari_nucleiseg._napari._slide_widget import SlideWidget

    nuclei, slides = NucleiWidget(viewer), SlideWidget(viewer)
    viewer.open(str(shared_slide(name)), plugin="napari-nucleiseg")
    layer = next(l for l in viewer.layers if l.metadata["nucleiseg"]["kind"] == "slide")
    if mpp is not None:
        slides._mpp.value = mpp
        slides._apply_mpp.clicked.emit()
    nuclei._layer.value = layer
    return nuclei, slides


def test_a_wrong_mpp_is_flagged_after_the_whole_slide(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    nuclei, slides = _open(viewer, qtbot, "tcga-cr-7395-01a-01-ts1.svs", mpp=0.5)
    nuclei._out.value = tmp_path
    nuclei._run_slide.clicked.emit()
    qtbot.waitUntil(lambda: nuclei.scale_verdict is not None, timeout=600_000)
    verdict = nuclei.scale_verdict
    assert verdict.implausible and 0.75 < verdict.suggested_mpp < 1.5, verdict  # about 1
    assert "more likely about" in nuclei._status.value and "Slide panel" in nuclei._status.value
    assert nuclei._status.value.count("segment again") == 1  # said once (it was twice)
    assert any("more likely about" in m for m in _messages())
    # Offered in the panel: one click gives the slide that µm/px, its layers rescaled with it.
    assert not nuclei._use_mpp.native.isHidden()  # (not docked here: "visible" asks the window)
    assert "µm/px for this slide" in nuclei._use_mpp.text
    nuclei._use_mpp.clicked.emit()
    slide = next(l for l in viewer.layers if l.metadata["nucleiseg"]["kind"] == "slide")
    meta = slide.metadata["nucleiseg"]
    assert meta["mpp"] == pytest.approx(float(f"{verdict.suggested_mpp:.2g}"))
    assert meta["mpp_source"] == "override" and tuple(slide.scale) == (meta["mpp"],) * 2
    assert nuclei._use_mpp.native.isHidden() and "segment again" in nuclei._status.value
    # The Slide panel shows the µm/px now in use (it went on showing the old override).
    assert slides._mpp.value == pytest.approx(meta["mpp"])
    assert f"{meta['mpp']:.4g} µm/px (override)" in slides._info.value


def test_the_right_mpp_is_not_flagged(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    nuclei, _ = _open(viewer, qtbot, "CMU-1-Small-Region.svs")
    viewer.scene.camera.center = (1480 * 0.499, 1110 * 0.499)
    viewer.scene.camera.zoom = 0.6 / 0.499
    nuclei._run_view.clicked.emit()
    qtbot.waitUntil(lambda: nuclei.scale_verdict is not None, timeout=120_000)
    assert not nuclei.scale_verdict.implausible, nuclei.scale_verdict
    assert nuclei.scale_verdict.count > 200 and nuclei._use_mpp.native.isHidden()
    assert not any("more likely about" in m for m in _messages())
