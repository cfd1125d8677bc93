"""Finding and replacing this plugin's layers by their metadata tag, never by name."""

from __future__ import annotations

import weakref

import numpy as np

from ..layers import META_KEY


def tag(layer) -> dict:
    return layer.metadata.get(META_KEY, {}) if hasattr(layer, "metadata") else {}


def find_layers(viewer, kind: str, **match):
    return [
        lyr
        for lyr in viewer.layers
        if tag(lyr).get("kind") == kind and all(tag(lyr).get(k) == v for k, v in match.items())
    ]


def put_layer(viewer, layer_tuple, replace_kind: str | None = None, *, index=None, **match):
    """Add a layer data tuple, replacing an earlier layer of ours of the same kind (a new one
    goes at ``index`` of the layer list, default the top).

    An earlier layer of the same type takes the new data in place: it keeps its position and the
    user's display settings, and removing a layer would cost napari a full garbage collection.
    """
    from napari.layers import Layer

    data, kwargs, ltype = layer_tuple
    old = find_layers(viewer, replace_kind, **match) if replace_kind else []
    if (
        old
        and old[0]._type_string == ltype
        and bool(getattr(old[0], "multiscale", False)) == bool(kwargs.get("multiscale", False))
    ):
        layer = old[0]
        for extra in old[1:]:
            viewer.layers.remove(extra)
        # Each change of scale or translate redraws the layer: set only what changed, then the
        # data (which redraws once more).
        for key in ("scale", "translate"):
            if key in kwargs and not np.allclose(getattr(layer, key), kwargs[key]):
                setattr(layer, key, kwargs[key])
        if "units" in kwargs and tuple(map(str, layer.units)) != tuple(map(str, kwargs["units"])):
            layer.units = kwargs["units"]
        layer.metadata = kwargs.get("metadata", layer.metadata)
        layer.data = data
        if "name" in kwargs:
            layer.name = kwargs["name"]
        return layer
    new = Layer.create(data, dict(kwargs), ltype)
    if old:
        index = viewer.layers.index(old[0])
        for lyr in old:
            viewer.layers.remove(lyr)
        viewer.layers.insert(min(index, len(viewer.layers)), new)
    elif index is not None:
        viewer.layers.insert(min(index, len(viewer.layers)), new)
    else:
        viewer.layers.append(new)
    return new


def just_above(viewer, layer) -> int:
    """The layer-list index right above ``layer`` (below everything drawn over it)."""
    return viewer.layers.index(layer) + 1 if layer in viewer.layers else len(viewer.layers)


def unproxied(viewer):
    """The viewer itself. napari hands a plugin's panel its viewer wrapped in a
    ``PublicOnlyProxy``, which wraps every object read through it anew: two reads of one layer
    are two objects, so ``is``, ``id()`` and dicts keyed by layer never match. The panels rely on
    them (which layer is selected, which result a table belongs to): under the proxy, the Project
    panel stored the top layer instead of the selected one. Tests that build a panel on a viewer
    directly never saw it."""
    return getattr(viewer, "__wrapped__", viewer)


def slide_layers(viewer):
    """The slide layers open in ``viewer``, as (name, layer) choices for a combo box."""
    return [(lyr.name, lyr) for lyr in find_layers(viewer, "slide")]


def open_layer_slide(layer, status=None):
    """Open the slide behind one of our slide layers (with its µm/px override), or None after
    telling the user why not (the file moved, ...), in ``status(text)`` too when given."""
    import warnings

    from napari.utils.notifications import show_error

    from ..io import SlideError, open_slide

    meta = tag(layer)
    override = meta["mpp"] if meta.get("mpp_source") == "override" else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return open_slide(meta["path"], mpp=override, backend=meta.get("backend"))
    except SlideError as exc:
        show_error(in_user_words(exc))
        if status is not None:
            status(in_user_words(exc))
        return None


#: Hints written for scripts and the command line, and what they mean in the viewer.
_DEVELOPER_HINTS = (
    (r"another --out\b", "another results folder (Nuclei panel)"),
    (r"\s*\((?:mpp=\.\.\.|mpp=…)[^)]*\)", " (enter it in the Slide panel: µm/px override, Apply)"),
    (
        r"give (?:the real resolution|it) with (?:mpp=\.\.\.|--mpp)",
        "enter the real one in the Slide panel (µm/px override, Apply)",
    ),
)


