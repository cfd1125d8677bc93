"""Regenerate the screenshots in docs/images from a real napari window.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_screenshots.py
    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_screenshots.py --tissue
    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_screenshots.py --learned

Each picture is the whole napari window (canvas, layer list, docked panels) as a user sees it,
laid out as ``nucleiseg view`` lays it out (``_start.first_screen``: the three panels as tabs of
one dock on the right, the window 1600 × 1000).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "images"
SHARED = Path(os.environ.get("NUCLEISEG_SHARED", HERE.parent.parent / "shared")) / "data" / "slides"
SIZE = (1600, 1000)


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


def front(viewer, name):
    """Bring a panel's tab to the front."""
    from qtpy.QtWidgets import QDockWidget

    window = viewer.window._qt_window
    for dock in window.findChildren(QDockWidget):
        if dock.windowTitle().startswith(name):
            dock.raise_()
    settle(viewer, 300)


def shoot(viewer, name):
    settle(viewer, 800)
    viewer.screenshot(str(OUT / name), canvas_only=False)
    print("wrote", name, flush=True)


def main():
    warnings.simplefilter("ignore")
    import tempfile

    import napari

    from napari_nucleiseg._napari._start import first_screen
    from napari_nucleiseg.models import DEFAULT_NUCLEI_MODEL

    OUT.mkdir(exist_ok=True)
    viewer = napari.Viewer(title="napari-nucleiseg")
    panels = first_screen(viewer, size=SIZE)
    settle(viewer, 1500)
    slide_panel, nuclei, stain = panels["Slide"], panels["Nuclei"], panels["Stain"]
    results = Path(tempfile.mkdtemp(prefix="nucleiseg-shots-"))
    nuclei._out.value = results
    slide = next(l for l in viewer.layers if kind(l) == "slide")
    truth = next(l for l in viewer.layers if kind(l) == "ground_truth")

    # 1. The first screen: the demo slide, the Nuclei panel in front.
    shoot(viewer, "first_screen.png")

    # 2. The demo slide with its tissue mask (an outline), Slide panel in front.
    front(viewer, "Slide")
    slide_panel._tissue.clicked.emit()
    wait_until(viewer, lambda: any(kind(l) == "tissue" for l in viewer.layers), 120)
    shoot(viewer, "slide_widget_tissue.png")

    # 3. Full resolution with the ground-truth nuclei outlined (what an annotator corrects).
    tissue = next(l for l in viewer.layers if kind(l) == "tissue")
    tissue.visible = False
    truth.visible = True
    truth.contour = 2
    viewer.layers.selection.active = truth
    viewer.scene.camera.center = (760.0, 1100.0)
    viewer.scene.camera.zoom = 4.0
    shoot(viewer, "full_resolution_nuclei.png")
    truth.visible = False

    # 4. The whole demo slide segmented in the background: live labels, bar and ETA in the panel.
    front(viewer, "Nuclei")
    nuclei._layer.value = slide
    nuclei._method.value = "classical"
    viewer.reset_view()
    settle(viewer)
    nuclei._run_slide.clicked.emit()
    wait_until(
        viewer,
        lambda: (
            nuclei.jobs.running
            and nuclei._slide_progress is not None
            and nuclei._slide_progress.segmented >= 5
            and any(kind(l) == "nuclei" for l in viewer.layers)
        ),
    )
    shoot(viewer, "nuclei_whole_slide_running.png")
    wait_until(viewer, lambda: not nuclei.jobs.running)
    whole = next(l for l in viewer.layers if kind(l) == "nuclei")
    viewer.layers.selection.active = slide
    viewer.scene.camera.center = (760.0, 1100.0)
    viewer.scene.camera.zoom = 2.0
    shoot(viewer, "nuclei_whole_slide.png")
    whole.visible = False

    # 5. Stain panel: the haematoxylin channel in grey, under the nuclei.
    front(viewer, "Stain")
    stain._layer.value = slide
    stain._method.value = "macenko"
    stain._fit.clicked.emit()
    wait_until(viewer, lambda: not stain.jobs.running)
    stain._channels.clicked.emit()
    viewer.layers.selection.active = next(l for l in viewer.layers if kind(l) == "stain_channel")
    viewer.scene.camera.zoom = 1.5
    shoot(viewer, "stain_channels.png")
    for lyr in [l for l in viewer.layers if kind(l) in ("stain_channel", "nuclei", "tissue")]:
        viewer.layers.remove(lyr)

    # 6. A real Aperio slide opened through the reader, in µm, with its tissue outline.
    cmu = SHARED / "CMU-1-Small-Region.svs"
    if not cmu.exists():
        print(f"skipping the real-slide screenshots: {cmu} not found", file=sys.stderr)
        viewer.close()
        return
    viewer.layers.clear()
    front(viewer, "Slide")
    viewer.open(str(cmu), plugin="napari-nucleiseg")
    settle(viewer)
    viewer.reset_view()
    slide_panel._tissue.clicked.emit()
    wait_until(viewer, lambda: any(kind(l) == "tissue" for l in viewer.layers), 120)
    shoot(viewer, "real_slide_cmu.png")

    # 7. The shipped model on the current view of the real slide: outlines, count, table.
    front(viewer, "Nuclei")
    next(l for l in viewer.layers if kind(l) == "tissue").visible = False
    cmu_layer = next(l for l in viewer.layers if kind(l) == "slide")
    nuclei._layer.value = cmu_layer
    nuclei._method.value = DEFAULT_NUCLEI_MODEL
    viewer.scene.camera.center = (1400 * 0.499, 1100 * 0.499)
    viewer.scene.camera.zoom = 3.0
    settle(viewer)
    nuclei._run_view.clicked.emit()
    wait_until(viewer, lambda: not nuclei.jobs.running and nuclei._last.table is not None)
    view = next(l for l in viewer.layers if kind(l) == "nuclei")
    viewer.layers.selection.active = view
    shoot(viewer, "nuclei_current_view.png")

    # 7b. Corrected by hand: the three largest nuclei erased, as napari's eraser or fill with
    # label 0 does (one undoable step each); the count and the table follow at once.
    import numpy as np

    data = np.asarray(view.data)
    ids, sizes = np.unique(data[data > 0], return_counts=True)
    for nucleus in ids[np.argsort(sizes)[-3:]]:
        with view.block_history():
            view.data_setitem(np.nonzero(data == nucleus), 0)
    view.mode = "erase"
    wait_until(viewer, lambda: nuclei._last.edited)
    shoot(viewer, "nuclei_corrected.png")
    view.mode = "pan_zoom"

    # 8. The real slide in the demo's colours (the reference fitted above), side by side.
    front(viewer, "Stain")
    for lyr in [l for l in viewer.layers if kind(l) != "slide"]:
        viewer.layers.remove(lyr)
    stain._layer.value = cmu_layer
    shoot_normalised_cmu(viewer, stain, "stain_normalised.png")
    viewer.close()


