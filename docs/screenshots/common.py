"""Shared helpers for the docs screenshots (run them with run.sh)."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The pictures go straight to the guides' folder.
OUT = HERE.parent / "images"
#: Projects, results and profiles the shots make: never the user's home-folder defaults.
WORK = Path(os.environ.get("TMPDIR", "/tmp")) / "nucleiseg-docshots"
SHARED = Path(os.environ.get("NUCLEISEG_SHARED", HERE.parents[2] / "shared"))
CMU = SHARED / "data" / "slides" / "CMU-1-Small-Region.svs"
SIZE = (1600, 1000)


def settle(ms=600):
    from qtpy.QtCore import QCoreApplication, QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()
    QCoreApplication.processEvents()


def wait_until(pred, seconds=600, what=""):
    t = time.perf_counter()
    while not pred():
        settle(200)
        if time.perf_counter() - t > seconds:
            raise TimeoutError(f"gave up waiting for {what}")
    print(f"  waited {time.perf_counter() - t:.1f} s for {what}", flush=True)


def kind(layer):
    return layer.metadata.get("nucleiseg", {}).get("kind")


def layer_of(viewer, k):
    return next(l for l in viewer.layers if kind(l) == k)


def front(viewer, name):
    from qtpy.QtWidgets import QDockWidget

    for dock in viewer.window._qt_window.findChildren(QDockWidget):
        if dock.windowTitle().startswith(name):
            dock.raise_()
    settle(300)


def shoot(viewer, name):
    settle(1000)
    OUT.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(OUT / name), canvas_only=False)
    print("wrote", name, flush=True)


def start(slide=None, extra=()):
    """napari with the standard first screen; ``extra`` panels tabified beside it."""
    warnings.simplefilter("ignore")
    import napari

    from napari_nucleiseg._napari._start import first_screen

    viewer = napari.Viewer(title="napari-nucleiseg", show=True)
    panels = first_screen(viewer, str(slide) if slide else None, size=SIZE)
    for name in extra:
        _, panels[name] = viewer.window.add_plugin_dock_widget(
            "napari-nucleiseg", name, tabify=True
        )
    settle(1500)
    # Never the home-folder defaults.
    panels["Nuclei"]._out.value = WORK / "results"
    panels["Stain"]._profile_path.value = WORK / "stain-profile.json"
    if "Tissue" in panels:
        panels["Tissue"]._out.value = WORK / "results"
    return viewer, panels


def status_lines(panels):
    for name, p in panels.items():
        st = getattr(p, "_status", None)
        if st is not None and st.value:
            print(f"  [{name}] status: {st.value!r}", flush=True)


def show_normalised_beside(viewer, stain):
    """Tick the Stain panel's "show normalised", wait for it, and lay the slide and its
    normalised copy side by side on the CMU slide's tissue."""
    stain._show.value = True
    wait_until(
        lambda: (
            not stain.jobs.running and any(kind(lyr) == "stain_normalised" for lyr in viewer.layers)
        ),
        300,
        "normalised",
    )
    grid = viewer.canvas.grid if hasattr(getattr(viewer, "canvas", None), "grid") else viewer.grid
    grid.enabled = True
    viewer.scene.camera.center = (1400 * 0.499, 1100 * 0.499)
    viewer.scene.camera.zoom = 1.2
