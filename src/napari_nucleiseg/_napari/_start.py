"""The first screen of ``nucleiseg view`` (and ``scripts/start.sh``): a slide, and the panels.

The slide fills most of the window; the three panels share one narrow dock on the right, the
Nuclei panel in front (segmenting is what most people come for; Stain and Slide are a tab away);
napari's layer controls and list keep a narrow column on the left.
"""

from __future__ import annotations

#: Panels in tab order; the first is in front.
PANELS = ("Nuclei", "Stain", "Slide")
#: Window size (pixels) on first opening when the screen's is unknown; otherwise the window
#: fills the screen (a slide viewer wants every pixel it can get).
WINDOW_SIZE = (1500, 950)
#: Width (pixels) of the panels' dock on the right (their narrowest: no label cut).
PANEL_WIDTH = 300


def first_screen(viewer, slide=None, size: tuple[int, int] | None = None) -> dict:
    """Dock the panels, open ``slide`` (default: the demo slide) and lay the window out
    (``size``: the window's, default the screen's available area).

    Returns the panel widgets by name.
    """
    from qtpy.QtCore import QTimer

    docks, widgets = {}, {}
    for name in PANELS:
        docks[name], widgets[name] = viewer.window.add_plugin_dock_widget(
            "napari-nucleiseg", name, tabify=True
        )
    if slide:
        # The reader's own function, not viewer.open: the reader claims slide formats only (a
        # PNG stays napari's in File > Open), and `nucleiseg view image.png` raised there.
        from napari.layers import Layer

        from ._reader import read_slides

        for layer_tuple in read_slides(str(slide)):  # [(None,)] after an error, said there
            if layer_tuple[0] is not None:
                viewer.add_layer(Layer.create(*layer_tuple))
    else:
        viewer.open_sample("napari-nucleiseg", "demo_slide")
    _scale_bar(viewer).visible = True
    slides = [
        lyr for lyr in viewer.layers if lyr.metadata.get("nucleiseg", {}).get("kind") == "slide"
    ]
    if slides:
        viewer.layers.selection.active = slides[-1]
    if size is not None:
        viewer.window.resize(*size)
    else:  # maximised where a window manager does it; the screen's size where none does
        viewer.window.resize(*_screen_size(viewer))
        viewer.window._qt_window.showMaximized()
    # Once the window is laid out (the tabs exist, the window has its size): the Nuclei tab in
    # front, the docks narrow, then the slide fitted to the canvas.
    QTimer.singleShot(0, lambda: _lay_out(viewer, docks[PANELS[0]]))
    return widgets


def _scale_bar(viewer):
    canvas = getattr(viewer, "canvas", None)  # napari >= 0.9; viewer.scale_bar before
    overlays = getattr(canvas, "overlays", None)
    return overlays.scale_bar if overlays is not None else viewer.scale_bar


def _screen_size(viewer) -> tuple[int, int]:
    screen = viewer.window._qt_window.screen()
    if screen is None:
        return WINDOW_SIZE
    area = screen.availableGeometry()
    return max(area.width(), 800), max(area.height(), 600)


def _lay_out(viewer, panel_dock) -> None:
    panel_dock.raise_()
    _narrow_docks(viewer, panel_dock)
    viewer.reset_view()


def _narrow_docks(viewer, panel_dock) -> None:
    """The panels' dock ``PANEL_WIDTH`` wide; napari's layer docks as narrow as they go."""
    from qtpy.QtCore import Qt

    docks, widths = [panel_dock], [PANEL_WIDTH]
    controls = viewer.window._qt_viewer.dockLayerControls
    if controls.isVisible():
        docks.append(controls)
        widths.append(controls.minimumSizeHint().width())
    viewer.window._qt_window.resizeDocks(docks, widths, Qt.Orientation.Horizontal)