def in_user_words(text: str) -> str:
    """A core message as the viewer's user reads it: hints about ``mpp=...`` or ``--mpp`` become
    the Slide panel's override, ``--out`` the results folder; the first letter a capital,
    unless the message starts with a file's name ("demo_he.tif: …" read "Demo_he.tif")."""
    import re

    text = str(text)
    for pattern, words in _DEVELOPER_HINTS:
        text = re.sub(pattern, words, text)
    first = text.split(" ", 1)[0]
    if not text or re.search(r"[./\\_]", first):  # a name or a path: as it is spelt
        return text
    return text[:1].upper() + text[1:]


def scrolled(panel, form) -> None:
    """Put ``form`` (the panel's controls, a magicgui Container) in a vertical scroll area
    filling ``panel``: docked on a small screen, the panel scrolls instead of making the window
    taller than the screen. (napari docks a magicgui widget's ``native``, which for magicgui's
    own ``scrollable=True`` is the inner widget, without its scroll area.)"""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QFrame, QScrollArea

    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setWidget(form.native)
    layout = panel.native.layout()
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(area)
    panel.scroll_area = area


def deleted(widget) -> bool:
    """Whether ``widget``'s Qt object is gone (its panel was closed and deleted)."""
    try:
        widget.objectName()
    except RuntimeError:
        return True
    return False


def when_undocked(panel, callback) -> None:
    """Call ``callback()`` when napari's ✕ takes ``panel`` out of its dock: napari does not
    delete a closed panel (nor its widgets), so ``destroyed`` never comes."""
    from qtpy.QtCore import QEvent, QObject

    class _Watch(QObject):
        def eventFilter(self, obj, event):  # noqa: N802 (Qt's name)
            if event.type() == QEvent.Type.ParentChange and obj.parent() is None:
                callback()
            return False

    watch = _Watch(panel.native)
    panel.native.installEventFilter(watch)
    panel._undock_watch = watch


def slide_layer_box(choices, viewer=None):
    """The panels' "slide layer" drop-down. A slide opened in ``viewer`` becomes its choice, as
    in every panel: it is the one the user looks at (a panel that kept the old one segmented a
    hidden slide on Shift-S and drew its nuclei over the new one). A docked panel is narrow, so
    a long slide name is cut ("CMU-1-Small-Reg"): the tooltip names the chosen slide in full."""
    from magicgui.widgets import ComboBox

    box = ComboBox(label="slide layer", choices=choices)

    def name(_=None):
        box.tooltip = getattr(box.value, "name", None) or "the slide to work on"

    ref = weakref.ref(box)  # napari holds this function: it must not keep a closed panel alive

    def opened(event=None):
        layer, box = getattr(event, "value", None), ref()
        if box is None or deleted(box.native):  # the panel is gone: stop following
            viewer.layers.events.inserted.disconnect(opened)
            return
        if layer is not None and tag(layer).get("kind") == "slide":
            box.reset_choices()
            box.value = layer

    box.changed.connect(name)
    if viewer is not None:
        viewer.layers.events.inserted.connect(opened)
    name()
    return box


def path_field(**kwargs):
    """A magicgui ``FileEdit`` whose button reads "…" (tooltip: what it chooses). magicgui's
    "Choose directory" button took most of a docked row: the path beside it was about 20 px
    wide, so the user could not see where results go."""
    from magicgui.widgets import FileEdit

    field = FileEdit(**kwargs)
    what = {"d": "a folder", "w": "where to save"}.get(str(getattr(field.mode, "value", "")))
    field.choose_btn.text = "…"
    field.choose_btn.tooltip = f"Choose {what or 'a file'}"
    field.choose_btn.native.setMaximumWidth(36)
    field.choose_btn.native.setMinimumWidth(28)  # a narrow column squeezed it into the field
    field.line_edit.native.setMinimumWidth(120)
    return field