def shoot_normalised_cmu(viewer, stain, name: str) -> None:
    """Tick the Stain panel's *show normalised*, wait for the layer, and shoot the CMU slide
    beside it in napari's grid."""
    stain._show.value = True
    wait_until(
        viewer,
        lambda: (
            not stain.jobs.running and any(kind(l) == "stain_normalised" for l in viewer.layers)
        ),
    )
    grid = viewer.canvas.grid if hasattr(getattr(viewer, "canvas", None), "grid") else viewer.grid
    grid.enabled = True
    viewer.scene.camera.center = (1400 * 0.499, 1100 * 0.499)
    viewer.scene.camera.zoom = 1.2
    shoot(viewer, name)
    grid.enabled = False


def learned():
    """The CMU slide beside itself normalised by the shipped learned normaliser (Stain panel,
    method *learned*), side by side in napari's grid."""
    warnings.simplefilter("ignore")
    import napari

    from napari_nucleiseg._napari._start import first_screen

    cmu = SHARED / "CMU-1-Small-Region.svs"
    if not cmu.exists():
        print(f"skipping: {cmu} not found", file=sys.stderr)
        return
    viewer = napari.Viewer(title="napari-nucleiseg")
    panels = first_screen(viewer, size=SIZE)
    settle(viewer, 1500)
    stain = panels["Stain"]
    viewer.layers.clear()
    viewer.open(str(cmu), plugin="napari-nucleiseg")
    settle(viewer)
    front(viewer, "Stain")
    slide = next(l for l in viewer.layers if kind(l) == "slide")
    stain._layer.value = slide
    stain._method.value = "learned"
    shoot_normalised_cmu(viewer, stain, "stain_learned.png")
    viewer.close()


