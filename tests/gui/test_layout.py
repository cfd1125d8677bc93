"""The three panels docked in a real window (run under Xvfb) on a 1600×1000 screen and on a
1366×768 laptop: the window fits the screen, every panel's controls are on screen, the nuclei
table gets the room, its headers read in words with units and need no sideways scroll, and the
canvas keeps most of the window."""

import pytest
from _notifications import fresh_notifications, no_blocking_dialogs  # noqa: F401 (autouse)

pytestmark = pytest.mark.gui

SCREENS = [(1600, 1000), (1366, 768)]


def _controls(panel):
    """The panel's controls as Qt widgets (its magicgui widgets, the table, the bar)."""
    from magicgui.widgets import Container

    out = []

    def walk(container):
        for w in container:
            if isinstance(w, Container):
                walk(w)
            else:
                out.append(w.native)

    walk(panel._form)
    # The items build_form gave a row of their own: buttons, messages, rows of buttons.
    for row in getattr(panel, "_rows", ()):
        if isinstance(row, Container):
            walk(row)
        else:
            out.append(row.native)
    for extra in ("table", "progress"):
        if hasattr(panel, extra):
            out.append(getattr(panel, extra))
    return [w for w in dict.fromkeys(out) if not w.isHidden()]


def _inside(widget, window) -> bool:
    from qtpy.QtCore import QRect

    top_left = widget.mapTo(window, widget.rect().topLeft())
    return window.rect().contains(QRect(top_left, widget.size()))


def _scroll_area(widget):
    """The scroll area ``widget`` is in (its panel's), or None."""
    from qtpy.QtWidgets import QScrollArea

    area = widget.parentWidget()
    while area is not None and not isinstance(area, QScrollArea):
        area = area.parentWidget()
    return area


def _in_view(widget) -> bool:
    """Not scrolled out of sight: wholly inside the viewport of the panel's scroll area."""
    from qtpy.QtCore import QRect

    area = _scroll_area(widget)
    if area is None:
        return True
    viewport = area.viewport()
    top_left = widget.mapTo(viewport, widget.rect().topLeft())
    return viewport.rect().contains(QRect(top_left, widget.size()))


def _dock(viewer, name):
    from qtpy.QtWidgets import QDockWidget

    window = viewer.window._qt_window
    return next(d for d in window.findChildren(QDockWidget) if d.windowTitle().startswith(name))


def _settle(qtbot, viewer, size):
    window = viewer.window._qt_window
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.waitUntil(
        lambda: window.width() <= size[0] + 1 and canvas.width() > 0.4 * window.width(),
        timeout=10_000,
    )
    qtbot.wait(200)  # the layout step after the window has its size


