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


def main():
    warnings.simplefilter("ignore")
    import napari

    OUT.mkdir(exist_ok=True)
    viewer = napari.Viewer(title="napari-nucleiseg")
    viewer.window.resize(1500, 950)
    _, widget = viewer.window.add_plugin_dock_widget("napari-nucleiseg", "Slide")
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

    # 3. A real Aperio slide opened through the reader, in µm.
    cmu = SHARED / "CMU-1-Small-Region.svs"
    if cmu.exists():
        viewer.layers.clear()
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
    else:
        print(f"skipping the real-slide screenshot: {cmu} not found", file=sys.stderr)
    viewer.close()
    print("wrote", ", ".join(sorted(p.name for p in OUT.glob("*.png"))))


if __name__ == "__main__":
    main()
