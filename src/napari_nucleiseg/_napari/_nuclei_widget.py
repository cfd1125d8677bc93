"""Nuclei dock widget: segment what is on screen (or the whole slide), count, measure, export.

Each callback is a line or two into the core (``segmentation.region`` for the view,
``wholeslide.segment_slide`` for the slide); the work runs in a background worker
(``_jobs.JobRunner``) with a progress bar, an ETA and Cancel. Whole-slide labels are shown from
the job's chunked result store as a lazy multiscale layer, refreshed while the job runs, so they
never sit in memory at full resolution.
"""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton

from ._jobs import JobRunner
from ._layers import find_layers, open_layer_slide, put_layer, slide_layers, tag


def _methods(_widget=None) -> list[str]:
    """Every nuclei method the registry knows, asked afresh whenever napari resets the panel's
    choices (a model trained or registered meanwhile appears without a restart)."""
    from ..methods import method_names

    return method_names("nuclei")


#: Seconds between redraws of the whole-slide labels while the job runs.
REFRESH_S = 3.0
#: Largest part of the whole-slide labels (pixels napari would draw) redrawn while the job runs.
#: A 2 MP redraw under software OpenGL blocked the event loop for ~360 ms in CI; 0.5 MP (a
#: zoomed-in screen, where nuclei are looked at) stays well under the 200 ms the issue allows.
LIVE_MAX_PX = 500_000


