"""Corrections not stored anywhere yet, and the question before quitting over them.

A layer the user can correct (the current view's nuclei, a re-opened training example, a view
of a whole-slide result being corrected) is marked ``unsaved`` in its metadata by its first
paint, erase or fill (napari's ``paint`` / ``labels_update`` events, which the panels' click tools
raise too), and unmarked when its nuclei are stored: accepted into the project, exported, or
saved into the slide result (whose layer then goes). Quitting napari from its menu, or closing
its window, with such a layer open asks first: napari itself closed without a word, and the
corrections were lost.
"""

from __future__ import annotations

import weakref

from qtpy.QtCore import QEvent, QObject

from ._layers import tag

#: napari events a correction raises (assigning new data, e.g. a new result, raises others).
EDIT_EVENTS = ("paint", "labels_update")
#: The layers already watched.
_WATCHED: weakref.WeakSet = weakref.WeakSet()


def mark(layer, unsaved: bool = True) -> None:
    tag(layer)["unsaved"] = unsaved


def watch_edits(layer) -> None:
    """Mark ``layer`` unsaved at its next correction (once per layer)."""
    if layer in _WATCHED:  # (in a set, not its metadata: a new result replaces that)
        return
    _WATCHED.add(layer)
    for name in EDIT_EVENTS:
        emitter = getattr(layer.events, name, None)
        if emitter is not None:
            emitter.connect(lambda _event=None, layer=layer: mark(layer))


def unsaved_layers(viewer) -> list:
    return [lyr for lyr in viewer.layers if tag(lyr).get("unsaved")]


def ask_quit(window, names: list[str]) -> bool:
    """Whether to close with corrections unsaved in ``names`` (the user's click; tests replace
    this function)."""
    from qtpy.QtWidgets import QMessageBox

    box = QMessageBox(window)
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle("Close with unsaved corrections?")
    listed = "\n".join(f"• {n}" for n in names)
    box.setText(f"These corrected nuclei are not stored anywhere yet:\n{listed}")
    box.setInformativeText(
        "Accept them into the project (Project panel), save their outlines or labels "
        "(Nuclei panel: GeoJSON…, OME-Zarr…) or save them to the slide result; closing now "
        "loses them."
    )
    close = box.addButton("Close without saving", QMessageBox.ButtonRole.DestructiveRole)
    box.addButton("Cancel", QMessageBox.ButtonRole.RejectRole)
    box.exec()
    return box.clickedButton() is close


def guard_quit(viewer) -> None:
    """Ask before napari's window closes over unsaved corrections (installed once a window)."""
    window = viewer.window._qt_window
    if getattr(window, "_nucleiseg_quit_guard", None) is not None:
        return
    guard = _QuitGuard(viewer, window)
    window.installEventFilter(guard)
    window._nucleiseg_quit_guard = guard
    # napari's File > Close Window and Quit call close(confirm_need=True); viewer.close() calls
    # it plainly. Only the first is the user's: noted for the close event it sends.
    plain_close = window.close

    def close(quit_app=False, confirm_need=False):
        window._nucleiseg_users_close = bool(quit_app or confirm_need)
        try:
            return plain_close(quit_app=quit_app, confirm_need=confirm_need)
        finally:
            window._nucleiseg_users_close = False

    window.close = close


class _QuitGuard(QObject):
    """Asks on a close the user made: the window's close button (a spontaneous event), or
    napari's Close Window or Quit (see :func:`guard_quit`). A close a program makes
    (``viewer.close()``, tests) is not asked about."""

    def __init__(self, viewer, window):
        super().__init__(window)
        self.viewer = viewer

    def eventFilter(self, obj, event):  # noqa: N802 (Qt's name)
        if event.type() != QEvent.Type.Close:
            return False
        if not (event.spontaneous() or getattr(obj, "_nucleiseg_users_close", False)):
            return False
        viewers = [self.viewer]
        if getattr(obj, "_quit_app", False):  # Quit closes every window: asked about them all
            viewers += [
                v
                for v in list(getattr(type(self.viewer), "_instances", ()))
                if v is not self.viewer
            ]
        try:
            names = [lyr.name for v in viewers for lyr in unsaved_layers(v)]
        except RuntimeError:  # a viewer is being torn down
            return False
        if not names or ask_quit(obj, names):
            return False
        event.ignore()
        obj._quit_app = False  # asked again next time
        return True
