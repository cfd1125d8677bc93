"""The Tissue panel: outline regions with tags, train the project's tissue classifier in the
background, and paint tumour probability and attention over the view or the whole slide.

Thin on purpose: each button calls one core function (``classification.regions``,
``classification.project_training``, ``classification.heatmap``) or starts one job. Outlines are
drawn on a napari Shapes layer with the slide's scale, so their vertices are level-0 pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
)

from ..layers import META_KEY
from ._jobs import JobRunner, then_in_worker
from ._layers import (
    build_form,
    find_layers,
    open_layer_slide,
    path_field,
    slide_layer_box,
    slide_layers,
    tag,
    unproxied,
)

DEFAULT_TAGS = "tumour, normal, other"
#: Outline colours by tag: tumour red, normal green, others from a fixed cycle.
TAG_COLOURS = {"tumour": "#e8423f", "normal": "#39b54a"}
_CYCLE = ("#3f8fe8", "#e8c53f", "#b53fe8", "#3fe8d9", "#e87f3f")
OUTLINES = "tissue-outlines"


def tag_colour(name: str, tags: list[str]) -> str:
    if name in TAG_COLOURS:
        return TAG_COLOURS[name]
    others = [t for t in tags if t not in TAG_COLOURS]
    return _CYCLE[others.index(name) % len(_CYCLE)] if name in others else "#cccccc"


class TissueWidget(Container):
    def __init__(self, napari_viewer):
        from ._project_widget import LossPlot

        super().__init__(labels=False)
        self.viewer = napari_viewer = unproxied(napari_viewer)
        self.project = None
        self._layer = slide_layer_box(self._slide_choices, napari_viewer)
        self._folder = path_field(label="project folder", mode="d")
        self._open = PushButton(text="Open or create project")
        self._tags = LineEdit(label="tags", value=DEFAULT_TAGS)
        self._tag = ComboBox(label="outline as", choices=self._tag_choices)
        self._draw = PushButton(text="Draw outlines")
        self._add = PushButton(text="Add outlines to the project")
        self._mpp = FloatSpinBox(
            label="patch µm/px",
            min=0.25,
            max=8.0,
            value=1.0,
            tooltip="the µm/px the classifier is trained and run at",
        )
        self._minutes = FloatSpinBox(label="train for (min)", min=0.2, max=600, value=5.0)
        self._loss = ComboBox(
            label="pixel loss",
            choices=["dynamic", "fixed", "plain", "none"],
            value="dynamic",
            tooltip="dynamic: reference 001's weighted cross-entropy; none: classifier alone",
        )
        self._stepwise = CheckBox(
            text="stepwise (nuclei clusters first)",
            value=False,
            tooltip="reference 004: an intermediate task made without labels, then the labels",
        )
        self._train = PushButton(text="Train classifier")
        self._resume = PushButton(text="Resume")
        self._resume.tooltip = (
            "Continue the last training run that was cancelled or stopped, from its last "
            "checkpoint, for the time it had left"
        )
        self._threshold = FloatSpinBox(
            label="outline at p ≥",
            min=0.05,
            max=0.95,
            step=0.05,
            value=0.5,
            tooltip="when the slide's heatmap ends, its tumour regions (tumour probability at "
            "least this) are outlined and written as QuPath annotations beside the heatmap store",
        )
        self._heat_view = PushButton(text="Heatmap of view")
        self._heat_slide = PushButton(text="Heatmap of slide")
        heat_buttons = Container(layout="horizontal", widgets=[self._heat_view, self._heat_slide])
        self._out = path_field(
            label="results folder", mode="d", value=Path.home() / "nucleiseg-results"
        )
        self._train_attention = PushButton(text="Train attention")
        self._attention_view = PushButton(text="Attention of view")
        attention_buttons = Container(
            layout="horizontal", widgets=[self._train_attention, self._attention_view]
        )
        self._cancel = PushButton(text="Cancel")
        train_buttons = Container(layout="horizontal", widgets=[self._train, self._resume])
        self._status = Label(value="")
        self.plot = LossPlot()
        self._form, self._rows = build_form(
            self,
            [
                self._layer,
                self._folder,
                self._open,
                self._tags,
                self._tag,
                self._draw,
                self._add,
                self._mpp,
                self._minutes,
                self._loss,
                self._stepwise,
                train_buttons,
                self._out,
                self._threshold,
                heat_buttons,
                attention_buttons,
                self._cancel,
            ],
            tail=(self._status, self.plot),
            min_width=270,
        )
        self.native.setMinimumHeight(100)  # stacked with four other docks: still usable
        self.jobs = JobRunner(self._set_status, self._cancel)
        self._open.changed.connect(self._on_open)
        self._tags.changed.connect(self._on_tags)
        self._tag.changed.connect(self._on_tag)
        self._draw.changed.connect(self._on_draw)
        self._add.changed.connect(self._on_add)
        self._train.changed.connect(self._on_train)
        self._resume.changed.connect(self._on_resume)
        self._heat_view.changed.connect(self._on_heat_view)
        self._heat_slide.changed.connect(self._on_heat_slide)
        self._train_attention.changed.connect(self._on_train_attention)
        self._attention_view.changed.connect(self._on_attention_view)
        self.viewer.layers.events.inserted.connect(self.reset_choices)
        self.viewer.layers.events.removed.connect(self.reset_choices)

    def reset_choices(self, *_):
        self._form.reset_choices()  # the controls live in the form, inside the scroll area

    # ------------------------------------------------------------------ helpers
    def _set_status(self, text: str) -> None:
        self._status.value = text

    def _slide_choices(self, _=None):
        return slide_layers(self.viewer)

    def tags(self) -> list[str]:
        seen = []
        for t in (s.strip() for s in str(self._tags.value).split(",")):
            if t and t not in seen:
                seen.append(t)
        return seen

    def _tag_choices(self, _=None):
        return self.tags() or ["tumour"]

    def outlines_layer(self):
        found = find_layers(self.viewer, OUTLINES)
        return found[0] if found else None

    # ------------------------------------------------------------------ project
    def _on_open(self, _=None):
        from ._layers import open_project_folder

        project = open_project_folder(self._folder.value)
        if project is None:
            return
        self.project = project
        folder = project.path
        regions = len(self.project.store.examples(kind="region"))
        current = self.project.current_model("classifier") or "the shipped default"
        self._set_status(
            f"Project {folder.name} open: {regions} outlined regions; classifier: {current}."
        )

    def _need_project(self, what: str) -> bool:
        from napari.utils.notifications import show_error

        if self.project is None:
            show_error(f"Open or create a project (its folder, then Open) before {what}.")
            return False
        return True

    # ------------------------------------------------------------------ outlines
    def _on_tags(self, _=None):
        self._tag.reset_choices()
        layer = self.outlines_layer()
        if layer is not None:
            self._recolour(layer)

    def _on_tag(self, _=None):
        layer = self.outlines_layer()
        if layer is not None and self._tag.value:
            layer.feature_defaults["tag"] = self._tag.value
            layer.current_edge_color = tag_colour(self._tag.value, self.tags())
            # An outline selected with the select tool takes the chosen tag: how a tag is
            # changed after drawing. Not while drawing: napari leaves the outline just drawn
            # selected, and choosing the next outline's tag retagged it.
            selected = sorted(layer.selected_data)
            if selected and str(layer.mode) in ("select", "direct"):
                layer.features.loc[selected, "tag"] = self._tag.value
                self._recolour(layer)

    def _recolour(self, layer) -> None:
        tags = self.tags()
        if len(layer.data):
            layer.edge_color = [tag_colour(t, tags) for t in layer.features["tag"]]

    def _on_draw(self, _=None):
        """Add (or select) the outlines layer over the chosen slide, in polygon mode."""
        import pandas as pd
        from napari.utils.notifications import show_error

        slide_layer = self._layer.value
        if slide_layer is None:
            show_error("No slide open: open a slide before drawing outlines.")
            return
        layer = self.outlines_layer()
        if layer is None:
            # Edges are in slide pixels: a few screen pixels wide on the whole slide (zoomed in,
            # napari keeps them as wide in slide pixels, which is then wider on screen).
            h, w = (
                slide_layer.level_shapes[0]
                if slide_layer.multiscale
                else slide_layer.data.shape[:2]
            )
            extra = {"units": slide_layer.units} if slide_layer.units is not None else {}
            layer = self.viewer.add_shapes(
                name="tissue outlines",
                scale=slide_layer.scale,
                translate=slide_layer.translate,
                features=pd.DataFrame({"tag": pd.Series([], dtype=str)}),
                edge_width=max(3.0, max(h, w) / 400),
                **extra,
                face_color="transparent",
                metadata={META_KEY: {"kind": OUTLINES, "slide": tag(slide_layer).get("path")}},
            )
            layer.feature_defaults["tag"] = self._tag.value or self.tags()[0]
            layer.current_edge_color = tag_colour(layer.feature_defaults["tag"][0], self.tags())
            layer.events.data.connect(lambda _e: self._recolour(layer))
        self.viewer.layers.selection.active = layer
        layer.mode = "add_polygon"
        self._set_status(
            f"Draw outlines of {self._tag.value} regions (click the vertices, double-click to "
            "close); choose another tag above for the next ones, or select outlines and choose "
            "a tag to change theirs."
        )

    def polygons(self):
        """``(polygons in level-0 (row, col) pixels, tags)`` of the outlines layer."""
        layer = self.outlines_layer()
        if layer is None:
            return [], []
        polys, tags = [], []
        for data, shape_type, t in zip(layer.data, layer.shape_type, layer.features["tag"]):
            if shape_type in ("polygon", "rectangle", "ellipse", "path") and len(data) >= 3:
                polys.append(np.asarray(data)[:, -2:])
                tags.append(str(t))
        return polys, tags

    def _on_add(self, _=None):
        from napari.utils.notifications import show_error

        from ..classification.regions import add_outlines
        from ..project import ProjectError

        if not self._need_project("adding outlines"):
            return
        polys, tags = self.polygons()
        if not polys:
            show_error("No outlines yet: Draw outlines, then add them.")
            return
        slide_layer = self._layer.value
        slide = open_layer_slide(slide_layer) if slide_layer is not None else None
        if slide is None:
            return
        try:
            with slide:
                examples = add_outlines(self.project, slide, polys, tags, float(self._mpp.value))
        except ProjectError as exc:
            show_error(str(exc))
            return
        counts = ", ".join(f"{tags.count(t)} {t}" for t in sorted(set(tags)))
        total = len(self.project.store.examples(kind="region"))
        self._set_status(
            f"Added {len(examples)} outlined regions ({counts}); the project has {total}."
        )

    # ------------------------------------------------------------------ training
    def _on_train(self, _=None):
        from napari.utils.notifications import show_error

        from ..classification.project_training import classifier_steps
        from ._process import in_subprocess

        if not self._need_project("training"):
            return
        regions = self.project.store.examples(kind="region")
        tags = {t for ex in regions for t in ex.provenance.get("tags", [])}
        if len(tags) < 2:
            show_error("Add outlines of at least two tags (e.g. tumour and normal) first.")
            return
        self.plot.clear()
        steps = in_subprocess(
            classifier_steps,
            str(self.project.path),
            minutes=float(self._minutes.value),
            mpp=float(self._mpp.value),
            pixel_loss=str(self._loss.value),
            stepwise=bool(self._stepwise.value),
        )
        self.jobs.start(
            "Training the classifier",
            steps,
            on_item=self._on_train_item,
            cancelled_note=(
                "the project's classifier is unchanged; Resume goes on from the last checkpoint"
            ),
        )

    def _on_resume(self, _=None):
        from ..classification.project_training import classifier_steps, unfinished_run
        from ._process import in_subprocess

        if not self._need_project("resuming training"):
            return
        run = unfinished_run(self.project)
        if run is None:
            self._set_status("No stopped training run to resume; Train classifier starts one.")
            return
        self.plot.clear()
        steps = in_subprocess(classifier_steps, str(self.project.path), resume=True)
        self.jobs.start(
            f"Resuming {run.name}",
            steps,
            on_item=self._on_train_item,
            cancelled_note="the project's classifier is unchanged; Resume goes on again",
        )

    def _on_train_item(self, item) -> None:
        if isinstance(item, tuple):  # (iteration, loss)
            self.plot.add(*item)
            return
        if isinstance(item, dict) and "model" in item:
            verdict = "now the project's classifier" if item["promoted"] else "kept aside"
            self._set_status(
                f"Trained {item['model']} on {item['tiles']} regions: {verdict} "
                f"({item['verdict']})."
            )

    # ------------------------------------------------------------------ heatmaps
    def _classifier(self):
        """The project's classifier when a project is open, else the shipped default."""
        from napari.utils.notifications import show_error

        from ..methods import get_method
        from ..models import WeightsError

        try:
            project = self.project.path if self.project is not None else None
            return get_method(None, kind="classifier", project=project)
        except WeightsError as exc:
            show_error(str(exc))
            return None

    def _view_um(self, slide_layer, slide):
        from ._view import visible_box

        x0, y0, x1, y1 = visible_box(self.viewer, slide_layer)
        h, w = slide.shape
        x0, y0 = max(0.0, x0), max(0.0, y0)
        x1, y1 = min(float(w), x1), min(float(h), y1)
        return x0 * slide.mpp, y0 * slide.mpp, (x1 - x0) * slide.mpp, (y1 - y0) * slide.mpp

    def _ready_slide(self, what: str):
        from napari.utils.notifications import show_warning

        from ._layers import checked_slide

        if self.jobs.running:
            show_warning(self.jobs.busy_message())
            return None, None
        return checked_slide(self._layer.value, what, self._set_status)

    def show_map(self, heatmap, slide_layer, kind: str, name: str):
        """Draw a map (tumour probability or attention) over the slide layer, aligned."""
        from ._layers import just_above, put_layer

        mpp0 = tag(slide_layer).get("mpp")
        scale, translate = heatmap.layer_transform(mpp0)
        values = heatmap.probabilities[0] if kind == "attention" else heatmap.p_tumour
        finite = values[np.isfinite(values)]
        top = 1.0 if kind != "attention" else float(max(2.0, finite.max() if finite.size else 2))
        kwargs = {
            "name": name,
            "scale": scale,
            "translate": translate,
            "colormap": "inferno" if kind != "attention" else "viridis",
            "opacity": 0.5,
            "contrast_limits": (0.0, top),
            "blending": "translucent",
            "interpolation2d": "nearest",
            "metadata": {META_KEY: {"kind": kind, "slide": tag(slide_layer).get("path")}},
        }
        if slide_layer.units is not None:
            kwargs["units"] = tuple(map(str, slide_layer.units))
        layer = put_layer(
            self.viewer,
            (np.asarray(values, np.float32), kwargs, "image"),
            replace_kind=kind,
            index=just_above(self.viewer, slide_layer),
        )
        return layer

    def show_tumour_outlines(self, regions, slide_layer, threshold: float, saved: str):
        """Draw a slide's tumour regions (:func:`slide_outlines`, computed off the GUI thread)
        over the slide as cyan outlines, and say how many, their area and where they went."""
        import pandas as pd
        from napari.layers import Shapes

        from ._layers import just_above

        meta = tag(slide_layer)
        mpp0 = float(meta["mpp"])
        h, w = _level0_shape(slide_layer)
        # A ring in µm from the slide's corner, as level-0 (row, col) with pixel k centred on k.
        rings = [r[:, ::-1] / mpp0 - 0.5 for reg in regions for r in (reg.exterior, *reg.holes)]
        kinds = [k for reg in regions for k in ["region"] + ["hole"] * len(reg.holes)]
        kwargs = {
            "name": "tumour outlines (slide)",
            "shape_type": "polygon",
            "scale": slide_layer.scale,
            "translate": slide_layer.translate,
            # Cyan: it stands out over the heatmap's inferno colours, where red would not.
            "edge_color": "#2ee6ff",
            "face_color": "transparent",
            "edge_width": max(3.0, max(h, w) / 250),
            "features": pd.DataFrame({"part": pd.Series(kinds, dtype=str)}),
            "metadata": {META_KEY: {"kind": "tumour-outlines", "slide": meta.get("path")}},
        }
        if slide_layer.units is not None:
            kwargs["units"] = tuple(map(str, slide_layer.units))
        # A new layer each time (the number of shapes and their features change): this slide's
        # old one, if any, goes, and the new one sits where it was, else just above its heatmap.
        old = find_layers(self.viewer, "tumour-outlines", slide=meta.get("path"))
        index = self.viewer.layers.index(old[0]) if old else None
        for lyr in old:
            self.viewer.layers.remove(lyr)
        if index is None:
            heat = find_layers(self.viewer, "heatmap", slide=meta.get("path"))
            index = just_above(self.viewer, heat[0] if heat else slide_layer)
        self.viewer.layers.insert(min(index, len(self.viewer.layers)), Shapes(rings, **kwargs))
        area = sum(r.area_um2 for r in regions) / 1e6
        self._set_status(
            f"{self._status.value} {len(regions)} tumour regions ({area:.3g} mm², p ≥ "
            f"{threshold:g}); outlines {saved}."
        )

    def _on_heat_view(self, _=None):
        from ..classification.heatmap import heatmap_region

        layer, slide = self._ready_slide("a heatmap")
        method = self._classifier() if slide is not None else None
        if method is None:
            return
        box = self._view_um(layer, slide)
        steps = _callback_steps(heatmap_region, method, slide, *box)
        self.jobs.start(
            "Heatmap of the view",
            steps,
            on_done=lambda hm: self._on_map(hm, layer, "heatmap", "tumour probability"),
        )

    def _on_map(self, hm, slide_layer, kind, name):
        if hm is None:
            return
        self.show_map(hm, slide_layer, kind, name)
        values = hm.probabilities[0] if kind == "attention" else hm.p_tumour
        cells = int(np.isfinite(values).sum())
        if kind == "attention":
            self._set_status(
                f"Attention over {cells} tissue patches of the view (1 = every patch weighted "
                "alike; brighter: the patches the model looks at)."
            )
        else:
            share = float(np.mean(values[np.isfinite(values)] > 0.5)) if cells else 0.0
            self._set_status(
                f"Tumour probability over {cells} tissue cells of the view ({hm.mpp:.0f} µm "
                f"each): {share:.0%} above 0.5 ({hm.model.get('model')})."
            )

    def _on_heat_slide(self, _=None):
        from ..classification.slide_heatmap import heatmap_slide
        from ._process import in_subprocess

        layer, slide = self._ready_slide("a whole-slide heatmap")
        if slide is None:
            return
        slide.close()
        meta = tag(layer)
        override = meta["mpp"] if meta.get("mpp_source") == "override" else None
        project = str(self.project.path) if self.project is not None else None
        steps = in_subprocess(
            heatmap_slide, meta["path"], str(self._out.value), project=project, mpp=override
        )
        bounds = tuple(v * float(meta["mpp"]) for v in _level0_shape(layer))
        threshold = float(self._threshold.value)

        def outlines(last):
            # The store is read, and the outlines made and written, in the worker thread: on a
            # large slide that is seconds the interface must not wait. The GUI only draws.
            heatmap, regions, saved = slide_outlines(
                last.store, bounds, threshold, meta["path"], float(meta["mpp"])
            )
            return last.store, heatmap, regions, saved

        def on_done(value):
            if not value:
                return
            store, heatmap, regions, saved = value
            self.show_map(heatmap, layer, "heatmap", "tumour probability (slide)")
            self._set_status(f"Whole-slide heatmap written to {store}.")
            self.show_tumour_outlines(regions, layer, threshold, saved)

        self.jobs.start(
            "Heatmap of the slide",
            then_in_worker(steps, outlines),
            on_done=on_done,
            cancelled_note="finished blocks are kept; Heatmap of slide again resumes",
        )

    # ------------------------------------------------------------------ attention
    def _on_train_attention(self, _=None):
        from ..classification.attention import train_project_attention

        if not self._need_project("training attention"):
            return
        method = self._classifier()
        if method is None:
            return
        steps = _result_steps(train_project_attention(self.project, method, iterations=400))

        def on_done(info):
            if info is None:
                return
            r = info["result"]
            self._set_status(
                f"Attention head {r['model']} trained on {r['bags']} outlined regions "
                f"({r['tumour_bags']} with tumour)."
            )

        self.jobs.start("Training attention", steps, on_done=on_done)

    def _on_attention_view(self, _=None):
        from napari.utils.notifications import show_error

        from ..classification.attention import attention_region, load_project_attention

        if not self._need_project("an attention map"):
            return
        mil = load_project_attention(self.project)
        if mil is None:
            show_error("Train attention on the project's outlined regions first.")
            return
        layer, slide = self._ready_slide("an attention map")
        method = self._classifier() if slide is not None else None
        if method is None:
            return
        box = self._view_um(layer, slide)

        def steps():
            yield (0, 1)
            return attention_region(mil, method, slide, *box)

        self.jobs.start(
            "Attention of the view",
            steps(),
            on_done=lambda hm: self._on_map(hm, layer, "attention", "attention"),
        )


