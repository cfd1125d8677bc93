"""Project dock widget: correct nuclei, accept a view as training data, retrain, switch models.

Thin by design: every button is one call into the core (``napari_nucleiseg.project``,
``correction``, ``training.retrain``). Corrections are applied to the view's nuclei labels layer
with napari's own edit history (``Labels.data_setitem``), so Ctrl+Z undoes a merge or a split
like a brush stroke, and the Nuclei panel's count and table follow the layer's paint events.
Retraining runs in a child process (``_process.in_subprocess``): the interface stays responsive,
a live loss plot and an ETA show, and Cancel stops it. An accepted view can be re-opened on its
slide (a labels layer tagged with its example id, placed on the tissue it was cut from), edited
and accepted again over the same example, or deleted (a second click confirms).

A learned stain normaliser is trained the same way (``training.normaliser_train``): slides
marked as the lab's reference style are what it maps every other slide to.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, PushButton

from ._jobs import JobRunner
from ._layers import (
    build_form,
    find_layers,
    open_layer_slide,
    path_field,
    project_opened,
    tag,
    unproxied,
    when_undocked,
)
from ._unsaved import guard_quit, mark, watch_edits

#: What a click (or a drag, for split) on the view's nuclei does.
TOOLS = ("paint with napari's tools", "delete a nucleus", "merge two nuclei", "split along a line")


class LossPlot:
    """A small live plot of the training loss (a QWidget painting a polyline: no plotting
    library for one curve)."""

    def __init__(self):
        from qtpy.QtWidgets import QWidget

        plot = self

        class _Canvas(QWidget):
            def paintEvent(self, _event):  # noqa: N802 (Qt's name)
                plot._paint(self)

        self.points: list[tuple[int, float]] = []
        self.native = _Canvas()
        self.native.setMinimumHeight(90)

    def add(self, iteration: int, loss: float) -> None:
        self.points.append((int(iteration), float(loss)))
        self.native.update()

    def clear(self) -> None:
        self.points = []
        self.native.update()

    def _paint(self, widget) -> None:
        from qtpy.QtCore import QPointF
        from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF

        p = QPainter(widget)
        w, h = widget.width(), widget.height()
        p.fillRect(0, 0, w, h, QColor(38, 41, 48))
        p.setPen(QColor(200, 200, 200))
        if len(self.points) < 2:
            p.drawText(6, h // 2, "training loss appears here")
            p.end()
            return
        its = np.array([i for i, _ in self.points], float)
        losses = np.array([v for _, v in self.points], float)
        lo, hi = float(losses.min()), float(losses.max())
        span = hi - lo or 1.0
        xs = 4 + (its - its[0]) / max(1.0, its[-1] - its[0]) * (w - 8)
        ys = h - 16 - (losses - lo) / span * (h - 24)
        pen = QPen(QColor(255, 210, 0))
        pen.setWidth(2)
        p.setPen(pen)
        p.drawPolyline(QPolygonF([QPointF(x, y) for x, y in zip(xs, ys)]))
        p.setPen(QColor(200, 200, 200))
        p.drawText(
            6, h - 3, f"loss {losses[-1]:.3f} at iteration {int(its[-1])} (range {lo:.2f}-{hi:.2f})"
        )
        p.end()


#: What a cancelled retraining run leaves: the model as it was, a run Resume continues.
RESUME_NOTE = "the project's model is unchanged; Resume goes on from the last checkpoint"
#: ... and a cancelled normaliser training run.
NORMALISER_RESUME_NOTE = (
    "the project's normaliser is unchanged; Resume (beside Train normaliser) goes on from the "
    "last checkpoint"
)


class ProjectWidget(Container):
    def __init__(self, napari_viewer):
        super().__init__(labels=False)
        self.viewer = napari_viewer = unproxied(napari_viewer)
        self.project = None
        self._folder = path_field(label="project folder", mode="d")
        self._open = PushButton(text="Open or create project")
        self._summary = Label(value="No project open: choose a folder (a new one makes a project).")
        self._tool = ComboBox(label="a click", choices=TOOLS, value=TOOLS[0])
        self._accept = PushButton(text="Accept this view as training data")
        self._slide_edit = PushButton(text="Correct this view (whole-slide result)")
        self._slide_save = PushButton(text="Save to slide result")
        self._views = ComboBox(label="accepted views", choices=self._view_choices)
        self._reopen = PushButton(text="Open")
        self._delete = PushButton(text="Delete")
        view_buttons = Container(layout="horizontal", widgets=[self._reopen, self._delete])
        self._minutes = FloatSpinBox(label="retrain for (min)", min=0.2, max=600, value=10.0)
        self._retrain = PushButton(text="Retrain on this project")
        self._resume = PushButton(text="Resume")
        self._resume.tooltip = (
            "Continue the last retraining run that was cancelled or stopped, from its last "
            "checkpoint, for the time it had left"
        )
        retrain_buttons = Container(layout="horizontal", widgets=[self._retrain, self._resume])
        self._mark_reference = PushButton(text="Mark the slide as reference style")
        self._mark_reference.tooltip = (
            "The selected slide layer (else the top one) is stained the way the lab wants every "
            "slide to look: a learned normaliser learns to map other slides to its style"
        )
        self._train_norm = PushButton(text="Train normaliser")
        self._train_norm.tooltip = (
            "Train a learned stain normaliser on this project's slides (for the minutes above): "
            "it maps every slide to the style of the reference slides"
        )
        self._resume_norm = PushButton(text="Resume")
        self._resume_norm.tooltip = (
            "Continue the last normaliser training run that was cancelled or stopped, from its "
            "last checkpoint, for the time it had left"
        )
        norm_buttons = Container(layout="horizontal", widgets=[self._train_norm, self._resume_norm])
        self._cancel = PushButton(text="Cancel")
        self._models = ComboBox(label="project's model", choices=self._model_choices)
        self._use = PushButton(text="Use this model")
        self._rollback = PushButton(text="Back to the previous model")
        self._status = Label(value="")
        self.plot = LossPlot()
        # The summary and the messages span the panel (a labelled row would squeeze them into
        # the value column, cut off), as do the buttons; build_form wraps them.
        self._form, self._rows = build_form(
            self,
            [
                self._folder,
                self._open,
                self._summary,
                self._tool,
                self._slide_edit,
                self._slide_save,
                self._accept,
                self._views,
                view_buttons,
                self._minutes,
                retrain_buttons,
                self._mark_reference,
                norm_buttons,
                self._cancel,
                self._models,
                self._use,
                self._rollback,
            ],
            tail=(self._status, self.plot),
            min_width=270,
        )
        self.native.setMinimumHeight(100)  # stacked with four other docks: still usable
        self.jobs = JobRunner(self._set_status, self._cancel)
        guard_quit(self.viewer)
        self._open.changed.connect(self._on_open)
        self._accept.changed.connect(self._on_accept)
        self._slide_edit.changed.connect(self._on_slide_edit)
        self._slide_save.changed.connect(self._on_slide_save)
        self._retrain.changed.connect(self._on_retrain)
        self._resume.changed.connect(self._on_resume)
        self._mark_reference.changed.connect(self._on_mark_reference)
        self._train_norm.changed.connect(self._on_train_normaliser)
        self._resume_norm.changed.connect(self._on_resume_normaliser)
        self._use.changed.connect(self._on_use)
        self._rollback.changed.connect(self._on_rollback)
        self._tool.changed.connect(self._on_tool)
        layer_events = (
            self.viewer.layers.events.inserted,
            self.viewer.layers.events.removed,
            self.viewer.layers.selection.events.active,
        )
        for event in layer_events:
            event.connect(self._follow_tool)
        # A closed panel stops following: its widgets are gone.
        self._tool.native.destroyed.connect(
            lambda *_: [event.disconnect(self._follow_tool) for event in layer_events]
        )
        # napari's ✕ on the dock takes the panel out of the window without deleting it: the
        # chosen tool is put down then (else drags went on splitting nuclei, the view unable to
        # pan, from a panel nobody could see).
        when_undocked(self, self._unhook)
        self._reopen.changed.connect(self._on_reopen)
        self._delete.changed.connect(self._on_delete)
        self._views.changed.connect(self._forget_delete)
        #: The example a first click on Delete chose; a second click deletes it.
        self._pending_delete: str | None = None
        self._pending_merge: int | None = None
        self._stroke: list = []
        self._hooked = None
        #: The last training run's result in words (kept in the status line once it ends).
        self._result_text = ""

    def reset_choices(self, *_):
        self._form.reset_choices()  # the controls live in the form, inside the scroll area

    # ------------------------------------------------------------------ helpers
    def _set_status(self, text: str) -> None:
        self._status.value = text

    def _model_choices(self, _=None):
        from ..methods import method_names

        if self.project is None:
            return []
        return method_names("nuclei", project=self.project.path)

    def _view_choices(self, _=None):
        if self.project is None:
            return []
        return [(text, ex.id) for text, ex in self.project.accepted_views()]

    def _refresh(self) -> None:
        from ..methods import default_method_name

        if self.project is None:
            return
        store = self.project.store
        strong = store.examples(kind="strong")
        held = sum(ex.split == "heldout" for ex in strong)
        pseudo = len(store.examples(kind="pseudo"))
        current = default_method_name("nuclei", self.project.path)
        views = f"{len(strong)} accepted view{'' if len(strong) == 1 else 's'}"
        refs = len(self.reference_slides())
        normaliser = self.project.current_model("normaliser") or "none trained"
        self._summary.value = (
            f"{self.project.path.name}: {views} ({held} held out to measure the model), "
            f"{pseudo} pseudo-labelled tile{'' if pseudo == 1 else 's'}; model: {current}; "
            f"{refs} reference-style slide{'' if refs == 1 else 's'}; normaliser: {normaliser}"
        )
        self._models.reset_choices()
        if current in self._models.choices:
            self._models.value = current
        chosen = self._views.value
        self._views.reset_choices()
        if chosen in self._views.choices:
            self._views.value = chosen
        project_opened(self.viewer, self.project.path)

    def reference_slides(self) -> list[str]:
        """Paths of the project's slides marked as the reference style."""
        if self.project is None:
            return []
        return [s["path"] for s in self.project.slides if s.get("reference")]

    def slide_layer(self):
        """The slide layer a slide action is for: the selected one, else the top one; or None."""
        layers = find_layers(self.viewer, "slide")
        active = self.viewer.layers.selection.active
        if any(lyr is active for lyr in layers):
            return active
        return layers[-1] if layers else None

    def _need_project(self, what: str) -> bool:
        from napari.utils.notifications import show_error

        if self.project is None:
            show_error(f"Open or create a project (above) before {what}.")
            return False
        return True

    def view_labels(self, slide_edit: bool = True):
        """The current view's nuclei labels layer (the Nuclei panel's result, one kept with its
        edits, a re-opened accepted view, or with ``slide_edit`` a view of a whole-slide result
        being corrected): the selected one, else the top one; or None."""
        from ._wholeslide_edit import EDIT_SCOPE

        layers = [
            lyr  # "view", "view-edited" (kept with its edits), "view-example" (re-opened)
            for lyr in find_layers(self.viewer, "nuclei")
            if str(tag(lyr).get("scope", "")).startswith("view")
            and (slide_edit or tag(lyr)["scope"] != EDIT_SCOPE)
        ]
        active = self.viewer.layers.selection.active
        if any(lyr is active for lyr in layers):
            return active
        return layers[-1] if layers else None

    # ------------------------------------------------------------------ project
    def _on_open(self, _=None):
        from ._layers import open_project_folder

        project = open_project_folder(self._folder.value)
        if project is None:
            return
        self.project = project
        folder = project.path
        self._refresh()
        self._set_status(f"Project {folder.name} open.")

    def _on_use(self, _=None):
        from napari.utils.notifications import show_error

        from ..models import WeightsError, load_card

        if not self._need_project("choosing its model") or not self._models.value:
            return
        try:
            card = load_card(self._models.value, self.project.path)
        except WeightsError as exc:
            show_error(str(exc))
            return
        self.project.set_current_model(card.name)
        self._refresh()
        self._set_status(f"The project now segments with {card.name} {card.version}.")

    def _on_rollback(self, _=None):
        if not self._need_project("going back to an earlier model"):
            return
        previous = self.project.rollback()
        self._refresh()
        self._set_status(f"Back to {previous or 'the shipped default model'}.")

    # ------------------------------------------------------------------ corrections
    def _apply(self, layer, new: np.ndarray) -> None:
        """Write an edit into the layer as one step of napari's undo history."""
        old = np.asarray(layer.data)
        changed = np.nonzero(new != old)
        if changed[0].size:
            with layer.block_history():
                layer.data_setitem(changed, new[changed])

    def _edit(self, fn, *args) -> list[int] | None:
        from napari.utils.notifications import show_warning

        from ..correction import EditError

        layer = self.view_labels()
        if layer is None:
            show_warning("Segment the current view (Nuclei panel) before correcting it.")
            return None
        try:
            new, touched = fn(np.asarray(layer.data), *args)
        except EditError as exc:
            show_warning(str(exc))
            return None
        self._apply(layer, new)
        return touched

    def _id_at(self, layer, point) -> int:
        r, c = (int(round(v)) for v in np.asarray(point)[-2:])
        data = np.asarray(layer.data)
        if 0 <= r < data.shape[0] and 0 <= c < data.shape[1]:
            return int(data[r, c])
        return 0

    def delete_at(self, point) -> list[int] | None:
        """Delete the nucleus at ``point`` (the layer's data coordinates, row and column)."""
        from ..correction import delete

        layer = self.view_labels()
        return None if layer is None else self._edit(delete, self._id_at(layer, point))

    def merge_at(self, first, second) -> list[int] | None:
        """Merge the nuclei at two points into one."""
        from ..correction import merge

        layer = self.view_labels()
        if layer is None:
            return self._edit(merge, 0, 0)
        return self._edit(merge, self._id_at(layer, first), self._id_at(layer, second))

    def split_along(self, points) -> list[int] | None:
        """Split the nucleus a stroke (points in data coordinates) crosses into two."""
        from ..correction import split

        return self._edit(split, np.asarray(points, float)[:, -2:])

    def _unhook(self) -> None:
        """The click tool off the layer it was on, and that layer's panning back."""
        layer, self._hooked, self._pending_merge = self._hooked, None, None
        if layer is None:
            return
        if self._on_mouse in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.remove(self._on_mouse)
        layer.events.mode.disconnect(self._keep_pan_locked)
        layer.mouse_pan = True

    def _keep_pan_locked(self, event=None) -> None:
        layer = self._hooked
        if layer is not None and self._tool.value == TOOLS[3] and str(layer.mode) == "pan_zoom":
            layer.mouse_pan = False

    def _follow_tool(self, *_):
        """The view's nuclei layer changed (a new view segmented, one kept with its edits, another
        selected): the chosen click tool moves to it. It stayed on the old layer, so clicks on
        the new one did nothing."""
        if self._tool.value != TOOLS[0] and self.view_labels() is not self._hooked:
            self._on_tool(announce=False)

    def _on_tool(self, _=None, announce: bool = True):
        """Hook the chosen tool to mouse clicks on the view's nuclei (napari's own tools for
        painting, erasing and filling when none is chosen)."""
        layer = self.view_labels()
        self._unhook()
        if layer is None or self._tool.value == TOOLS[0] or self.native.parent() is None:
            return
        layer.mode = "pan_zoom"
        if self._tool.value == TOOLS[3]:
            # A drag draws the line: with the camera panning under it, the cursor stayed on
            # one point of the slide and every line "crossed no nucleus". (The wheel zooms.)
            # On the layer, not the camera: napari sets the camera's from the active layer's
            # whenever the selection or the layer's mode changes.
            layer.mouse_pan = False
            layer.events.mode.connect(self._keep_pan_locked)
        layer.mouse_drag_callbacks.append(self._on_mouse)
        self._hooked = layer
        if not announce:
            return
        self._set_status(
            {
                TOOLS[1]: "Click a nucleus to delete it (Ctrl+Z undoes).",
                TOOLS[2]: "Click two nuclei to merge them.",
                TOOLS[3]: "Drag a line across a nucleus to split it (the view does not pan "
                "while this tool is chosen; the wheel still zooms).",
            }[self._tool.value]
        )

    def _on_mouse(self, layer, event):
        point = layer.world_to_data(event.position)
        tool = self._tool.value
        if tool == TOOLS[1]:
            self.delete_at(point)
        elif tool == TOOLS[2]:
            if self._pending_merge is None:
                self._pending_merge = point
                self._set_status("Now click the nucleus to merge it with.")
            else:
                self.merge_at(self._pending_merge, point)
                self._pending_merge = None
                self._set_status("Merged. Click two more nuclei to merge them.")
        elif tool == TOOLS[3]:
            stroke = [point]
            yield
            while event.type == "mouse_move":
                stroke.append(layer.world_to_data(event.position))
                yield
            stroke.append(layer.world_to_data(event.position))
            self.split_along(stroke)

    # ------------------------------------------------------------------ whole-slide result
    def _on_slide_edit(self, _=None):
        """Cut the view of a whole-slide result into a layer the tools above correct."""
        from napari.utils.notifications import show_warning

        from ._wholeslide_edit import cut_view

        got = cut_view(self.viewer)
        if isinstance(got, str):
            show_warning(got)
            return
        self._on_tool()
        self._set_status("Correct the nuclei, then click 'Save to slide result'.")

    def _on_slide_save(self, _=None):
        from ._wholeslide_edit import save

        self._set_status(save(self.viewer))
        self._on_tool()

    # ------------------------------------------------------------------ accept
    def _on_accept(self, _=None):
        """Store the view's (corrected) nuclei and the image under them as a strong label; a
        re-opened accepted view (or one accepted before) updates its example instead."""
        from napari.utils.notifications import show_error, show_warning

        from ..project import ProjectError

        if not self._need_project("accepting a view"):
            return
        from ._wholeslide_edit import EDIT_SCOPE

        active = self.viewer.layers.selection.active
        if active is not None and tag(active).get("scope") == EDIT_SCOPE:
            show_warning(
                "This layer corrects the whole-slide result: keep it with 'Save to slide "
                "result'. To add training data, segment a view (Nuclei panel) and accept that."
            )
            return
        layer = self.view_labels(slide_edit=False)
        if layer is None:
            show_warning("Segment the current view (Nuclei panel) before accepting it.")
            return
        meta = tag(layer)
        slides = [
            s for s in find_layers(self.viewer, "slide") if tag(s).get("path") == meta["slide"]
        ]
        slide = open_layer_slide(slides[-1]) if slides else None
        if slide is None:
            show_error("The slide of these nuclei is not open any more: open it to accept them.")
            return
        labels = np.asarray(layer.data)
        image = _read_under(slide, meta, labels.shape)
        mpp = float(meta["mpp"])
        ox, oy = meta["origin_px"]
        base = slide.mpp
        region = (ox * base, oy * base, (ox + labels.shape[1] * meta["downsample"]) * base,
                  (oy + labels.shape[0] * meta["downsample"]) * base)  # fmt: skip
        replace = meta.get("example")
        if replace not in {ex.id for ex in self.project.store.examples(kind="strong")}:
            replace = None  # deleted meanwhile: stored as a new example
        try:
            self.project.add_slide(slide.path)
            example = self.project.add_labels(
                image,
                labels,
                mpp,
                source=slide.path,
                region_um=region,
                level=int(meta.get("level", 0)),
                model=meta.get("method") if isinstance(meta.get("method"), dict) else {},
                replace=replace,
                slide_mpp=base,
            )
        except (ProjectError, OSError) as exc:
            show_error(f"Not stored: {exc}")
            return
        meta["example"] = example.id  # accepting it again updates this example
        mark(layer, False)  # stored in the project
        self._refresh()
        self._views.value = example.id
        if replace is not None:
            self._set_status(
                f"Updated example {example.id}: {example.nuclei} nuclei ({example.split})."
            )
        else:
            self._set_status(
                f"Stored {example.nuclei} nuclei of this view as training data ({example.split})."
            )

    # ------------------------------------------------------------------ accepted views
    def _chosen_example(self, what: str):
        """The example chosen under *accepted views*, or None after saying why not."""
        from napari.utils.notifications import show_error, show_warning

        from ..project import ProjectError

        if not self._need_project(what):
            return None
        if not self._views.value:
            show_warning("No accepted view to choose: accept a corrected view first.")
            return None
        try:
            return self.project.store.get(self._views.value)
        except ProjectError as exc:
            show_error(str(exc))
            self._refresh()
            return None

    def _forget_delete(self, _=None) -> None:
        self._pending_delete = None

    def _on_reopen(self, _=None):
        """Open the chosen accepted view on its slide (opening the slide if needed) as a labels
        layer on the tissue it was cut from, selected for editing, and show its region."""
        from napari.utils.notifications import show_error

        from ..layers import NUCLEI_CONTOUR, region_labels_layer
        from ..project import ProjectError
        from ._layers import put_layer

        example = self._chosen_example("opening an accepted view")
        if example is None:
            return
        self._pending_delete = None
        prov = example.provenance
        if not prov.get("source"):
            show_error(f"Example {example.id} records no source file to open it on.")
            return
        try:
            self.project.check_source(example)
        except ProjectError as exc:
            changed = "content hash differs" in str(exc)
            show_error(
                f"{prov['source']}: the file has changed since example {example.id} was "
                "labelled on it: its labels may no longer fit its pixels, so it is not opened. "
                "Delete the example, and accept a view of the new file instead."
                if changed
                else f"Not opened: {exc}"
            )
            return
        slide_layer = self._slide_layer_for(prov["source"], example)
        slide = open_layer_slide(slide_layer) if slide_layer is not None else None
        if slide is None:
            return
        if slide.mpp is None:
            show_error(
                f"{Path(prov['source']).name} states no µm/px: enter it in the Slide panel "
                f"(µm/px override, Apply; {example.mpp:g} when the example was stored), then Open."
            )
            return
        region = prov.get("region_um")
        # The level-0 µm/px the region was measured with (for older examples: the slide's now;
        # for an image added whole: the example's own).
        base = float(prov.get("slide_mpp") or (slide.mpp if region else example.mpp))
        x0, y0 = (region[0], region[1]) if region else (0.0, 0.0)
        downsample = example.mpp / base
        method = prov.get("original_method")
        layer_tuple = region_labels_layer(
            slide,
            example.labels(),
            (x0 / base, y0 / base),
            downsample,
            name=f"nuclei (accepted {example.id[-6:]})",
            kind="nuclei",
            scope="view-example",
            mpp=downsample * slide.mpp,
            level=int(prov.get("level", 0)),
            method=method if isinstance(method, dict) else {},
            example=example.id,
        )
        match = {"scope": "view-example", "example": example.id}  # open already: replaced
        for open_layer in find_layers(self.viewer, "nuclei", **match):
            stored = layer_tuple[0]
            if np.shape(open_layer.data) != np.shape(stored) or not np.array_equal(
                np.asarray(open_layer.data), stored
            ):  # corrected since it was opened: opening it again would throw that away
                self.viewer.layers.selection.active = open_layer
                self._on_tool()
                self._set_status(
                    f"Example {example.id} is already open, with your corrections: 'Accept "
                    "this view' stores them. To start again from the stored version, delete "
                    "its layer first, then Open."
                )
                return
        layer = put_layer(self.viewer, layer_tuple, "nuclei", **match)
        watch_edits(layer)
        layer.contour = NUCLEI_CONTOUR
        self.viewer.layers.selection.active = layer
        self._show_region(layer)
        self._on_tool()  # the click tool follows the layer now edited
        self._set_status(
            f"Opened example {example.id} ({example.nuclei} nuclei, {example.split}): correct "
            "it, then 'Accept this view' updates it."
        )

    def _slide_layer_for(self, source: str, example):
        """The slide layer showing ``source``, opened the way File > Open does when there is
        none (None after an error shown)."""
        from ._layers import apply_mpp, put_layer
        from ._reader import read_slides

        def same(layer) -> bool:
            return Path(str(tag(layer).get("path", ""))).resolve() == Path(source).resolve()

        layers = [lyr for lyr in find_layers(self.viewer, "slide") if same(lyr)]
        if layers:
            return layers[-1]
        opened = read_slides(source)
        if opened[0][0] is None:
            return None
        layer = put_layer(self.viewer, opened[0], index=0)
        prov = example.provenance
        known = prov.get("slide_mpp") or (None if prov.get("region_um") else example.mpp)
        if tag(layer).get("mpp") is None and known:
            # Stored with a µm/px its file does not state (given with --mpp or the override).
            problem = apply_mpp(self.viewer, layer, float(known))
            if problem is not None:
                from napari.utils.notifications import show_error

                show_error(problem)
                return None
        return layer

    def _show_region(self, layer) -> None:
        """Centre the camera on a labels layer and zoom so all of it fits the canvas."""
        from ._view import _camera, canvas_size

        h, w = np.asarray(layer.data).shape[-2:]
        (y0, x0), (y1, x1) = (
            np.asarray(layer.data_to_world(p))[-2:] for p in ((-0.5, -0.5), (h - 0.5, w - 0.5))
        )
        rows, cols = canvas_size(self.viewer)
        cam = _camera(self.viewer)
        cam.center = ((y0 + y1) / 2, (x0 + x1) / 2)
        cam.zoom = 0.95 * min(rows / max(abs(y1 - y0), 1e-9), cols / max(abs(x1 - x0), 1e-9))

    def _on_delete(self, _=None):
        """Delete the chosen accepted view from the training store: the first click asks, a
        second click on the same view deletes it (it cannot be undone)."""
        from napari.utils.notifications import show_error

        from ..project import ProjectError

        example = self._chosen_example("deleting an accepted view")
        if example is None:
            return
        if self._pending_delete != example.id:
            self._pending_delete = example.id
            self._set_status(
                f"Delete example {example.id} ({example.nuclei} nuclei, {example.split}) from the "
                "training data? It cannot be undone: click Delete again to confirm."
            )
            return
        self._pending_delete = None
        try:
            self.project.remove_labels(example.id)
        except (ProjectError, OSError) as exc:
            show_error(f"Not deleted: {exc}")
            return
        for layer in find_layers(self.viewer, "nuclei", example=example.id):
            del tag(layer)["example"]  # accepting the layer again makes a new example
        self._refresh()
        self._set_status(
            f"Deleted example {example.id} from the training data; its labels layer, if open, "
            "stays until you close it."
        )

    # ------------------------------------------------------------------ retrain
    def _on_retrain(self, _=None):
        from napari.utils.notifications import show_error

        from ..training.retrain import retrain_steps

        if not self._need_project("retraining"):
            return
        if not self.project.store.examples(kind="strong"):
            show_error("Accept at least one corrected view before retraining.")
            return
        self.plot.clear()
        self._result_text = ""
        unlabelled = [(s["path"], None) for s in self.project.slides]
        steps = in_subprocess(
            retrain_steps,
            str(self.project.path),
            minutes=float(self._minutes.value),
            unlabelled=unlabelled,
        )
        self.jobs.start(
            "Retraining",
            steps,
            on_item=self._on_retrain_item,
            on_done=self._show_result,
            cancelled_note=RESUME_NOTE,
        )

    def _on_resume(self, _=None):
        from ..training.retrain import latest_run, retrain_steps, run_finished

        if not self._need_project("resuming a retraining run"):
            return
        run = latest_run(self.project)
        if run is None or run_finished(run):
            what = "No retraining run:" if run is None else f"The last run ({run.name}) finished:"
            self._set_status(f"{what} nothing to resume; Retrain starts a new run.")
            return
        self.plot.clear()
        self._result_text = ""
        steps = in_subprocess(retrain_steps, str(self.project.path), resume=True)
        self.jobs.start(
            f"Resuming {run.name}",
            steps,
            on_item=self._on_retrain_item,
            on_done=self._show_result,
            cancelled_note=RESUME_NOTE,
        )

    # ------------------------------------------------------------------ stain normaliser
    def _on_mark_reference(self, _=None):
        """Record the slide in the project as the lab's reference style (with its µm/px where
        it was entered in the Slide panel, not read from the file)."""
        from napari.utils.notifications import show_error, show_warning

        from ..project import ProjectError

        if not self._need_project("marking a reference slide"):
            return
        layer = self.slide_layer()
        if layer is None:
            show_warning("Open a slide first: the selected (or top) slide layer is marked.")
            return
        meta = tag(layer)
        override = meta.get("mpp") if meta.get("mpp_source") == "override" else None
        try:
            self.project.add_slide(meta["path"], reference=True, mpp=override)
        except (ProjectError, OSError) as exc:
            show_error(f"Not marked: {exc}")
            return
        self._refresh()
        names = ", ".join(Path(p).name for p in self.reference_slides())
        self._set_status(
            f"{Path(meta['path']).name} marked as the reference style. Reference-style slides: "
            f"{names}."
        )

    def _on_train_normaliser(self, _=None):
        from napari.utils.notifications import show_error

        from ..training.normaliser_train import normaliser_steps

        if not self._need_project("training a stain normaliser"):
            return
        if not self.reference_slides():
            message = (
                "No reference-style slide in this project: open a slide stained the way you want "
                "every slide to look and click 'Mark the slide as reference style' first."
            )
            self._set_status(message)
            show_error(message)
            return
        self.plot.clear()
        self._result_text = ""
        steps = in_subprocess(
            normaliser_steps, str(self.project.path), minutes=float(self._minutes.value)
        )
        self.jobs.start(
            "Training the normaliser",
            steps,
            on_item=self._on_normaliser_item,
            on_done=self._show_result,
            cancelled_note=NORMALISER_RESUME_NOTE,
        )

    def _on_resume_normaliser(self, _=None):
        from ..training.normaliser_train import latest_run, normaliser_steps
        from ..training.retrain import run_finished

        if not self._need_project("resuming a normaliser training run"):
            return
        run = latest_run(self.project)
        if run is None or run_finished(run):
            what = (
                "No normaliser training run:"
                if run is None
                else f"The last normaliser run ({run.name}) finished:"
            )
            self._set_status(f"{what} nothing to resume; Train normaliser starts a new run.")
            return
        self.plot.clear()
        self._result_text = ""
        steps = in_subprocess(normaliser_steps, str(self.project.path), resume=True)
        self.jobs.start(
            f"Resuming {run.name}",
            steps,
            on_item=self._on_normaliser_item,
            on_done=self._show_result,
            cancelled_note=NORMALISER_RESUME_NOTE,
        )

    def _on_normaliser_item(self, item) -> None:
        if isinstance(item, tuple):  # (iteration, loss)
            self.plot.add(*item)
            return
        if isinstance(item, dict) and "model" in item:
            self._refresh()
            self._result_text = normaliser_result_text(item)
            self._set_status(self._result_text)

    def _show_result(self, _=None) -> None:
        """The run's result stays in the status line (over the run's "done in ...")."""
        if self._result_text:
            self._set_status(self._result_text)

    def _on_retrain_item(self, item) -> None:
        if isinstance(item, tuple):  # (iteration, loss)
            self.plot.add(*item)
            return
        if isinstance(item, dict) and "model" in item:
            self._refresh()
            verdict = "now the project's model" if item["promoted"] else "kept aside"
            t, s = item.get("teacher_aji"), item.get("student_aji")
            scores = "" if t is None else f" (held-out AJI {s:.3f} against {t:.3f})"
            note = f" Note: {item['note']}." if item.get("note") else ""
            self._result_text = f"Retrained: {item['model']} is {verdict}{scores}.{note}"
            self._set_status(self._result_text)


