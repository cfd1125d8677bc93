"""Slide dock widget: open a slide, see its levels and µm/px, override µm/px, show tissue.

Each callback is a line or two into the core; anything that reads pixels runs in the background
(``_jobs.JobRunner``: status line, progress, Cancel).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from magicgui.widgets import Container, FloatSpinBox, Label, PushButton

from ._jobs import JobRunner
from ._layers import (
    MPP_APPLIED,
    build_form,
    deleted,
    find_layers,
    in_user_words,
    open_layer_slide,
    path_field,
    put_layer,
    slide_layer_box,
    tag,
    unproxied,
)

SLIDE_FILTER = (
    "Slides (*.svs *.tif *.tiff *.ndpi *.mrxs *.scn *.bif *.dcm *.vms *.svslide);;All files (*)"
)
#: What the µm/px override box shows at 0: no override, the file's own µm/px.
FROM_FILE = "from the file"


class SlideWidget(Container):
    def __init__(self, napari_viewer):
        super().__init__(labels=False)
        self.viewer = napari_viewer = unproxied(napari_viewer)
        self._file = path_field(label="slide", mode="r", filter=SLIDE_FILTER)
        self._open = PushButton(text="Open slide")
        self._layer = slide_layer_box(self._slide_layer_choices, napari_viewer)
        self._info = Label(value="No slide open.")
        self._mpp = FloatSpinBox(
            label="µm/px override",
            min=0.0,
            max=100.0,
            step=0.0001,
            value=0.0,
            tooltip="The slide's µm/px when its file states none or a wrong one. "
            "0 (shown as 'from the file') means no override: Apply goes back to the file's.",
        )
        self._mpp.native.setSpecialValueText(FROM_FILE)
        self._apply_mpp = PushButton(text="Apply µm/px")
        self._tissue = PushButton(text="Show tissue mask")
        self._cancel = PushButton(text="Cancel")
        self._status = Label(value="")
        # Buttons and messages span the panel (build_form); long paths wrap, not widen the dock.
        self._form, self._rows = build_form(
            self,
            [
                self._file,
                self._open,
                self._layer,
                self._info,
                self._mpp,
                self._apply_mpp,
                self._tissue,
                self._cancel,
                self._status,
            ],
            min_width=270,
        )
        from qtpy.QtWidgets import QProgressBar

        self.native.setMinimumHeight(100)  # stacked with four other docks: still usable
        self.progress = QProgressBar()
        layout = self._form.native.layout()
        layout.insertWidget(layout.indexOf(self._status.native) + 1, self.progress)
        self.jobs = JobRunner(self._set_status, self._cancel, bar=self.progress)
        self._open.changed.connect(self._on_open)
        self._layer.changed.connect(self._show_info)
        self._apply_mpp.changed.connect(self._on_apply_mpp)
        self._tissue.changed.connect(self._on_tissue)
        MPP_APPLIED.connect(self._on_mpp_applied)
        self.viewer.layers.events.inserted.connect(self._on_inserted)
        self.viewer.layers.events.removed.connect(self._refresh)
        self._refresh()
        from ._nuclei_widget import _scale_bar_on

        _scale_bar_on(self.viewer)

    def reset_choices(self, *_):
        """napari calls this when layers change; the choices live in the form."""
        self._form.reset_choices()

    # ------------------------------------------------------------- state
    def _slide_layer_choices(self, _=None):
        return [(lyr.name, lyr) for lyr in find_layers(self.viewer, "slide")]

    def _refresh(self, _=None):
        self._layer.reset_choices()
        self._show_info()

    def _on_inserted(self, event=None):
        """(A slide just opened is already the panel's slide: ``slide_layer_box``.)"""
        self._layer.reset_choices()
        self._show_info()

    def _on_mpp_applied(self, layer) -> None:
        """Another panel set a slide's µm/px: show it if it is this panel's slide."""
        if deleted(self.native):  # this panel was closed
            MPP_APPLIED.disconnect(self._on_mpp_applied)
        elif layer is self._layer.value:
            self._show_info()

    def _set_status(self, text: str) -> None:
        self._status.value = text

    def _show_info(self, _=None):
        """The selected slide: its file in the path field, its µm/px override (0: none) and its
        format, µm/px and levels."""
        layer = self._layer.value
        if layer is None:
            self._info.value = "No slide open: open a file, or File > Open Sample > Demo H&E slide."
            return
        m = tag(layer)
        self._file.value = m["path"]
        self._mpp.value = m["mpp"] if m.get("mpp_source") == "override" else 0.0
        mpp = (
            "unknown — set an override"
            if m.get("mpp") is None
            else f"{m['mpp']:.4g} µm/px ({m['mpp_source']})"
        )
        levels = "\n".join(
            f"  {i}: {w} x {h} px (x{d:.3g})"
            for i, ((h, w), d) in enumerate(zip(m["level_shapes"], m["level_downsamples"]))
        )
        self._info.value = f"{Path(m['path']).name}  [{m['format']}]\n{mpp}\nlevels:\n{levels}"

    # ------------------------------------------------------------- actions
    def _on_open(self, _=None):
        from napari.utils.notifications import show_error, show_warning

        from ..io import SlideError, open_slide
        from ..layers import slide_layer

        path = Path(self._file.value)
        if (
            not str(self._file.value).strip()
            or path == Path(".")
            or path.is_dir()
            and not (path.suffix.lower() == ".zarr")
        ):
            show_error("Choose a slide file first (the … button next to 'slide').")
            return
        from ..io.output import same_file

        for layer in find_layers(self.viewer, "slide"):
            if same_file(tag(layer)["path"], path):  # the field shows the open slide's file
                self._layer.value = layer
                self.viewer.layers.selection.active = layer
                self._set_status(f"{path.name} is already open; it is this panel's slide.")
                return
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                slide = open_slide(path)
        except SlideError as exc:
            show_error(in_user_words(exc))
            return
        for w in caught:
            show_warning(in_user_words(w.message))
        put_layer(self.viewer, slide_layer(slide))

    def _on_apply_mpp(self, _=None):
        """Apply the override to the slide and everything drawn over it; 0 goes back to the
        file's own µm/px."""
        from napari.utils.notifications import show_error

        from ._layers import apply_mpp

        layer = self._layer.value
        if layer is None:
            show_error("No slide open: open a slide before setting its µm/px.")
            return
        problem = apply_mpp(self.viewer, layer, self._mpp.value if self._mpp.value > 0 else None)
        if problem:
            show_error(problem)
            return
        self._show_info()

    def _on_tissue(self, _=None):
        from napari.utils.notifications import show_error, show_warning

        if self.jobs.running:
            show_warning(self.jobs.busy_message())
            return
        layer = self._layer.value
        if layer is None:
            show_error("No slide open: open a slide before computing its tissue mask.")
            return
        slide = open_layer_slide(layer)
        if slide is None:  # the file could not be re-opened; the user has been told why
            return
        self.jobs.start(
            "Tissue mask",
            _tissue(slide, f"tissue ({layer.name})"),
            on_done=self._on_tissue_done,
        )

    def _on_tissue_done(self, layer_tuple):
        """The mask as an outline over the slide, and the slide selected again: the mask is
        for looking at, not for painting (napari would arm its paint tools on it)."""
        meta = layer_tuple[1]["metadata"]["nucleiseg"]
        from ..layers import TISSUE_CONTOUR

        layer = put_layer(self.viewer, layer_tuple, "tissue", slide=meta["slide"])
        layer.contour = TISSUE_CONTOUR
        layer.mode = "pan_zoom"
        slide = self._layer.value
        if slide is not None and slide in self.viewer.layers:
            self.viewer.layers.selection.active = slide
        self._set_status(
            f"Tissue: {100 * meta['fraction']:.1f} % of the slide (outlined in green)."
        )


def _tissue(slide, name: str):
    from ..layers import tissue_layer
    from ..tissue import tissue_mask

    yield 0, 1
    layer_tuple = tissue_layer(slide, tissue_mask(slide), name=name)
    yield 1, 1
    return layer_tuple
