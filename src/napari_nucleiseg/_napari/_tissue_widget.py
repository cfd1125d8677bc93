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
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
)

from ..layers import META_KEY
from ._jobs import JobRunner
from ._layers import find_layers, open_layer_slide, slide_layers, tag

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

        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.project = None
        self._layer = ComboBox(label="slide layer", choices=self._slide_choices)
        self._folder = FileEdit(label="project folder", mode="d")
        self._open = PushButton(text="Open or create project")
        self._tags = LineEdit(label="tags", value=DEFAULT_TAGS)
        self._tag = ComboBox(label="outline as", choices=self._tag_choices)
        self._draw = PushButton(text="Draw outlines")
        self._add = PushButton(text="Add outlines to the project")
        self._mpp = FloatSpinBox(label="patches at (µm/px)", min=0.25, max=8.0, value=1.0)
        self._minutes = FloatSpinBox(label="train for (min)", min=0.2, max=600, value=5.0)
        self._loss = ComboBox(
            label="pixel loss",
            choices=["dynamic", "fixed", "plain", "none"],
            value="dynamic",
            tooltip="dynamic: reference 001's weighted cross-entropy; none: classifier alone",
        )
        self._stepwise = CheckBox(
            text="stepwise (pretrain on nuclei clusters first)",
            value=False,
            tooltip="reference 004: an intermediate task made without labels, then the labels",
        )
        self._train = PushButton(text="Train classifier")
        self._resume = PushButton(text="Resume")
        self._resume.tooltip = (
            "Continue the last training run that was cancelled or stopped, from its last "
            "checkpoint, for the time it had left"
        )
        self._cancel = PushButton(text="Cancel")
        train_buttons = Container(layout="horizontal", widgets=[self._train, self._resume])
        train_buttons.margins = (0, 0, 0, 0)
        self._status = Label(value="")
        self.plot = LossPlot()
        self.extend(
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
                self._cancel,
            ]
        )
        layout = self.native.layout()
        layout.addWidget(self._status.native)
        layout.addWidget(self.plot.native)
        self._status.native.setWordWrap(True)
        self.native.setMinimumWidth(340)
        self.jobs = JobRunner(self._set_status, self._cancel)
        self._open.changed.connect(self._on_open)
        self._tags.changed.connect(self._on_tags)
        self._tag.changed.connect(self._on_tag)
        self._draw.changed.connect(self._on_draw)
        self._add.changed.connect(self._on_add)
        self._train.changed.connect(self._on_train)
        self._resume.changed.connect(self._on_resume)
        self.viewer.layers.events.inserted.connect(self.reset_choices)
        self.viewer.layers.events.removed.connect(self.reset_choices)

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
        from napari.utils.notifications import show_error

        from ..project import Project, ProjectError

        folder = Path(self._folder.value)
        if str(folder) in ("", "."):
            show_error("Choose the project's folder first (a new or empty one makes a project).")
            return
        try:
            self.project = Project.init(folder)
        except ProjectError as exc:
            show_error(str(exc))
            return
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
            # A selected outline takes the chosen tag: how a tag is changed after drawing.
            selected = sorted(layer.selected_data)
            if selected:
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
            layer = self.viewer.add_shapes(
                name="tissue outlines",
                scale=slide_layer.scale,
                translate=slide_layer.translate,
                features=pd.DataFrame({"tag": pd.Series([], dtype=str)}),
                edge_width=3,
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