@pytest.mark.parametrize("size", SCREENS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_tabbed_panels_fit_the_screen_with_every_control_in_view(
    make_napari_viewer, qtbot, demo, size
):
    from napari_nucleiseg._napari._start import first_screen

    viewer = make_napari_viewer(show=True)
    panels = first_screen(viewer, size=size)
    _settle(qtbot, viewer, size)
    window = viewer.window._qt_window
    assert window.frameGeometry().height() <= size[1], window.frameGeometry()
    assert window.width() <= size[0]
    canvas = viewer.window._qt_viewer.canvas.native
    # The canvas keeps most of the window: more than half its width, nearly all its height.
    assert canvas.width() > 0.5 * window.width(), (canvas.width(), window.width())
    assert canvas.height() > 0.85 * window.height()

    for name in ("Nuclei", "Stain", "Slide"):
        dock = _dock(viewer, name)
        dock.raise_()
        qtbot.waitUntil(lambda p=panels[name]: p.native.isVisible(), timeout=5_000)
        qtbot.wait(100)
        for widget in _controls(panels[name]):
            assert widget.isVisible(), (name, widget)
            assert _inside(widget, window), (name, type(widget).__name__, size)
            assert _in_view(widget), (name, type(widget).__name__, size)

    # The Nuclei table gets the room left in its panel, and headers in words with units.
    nuclei = panels["Nuclei"]
    dock = _dock(viewer, "Nuclei")
    dock.raise_()
    qtbot.wait(100)
    assert nuclei.table.height() >= 0.3 * nuclei.native.height()


@pytest.mark.parametrize("size", SCREENS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_table_headers_read_with_units_and_need_no_sideways_scroll(
    make_napari_viewer, qtbot, demo, size
):
    import numpy as np
    from qtpy.QtCore import Qt

    from napari_nucleiseg._napari._start import first_screen
    from napari_nucleiseg._napari._table import DEFAULT_COLUMNS
    from napari_nucleiseg.segmentation.measure import COLUMNS

    viewer = make_napari_viewer(show=True)
    panel = first_screen(viewer, size=size)["Nuclei"]
    _settle(qtbot, viewer, size)
    table = panel.table
    n = 50
    rng = np.random.default_rng(0)
    table.set_table(
        {
            c: (np.arange(1, n + 1) * 65536 + 7).astype(np.uint32)
            if c == "label"
            else rng.uniform(0, 5000, n)
            for c in COLUMNS
        }
    )
    qtbot.wait(200)
    shown = table.shown_headers()
    assert shown[:4] == ["#", "centroid x (µm)", "centroid y (µm)", "area (µm²)"]
    assert table.horizontalScrollBar().maximum() == 0
    # Headers are readable whole: each section at least as wide as its widest header line.
    header = table.horizontalHeader()
    metrics = header.fontMetrics()
    for i, name in enumerate(table.columns._names):
        if table.isColumnHidden(i):
            continue
        text = table.model().headerData(i, Qt.Orientation.Horizontal)
        widest = max(metrics.horizontalAdvance(line) for line in text.split("\n"))
        assert header.sectionSize(i) >= widest + 4, (name, header.sectionSize(i), widest)
    # Numbers are shown whole too (no "…").
    for i in range(table.columns.columnCount()):
        if not table.isColumnHidden(i):
            text = table.model().data(table.model().index(0, i))
            assert header.sectionSize(i) >= table.fontMetrics().horizontalAdvance(text), text
    # Every column shown (more than fit a docked panel): each keeps its readable width, and
    # the table scrolls sideways instead of cutting them ("olidit", "0…").
    for name in table.columns._names:
        table.show_column(name)
    qtbot.wait(100)
    assert table.horizontalScrollBar().maximum() > 0
    for i, name in enumerate(table.columns._names):
        text = table.model().headerData(i, Qt.Orientation.Horizontal)
        widest = max(metrics.horizontalAdvance(line) for line in text.split("\n"))
        value = table.model().data(table.model().index(0, i))
        assert header.sectionSize(i) >= widest + 4, (name, header.sectionSize(i), widest)
        assert header.sectionSize(i) >= table.fontMetrics().horizontalAdvance(value), value
    # A width dragged by hand survives the panel being resized while the table scrolls.
    dragged = header.sectionSize(3) + 60
    header.resizeSection(3, dragged)
    table.resize(table.width() - 12, table.height())
    qtbot.wait(100)
    assert header.sectionSize(3) == dragged
    for name in table.columns._names:  # back to the default: they fit, and share the width
        table.show_column(name, name in DEFAULT_COLUMNS)
    qtbot.wait(100)
    assert table.horizontalScrollBar().maximum() == 0
    # Short ids: rows numbered 1..n; the stored id is kept as data (and in the tooltip).
    assert table.columns.row(0)["#"] == 1 and table.columns.row(0)["label"] == 65543
    tip = table.model().data(table.model().index(0, 0), Qt.ItemDataRole.ToolTipRole)
    assert "65543" in tip


@pytest.mark.parametrize("size", SCREENS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_panels_docked_as_the_manifest_docks_them_fit_the_screen(
    make_napari_viewer, qtbot, demo, size
):
    """Opened one by one from the Plugins menu (each its own dock, stacked on the right), all
    five: with four, the window grew to 781 px on a 768 px screen."""
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-nucleiseg", "demo_slide")
    docks = [
        viewer.window.add_plugin_dock_widget("napari-nucleiseg", name)[0]
        for name in ("Slide", "Nuclei", "Stain", "Tissue", "Project")
    ]
    viewer.window.resize(*size)
    qtbot.waitUntil(lambda: viewer.window._qt_window.height() <= size[1] + 1, timeout=10_000)
    qtbot.wait(200)
    window = viewer.window._qt_window
    assert window.frameGeometry().height() <= size[1], window.frameGeometry()
    for dock in docks:
        assert dock.isVisible() and _inside(dock, window), dock.name
        # Each shows a usable part of its panel; the rest scrolls.
        assert dock.widget().height() >= 100, (dock.name, dock.widget().height())


@pytest.mark.parametrize("size", SCREENS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_all_five_panels_keep_the_window_on_screen_and_their_buttons_readable(
    make_napari_viewer, qtbot, demo, size
):
    """Was: opening the Tissue and Project panels from Plugins made the window 1660 px tall on
    a 768 px screen (they did not scroll), and their two-button rows cut every label
    ("eatmap of vie", "n the model on this p")."""
    from qtpy.QtWidgets import QPushButton

    from napari_nucleiseg._napari._start import first_screen

    viewer = make_napari_viewer(show=True)
    panels = first_screen(viewer, size=size)
    for name in ("Tissue", "Project"):
        _, panels[name] = viewer.window.add_plugin_dock_widget(
            "napari-nucleiseg", name, tabify=True
        )
    _settle(qtbot, viewer, size)
    qtbot.wait(300)
    window = viewer.window._qt_window
    assert window.frameGeometry().height() <= size[1], window.frameGeometry()
    assert window.width() <= size[0]
    for name, panel in panels.items():
        dock = _dock(viewer, name)
        dock.raise_()
        qtbot.waitUntil(lambda p=panel: p.native.isVisible(), timeout=5_000)
        qtbot.wait(100)
        assert window.frameGeometry().height() <= size[1], (name, window.frameGeometry())
        for button in panel.native.findChildren(QPushButton):
            if button.isVisible() and button.text():
                room = button.width() - button.sizeHint().width()
                assert room >= 0, (name, button.text(), button.width(), size)
                # ... and not beyond the panel's right edge (a form wider than its dock).
                assert _across_in_view(button), (name, button.text(), size)
        # A long slide name is cut in the narrow drop-down: its tooltip names it whole.
        box = getattr(panel, "_layer", None)
        if box is not None and box.value is not None:
            assert box.tooltip == box.value.name, (name, box.tooltip)


def _across_in_view(widget) -> bool:
    """Its left and right edges inside the viewport of its panel's scroll area."""
    area = _scroll_area(widget)
    if area is None:
        return True
    left = widget.mapTo(area.viewport(), widget.rect().topLeft()).x()
    return left >= 0 and left + widget.width() <= area.viewport().width()
