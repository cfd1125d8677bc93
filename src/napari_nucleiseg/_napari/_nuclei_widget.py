"""Nuclei dock widget: segment what is on screen (or the whole slide), count, measure, export.

Each callback is a line or two into the core (``segmentation.region`` for the view); the work
runs in a background worker (``_jobs.JobRunner``) with a progress bar, an ETA and Cancel.
"""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton

from ._jobs import JobRunner
from ._layers import find_layers, open_layer_slide, put_layer, slide_layers, tag


def _methods() -> list[str]:
    from ..models import list_models
    from ..segmentation.api import CLASSICAL

    return [*list_models(), *CLASSICAL]


class NucleiWidget(Container):
    def __init__(self, napari_viewer):
        from ..models import DEFAULT_NUCLEI_MODEL

        super().__init__(labels=True)
        self.viewer = napari_viewer
        self._layer = ComboBox(label="slide layer", choices=self._slide_choices)
        self._method = ComboBox(label="method", choices=_methods(), value=DEFAULT_NUCLEI_MODEL)
        self._run_view = PushButton(text="Segment current view")
        self._cancel = PushButton(text="Cancel")
        self._status = Label(value="")
        self._count = Label(value="")
        self._out = FileEdit(label="export folder", mode="d", value=Path.home() / "nucleiseg-results")
        self._export_csv = PushButton(text="Export measurements (CSV)")
        self.extend([self._layer, self._method, self._run_view, self._cancel, self._status,
                     self._count, self._out, self._export_csv])
        from ._table import MeasurementsView

        self.table = MeasurementsView()
        self.native.layout().addWidget(self.table)
        self.table.nucleus_chosen.connect(self._centre_on)

        self.jobs = JobRunner(self._set_status, self._cancel)
        self._result = None  # the last current-view result (RegionResult) and its table
        self._table = None
        self._run_view.changed.connect(self._on_run_view)
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
            show_error(f"No slide open: open a slide (File > Open, or the Slide panel) before {what}.")
            return None, None
        if tag(layer).get("mpp") is None:
            show_error(f"{Path(tag(layer)['path']).name}: the slide states no µm/px; set it in the Slide "
                       f"panel before {what}.")
            return None, None
        slide = open_layer_slide(layer)
        return (layer, slide) if slide is not None else (None, None)

    # ------------------------------------------------------------------ current view
    def _on_run_view(self, _=None):
        from napari.utils.notifications import show_warning

        from ..segmentation.region import segment_region
        from ._view import visible_box

        if self.jobs.running:
            show_warning(self.jobs.busy_message())
            return
        layer, slide = self._slide("segmenting the view")
        if slide is None:
            return
        steps = segment_region(slide, visible_box(self.viewer, layer), self._method.value)
        self.jobs.start("Nuclei in view", _then_measure(steps),
                        on_item=lambda result: self._show_view_labels(slide, result),
                        on_done=self._show_table, on_error=self._on_view_error,
                        cancelled_note="the view's labels were not shown")

    def _show_view_labels(self, slide, result) -> None:
        from ..layers import region_labels_layer

        plan = result.plan
        slide_path = str(slide.path)
        layer_tuple = region_labels_layer(
            slide, result.labels, plan.origin, plan.downsample, name="nuclei (view)", kind="nuclei",
            scope="view", box=list(plan.box), mpp=plan.mpp, level=plan.level, count=result.count,
            method=result.method,
        )
        new = put_layer(self.viewer, layer_tuple, "nuclei", slide=slide_path, scope="view")
        new.contour = 1
        self._result = result
        self._result_slide = slide
        self._count.value = f"{result.count} nuclei in view (segmented at {plan.mpp:.3g} µm/px)"

    def _show_table(self, table) -> None:
        self._table = table
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
        from napari.utils.notifications import show_warning

        show_warning(message)

    def _centre_on(self, row: dict) -> None:
        """Centre the view on a nucleus picked in the table (centroids are from the slide's edge)."""
        layer = self._layer.value
        if layer is None:
            return
        mpp = tag(layer).get("mpp") or 1.0
        y, x = row["centroid_y_um"] / mpp - 0.5, row["centroid_x_um"] / mpp - 0.5
        self.viewer.scene.camera.center = tuple(layer.data_to_world((y, x)))

    # ------------------------------------------------------------------ exports
    def _export_stem(self) -> Path | None:
        from napari.utils.notifications import show_error

        if self._result is None:
            show_error("Nothing to export yet: segment the view (or the whole slide) first.")
            return None
        out = Path(self._out.value)
        out.mkdir(parents=True, exist_ok=True)
        x0, y0, *_ = self._result.plan.box
        return out / f"{self._result_slide.path.stem}.view_x{x0}_y{y0}"

    def _on_export_csv(self, _=None) -> Path | None:
        from ..segmentation.measure import write_csv

        stem = self._export_stem()
        if stem is None or self._table is None:
            return None
        path = stem.with_name(stem.name + ".nuclei.csv")
        write_csv(self._table, path)
        self._set_status(f"Measurements written to {path}")
        return path


def _warm_up(method) -> None:
    import importlib

    from ..segmentation.region import warm_up

    # napari's first labels layer imports pandas (for label features): about a second, once.
    importlib.import_module("pandas")
    warm_up(method)


def _then_measure(steps):
    """Yield the tiles' progress, then the labels (shown at once), then return the measurements."""
    result = yield from steps
    yield result
    return result.measure()