def _result_steps(gen):
    """A core generator's progress for the job runner: ``(done, total)`` in per cent; its last
    item (``stage == "done"``) is the return value (the runner's ``on_done``)."""
    for info in gen:
        if info.get("stage") == "done":
            return info
        yield (round(100 * info.get("fraction", 0.0)), 100)
    return None


def _callback_steps(fn, *args, **kwargs):
    """Run ``fn(*args, progress=..., cancel=..., **kwargs)`` (a core function that reports by
    callback and stops on an Event) as a generator of ``(done, total)`` items returning its
    value: the job runner's protocol. Closing the generator (Cancel) sets the
    event and waits for the function to stop."""
    import queue
    import threading

    q: queue.Queue = queue.Queue()
    cancel = threading.Event()

    def run():
        try:
            value = fn(*args, progress=lambda d, t: q.put(("p", (d, t))), cancel=cancel, **kwargs)
            q.put(("done", value))
        except BaseException as exc:  # handed to the job runner, which reports it
            q.put(("error", exc))

    worker = threading.Thread(target=run, daemon=True, name="map")
    worker.start()
    try:
        while True:
            what, value = q.get()
            if what == "p":
                yield value
            elif what == "done":
                return value
            else:
                raise value
    finally:
        cancel.set()
        worker.join(timeout=60)


def _level0_shape(layer) -> tuple[int, int]:
    shape = layer.level_shapes[0] if layer.multiscale else layer.data.shape
    return int(shape[0]), int(shape[1])


def slide_outlines(store, bounds_um, threshold: float, slide_path, slide_mpp: float):
    """``(heatmap, regions, saved)`` for a finished whole-slide store: the map, its tumour
    regions at ``threshold`` and where they were written (beside the store, the file
    ``nucleiseg heatmap`` writes; ``saved`` says why not when it could not be)."""
    from ..classification.outlines import tumour_geojson_path, tumour_regions, write_geojson
    from ..classification.slide_heatmap import open_heatmap

    heatmap = open_heatmap(store)
    regions = tumour_regions(heatmap, threshold, bounds_um=bounds_um)
    path = tumour_geojson_path(Path(store).parent, slide_path)
    try:
        write_geojson(regions, path, slide_mpp, id_seed=f"{Path(slide_path).name}:{threshold:g}")
        saved = f"written to {path}"
    except OSError as exc:
        saved = f"not written: {path}: {exc.strerror or exc}"
    return heatmap, regions, saved