def in_subprocess(fn, *args, **kwargs):
    """:func:`._process.in_subprocess`, looked up when called (tests replace it there)."""
    from . import _process

    return _process.in_subprocess(fn, *args, **kwargs)


def normaliser_result_text(result: dict) -> str:
    """A normaliser training run's result in one line: the model, whether it is the project's
    normaliser now, and the figures it was measured with (those there are)."""
    verdict = "now the project's normaliser" if result.get("promoted") else "kept aside"
    role = f" {result['role']}" if result.get("role") else ""
    figures = []
    aji, teacher = result.get("mask_aji"), result.get("teacher_mask_aji")
    if aji is not None:
        against = f" against the teacher's {teacher:.3f}" if teacher is not None else ""
        figures.append(f"held-out mask AJI {aji:.3f}{against}")
    before, after = result.get("lab_distance_before"), result.get("lab_distance_after")
    if after is not None:
        was = f"{before:.2f} → " if before is not None else ""
        figures.append(f"Lab distance to the reference {was}{after:.2f}")
    if result.get("h_ssim") is not None:
        figures.append(f"haematoxylin SSIM {result['h_ssim']:.3f}")
    scores = f" ({'; '.join(figures)})" if figures else ""
    return f"Trained normaliser{role}: {result['model']} is {verdict}{scores}."


def _read_under(slide, meta: dict, shape) -> np.ndarray:
    """The slide's RGB under a view's labels (their origin, downsample and shape)."""
    from PIL import Image

    ox, oy = (int(round(v)) for v in meta["origin_px"])
    d = float(meta["downsample"])
    h, w = shape
    level = slide.best_level_for_downsample(d)
    ld = slide.level_downsamples[level]
    rgb = slide.read_region(
        int(ox / ld),
        int(oy / ld),
        max(1, int(round(w * d / ld))),
        max(1, int(round(h * d / ld))),
        level,
    )
    if rgb.shape[:2] != (h, w):
        rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.BILINEAR))
    return rgb
