"""Slide dock widget: open a slide, see its levels and µm/px, override µm/px, show tissue.

Each callback is a line or two into the core; anything that reads pixels runs in a worker thread.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, Label, PushButton

from ._layers import find_layers, put_layer, tag


class SlideWidget(Container):
    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self._file = FileEdit(
            label="slide",
            mode="r",
            filter="Slides (*.svs *.tif *.tiff *.ndpi *.mrxs *.scn *.bif *.dcm *.vms *.svslide);;All files (*)",
        )
        self._open = PushButton(text="Open slide")
        self._layer = ComboBox(label="slide layer", choices=self._slide_layer_choices)
        self._info = Label(value="No slide open.")
        self._mpp = FloatSpinBox(label="µm/px override", min=0.0, max=100.0, step=0.0001, value=0.0)
        self._apply_mpp = PushButton(text="Apply µm/px")
        self._tissue = PushButton(text="Show tissue mask")
        self._status = Label(value="")
        self.extend(
            [
                self._file,
                self._open,
                self._layer,
                self._info,
                self._mpp,
                self._apply_mpp,
                self._tissue,
                self._status,
            ]
        )
        self._open.changed.connect(self._on_open)
        self._layer.changed.connect(self._show_info)
        self._apply_mpp.changed.connect(self._on_apply_mpp)
        self._tissue.changed.connect(self._on_tissue)
        self.viewer.layers.events.inserted.connect(self._refresh)
        self.viewer.layers.events.removed.connect(self._refresh)
        self._refresh()

    # ------------------------------------------------------------- state
    def _slide_layer_choices(self, _=None):
        return [(lyr.name, lyr) for lyr in find_layers(self.viewer, "slide")]

    def _refresh(self, _=None):
        self._layer.reset_choices()
        self._show_info()

    def _current_slide(self):
        """The selected slide layer and its slide, or (layer, None) after telling the user why not."""
        from napari.utils.notifications import show_error

        from ..io import SlideError, open_slide

        layer = self._layer.value
        if layer is None:
            return None, None
        meta = tag(layer)
        override = meta["mpp"] if meta.get("mpp_source") == "override" else None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return layer, open_slide(meta["path"], mpp=override, backend=meta.get("backend"))
        except SlideError as exc:
            show_error(str(exc))
            return layer, None

    def _show_info(self, _=None):
        layer = self._layer.value
        if layer is None:
            self._info.value = "No slide open: open a file, or File > Open Sample > Demo H&E slide."
            return
        m = tag(layer)
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

        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                slide = open_slide(self._file.value)
        except SlideError as exc:
            show_error(str(exc))
            return
        for w in caught:
            show_warning(str(w.message))
        put_layer(self.viewer, slide_layer(slide))

    def _on_apply_mpp(self, _=None):
        from napari.utils.notifications import show_error

        from ..io import SlideError, open_slide
        from ..layers import slide_layer

        layer = self._layer.value
        if layer is None:
            show_error("No slide open: open a slide before setting its µm/px.")
            return
        if self._mpp.value <= 0:
            show_error("Enter a µm/px above 0 (e.g. 0.25 for 40x, 0.5 for 20x).")
            return
        meta = tag(layer)
        try:
            slide = open_slide(meta["path"], mpp=self._mpp.value, backend=meta.get("backend"))
        except SlideError as exc:
            show_error(str(exc))
            return
        ratio = self._mpp.value / (meta["mpp"] or 1.0)
        _, kwargs, _ = slide_layer(slide)
        layer.scale, layer.translate = kwargs["scale"], kwargs["translate"]
        layer.units = kwargs["units"]
        layer.metadata = kwargs["metadata"]
        # Everything drawn over this slide (tissue, nuclei, ground truth) scales with it.
        for other in self.viewer.layers:
            if other is not layer and tag(other).get("slide") == meta["path"]:
                other.scale = [v * ratio for v in other.scale]
                other.translate = [v * ratio for v in other.translate]
                other.units = kwargs["units"]
        self._show_info()

    def _on_tissue(self, _=None):
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_error

        from ..layers import tissue_layer
        from ..tissue import tissue_mask

        layer, slide = self._current_slide()
        if layer is None:
            show_error("No slide open: open a slide before computing its tissue mask.")
            return
        if slide is None:  # the file could not be re-opened; the user has been told why
            return
        self._status.value = "Computing tissue mask…"
        worker = create_worker(
            lambda: tissue_layer(slide, tissue_mask(slide), name=f"tissue ({layer.name})")
        )
        worker.returned.connect(self._on_tissue_done)
        worker.errored.connect(
            lambda exc: (show_error(str(exc)), setattr(self._status, "value", ""))
        )
        worker.start()
        self._worker = worker

    def _on_tissue_done(self, layer_tuple):
        put_layer(
            self.viewer,
            layer_tuple,
            "tissue",
            slide=layer_tuple[1]["metadata"]["nucleiseg"]["slide"],
        )
        frac = layer_tuple[1]["metadata"]["nucleiseg"]["fraction"]
        self._status.value = f"Tissue: {100 * frac:.1f} % of the slide"
