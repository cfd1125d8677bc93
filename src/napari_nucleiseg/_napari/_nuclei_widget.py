"""Nuclei dock widget: segment what is on screen (or the whole slide), count, measure, export.

Each callback is a line or two into the core (``segmentation.region`` for the view,
``wholeslide.segment_slide`` for the slide); the work runs in a background worker
(``_jobs.JobRunner``) with a progress bar and ETA in the panel, and Cancel. Whole-slide labels
are shown from the job's chunked result store as a lazy multiscale layer, refreshed while the job
runs, so they never sit in memory at full resolution.

A view's labels layer can be corrected with napari's label tools: every paint, erase, fill or
undo re-measures the nuclei it touched (and only those), so the count, the table and the
exports always hold what is on screen. Segmenting the view again over corrected labels asks
first, and can keep them in a layer of their own.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    PushButton,
)

from ._jobs import JobRunner
from ._layers import (
    PROJECT_CHANGED,
    RESULT_CHANGED,
    deleted,
    find_layers,
    follow_project,
    in_user_words,
    open_project,
    path_field,
    put_layer,
    scrolled,
    slide_layer_box,
    slide_layers,
    tag,
    unproxied,
)
from ._unsaved import guard_quit, mark, watch_edits

#: Seconds between redraws of the whole-slide labels while the job runs (for a zoomed-in
#: screen; a view that draws more pixels is redrawn less often, see LIVE_MAX_PX).
REFRESH_S = 3.0
#: Pixels napari may draw per redraw of the whole-slide labels every REFRESH_S while the job
#: runs; a view drawing more waits proportionally longer between redraws (napari colour-maps
#: labels on the interface thread: a 2 MP redraw under software OpenGL took ~360 ms in CI).
LIVE_MAX_PX = 500_000
#: Longest wait between two redraws of the whole-slide labels while the job runs.
REFRESH_MAX_S = 20.0
#: What the re-segment question's buttons return.
KEEP, DISCARD, CANCEL = "keep", "discard", "cancel"
#: Keyboard shortcuts (napari key names), bound on the viewer when the panel opens.
SHORTCUTS = {
    "segment_view": "Shift-S",
    "next_nucleus": "N",
    "previous_nucleus": "Shift-N",
    "toggle_outlines": "Shift-O",
}
#: Milliseconds after the last paint event before the touched nuclei are measured again (one
#: brush stroke is many events).
REMEASURE_MS = 150


class NucleiWidget(Container):
    def __init__(self, napari_viewer):
        from qtpy.QtWidgets import QProgressBar, QSizePolicy

        from ..layers import NUCLEI_COLOURINGS, NUCLEI_STYLES
        from ..methods import default_method_name

        super().__init__(labels=False)
        self._form = Container(labels=True)
        self.viewer = napari_viewer = unproxied(napari_viewer)
        self._layer = slide_layer_box(self._slide_choices, napari_viewer)
        #: The folder of the project open in the Project panel (its models are offered too).
        self._project = None
        #: The project's own model when last told (a new one is switched to, once).
        self._project_model = None
        self._method = ComboBox(
            label="method", choices=self._method_choices, value=default_method_name()
        )
        from ..methods.learned import DETECTION_RANGE

        self._threshold = FloatSpinBox(
            label="detection threshold",
            min=DETECTION_RANGE[0],
            max=DETECTION_RANGE[1],
            step=0.05,
            tooltip="How sure a learned model must be that a pixel is nucleus (a probability). "
            "Lower finds fainter nuclei and draws every nucleus larger: try it where nuclei look "
            "too small or pale ones are missed. Higher keeps only the clearest. Set to the "
            "model's own whenever the method changes; recorded with every result.",
        )
        # 3 places: a card may be tuned to 0.425, which 2 places would show (and run) as 0.42.
        self._threshold.native.setDecimals(3)
        self._normalise = CheckBox(
            text="normalise stain first",
            value=False,
            tooltip="Segment the slide in the colours the Stain panel shows it in. Off by "
            "default: check it on your slides first; on pale slides from another source it "
            "lowered the nuclei model's accuracy (docs/researcher.md)",
        )
        self._out = path_field(
            label="results folder", mode="d", value=Path.home() / "nucleiseg-results"
        )
        self._run_view = PushButton(
            text="Segment view",
            tooltip=f"Segment what is on screen ({SHORTCUTS['segment_view']})",
        )
        self._run_slide = PushButton(
            text="Segment slide", tooltip="Segment the whole slide in the background"
        )
        self._cancel = PushButton(text="Cancel")
        runs = Container(
            widgets=[self._run_view, self._run_slide, self._cancel], layout="horizontal"
        )
        self._status = Label(value="")
        self._count = Label(value="")
        self._results = ComboBox(
            label="result", choices=self._result_choices, tooltip="what the table and Save show"
        )
        self._style = ComboBox(label="show nuclei as", choices=list(NUCLEI_STYLES))
        self._colouring = ComboBox(label="colours", choices=list(NUCLEI_COLOURINGS))
        self._export_csv = PushButton(text="CSV…", tooltip="Save the measurements (a spreadsheet)")
        self._export_geojson = PushButton(
            text="GeoJSON…", tooltip="Save the outlines (QuPath: File > Import objects)"
        )
        self._export_labels = PushButton(
            text="OME-Zarr…", tooltip="Save the labels (napari, QuPath, Python)"
        )
        saves = Container(
            widgets=[
                Label(value="save"),
                self._export_csv,
                self._export_geojson,
                self._export_labels,
            ],
            layout="horizontal",
        )
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        # Offered when the nuclei say the slide's µm/px is wrong (see _check_scale).
        self._use_mpp = PushButton(text="Use the µm/px the nuclei suggest", visible=False)
        self._use_mpp.changed.connect(self._on_use_mpp)
        messages = Container(widgets=[self._status, self._count, self._use_mpp])
        messages.native.layout().insertWidget(1, self.progress)
        # Full-width rows (no label column), between the form's labelled rows.
        self._rows = (runs, messages, saves)
        for row in self._rows:
            row.margins = (0, 0, 0, 0)
        saves.native.layout().setSpacing(3)
        self._form.extend(
            [
                self._layer,
                self._method,
                self._threshold,
                self._normalise,
                self._out,
                self._results,
                self._style,
                self._colouring,
            ]
        )
        layout = self._form.native.layout()
        at = layout.indexOf(self._results.native.parentWidget())
        layout.insertWidget(at, runs.native)
        layout.insertWidget(at + 1, messages.native)
        layout.addWidget(saves.native)
        from ._table import MeasurementsView

        self.table = MeasurementsView()
        layout.addWidget(self.table, 1)  # the table takes the room left
        for label in (self._status, self._count):  # messages wrap, not widen the dock
            label.native.setWordWrap(True)
            label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self._form.native.setMinimumWidth(270)
        scrolled(self, self._form)
        self.native.setMinimumHeight(100)  # stacked with four other docks: still usable
        self.table.nucleus_chosen.connect(self._centre_on)

        self.jobs = JobRunner(self._set_status, self._cancel, bar=self.progress)
        #: What the nuclei of the last result said about the slide's µm/px (segmentation.scale).
        self.scale_verdict = None
        self._outcomes: dict[int, _Outcome] = {}
        self._last = None  # what the table and the exports show: the result chosen
        self._refreshed = 0.0
        self._slide_progress = None
        self._run_id = 0
        self.layer_added: list[tuple[float, float]] = []
        self._pool = None  # reads what a running whole-slide job has stored so far
        self._live_cache: dict = {}
        self._live_future = None
        self._run_view.changed.connect(self._on_run_view)
        self._run_slide.changed.connect(self._on_run_slide)
        self._export_labels.changed.connect(self._on_export_labels)
        self._export_geojson.changed.connect(self._on_export_geojson)
        self._export_csv.changed.connect(self._on_export_csv)
        self._method.changed.connect(self._warm_up)
        self._method.changed.connect(self._on_method_changed)
        PROJECT_CHANGED.connect(self._on_project)
        if open_project(self.viewer) is not None:  # opened after the project was
            self._on_project(self.viewer, open_project(self.viewer))
        RESULT_CHANGED.connect(self._on_result_changed)
        guard_quit(self.viewer)
        self._results.changed.connect(self._on_result_chosen)
        self._style.changed.connect(self._restyle)
        self._colouring.changed.connect(self._restyle)
        self.viewer.layers.events.inserted.connect(self._refresh)
        self.viewer.layers.events.removed.connect(self._on_removed)
        self._bind_keys()
        _scale_bar_on(self.viewer)
        self._on_method_changed()
        self._warm_up()

    def reset_choices(self, *_):
        """napari calls this when layers change; the choices live in the form."""
        self._form.reset_choices()

    # ------------------------------------------------------------------ state
    def _slide_choices(self, _=None):
        return slide_layers(self.viewer)

    def _result_choices(self, _=None):
        return [
            (lyr.name, lyr)
            for lyr in find_layers(self.viewer, "nuclei")
            if id(lyr) in getattr(self, "_outcomes", {})
        ]

    def _refresh(self, _=None):
        self._layer.reset_choices()
        self._results.reset_choices()

    def _on_removed(self, event=None):
        layer = getattr(event, "value", None)
        if layer is not None:
            self._unwatch(layer)
        gone = self._outcomes.pop(id(layer), None) if layer is not None else None
        self._refresh()
        if gone is not None and gone is self._last:
            chosen = self._results.value
            self._show_outcome(self._outcomes.get(id(chosen)) if chosen is not None else None)

    def _set_status(self, text: str) -> None:
        self._status.value = text

    def _method_choices(self, _widget=None) -> list[str]:
        """Every nuclei method the registry knows, the open project's models included, asked
        afresh whenever napari resets the panel's choices (a model trained or registered
        meanwhile appears without a restart)."""
        from ..methods import method_names

        return method_names("nuclei", project=self._project)

    def _on_project(self, viewer, folder) -> None:
        """The Project panel opened a project or changed its model: offer its models, and
        switch to the model it now uses when that changed (a retrained model "now the
        project's model" is what the next Segment view runs)."""
        follow_project(self, self._method, "nuclei", viewer, folder)

    def _on_result_changed(self, store) -> None:
        """A correction was saved into a whole-slide result: its table, count and exports are
        read again from the store (they are small next to the labels)."""
        from ..wholeslide import read_table

        if deleted(self.native):  # this panel was closed
            RESULT_CHANGED.disconnect(self._on_result_changed)
            return
        for outcome in list(self._outcomes.values()):
            if outcome.scope != "slide" or str(outcome.store) != str(store):
                continue
            path = Path(store)
            try:
                outcome.table = read_table(_store_parquet(path))
            except Exception as exc:  # noqa: BLE001 (the correction is saved; only this view is old)
                self._set_status(f"The corrected table could not be read again: {exc}")
                continue
            n = len(outcome.table["label"])
            outcome.count_text = (
                f"{n:,} nuclei in the whole slide, corrected by hand (results in {path.parent})"
            )
            if outcome is self._last:
                self._show_outcome(outcome)

    def _resolved(self, name):
        """The method called ``name``: a name where the registry finds it alone, else (a project
        model) the method itself, so the whole-slide job and the warm-up find it too."""
        from ..methods import get_method

        if self._project is None:
            return name
        return get_method(name, project=self._project)

    def _on_method_changed(self, _=None) -> None:
        """The threshold box shows the chosen model's own threshold; a method without one (the
        classical ones) greys it out."""
        from ..methods import get_method
        from ..models import WeightsError

        try:
            own = getattr(
                get_method(self._method.value, project=self._project),
                "default_detection_threshold",
                None,
            )
        except WeightsError:  # a model gone meanwhile: segmenting will say so
            own = None
        self._threshold.enabled = own is not None
        if own is not None:
            from ..methods.learned import DETECTION_RANGE

            # A card may hold any probability: the box shows it as its 3 places round it,
            # widening the usual range for it (for this model only), never refusing it.
            shown = round(own, 3)
            self._threshold.min = min(DETECTION_RANGE[0], shown)
            self._threshold.max = max(DETECTION_RANGE[1], shown)
            self._threshold.value = shown
        #: What the box shows for the model's own threshold (left there, the model runs as
        #: is), or None when the method has no threshold.
        self._own_shown = self._threshold.value if own is not None else None

    def _chosen_method(self):
        """The method to run: the method box's, with the threshold box's detection threshold
        where the method has one. None (and the reason in the status line) when it cannot run."""
        from ..methods import with_detection_threshold
        from ..models import WeightsError

        value = self._threshold.value
        try:
            method = self._resolved(self._method.value)
            if self._own_shown is None:
                return method
            # What the box shows for the model's own is the model's own, however it rounds.
            return with_detection_threshold(method, None if value == self._own_shown else value)
        except WeightsError as exc:  # MethodError too
            self._set_status(f"Not segmented: {exc}")
            return None

    def _warm_up(self, _=None) -> None:
        """Load the model in the background now, so the first click is as fast as the next."""
        from ._jobs import wait_at_exit

        # A daemon (a load that hangs must not keep the process alive), which quitting waits
        # for a few seconds: a runtime killed while it initialises aborts the process.
        ended = wait_at_exit()  # before it starts: it may end before the next line
        threading.Thread(
            target=_warm_up,
            args=(self._method.value, ended, self._project),
            name="nucleiseg-warm-up",
            daemon=True,
        ).start()

    def _bind_keys(self) -> None:
        """The panel's keyboard shortcuts, on the viewer (they work wherever the mouse is)."""
        actions = {
            "segment_view": lambda _v: self._on_run_view(),
            "next_nucleus": lambda _v: self.table.step(1),
            "previous_nucleus": lambda _v: self.table.step(-1),
            "toggle_outlines": lambda _v: self._toggle_outlines(),
        }
        for name, key in SHORTCUTS.items():
            self.viewer.bind_key(key, actions[name], overwrite=True)

    def _slide(self, what: str):
        """The selected slide layer and its opened slide, or (None, None) after saying why."""
        from ._layers import checked_slide

        return checked_slide(self._layer.value, what, self._set_status)

    def _ready(self, what: str):
        """``(layer, slide, normaliser)`` for a run, or None after saying why not (a run going,
        no slide, no µm/px, no normalised view to take the stain from)."""
        from napari.utils.notifications import show_warning

        if self.jobs.running:
            show_warning(self.jobs.busy_message())
            return None
        layer, slide = self._slide(what)
        if slide is None:
            return None
        normaliser = self._normaliser(slide)
        return None if normaliser is False else (layer, slide, normaliser)

    def _normaliser(self, slide):
        """The Stain panel's normaliser for this slide (adapted to it), None when not asked for,
        or False after telling the user what is missing."""
        from napari.utils.notifications import show_error

        if not self._normalise.value:
            return None
        shown = find_layers(self.viewer, "stain_normalised", slide=str(slide.path))
        if not shown:
            show_error(
                "To segment the normalised stain, show the slide normalised in the Stain panel "
                "first (or untick 'normalise stain first')."
            )
            return False
        from ..layers import recorded_normaliser

        return recorded_normaliser(tag(shown[0]))  # the layer's own colour mapping

    # ------------------------------------------------------------------ display
    def _style_kwargs(self) -> dict:
        from ..layers import nuclei_style

        return nuclei_style(self._style.value, self._colouring.value)

    def _apply_style(self, layer) -> None:
        from napari.utils.colormaps import label_colormap

        style = self._style_kwargs()
        layer.contour = style["contour"]
        layer.opacity = style["opacity"]
        layer.colormap = style["colormap"] if style["colormap"] is not None else label_colormap()

    def _restyle(self, _=None) -> None:
        """The display choices apply to every nuclei layer of the plugin, view and slide."""
        for layer in find_layers(self.viewer, "nuclei"):
            self._apply_style(layer)

    def _toggle_outlines(self) -> None:
        from ..layers import NUCLEI_STYLES

        self._style.value = NUCLEI_STYLES[self._style.value == NUCLEI_STYLES[0]]

    def _put_nuclei(self, layer_tuple, slide, scope: str):
        """Add or replace a nuclei layer (above the slide, its stains and the tissue) in the
        panel's display style."""
        kwargs = layer_tuple[1]
        kwargs.pop("colormap", None)
        style = self._style_kwargs()
        contour = style.pop("contour")
        kwargs.update({k: v for k, v in style.items() if v is not None})
        new = not find_layers(self.viewer, "nuclei", slide=str(slide.path), scope=scope)
        # A layer replaced keeps its own display settings (the user may have changed them).
        layer = put_layer(self.viewer, layer_tuple, "nuclei", slide=str(slide.path), scope=scope)
        if new:
            layer.contour = contour
        return layer

    # ------------------------------------------------------------------ results shown
    def _show_outcome(self, outcome) -> None:
        """Show a result's count and table (None: none)."""
        self._last = outcome
        if outcome is None:
            self._count.value = ""
            self.table.set_table(None)
            return
        self._count.value = outcome.count_text
        self.table.set_table(outcome.table)
        layer = outcome.layer
        if layer is not None and self._results.value is not layer:
            self._results.reset_choices()
            if any(v is layer for v in self._results.choices):
                self._results.value = layer

    def _on_result_chosen(self, layer=None) -> None:
        outcome = self._outcomes.get(id(layer)) if layer is not None else None
        if outcome is not None and outcome is not self._last:
            self._show_outcome(outcome)

    def _register(self, outcome) -> None:
        self._outcomes[id(outcome.layer)] = outcome
        self._show_outcome(outcome)

    # ------------------------------------------------------------------ current view
    def _edited_view(self, slide):
        """The outcome of this slide's view layer when the user has corrected it. The layer
        records that it was (``edited`` in its metadata): a panel closed and opened again has no
        outcome for it, and replaced the corrections without asking."""
        for layer in find_layers(self.viewer, "nuclei", slide=str(slide.path), scope="view"):
            outcome = self._outcomes.get(id(layer))
            if outcome is not None:
                self._remeasure(outcome)  # an edit still within REMEASURE_MS counts too
                if outcome.edited:
                    return outcome
                if outcome.table is None and tag(layer).get("unsaved"):
                    # Labels never measured (a cancelled or failed run): nothing re-measures
                    # them, but the user corrected them.
                    return outcome
            elif tag(layer).get("edited"):
                return _Outcome("view", slide, layer=layer)
        return None

    def _ask_keep_edits(self, outcome) -> str:
        """Ask what to do with corrected labels before segmenting the view again: KEEP, DISCARD
        or CANCEL (the user's click; tests replace this method)."""
        from qtpy.QtWidgets import QMessageBox

        box = QMessageBox(self.native)
        box.setIcon(QMessageBox.Icon.Question)
        box.setWindowTitle("Segment the view again?")
        box.setText(
            f"You have corrected {outcome.layer.name}. Segmenting the view again replaces it."
        )
        box.setInformativeText(
            "Keep edits: your corrected layer stays (renamed 'nuclei (view, edited)') and the "
            "new result goes in a new layer. Discard: the corrections are lost."
        )
        keep = box.addButton("Keep edits", QMessageBox.ButtonRole.AcceptRole)
        discard = box.addButton("Discard", QMessageBox.ButtonRole.DestructiveRole)
        box.addButton("Cancel", QMessageBox.ButtonRole.RejectRole)
        box.setDefaultButton(keep)
        box.exec()
        clicked = box.clickedButton()
        return KEEP if clicked is keep else DISCARD if clicked is discard else CANCEL

    def _on_run_view(self, _=None):
        from ..segmentation.region import segment_region
        from ._view import visible_box

        ready = self._ready("segmenting the view")
        if ready is None:
            return
        layer, slide, normaliser = ready
        method = self._chosen_method()
        if method is None:
            return
        edited = self._edited_view(slide)
        if edited is not None:
            choice = self._ask_keep_edits(edited)
            if choice == CANCEL:
                self._set_status("Not segmented: your corrected nuclei are unchanged.")
                return
            if choice == KEEP:
                edited.layer.name = "nuclei (view, edited)"
                tag(edited.layer)["scope"] = "view-edited"
                edited.scope = "view-edited"
                self._results.reset_choices()
        steps = segment_region(
            slide, visible_box(self.viewer, layer), method, normaliser=normaliser
        )
        self.jobs.start(
            "Nuclei in view",
            _then_measure(steps),
            on_item=lambda result: self._show_view_labels(slide, result),
            on_done=lambda outcome: self._show_table(slide, outcome),
            on_error=self._on_view_error,
            cancelled_note="the nuclei of the finished tiles stay shown",
        )

    def _show_view_labels(self, slide, result) -> None:
        """The labels, as soon as they exist (the measurements follow)."""
        from ..layers import region_labels_layer

        plan = result.plan
        so_far = " so far (finished tiles)" if result.partial else ""
        layer_tuple = region_labels_layer(
            slide,
            result.labels,
            plan.origin,
            plan.downsample,
            name="nuclei (view)",
            kind="nuclei",
            scope="view",
            box=list(plan.box),
            mpp=plan.mpp,
            level=plan.level,
            count=result.count,
            method=result.method,
        )
        old = find_layers(self.viewer, "nuclei", slide=str(slide.path), scope="view")
        if old:
            self._unwatch(old[0])
            self._outcomes.pop(id(old[0]), None)
        layer = self._put_nuclei(layer_tuple, slide, "view")
        watch_edits(layer)
        outcome = _Outcome("view", slide, result=result, layer=layer)
        # The labels as measured: an edit made before the table arrives is found against them.
        outcome.snapshot = np.array(layer.data, copy=True)
        outcome.count_text = (
            f"{result.count:,} nuclei in view{so_far} (segmented at {plan.mpp:.3g} µm/px)"
        )
        self._register(outcome)

    def _show_table(self, slide, outcome_pair) -> None:
        result, table = outcome_pair
        layers = find_layers(self.viewer, "nuclei", slide=str(slide.path), scope="view")
        if not layers:
            return
        outcome = self._outcomes.get(id(layers[0]))
        if outcome is None or outcome.result is not result:
            return
        outcome.table = table
        if outcome.snapshot is None:
            outcome.snapshot = np.array(layers[0].data, copy=True)
        self._watch(outcome)
        self._show_outcome(outcome)
        # Edits made while the table was measured (they were dropped, and the next Segment view
        # replaced them without asking): measured now, and the layer marked as corrected.
        self._remeasure(outcome)
        self._check_scale(slide, table)

    def _check_scale(self, slide, table) -> None:
        """Warn when the nuclei found say the slide's µm/px is implausible, with the µm/px they
        suggest (``segmentation.scale``): a wrong µm/px otherwise fails silently."""
        from napari.utils.notifications import show_warning

        from ..segmentation.scale import scale_from_areas

        if table is None or slide.mpp is None or "area_um2" not in table:
            return
        verdict = scale_from_areas(np.asarray(table["area_um2"]), slide.mpp)
        self.scale_verdict = verdict
        self._use_mpp.visible = bool(verdict.implausible)
        if verdict.implausible:
            suggested = float(f"{verdict.suggested_mpp:.2g}")
            self._suggested = (str(slide.path), suggested)
            self._use_mpp.text = f"Use {suggested:g} µm/px for this slide"
            text = verdict.message(
                slide.path.name,
                advice=f"Press 'Use {suggested:g} µm/px' below (or set it in the Slide panel), "
                "then segment again.",
            )
            self._status.value = text
            show_warning(text)

    def _on_use_mpp(self, _=None) -> None:
        """Give the slide the µm/px its nuclei suggested (the Slide panel's override)."""
        from napari.utils.notifications import show_error

        from ._layers import apply_mpp

        path, mpp = getattr(self, "_suggested", (None, None))
        layers = [
            lyr
            for lyr in find_layers(self.viewer, "slide")
            if path and Path(tag(lyr).get("path", "")).resolve() == Path(path).resolve()
        ]
        if not layers:
            show_error("The slide is not open any more.")
            return
        problem = apply_mpp(self.viewer, layers[-1], mpp)
        if problem:
            show_error(problem)
            return
        self._use_mpp.visible = False
        self._status.value = (
            f"{Path(path).name} is now {mpp:g} µm/px (an override, as in the Slide panel): "
            "segment again to find its nuclei at that scale."
        )

    def _on_view_error(self, exc) -> None:
        from napari.utils.notifications import show_error, show_info, show_warning

        from ..io import SlideError
        from ..segmentation.region import EmptyRegionError, RegionTooLargeError

        if isinstance(exc, RegionTooLargeError):
            self._offer_whole_slide(str(exc))
        elif isinstance(exc, EmptyRegionError):
            show_info(str(exc))
        elif isinstance(exc, SlideError):
            show_error(in_user_words(exc))
        else:
            show_warning(f"Segmenting the view failed: {exc}")

    def _offer_whole_slide(self, message: str) -> None:
        from napari.utils.notifications import (
            Notification,
            NotificationSeverity,
            notification_manager,
        )

        self._set_status(message)
        notification_manager.dispatch(
            Notification(
                message,
                severity=NotificationSeverity.WARNING,
                actions=[("Segment whole slide", lambda _: self._on_run_slide())],
            )
        )

    # ------------------------------------------------------------------ corrections
    def _watch(self, outcome) -> None:
        """Re-measure the nuclei an edit touches: a paint, erase or fill stroke (``paint``,
        ``labels_update``), an undo or redo (``set_data``), new data (``data``)."""
        from qtpy.QtCore import QTimer

        layer = outcome.layer
        timer = QTimer(self.native)
        timer.setSingleShot(True)
        timer.setInterval(REMEASURE_MS)
        timer.timeout.connect(lambda: self._remeasure(outcome))
        outcome.timer = timer
        outcome.watched = [
            getattr(layer.events, name)
            for name in ("paint", "labels_update", "set_data", "data")
            if hasattr(layer.events, name)
        ]
        for emitter in outcome.watched:
            emitter.connect(outcome.on_event)

    def _unwatch(self, layer) -> None:
        outcome = self._outcomes.get(id(layer))
        if outcome is None:
            return
        for emitter in outcome.watched:
            emitter.disconnect(outcome.on_event)
        outcome.watched = []
        if outcome.timer is not None:
            outcome.timer.stop()

    def _remeasure(self, outcome) -> None:
        """Measure again the nuclei whose pixels changed since the last measurement; the count,
        the table and the exports follow."""
        from ..segmentation.measure import measure_nuclei

        layer = outcome.layer
        if layer is None or outcome.snapshot is None or outcome.table is None:
            return
        current = np.asarray(layer.data)
        if current.shape != outcome.snapshot.shape:
            return
        changed = current != outcome.snapshot
        if not changed.any():
            return
        touched = np.union1d(current[changed], outcome.snapshot[changed])
        touched = touched[touched > 0]
        table = {k: np.asarray(v) for k, v in outcome.table.items()}
        keep = ~np.isin(table["label"], touched)
        table = {k: v[keep] for k, v in table.items()}
        mine = np.isin(current, touched)
        if mine.any():
            rows, cols = np.nonzero(mine.any(axis=1))[0], np.nonzero(mine.any(axis=0))[0]
            y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            crop = np.where(mine[y0:y1, x0:x1], current[y0:y1, x0:x1], 0)
            r = outcome.result
            d = r.plan.downsample
            ox, oy = r.plan.origin
            rgb = r.rgb[y0:y1, x0:x1] if r.rgb is not None else None
            new = measure_nuclei(crop, rgb, r.plan.mpp, origin_px=(ox / d + x0, oy / d + y0))
            table = {
                k: np.concatenate([v, np.asarray(new[k]).astype(v.dtype, copy=False)])
                for k, v in table.items()
            }
        order = np.argsort(table["label"], kind="stable")
        outcome.table = {k: v[order] for k, v in table.items()}
        outcome.snapshot = current.copy()
        outcome.edited = True
        n = len(outcome.table["label"])
        tag(layer)["count"] = n
        tag(layer)["edited"] = True
        outcome.changed.update(int(i) for i in touched)  # every nucleus touched so far
        outcome.count_text = (
            f"{n:,} nuclei in view (corrected by hand: {len(outcome.changed)} changed)"
        )
        if outcome is self._last:
            self._show_outcome(outcome)

    # ------------------------------------------------------------------ whole slide
    def _on_run_slide(self, _=None):
        from ..wholeslide import segment_slide
        from ._process import in_subprocess

        ready = self._ready("segmenting the whole slide")
        if ready is None:
            return
        layer, slide, normaliser = ready
        method = self._chosen_method()
        if method is None:
            return
        # In a child process: the interface keeps Python's GIL (see _process). A model with
        # the user's threshold travels as where its card is and the threshold.
        steps = in_subprocess(
            segment_slide,
            slide,
            Path(self._out.value),
            method=method,
            normaliser=normaliser,
        )
        self._refreshed = 0.0
        self._run_layer = layer
        self._slide_progress = None
        self._resumed_note = ""
        self._run_id += 1
        self._live_cache = {}
        self._live_future = None
        self._refreshed = 0.0
        self.jobs.start(
            "Whole slide",
            _then_read_table(steps),
            on_progress=lambda p: self._on_slide_progress(slide, p),
            on_done=lambda table: self._on_slide_done(slide, table),
            on_cancelled=lambda: self._on_slide_cancelled(slide),
            on_error=self._on_slide_error,
            cancelled_note="finished tiles are kept: run it again to go on from there",
        )

    def _on_slide_progress(self, slide, p) -> None:
        """The count, and the nuclei found so far on screen, while the job runs.

        What the store holds so far is gathered in a background thread (records and chunks read
        from disk); napari then draws it on this thread, colour-mapping every pixel drawn, so
        the labels are redrawn every REFRESH_S seconds when little is drawn (zoomed in), less
        often the more is drawn (zoomed out).
        """
        import time

        if self._slide_progress is None and p.resumed:
            self._resumed_note = f"resuming: {p.resumed} of {p.total} tiles already done · "
        self._slide_progress = p
        segmented = max(p.done, getattr(p, "segmented", p.done))
        self._count.value = (
            f"{self._resumed_note}{p.nuclei:,} nuclei so far ({segmented}/{p.total} tiles)"
        )
        now = time.perf_counter()
        if self._live_future is not None:
            return
        existing = find_layers(self.viewer, "nuclei", slide=str(slide.path), scope="slide")
        layer = existing[0] if existing else None
        if layer is not None and tag(layer).get("store") == str(p.store):
            drawn = _drawn_pixels(self.viewer, self._run_layer, layer.level_shapes)
            wait = min(REFRESH_MAX_S, REFRESH_S * max(1.0, drawn / LIVE_MAX_PX))
            if now - self._refreshed < wait or not layer.visible:
                return
        elif now - self._refreshed < REFRESH_S:
            return
        if p.segmented == 0 and p.done == 0:  # nothing to show yet
            return
        self._refreshed = now
        run = self._run_id
        outlines = self._style_kwargs()["contour"] > 0
        self._gather(
            p.store,
            False,
            lambda got: self._show_so_far(slide, p.store, run, got, outlines),
            outlines,
        )

    def _gather(self, store, count: bool, then, outlines: bool = False) -> None:
        """Read what ``store`` holds so far in a background thread, then ``then(result)`` here."""
        from concurrent.futures import ThreadPoolExecutor

        from qtpy.QtCore import QTimer

        from ..layers import slide_labels_so_far

        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="nucleiseg-live")
        cache = self._live_cache.setdefault(outlines, {})
        future = self._pool.submit(slide_labels_so_far, store, count, cache, outlines)
        self._live_future = future
        timer = QTimer(self.native)
        timer.setInterval(50)

        def check():
            if not future.done():
                return
            timer.stop()
            timer.deleteLater()
            if self._live_future is future:
                self._live_future = None
            try:
                result = future.result()
            except Exception as exc:  # a record being written: the next refresh reads it
                self._set_status(f"Could not read the nuclei found so far: {exc}")
                return
            then(result)

        timer.timeout.connect(check)
        timer.start()

    def _show_so_far(self, slide, store, run, got, outlines: bool) -> None:
        """The nuclei found so far, drawn as outlines computed in the background (napari's own
        ``contour`` is restored when the run ends)."""
        from ..layers import labels_layer

        if run != self._run_id or not self.jobs.running:  # the run is over: its end shows
            return
        if not self._is_open(slide):
            return
        levels, _, _ = got
        layer = self._show_slide_layer(
            slide,
            labels_layer(
                slide,
                levels,
                name="nuclei (whole slide)",
                kind="nuclei",
                scope="slide",
                store=str(store),
            ),
        )
        if outlines and layer.contour:
            layer.contour = 0

    def _is_open(self, slide) -> bool:
        return any(
            tag(lyr).get("path") == str(slide.path) for lyr in find_layers(self.viewer, "slide")
        )

    def _show_slide_layer(self, slide, layer_tuple):
        """Add or update the whole-slide layer. Adding one costs napari a few tenths of a second
        (its visuals and controls): added hidden, drawn on the next turn of the event loop, two
        short pauses, not one (``layer_added``: when they were, for the latency test)."""
        import time

        from qtpy.QtCore import QTimer

        new = not find_layers(self.viewer, "nuclei", slide=str(slide.path), scope="slide")
        if new:
            layer_tuple[1]["visible"] = False
        start = time.perf_counter()
        active = self.viewer.layers.selection.active
        layer = self._put_nuclei(layer_tuple, slide, "slide")
        if new and active is not None and active in self.viewer.layers:
            # Not for painting (napari cannot paint on it): the layer the user had stays selected.
            self.viewer.layers.selection.active = active
        if new:

            def show():
                layer.visible = True
                self.layer_added.append((start, time.perf_counter()))

            QTimer.singleShot(0, show)
        return layer

    def _end_live(self, layer) -> None:
        """The run is over: the layer holds whole nuclei again, drawn in the panel's style."""
        self._run_id += 1  # a refresh still being gathered is dropped
        layer.contour = self._style_kwargs()["contour"]

    def _on_slide_cancelled(self, slide) -> None:
        """Show the nuclei of the tiles finished before Cancel, and say how many they are."""
        p = self._slide_progress
        if p is None:
            self._set_status("Whole slide: cancelled before any tile was finished.")
            return
        self._set_status("Whole slide: cancelled; gathering the nuclei of the finished tiles…")
        self._gather(p.store, True, lambda got: self._show_cancelled(slide, p, got))

    def _show_cancelled(self, slide, p, got) -> None:
        from ..layers import labels_layer
        from ..wholeslide.store import StoreMismatchError, read_attrs

        levels, tiles, nuclei = got
        if not self._is_open(slide):  # closed meanwhile (or the viewer): nothing to draw on
            return
        try:
            made_by = read_attrs(p.store).get("nucleiseg", {}).get("identity", {}).get("method")
        except (StoreMismatchError, AttributeError):  # the store's to heal when it resumes
            made_by = None
        layer_tuple = labels_layer(
            slide,
            levels,
            name="nuclei (whole slide)",
            kind="nuclei",
            scope="slide",
            store=str(p.store),
            method=made_by,
        )
        self._end_live(self._show_slide_layer(slide, layer_tuple))
        self._count.value = (
            f"{nuclei:,} nuclei in {tiles}/{p.total} tiles (unfinished: the table and the "
            "exports come when the run is complete)"
        )
        if tiles >= p.total:  # a small slide: its last tiles ended before Cancel took effect
            self._set_status(
                f"Whole slide: all {p.total} tiles had finished when Cancel took effect; "
                f"{nuclei:,} nuclei are kept and shown. Run it again to write the table and "
                "the exports (nothing is segmented again)."
            )
            return
        self._set_status(
            f"Whole slide: cancelled after {tiles}/{p.total} tiles; {nuclei:,} nuclei in the "
            "finished tiles are kept and shown. Run it again to go on from there."
        )

    def _on_slide_done(self, slide, outcome_pair) -> None:
        from ..layers import labels_display_pyramid, labels_layer
        from ..wholeslide import open_labels

        store, table = outcome_pair
        if not self._is_open(slide):  # closed while it ran: nothing to draw on
            self._run_id += 1  # a refresh still being gathered is dropped
            for live in find_layers(self.viewer, "nuclei", slide=str(slide.path), scope="slide"):
                self._end_live(live)  # drawn before the close: whole nuclei, the panel's style
            self._set_status(
                f"Whole slide: {slide.path.name} finished ({len(table['label']):,} nuclei, "
                f"results in {Path(store).parent}); its layer was closed, so nothing is shown. "
                "Open the slide and segment it again to see them (nothing is computed again)."
            )
            return
        levels, _, meta = open_labels(store)  # reopened: the coarse levels are now filled
        levels = labels_display_pyramid(levels)
        layer_tuple = labels_layer(
            slide,
            levels,
            name="nuclei (whole slide)",
            kind="nuclei",
            scope="slide",
            store=str(store),
            method=meta.get("identity", {}).get("method"),  # what made it, as a view records
        )
        layer = self._show_slide_layer(slide, layer_tuple)
        self._end_live(layer)
        n = len(table["label"])
        outcome = _Outcome("slide", slide, store=Path(store), table=table, layer=layer)
        outcome.count_text = f"{n:,} nuclei in the whole slide (results in {Path(store).parent})"
        self._register(outcome)
        self._check_scale(slide, table)

    def _on_slide_error(self, exc) -> None:
        from napari.utils.notifications import show_error

        text = in_user_words(exc)
        hint = (
            " Choose another results folder in the Nuclei panel."
            if getattr(exc, "kind", "") == "StoreMismatchError" and "results folder" not in text
            else ""
        )
        self._set_status(f"Whole slide: not run. {text}{hint}")
        show_error(f"{text}{hint}")

    def _centre_on(self, row: dict) -> None:
        """Centre the view on a nucleus picked in the table (centroids are from the slide's
        edge)."""
        layer = self._layer.value
        if layer is None:
            return
        mpp = tag(layer).get("mpp") or 1.0
        y, x = row["centroid_y_um"] / mpp - 0.5, row["centroid_x_um"] / mpp - 0.5
        self.viewer.scene.camera.center = tuple(layer.data_to_world((y, x)))

    # ------------------------------------------------------------------ exports
    def _ask_save_path(self, title: str, default: Path, file_filter: str) -> Path | None:
        """Where to save (a Save-as dialog opened on ``default``), None when cancelled (the
        user's choice; tests replace this method)."""
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(
            self.native,
            title,
            str(default),
            file_filter,
            options=QFileDialog.Option.DontConfirmOverwrite,  # asked below, for folders too
        )
        return Path(path) if path else None

    def _ask_overwrite(self, path: Path) -> bool:
        """Whether to replace an existing file (the user's choice; tests replace this)."""
        from qtpy.QtWidgets import QMessageBox

        answer = QMessageBox.question(
            self.native,
            "Replace the file?",
            f"{path.name} already exists in {path.parent}. Replace it?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    def _export_target(self, what: str, suffix: str, file_filter: str) -> Path | None:
        """Where an export of the chosen result goes, asked in a Save-as dialog that offers
        ``<results folder>/<slide> view <x>,<y> µm<suffix>`` (or ``<slide> nuclei<suffix>``)."""
        from napari.utils.notifications import show_error

        outcome = self._last
        if outcome is None:
            show_error("Nothing to save yet: segment the view or the whole slide first.")
            return None
        if outcome.table is None:
            show_error("The view's measurements are still being computed: save in a moment.")
            return None
        out = Path(self._out.value)
        out.mkdir(parents=True, exist_ok=True)
        stem = outcome.slide.path.name.split(".")[0]
        if outcome.scope == "slide":
            name = f"{stem} nuclei{suffix}"
        else:
            x0, y0, *_ = outcome.result.plan.box
            mpp = outcome.slide.mpp
            edited = " edited" if outcome.edited else ""
            name = f"{stem} view {round(x0 * mpp)},{round(y0 * mpp)} µm{edited}{suffix}"
        path = self._ask_save_path(f"Save {what}", out / name, file_filter)
        if path is None:
            return None
        if path.suffix.lower() != suffix:
            path = path.with_name(path.name + suffix)
        if path.exists() and not self._ask_overwrite(path):
            return None
        return path

    def _exported(self, path: Path, n: int) -> Path:
        self._set_status(f"Saved {n:,} nuclei to {path}")
        return path

    def _view_now(self):
        """The chosen view result as it is on screen now: ``(labels, result, table)``, the table
        holding exactly the nuclei the labels hold."""
        from dataclasses import replace

        outcome = self._last
        if outcome.timer is not None and outcome.timer.isActive():  # an edit not measured yet
            outcome.timer.stop()
            self._remeasure(outcome)
        labels = np.asarray(outcome.layer.data) if outcome.layer is not None else None
        if labels is None or labels.shape != outcome.result.labels.shape:
            labels = outcome.result.labels
        present = np.unique(labels)
        table = outcome.table
        keep = np.isin(table["label"], present[present > 0])
        table = {k: np.asarray(v)[keep] for k, v in table.items()}
        return labels, replace(outcome.result, labels=labels), table

    def _on_export_labels(self, _=None) -> Path | None:
        from ..segmentation.region import write_labels_zarr

        path = self._export_target("the labels", ".zarr", "OME-Zarr (*.zarr)")
        if path is None:
            return None
        outcome = self._last
        if outcome.scope == "slide":
            return self._exported(_copy_tree(outcome.store, path), len(outcome.table["label"]))
        labels, r, table = self._view_now()
        write_labels_zarr(
            labels, path, r.plan.mpp, r.plan.origin, r.plan.downsample, outcome.slide.mpp
        )
        if outcome.layer is not None:  # the corrected labels are in a file now
            mark(outcome.layer, False)
        return self._exported(path, len(table["label"]))

    def _on_export_geojson(self, _=None) -> Path | None:
        from ..wholeslide import export_geojson

        path = self._export_target("the outlines", ".geojson", "GeoJSON (*.geojson)")
        if path is None:
            return None
        outcome = self._last
        if outcome.scope == "slide":
            export_geojson(outcome.store, path)
            return self._exported(path, len(outcome.table["label"]))
        _, r, table = self._view_now()
        labels0, offset = r.labels_level0()
        # Measurements in the table's order and only for nuclei on screen: no empty outlines.
        export_geojson(labels0, path, outcome.slide.mpp, offset=offset, table=table)
        if outcome.layer is not None:  # the corrected outlines are in a file now
            mark(outcome.layer, False)
        return self._exported(path, len(table["label"]))

    def _on_export_csv(self, _=None) -> Path | None:
        from ..wholeslide import write_table

        path = self._export_target("the measurements", ".csv", "CSV (*.csv)")
        if path is None:
            return None
        table = self._view_now()[2] if self._last.scope != "slide" else self._last.table
        write_table(table, path)
        return self._exported(path, len(table["label"]))


class _Outcome:
    """A result the table and exports refer to: its layer, and for a view its labels as last
    measured (``snapshot``), to find what an edit changed."""

    def __init__(self, scope, slide, result=None, store=None, table=None, layer=None):
        self.scope, self.slide, self.result, self.store, self.table = (
            scope,
            slide,
            result,
            store,
            table,
        )
        self.layer = layer
        self.count_text = ""
        self.snapshot = None
        self.edited = False
        #: Ids of the nuclei edits have touched (erased, painted, merged, split).
        self.changed: set[int] = set()
        self.timer = None
        self.watched: list = []

    def on_event(self, _event=None) -> None:
        if self.timer is not None:
            self.timer.start()  # restarts: measured once the stroke is over


def _scale_bar_on(viewer) -> None:
    """The scale bar (in µm) shown whenever the plugin's panels open (and pop-ups tidied)."""
    from ._layers import tidy_notifications
    from ._start import _scale_bar

    tidy_notifications()
    try:
        _scale_bar(viewer).visible = True
    except AttributeError:  # a viewer without a canvas (headless tests)
        pass


def _copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    if Path(src).resolve() != Path(dst).resolve():
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
    return dst


def _drawn_pixels(viewer, slide_layer, level_shapes) -> float:
    """About how many pixels napari draws for a multiscale layer over ``slide_layer`` at the
    current zoom: the visible part of the finest level it needs (it never upsamples)."""
    from ._view import canvas_size, visible_box

    x0, y0, x1, y1 = visible_box(viewer, slide_layer)
    h0, w0 = level_shapes[0][:2]
    w, h = max(0.0, min(x1, w0) - max(x0, 0)), max(0.0, min(y1, h0) - max(y0, 0))
    rows, cols = canvas_size(viewer)
    need = min((y1 - y0) / max(rows, 1), (x1 - x0) / max(cols, 1))  # level-0 px per screen px
    down = 1.0
    for shape in level_shapes:
        d = h0 / shape[0]
        if d <= need * 1.001:
            down = d
    return w * h / (down * down)


def _warm_up(method, ended, project=None) -> None:
    import importlib

    from ..methods import get_method
    from ..segmentation.region import warm_up

    try:
        # napari's first labels layer imports pandas (for label features): a second, once.
        importlib.import_module("pandas")
        warm_up(get_method(method, project=project))
    except Exception:  # noqa: BLE001 (a failed load is not kept: the run that needs it says why)
        pass
    finally:
        ended()


def _store_parquet(store) -> Path:
    """The table written beside a whole-slide result store (``x.nuclei.zarr`` →
    ``x.nuclei.parquet``)."""
    return Path(store).with_suffix(".parquet")


def _then_read_table(steps):
    """Pass a whole-slide job's progress on; when it has finished, read its table (in the worker
    thread: a million nuclei take a second) and return ``(store, table)``."""
    from ._jobs import then_in_worker

    def read(last):
        from ..wholeslide import read_table

        return last.store, read_table(_store_parquet(last.store))

    return then_in_worker(steps, read)


def _then_measure(steps):
    """Yield the tiles' progress, then the labels (shown at once), then return the measurements."""
    result = yield from steps
    yield result
    return result, result.measure()