def build_form(panel, items, tail=(), min_width: int = 300):
    """Lay ``items`` out in ``panel`` (a magicgui Container made with ``labels=False``), in
    order, inside a scroll area (:func:`scrolled`): a control with a label gets a labelled row;
    a button, or a row of them (a Container), spans the panel, because in a labelled row it sits
    in the value column and its text is cut ("eatmap of vie"), and so does a message (a
    Label, which wraps). ``tail``: widgets (magicgui or Qt) added full width after them (status
    lines, a plot). Returns ``(form, full_width)``: the labelled Container, and the items given
    a row of their own."""
    from magicgui.widgets import Container, Label, PushButton
    from qtpy.QtWidgets import QSizePolicy

    form = Container(labels=True)
    full = [i for i in items if isinstance(i, (PushButton, Container, Label))]
    full_ids = {id(i) for i in full}
    form.extend([i for i in items if id(i) not in full_ids])
    layout = form.native.layout()
    for k, item in enumerate(items):
        if id(item) not in full_ids:
            continue
        if isinstance(item, Container):
            item.margins = (0, 0, 0, 0)
        after = next((i for i in items[k + 1 :] if id(i) not in full_ids), None)
        if after is None:
            layout.addWidget(item.native)
        else:  # before the next labelled row (magicgui wraps most in a row widget; not all)
            row = after.native
            while row is not None and layout.indexOf(row) < 0:
                row = row.parentWidget()
            layout.insertWidget(layout.indexOf(row) if row is not None else -1, item.native)
    # Spare height below the controls, not between their rows (which spread unevenly).
    layout.addStretch(1)
    for widget in tail:
        layout.addWidget(getattr(widget, "native", widget))
    for label in [i for i in [*full, *tail] if isinstance(i, Label)]:
        # Messages wrap at the panel's width instead of at their first width (too early).
        label.native.setWordWrap(True)
        label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    form.native.setMinimumWidth(min_width)
    scrolled(panel, form)
    return form, full


_TIDYING = []


def tidy_notifications() -> None:
    """napari 0.9's pop-ups end with "Source: <napari.utils.notifications.NotificationManager
    object at 0x…>" (the emitter, not the message's origin): clear that line from each pop-up as
    it opens, so the user reads only the message. Connected once per process."""
    if _TIDYING:
        return
    from napari.utils.notifications import notification_manager

    notification_manager.notification_ready.connect(_tidy_soon)
    _TIDYING.append(True)


def _tidy_soon(_event=None) -> None:
    from qtpy.QtCore import QTimer

    QTimer.singleShot(0, _tidy_popups)


def _tidy_popups() -> None:
    from qtpy.QtWidgets import QApplication

    try:
        from napari._qt.dialogs.qt_notification import NapariQtNotification
    except ImportError:  # another napari: nothing to tidy
        return
    for top in QApplication.topLevelWidgets():
        for popup in [top, *top.findChildren(NapariQtNotification)]:
            label = getattr(popup, "source_label", None)
            if isinstance(popup, NapariQtNotification) and "<napari." in label.text():
                label.setText("")
                label.hide()


def _signal(name: str, arguments=1):
    from psygnal import SignalInstance

    return SignalInstance((object,) * arguments, name=name)


#: Emitted with the slide layer whose µm/px :func:`apply_mpp` changed, whichever panel changed
#: it (the Slide panel shows a slide's µm/px; the Nuclei panel's "Use … µm/px" button sets it).
MPP_APPLIED = _signal("mpp_applied")
#: Emitted with a viewer and the folder of the project its Project panel has open, whenever it
#: opens one or its models change (retrained, chosen, rolled back): that viewer's Nuclei and
#: Stain panels list its models beside the shipped ones and switch to the one it now uses.
PROJECT_CHANGED = _signal("project_changed", 2)
#: The project each viewer's Project panel has open: a panel opened later starts from it.
_OPEN_PROJECTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def project_opened(viewer, folder) -> None:
    """The Project panel of ``viewer`` has ``folder`` open (or its models changed)."""
    _OPEN_PROJECTS[viewer] = folder
    PROJECT_CHANGED.emit(viewer, folder)


def open_project(viewer):
    """The folder of the project open in ``viewer``'s Project panel, or None."""
    return _OPEN_PROJECTS.get(viewer)


