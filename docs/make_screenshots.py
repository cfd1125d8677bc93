"""Regenerate the screenshots in docs/images from a real napari window.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_screenshots.py

Each picture is the whole napari window (canvas, layer list, docked widgets) as a user sees it.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "images"
SHARED = Path(os.environ.get("NUCLEISEG_SHARED", HERE.parent.parent / "shared")) / "data" / "slides"


def settle(viewer, ms=600):
    from qtpy.QtCore import QCoreApplication, QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()
    QCoreApplication.processEvents()


def wait_until(viewer, pred, seconds=600):
    import time

    t = time.perf_counter()
    while not pred():
        settle(viewer, 200)
        if time.perf_counter() - t > seconds:
            raise TimeoutError("gave up waiting")


def kind(layer):
    return layer.metadata.get("nucleiseg", {}).get("kind")


def show_only(docks, name):
    """One plugin panel at a time, so each picture shows the panel it is about at full height."""
    for key, dock in docks.items():
        dock.setVisible(key == name)


def panels(viewer, results):
    """The Nuclei and Stain panels, docked (hidden until a picture needs them)."""
    docks = {}
    for name in ("Nuclei", "Stain"):
        dock, widget = viewer.window.add_plugin_dock_widget("napari-nucleiseg", name)
        docks[name] = (dock, widget)
    docks["Nuclei"][1]._out.value = results
    return docks


def main():
    warnings.simplefilter("ignore")
    import napari

    from napari_nucleiseg.models import DEFAULT_NUCLEI_MODEL

    OUT.mkdir(exist_ok=True)
    viewer = napari.Viewer(title="napari-nucleiseg")
    viewer.window.resize(1500, 950)
    slide_dock, widget = viewer.window.add_plugin_dock_widget("napari-nucleiseg", "Slide")
    viewer.open_sample("napari-nucleiseg", "demo_slide")
    viewer.scale_bar.visible = True
    slide = next(l for l in viewer.layers if l.metadata["nucleiseg"]["kind"] == "slide")
    truth = next(l for l in viewer.layers if l.metadata["nucleiseg"]["kind"] == "ground_truth")
    viewer.layers.selection.active = slide
    settle(viewer)
    viewer.reset_view()
    settle(viewer)

    # 1. The demo slide with its tissue mask, whole-slide view.
    widget._tissue.clicked.emit()
    for _ in range(40):
        settle(viewer, 250)
        if any(l.metadata.get("nucleiseg", {}).get("kind") == "tissue" for l in viewer.layers):
            break
    viewer.layers.selection.active = slide
    settle(viewer)
    viewer.screenshot(str(OUT / "slide_widget_tissue.png"), canvas_only=False)

    # 2. Full resolution with the ground-truth nuclei outlined (what an annotator corrects).
    tissue = next(l for l in viewer.layers if l.metadata["nucleiseg"]["kind"] == "tissue")
    tissue.visible = False
    truth.visible = True
    truth.contour = 2
    viewer.layers.selection.active = truth
    viewer.scene.camera.center = (760.0, 1100.0)
    viewer.scene.camera.zoom = 4.0
    settle(viewer, 1200)
    viewer.screenshot(str(OUT / "full_resolution_nuclei.png"), canvas_only=False)

    # 3. Nuclei panel: the whole demo slide segmented in the background (lazy labels layer).
    import tempfile

    results = Path(tempfile.mkdtemp(prefix="nucleiseg-shots-"))
    docks = panels(viewer, results)
    all_docks = {"Slide": slide_dock, "Nuclei": docks["Nuclei"][0], "Stain": docks["Stain"][0]}
    nuclei = docks["Nuclei"][1]
    show_only(all_docks, "Nuclei")
    truth.visible = False
    nuclei._layer.value = slide
    nuclei._method.value = "classical"
    viewer.reset_view()
    settle(viewer)
    nuclei._run_slide.clicked.emit()
    wait_until(viewer, lambda: nuclei.jobs.running and nuclei.jobs._done[0] >= 3)
    settle(viewer, 500)
    viewer.screenshot(str(OUT / "nuclei_whole_slide_running.png"), canvas_only=False)
    wait_until(viewer, lambda: not nuclei.jobs.running)
    whole = next(l for l in viewer.layers if kind(l) == "nuclei")
    whole.contour = 0
    whole.opacity = 0.6
    viewer.layers.selection.active = whole
    settle(viewer, 1000)
    viewer.screenshot(str(OUT / "nuclei_whole_slide.png"), canvas_only=False)
    whole.visible = False

    # 4. Stain panel: fit a reference on the demo slide's view; its haematoxylin channel.
    stain = docks["Stain"][1]
    show_only(all_docks, "Stain")
    stain._layer.value = slide
    viewer.scene.camera.center = (760.0, 1100.0)
    viewer.scene.camera.zoom = 1.5
    settle(viewer)
    stain._method.value = "macenko"
    stain._fit.clicked.emit()
    wait_until(viewer, lambda: not stain.jobs.running)
    stain._channels.clicked.emit()
    slide.visible = False
    viewer.layers.selection.active = next(l for l in viewer.layers if kind(l) == "stain_channel")
    settle(viewer, 1500)
    viewer.screenshot(str(OUT / "stain_channels.png"), canvas_only=False)
    slide.visible = True
    for lyr in [l for l in viewer.layers if kind(l) == "stain_channel"]:
        viewer.layers.remove(lyr)

    # 5. A real Aperio slide opened through the reader, in µm.
    cmu = SHARED / "CMU-1-Small-Region.svs"
    if cmu.exists():
        viewer.layers.clear()
        show_only(all_docks, "Slide")
        viewer.open(str(cmu), plugin="napari-nucleiseg")
        settle(viewer)
        viewer.reset_view()
        widget._tissue.clicked.emit()
        for _ in range(40):
            settle(viewer, 250)
            if any(l.metadata.get("nucleiseg", {}).get("kind") == "tissue" for l in viewer.layers):
                break
        viewer.layers.selection.active = viewer.layers[0]
        settle(viewer, 800)
        viewer.screenshot(str(OUT / "real_slide_cmu.png"), canvas_only=False)

        # 6. The shipped model on the current view of the real slide: labels, count, table.
        show_only(all_docks, "Nuclei")
        next(l for l in viewer.layers if kind(l) == "tissue").visible = False
        cmu_layer = next(l for l in viewer.layers if kind(l) == "slide")
        nuclei._layer.value = cmu_layer
        nuclei._method.value = DEFAULT_NUCLEI_MODEL
        viewer.scene.camera.center = (1400 * 0.499, 1100 * 0.499)
        viewer.scene.camera.zoom = 3.0
        settle(viewer)
        nuclei._run_view.clicked.emit()
        wait_until(viewer, lambda: not nuclei.jobs.running)
        viewer.layers.selection.active = next(l for l in viewer.layers if kind(l) == "nuclei")
        settle(viewer, 1200)
        viewer.screenshot(str(OUT / "nuclei_current_view.png"), canvas_only=False)

        # 7. The real slide in the demo's colours (the reference fitted above), side by side.
        show_only(all_docks, "Stain")
        for lyr in [l for l in viewer.layers if kind(l) != "slide"]:
            viewer.layers.remove(lyr)
        stain._layer.value = cmu_layer
        stain._show.value = True
        wait_until(
            viewer,
            lambda: (
                not stain.jobs.running and any(kind(l) == "stain_normalised" for l in viewer.layers)
            ),
        )
        grid = (
            viewer.canvas.grid if hasattr(getattr(viewer, "canvas", None), "grid") else viewer.grid
        )
        grid.enabled = True
        viewer.scene.camera.center = (1400 * 0.499, 1100 * 0.499)
        viewer.scene.camera.zoom = 1.2
        settle(viewer, 1500)
        viewer.screenshot(str(OUT / "stain_normalised.png"), canvas_only=False)
        grid.enabled = False
    else:
        print(f"skipping the real-slide screenshots: {cmu} not found", file=sys.stderr)
    viewer.close()
    print("wrote", ", ".join(sorted(p.name for p in OUT.glob("*.png"))))


if __name__ == "__main__":
    main()