class NucleiWidget(Container):
    def __init__(self, napari_viewer):
        from ..methods import default_method_name

        super().__init__(labels=True)
        self.viewer = napari_viewer
        self._layer = ComboBox(label="slide layer", choices=self._slide_choices)
        self._method = ComboBox(label="method", choices=_methods, value=default_method_name())
        self._normalise = CheckBox(
            text="normalise stain first (as in the Stain panel)", value=False
        )
        self._out = FileEdit(
            label="results folder", mode="d", value=Path.home() / "nucleiseg-results"
        )
        self._run_view = PushButton(text="Segment current view")
        self._run_slide = PushButton(text="Segment whole slide")
        self._cancel = PushButton(text="Cancel")
        self._status = Label(value="")
        self._count = Label(value="")
        self._export_labels = PushButton(text="Export labels (OME-Zarr)")
        self._export_geojson = PushButton(text="Export outlines (GeoJSON for QuPath)")
        self._export_csv = PushButton(text="Export measurements (CSV)")
        self.extend(
            [
                self._layer,
                self._method,
                self._normalise,
                self._out,
                self._run_view,
                self._run_slide,
                self._cancel,
                self._status,
                self._count,
                self._export_labels,
                self._export_geojson,
                self._export_csv,
            ]
        )
        from ._table import MeasurementsView

        self.table = MeasurementsView()
        self.native.layout().addWidget(self.table)
        for label in (
            self._status,
            self._count,
        ):  # long paths and messages wrap, not widen the dock
            label.native.setWordWrap(True)
        self.native.setMinimumWidth(360)
        self.table.nucleus_chosen.connect(self._centre_on)

        self.jobs = JobRunner(self._set_status, self._cancel)
        self._last = None  # what the table and the exports show: the last finished run
        self._refreshed = 0.0
        self._run_view.changed.connect(self._on_run_view)
        self._run_slide.changed.connect(self._on_run_slide)
        self._export_labels.changed.connect(self._on_export_labels)
        self._export_geojson.changed.connect(self._on_export_geojson)
        self._export_csv.changed.connect(self._on_export_csv)
        self._method.changed.connect(self._warm_up)
        self.viewer.layers.events.inserted.connect(self._refresh)
        self.viewer.layers.events.removed.connect(self._refresh)
        self._warm_up()

    # ------------------------------------------------------------------ state
    def _slide_choices(self, _=None):
        return slide_layers(self.viewer)

    def _refresh(self, _=None):
        self._layer.reset_choices()

    def _set_status(self, text: str) -> None:
        self._status.value = text

    def _warm_up(self, _=None) -> None:
        """Load the model in the background now, so the first click is as fast as the next."""
        import threading

        threading.Thread(target=_warm_up, args=(self._method.value,), daemon=True).start()

    def _slide(self, what: str):
        """The selected slide layer and its opened slide, or (None, None) after saying why."""
        from napari.utils.notifications import show_error

        layer = self._layer.value
        if layer is None:
            show_error(
                f"No slide open: open a slide (File > Open, or the Slide panel) before {what}."
            )
            return None, None
        if tag(layer).get("mpp") is None:
            show_error(
                f"{Path(tag(layer)['path']).name}: the slide states no µm/px; set it in the Slide "
                f"panel before {what}."
            )
            return None, None
        slide = open_layer_slide(layer)
        return (layer, slide) if slide is not None else (None, None)

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

    # ------------------------------------------------------------------ current view
    def _on_run_view(self, _=None):

        from ..segmentation.region import segment_region
        from ._view import visible_box

        ready = self._ready("segmenting the view")
        if ready is None:
            return
        layer, slide, normaliser = ready
        steps = segment_region(
            slide, visible_box(self.viewer, layer), self._method.value, normaliser=normaliser
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
        if self._last is None or self._last.result is not result:
            self._last = _Outcome("view", slide, result=result)
            self.table.set_table(None)
        so_far = " so far (finished tiles)" if result.partial else ""
        self._count.value = (
            f"{result.count} nuclei in view{so_far} (segmented at {plan.mpp:.3g} µm/px)"
        )
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
        new = put_layer(self.viewer, layer_tuple, "nuclei", slide=str(slide.path), scope="view")
        new.contour = 1

    def _show_table(self, slide, outcome) -> None:
        result, table = outcome
        self._last = _Outcome("view", slide, result=result, table=table)
        self.table.set_table(table)

    def _on_view_error(self, exc) -> None:
        from napari.utils.notifications import show_error, show_info, show_warning

        from ..io import SlideError
        from ..segmentation.region import EmptyRegionError, RegionTooLargeError

        if isinstance(exc, RegionTooLargeError):
            self._offer_whole_slide(str(exc))
        elif isinstance(exc, EmptyRegionError):
            show_info(str(exc))
        elif isinstance(exc, SlideError):
            show_error(str(exc))
        else:
            show_warning(f"Segmenting the view failed: {type(exc).__name__}: {exc}")

    def _offer_whole_slide(self, message: str) -> None:
        from napari.utils.notifications import (
            Notification,
            NotificationSeverity,
            notification_manager,
        )

        notification_manager.dispatch(
            Notification(
                message,
                severity=NotificationSeverity.WARNING,
                actions=[("Segment whole slide", lambda _: self._on_run_slide())],
            )
        )

    # ------------------------------------------------------------------ whole slide
    def _on_run_slide(self, _=None):

        from ..wholeslide import segment_slide
        from ._process import in_subprocess

        ready = self._ready("segmenting the whole slide")
        if ready is None:
            return
        layer, slide, normaliser = ready
        # In a child process: the interface keeps Python's GIL (see _process).
        steps = in_subprocess(
            segment_slide,
            slide,
            Path(self._out.value),
            method=self._method.value,
            normaliser=normaliser,
        )
        self._refreshed = 0.0
        self._run_layer = layer
        self.jobs.start(
            "Whole slide",
            _then_read_table(steps),
            on_progress=lambda p: self._on_slide_progress(slide, p),
            on_done=lambda table: self._on_slide_done(slide, table),
            on_error=self._on_slide_error,
            cancelled_note="finished tiles are kept: run it again to go on from there",
        )

    def _on_slide_progress(self, slide, p) -> None:
        """Show the result store while the job runs, where that is cheap.

        napari draws labels on this thread, colour-mapping every pixel of the level it shows; a
        zoomed-out view of a large slide can mean tens of megapixels per redraw. So the layer is
        added, and redrawn every few seconds, only while the part on screen is small (zoomed in,
        where a pathologist looks at nuclei); otherwise it appears when the job has finished.
        """
        import time

        from ..layers import labels_display_pyramid, labels_layer
        from ..wholeslide import open_labels

        self._count.value = f"{p.nuclei} nuclei so far ({p.done}/{p.total} tissue tiles)"
        now = time.perf_counter()
        if now - self._refreshed < REFRESH_S:
            return
        slide_layer = self._run_layer
        existing = find_layers(self.viewer, "nuclei", slide=str(slide.path), scope="slide")
        if existing and existing[0].metadata["nucleiseg"].get("store") == str(p.store):
            layer = existing[0]
            if (
                layer.visible
                and _drawn_pixels(self.viewer, slide_layer, layer.level_shapes) <= LIVE_MAX_PX
            ):
                layer.refresh()
                self._refreshed = now
            return
        levels = labels_display_pyramid(open_labels(p.store)[0])
        if _drawn_pixels(self.viewer, slide_layer, [lv.shape for lv in levels]) > LIVE_MAX_PX:
            return
        from qtpy.QtCore import QTimer

        layer_tuple = labels_layer(
            slide,
            levels,
            name="nuclei (whole slide)",
            kind="nuclei",
            scope="slide",
            store=str(p.store),
        )
        layer_tuple[1]["visible"] = False  # added hidden, drawn on the next turn: two short pauses
        layer = put_layer(self.viewer, layer_tuple, "nuclei", slide=str(slide.path), scope="slide")
        QTimer.singleShot(0, lambda: setattr(layer, "visible", True))
        self._refreshed = now

    def _on_slide_done(self, slide, outcome) -> None:
        from qtpy.QtCore import QTimer

        from ..layers import labels_display_pyramid, labels_layer
        from ..wholeslide import open_labels

        store, table = outcome
        levels, _, meta = open_labels(store)  # reopened: the coarse levels are now filled
        levels = labels_display_pyramid(levels)
        layer_tuple = labels_layer(
            slide,
            levels,
            name="nuclei (whole slide)",
            kind="nuclei",
            scope="slide",
            store=str(store),
            method=meta.get("method"),
        )
        new = not find_layers(self.viewer, "nuclei", slide=str(slide.path), scope="slide")
        if new:  # added hidden, drawn on the next turn of the event loop: two short pauses, not one
            layer_tuple[1]["visible"] = False
        layer = put_layer(self.viewer, layer_tuple, "nuclei", slide=str(slide.path), scope="slide")
        if new:
            QTimer.singleShot(0, lambda: setattr(layer, "visible", True))
        n = len(table["label"])
        self._last = _Outcome("slide", slide, store=Path(store), table=table)
        self._count.value = f"{n} nuclei in the whole slide (results in {Path(store).parent})"
        self.table.set_table(table)

    def _on_slide_error(self, exc) -> None:
        from napari.utils.notifications import show_error

        hint = (
            " (choose another results folder in the Nuclei panel)"
            if getattr(exc, "kind", "") == "StoreMismatchError"
            else ""
        )
        show_error(f"{exc}{hint}")

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
    def _export_target(self, suffix: str) -> Path | None:
        """Where an export of the last result goes:
        ``<results folder>/<slide>[.view_x…_y…]<suffix>``."""
        from napari.utils.notifications import show_error

        if self._last is None:
            show_error("Nothing to export yet: segment the view or the whole slide first.")
            return None
        if self._last.scope == "view" and self._last.table is None:
            show_error("The view's measurements are still being computed: export in a moment.")
            return None
        out = Path(self._out.value)
        out.mkdir(parents=True, exist_ok=True)
        stem = self._last.slide.path.name.split(".")[0]
        if self._last.scope == "view":
            x0, y0, *_ = self._last.result.plan.box
            stem += f".view_x{x0}_y{y0}"
        return out / f"{stem}{suffix}"

    def _exported(self, path: Path) -> Path:
        self._set_status(f"Written {path}")
        return path

    def _on_export_labels(self, _=None) -> Path | None:
        from ..segmentation.region import write_labels_zarr

        path = self._export_target(".nuclei.zarr")
        if path is None:
            return None
        if self._last.scope == "slide":
            return self._exported(_copy_tree(self._last.store, path))
        r = self._last.result
        write_labels_zarr(
            r.labels, path, r.plan.mpp, r.plan.origin, r.plan.downsample, self._last.slide.mpp
        )
        return self._exported(path)

    def _on_export_geojson(self, _=None) -> Path | None:
        from ..wholeslide import export_geojson

        path = self._export_target(".nuclei.geojson")
        if path is None:
            return None
        if self._last.scope == "slide":
            export_geojson(self._last.store, path)
            return self._exported(path)
        r = self._last.result
        labels0, offset = r.labels_level0()
        export_geojson(labels0, path, self._last.slide.mpp, offset=offset, table=self._last.table)
        return self._exported(path)

    def _on_export_csv(self, _=None) -> Path | None:
        from ..wholeslide import write_table

        path = self._export_target(".nuclei.csv")
        if path is None:
            return None
        write_table(self._last.table, path)
        return self._exported(path)


class _Outcome:
    """A finished run the table and exports refer to."""

    def __init__(self, scope, slide, result=None, store=None, table=None):
        self.scope, self.slide, self.result, self.store, self.table = (
            scope,
            slide,
            result,
            store,
            table,
        )


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


def _warm_up(method) -> None:
    import importlib

    from ..segmentation.region import warm_up

    # napari's first labels layer imports pandas (for label features): about a second, once.
    importlib.import_module("pandas")
    warm_up(method)


def _then_read_table(steps):
    """Pass a whole-slide job's progress on; when it has finished, read its table (in the worker
    thread: a million nuclei take a second) and return ``(store, table)``."""
    last = None
    try:
        for last in steps:
            yield last
    finally:
        steps.close()
    if last is None or not last.finished:
        return None
    from ..wholeslide import read_table

    parquet = last.store.parent / f"{last.store.name[: -len('.zarr')]}.parquet"
    return last.store, read_table(parquet)


def _then_measure(steps):
    """Yield the tiles' progress, then the labels (shown at once), then return the measurements."""
    result = yield from steps
    yield result
    return result, result.measure()