def tissue():
    """The Tissue panel on a mosaic slide of real colon tissue whose tumour cells are known:
    outlines, the whole-slide heatmap, an attention map (``make_screenshots.py --tissue``)."""
    warnings.simplefilter("ignore")
    import tempfile

    import napari
    import numpy as np

    from napari_nucleiseg.demo.mosaic import CELL_UM, mosaic_slide
    from napari_nucleiseg.methods import get_method

    OUT.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="nucleiseg-tissue-shots-"))
    g, t, n = "glass", "tumour", "normal"
    layout = [[g] * 6] + [[g, *row, g] for row in
              [[t, n, n, t], [n, t, g, n], [t, t, n, n], [n, t, t, n]]] + [[g] * 6]  # fmt: skip
    held = get_method(None, kind="classifier").card.training.get("heldout_groups")
    path, _, _ = mosaic_slide(work / "mosaic.tif", layout, mpp=0.5, seed=0, groups=held)
    viewer = napari.Viewer(title="napari-nucleiseg")
    _, panel = viewer.window.add_plugin_dock_widget("napari-nucleiseg", "Tissue")
    viewer.window.resize(*SIZE)
    viewer.open(str(path), plugin="napari-nucleiseg")
    settle(viewer, 1500)
    slide = next(l for l in viewer.layers if kind(l) == "slide")
    panel._layer.value = slide
    panel._folder.value = work / "project"
    panel._open.clicked.emit()
    panel._out.value = work / "results"
    viewer.reset_view()

    # 1. Outlines tagged tumour (red) and normal (green) over whole cells, added to the project.
    panel._draw.clicked.emit()
    layer = panel.outlines_layer()
    px = CELL_UM / 0.5

    def cell(r, c, inset=0.08):
        r0, c0, r1, c1 = (
            (r + inset) * px,
            (c + inset) * px,
            (r + 1 - inset) * px,
            (c + 1 - inset) * px,
        )
        return np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]])

    panel._tag.value = "tumour"
    layer.add_polygons([cell(1, 1), cell(3, 2)])
    panel._tag.value = "normal"
    layer.add_polygons([cell(1, 2), cell(3, 3)])
    layer.mode = "pan_zoom"
    panel._add.clicked.emit()
    shoot(viewer, "tissue_outlines.png")

    # 2. The whole-slide heatmap (background process), drawn over the slide, with the tumour
    # outlines (p >= 0.5) it ends with.
    layer.visible = False
    panel._heat_slide.clicked.emit()
    wait_until(viewer, lambda: not panel.jobs.running, 600)
    viewer.reset_view()
    shoot(viewer, "tissue_heatmap.png")

    # 3. Attention of a head trained on the four outlined regions, over the view.
    for lyr in [l for l in viewer.layers if kind(l) in ("heatmap", "tumour-outlines")]:
        lyr.visible = False
    panel._train_attention.clicked.emit()
    wait_until(viewer, lambda: not panel.jobs.running, 600)
    panel._attention_view.clicked.emit()
    wait_until(viewer, lambda: not panel.jobs.running, 600)
    shoot(viewer, "tissue_attention.png")
    viewer.close()


if __name__ == "__main__":
    if "--tissue" in sys.argv:
        tissue()
    elif "--learned" in sys.argv:
        learned()
    else:
        main()