#: Emitted with the path of a whole-slide result store whose nuclei a correction changed (the
#: Nuclei panel reads its table again: its count, table and exports went on showing the old).
RESULT_CHANGED = _signal("result_changed")


def follow_project(panel, box, kind: str, viewer, folder) -> None:
    """A panel's ``PROJECT_CHANGED`` handler: ``viewer``'s Project panel opened ``folder`` or
    changed its models. The panel's model drop-down (``box``) asks its choices again (the
    project's models among them) and switches to the project's model of ``kind`` when that
    changed since the panel last heard (then the user's choice stands). Another window's
    project is not this panel's; a closed panel stops listening."""
    from ..models import WeightsError
    from ..models.registry import project_current_model

    if viewer is not panel.viewer:
        return
    if deleted(panel.native):
        PROJECT_CHANGED.disconnect(panel._on_project)
        return
    panel._project = folder
    try:
        current = project_current_model(folder, kind)
    except WeightsError:  # unreadable meanwhile: the Project panel says so
        return
    box.reset_choices()
    if current and current != panel._project_model and current in box.choices:
        box.value = current
    panel._project_model = current


def apply_mpp(viewer, layer, mpp: float | None) -> str | None:
    """Give the slide of ``layer`` the µm/px ``mpp`` (None: its file's own) and rescale every
    layer drawn over it, so all stay aligned. Returns None, or the problem in the user's words.
    Used by the Slide panel's override and the Nuclei panel's "use the µm/px the nuclei
    suggest"."""
    import warnings
    from pathlib import Path

    from ..io import SlideError, open_slide
    from ..layers import slide_layer

    meta = tag(layer)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a file without µm/px is handled below
            slide = open_slide(meta["path"], mpp=mpp, backend=meta.get("backend"))
    except SlideError as exc:
        return in_user_words(exc)
    if slide.mpp is None:
        return (
            f"{Path(meta['path']).name} states no µm/px: enter one above 0 "
            "(e.g. 0.25 for 40x, 0.5 for 20x)."
        )
    ratio = slide.mpp / (meta["mpp"] or 1.0)
    _, kwargs, _ = slide_layer(slide)
    layer.scale, layer.translate = kwargs["scale"], kwargs["translate"]
    layer.units = kwargs["units"]
    layer.metadata = kwargs["metadata"]
    # Everything drawn over this slide (tissue, nuclei, ground truth) scales with it.
    for other in viewer.layers:
        if other is not layer and tag(other).get("slide") == meta["path"]:
            other.scale = [v * ratio for v in other.scale]
            other.translate = [v * ratio for v in other.translate]
            other.units = kwargs["units"]
    MPP_APPLIED.emit(layer)
    return None


def checked_slide(layer, what: str, status=None):
    """``(layer, opened slide)`` for a run on a slide layer, or ``(None, None)`` after telling the
    user why not: no slide chosen, a slide that states no µm/px, a file that no longer opens.
    ``status(text)``: the panel's status line, which says it too (a notification passes, and
    the panel was left blank)."""
    from pathlib import Path

    from napari.utils.notifications import show_error

    def refuse(text):
        show_error(text)
        if status is not None:
            status(text)
        return None, None

    if layer is None:
        return refuse(
            f"No slide open: open a slide (File > Open, or the Slide panel) before {what}."
        )
    if tag(layer).get("mpp") is None:
        return refuse(
            f"{Path(tag(layer)['path']).name}: the slide does not say how many micrometres "
            f"a pixel is; enter it in the Slide panel (µm/px) before {what}."
        )
    slide = open_layer_slide(layer, status)
    return (layer, slide) if slide is not None else (None, None)


def open_project_folder(value):
    """The project in a folder chooser's folder (made when new or empty), or None after telling
    the user why not."""
    from pathlib import Path

    from napari.utils.notifications import show_error

    from ..project import Project, ProjectError

    folder = Path(value)
    if str(folder) in ("", "."):
        show_error("Choose the project's folder first (a new or empty one makes a project).")
        return None
    try:
        return Project.init(folder)
    except ProjectError as exc:
        show_error(str(exc))
        return None
