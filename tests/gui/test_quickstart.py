"""The README's first command ends in `nucleiseg view`: run it as a user would and look at what
the window shows."""

import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def test_nucleiseg_view_shows_the_demo_slide_with_the_widget_docked(tmp_path, demo):
    shot = tmp_path / "start.png"
    env = dict(os.environ)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_nucleiseg.cli.main",
            "view",
            "--screenshot",
            str(shot),
            "--screenshot-delay",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[0] >= 700 and img.shape[1] >= 1200
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    pink = (r > 180) & (g < 200) & (b > 150) & (r - g > 40)  # eosin-stained tissue on the canvas
    assert pink.mean() > 0.05
    assert "Traceback" not in out.stderr


def test_first_screen_is_the_nuclei_panel_beside_a_large_slide(make_napari_viewer, qtbot, demo):
    """What `nucleiseg view` lays out: the Nuclei tab in front, the canvas most of the window."""
    from qtpy.QtWidgets import QTabBar

    from napari_nucleiseg._napari._start import first_screen

    viewer = make_napari_viewer(show=True)
    panels = first_screen(viewer)
    qtbot.wait(500)  # the layout step runs once the window is laid out
    window = viewer.window._qt_window
    (bar,) = [
        tb
        for tb in window.findChildren(QTabBar)
        if any("Nuclei" in tb.tabText(i) for i in range(tb.count()))
    ]
    assert bar.tabText(bar.currentIndex()).startswith("Nuclei")
    assert [bar.tabText(i).split()[0] for i in range(bar.count())] == ["Nuclei", "Stain", "Slide"]
    assert not panels["Nuclei"].native.visibleRegion().isEmpty()
    assert panels["Slide"].native.visibleRegion().isEmpty()

    canvas = viewer.window._qt_viewer.canvas.native
    assert canvas.width() > 0.5 * window.width(), (canvas.width(), window.width())
    # The whole slide is in view and fills the canvas across or down.
    slide = next(l for l in viewer.layers if l.metadata["nucleiseg"]["kind"] == "slide")
    (y0, x0), (y1, x1) = np.asarray(slide.extent.world)[:, -2:]
    zoom = viewer.scene.camera.zoom
    on_screen = ((x1 - x0) * zoom, (y1 - y0) * zoom)
    assert on_screen[0] <= canvas.width() + 1 and on_screen[1] <= canvas.height() + 1
    assert on_screen[0] > 0.9 * canvas.width() or on_screen[1] > 0.9 * canvas.height()


def test_the_first_screen_opens_a_plain_image_too(make_napari_viewer, png_image):
    """`nucleiseg view image.png` (its help: "slide or image to open") raised: napari's open
    refused our reader, which claims slide formats only."""
    from napari_nucleiseg._napari._start import first_screen

    viewer = make_napari_viewer()
    panels = first_screen(viewer, str(png_image), size=(1366, 768))
    (layer,) = [l for l in viewer.layers if l.metadata["nucleiseg"]["kind"] == "slide"]
    assert layer.metadata["nucleiseg"]["path"].endswith(png_image.name)
    assert panels["Nuclei"]._layer.value is layer
