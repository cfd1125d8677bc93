"""Stain dock widget: fit a normaliser to a reference, view the slide normalised, see H / E / DAB.

The reference is what is on screen (``layers.read_view`` picks the level), a reference image file
or a saved profile. The normalised slide and the deconvolution channels are lazy layers over the
slide layer's own pyramid (``layers.normalised_layer``, ``layers.stain_channel_layers``): only
what is on screen, at the zoom on screen, is ever computed. The normaliser is adapted once to the
whole slide (a sample of its tissue, in the background), so every chunk at every zoom gets the
same colour mapping; the normalised layer records that mapping (``layers.NormalisedStain``),
which is how the Nuclei panel segments the normalised stain.

Method ``learned`` is a trained normaliser (a model card of kind ``normaliser``, chosen under
*model*): it maps every slide to the style it learnt, so there is nothing to fit. Its view is
built the same lazy way: adapted once to the slide (its stain measured on a sample of its tissue,
in the background), each level normalised at its own µm/px
(``stain.lazy.normalise_levels(..., mpps=...)``). *colour pull* is its colour calibration (how
far the network's output colours are pulled to the style's; see
``stain.learned_normaliser``); changing it, like changing the model, redraws the view.
"""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    PushButton,
)

from ..stain.learned_normaliser import DEFAULT_CALIBRATION
from ..stain.profile import STAIN_METHODS
from ._jobs import JobRunner
from ._layers import (
    PROJECT_CHANGED,
    build_form,
    find_layers,
    follow_project,
    just_above,
    open_layer_slide,
    open_project,
    path_field,
    put_layer,
    slide_layer_box,
    slide_layers,
    tag,
    unproxied,
)

REFERENCES = ("current view", "image or profile file")
#: The method whose target is a trained model instead of a fitted reference.
LEARNED = "learned"
METHODS = (*STAIN_METHODS, LEARNED)


class StainWidget(Container):
    def __init__(self, napari_viewer):
        super().__init__(labels=False)
        self.viewer = napari_viewer = unproxied(napari_viewer)
        #: The folder of the project open in the Project panel (its normalisers are offered).
        self._project = None
        self._project_model = None
        self._layer = slide_layer_box(self._slide_choices, napari_viewer)
        self._method = ComboBox(label="method", choices=list(METHODS), value=METHODS[0])
        self._model = ComboBox(
            label="model",
            choices=self._normaliser_models,
            tooltip="the trained normaliser (a model card of kind 'normaliser')",
        )
        self._calibration = FloatSpinBox(
            label="colour pull",
            min=0.0,
            max=1.0,
            step=0.05,
            value=DEFAULT_CALIBRATION,
            tooltip="after the network, how far the slide's colours are pulled to the style's "
            "(0: the network alone; 1: matched exactly, at some cost to the nuclei's detail)",
        )
        self._reference = ComboBox(label="reference", choices=list(REFERENCES), value=REFERENCES[0])
        self._file = path_field(
            label="file",
            mode="r",
            filter="Images or profiles (*.png *.jpg *.jpeg *.tif *.tiff *.json);;All files (*)",
        )
        self._fit = PushButton(text="Fit to reference")
        self._cancel = PushButton(text="Cancel")
        self._status = Label(value="No normaliser fitted yet.")
        self._show = CheckBox(text="Show the slide normalised", value=False)
        self._profile_path = path_field(
            label="profile file",
            mode="w",
            filter="Stain profiles (*.json)",
            value=Path.home() / "stain-profile.json",
        )
        self._save = PushButton(text="Save profile")
        self._channels = PushButton(text="Show H / E / DAB channels")
        # Buttons and the message span the panel (in a labelled row the message began in the
        # value column, a third of the way across); build_form wraps the message.
        self._form, self._rows = build_form(
            self,
            [
                self._layer,
                self._method,
                self._model,
                self._calibration,
                self._reference,
                self._file,
                self._fit,
                self._cancel,
                self._status,
                self._show,
                self._profile_path,
                self._save,
                self._channels,
            ],
            min_width=270,
        )
        from qtpy.QtWidgets import QProgressBar

        self.native.setMinimumHeight(100)  # stacked with four other docks: still usable
        self.progress = QProgressBar()
        layout = self._form.native.layout()
        layout.insertWidget(layout.indexOf(self._status.native) + 1, self.progress)
        self.jobs = JobRunner(self._set_status, self._cancel, bar=self.progress)
        self.normaliser = None  # fitted on the reference
        self.adapted = None  # ... and adapted to the slide shown normalised
        self._adapted_slide = None  # ... whose path is this
        self._fitted_on = ""
        self._fit.changed.connect(self._on_fit)
        self._method.changed.connect(self._on_method)
        self._model.changed.connect(self._on_model)
        PROJECT_CHANGED.connect(self._on_project)
        if open_project(self.viewer) is not None:  # opened after the project was
            self._on_project(self.viewer, open_project(self.viewer))
        # One redraw when the value is set (Enter, arrows, focus out), not one per keystroke.
        self._calibration.native.setKeyboardTracking(False)
        self._calibration.changed.connect(self._on_calibration)
        self._show.changed.connect(self._on_show)
        self._save.changed.connect(self._on_save)
        self._channels.changed.connect(self._on_channels)
        self.viewer.layers.events.inserted.connect(self._refresh)
        self.viewer.layers.events.removed.connect(self._refresh)
        from ._nuclei_widget import _scale_bar_on

        _scale_bar_on(self.viewer)
        self._on_method()

    def _normaliser_models(self, _widget=None) -> list[str]:
        """The trained normalisers the registry knows, the open project's included, asked
        afresh whenever the choices are reset."""
        from ..methods import method_names

        return method_names("normaliser", project=self._project)

    def _on_project(self, viewer, folder) -> None:
        """The Project panel opened a project or changed its models: offer its normalisers, and
        switch to the one it now uses when that changed."""
        follow_project(self, self._model, "normaliser", viewer, folder)

    def reset_choices(self, *_):
        """napari calls this when layers change; the choices live in the form."""
        self._form.reset_choices()

    # ------------------------------------------------------------------ state
    def _slide_choices(self, _=None):
        return slide_layers(self.viewer)

    def _refresh(self, event=None):
        self._layer.reset_choices()
        gone = getattr(event, "value", None)
        if (
            gone is not None
            and tag(gone).get("kind") == "stain_normalised"
            and not find_layers(self.viewer, "stain_normalised")
            and not self.jobs.running
        ):
            # Its layer deleted: the panel said "the slide is shown normalised" on, ticked.
            with self._show.changed.blocked():
                self._show.value = False
            self._set_status("The normalised view was closed; tick the box to show it again.")

    def _set_status(self, text: str) -> None:
        self._status.value = text

    @property
    def learned(self) -> bool:
        """The chosen method is a trained normaliser."""
        return self._method.value == LEARNED

    def _on_method(self, _=None) -> None:
        """A trained normaliser has a model instead of a reference to fit on."""
        learned = self.learned
        self._model.visible = learned
        self._calibration.visible = learned
        self._reference.visible = not learned
        self._file.visible = not learned
        if not learned:
            return
        before = self._model.value
        self._model.reset_choices()  # a model trained or installed meanwhile
        if self._model.value is None:
            self._set_status(NO_MODEL)
        elif self._show.value and self._model.value == before:
            self._on_show()  # shown normalised: by the chosen model now (a new choice: done)

    def _on_model(self, _=None) -> None:
        if self.learned and self._show.value and self._model.value is not None:
            self._on_show()

    def _on_calibration(self, _=None) -> None:
        """Another colour pull for the slide shown: its map is re-derived from the colour the
        network was measured to give on it (no second pass of the network); anything else
        (another slide or model, nothing shown yet) goes the whole way."""
        adapted, layer = self.adapted, self._layer.value
        same = (
            getattr(adapted, "method", "") == LEARNED
            and adapted.name == self._model.value
            and adapted.output_lab is not None
            and layer is not None
            and self._adapted_slide == _layer_path(layer)
        )
        if not (self.learned and self._show.value and same):
            self._on_model()
            return
        strength = float(self._calibration.value)
        self._start_view(
            layer,
            f"Normalised view ({adapted.name})",
            lambda _levels, _mpp: _recalibrated(adapted, strength),
            on_error=self._learned_failed,
        )

    def _need_slide(self, what: str):
        from napari.utils.notifications import show_error

        layer = self._layer.value
        if layer is None:
            show_error(
                f"No slide open: open a slide (File > Open, or the Slide panel) before {what}."
            )
        return layer

    # ------------------------------------------------------------------ fitting
    def _on_fit(self, _=None):
        from napari.utils.notifications import show_error, show_warning

        if self.jobs.running:
            show_warning(self.jobs.busy_message())
            return
        method = self._method.value
        if self.learned:
            self._set_status(
                "A learned normaliser needs no fitting: it maps every slide to the style it "
                "learnt. Choose its model and tick 'Show the slide normalised'."
            )
            return
        if self._reference.value == REFERENCES[0]:
            layer = self._need_slide("fitting to the current view")
            if layer is None:
                return
            slide = open_layer_slide(layer)
            if slide is None:
                return
            from ._view import visible_box

            steps = _fit_view(method, slide, visible_box(self.viewer, layer))
            source = f"the current view of {slide.path.name}"
        else:
            path = Path(self._file.value)
            if not str(self._file.value).strip() or path.is_dir():
                # magicgui reads an empty field as the working folder, and a folder was fitted
                # on every image in it.
                text = "Choose a reference image or a saved profile first (the … next to 'file')."
                self._set_status(text)
                show_error(text)
                return
            if not path.exists():
                show_error(
                    f"{path}: no such reference file: choose a reference image or a saved profile."
                )
                return
            steps = _fit_file(method, path)
            source = path.name
        self.jobs.start(
            f"Stain reference ({method})",
            steps,
            on_done=lambda normaliser: self._on_fitted(normaliser, source),
        )

    def _on_fitted(self, normaliser, source: str) -> None:
        self.normaliser = normaliser
        self._fitted_on = source
        self._set_status(f"{normaliser.profile.method} fitted on {source}.")
        if self._show.value:  # the fit's run is over: replace the normalised view now
            self._on_show()

    # ------------------------------------------------------------------ views
    def _on_show(self, _=None):
        """Show (or replace) the lazily normalised slide; unticking hides it."""
        from napari.utils.notifications import show_error

        existing = find_layers(self.viewer, "stain_normalised")
        if not self._show.value:
            for lyr in existing:
                lyr.visible = False
            return
        layer = self._need_slide("showing it normalised")
        if layer is None:
            self._show.value = False
            return
        if self.learned:
            self._show_learned(layer)
            return
        if self.normaliser is None:
            show_error("Fit a normaliser first (choose a reference, then Fit to reference).")
            self._show.value = False
            return
        normaliser = self.normaliser
        self._start_view(
            layer, "Normalised view", lambda levels, _mpp: _adapted(normaliser, levels, layer.name)
        )

    def _start_view(self, layer, title: str, adapt, on_error=None) -> None:
        """Adapt a normaliser to ``layer``'s slide in the background (``adapt(levels, mpp)``, a
        generator) and show the result; busy or an unreadable slide: one line, nothing run."""
        from napari.utils.notifications import show_warning

        if self.jobs.running:
            show_warning(self.jobs.busy_message())
            return
        slide = open_layer_slide(layer)
        if slide is None:
            self._show.value = False
            return
        levels = list(layer.data)
        self.jobs.start(
            title,
            adapt(levels, slide.mpp),
            on_done=lambda adapted: self._show_normalised(slide, levels, adapted, layer),
            on_error=on_error,
        )

    def _show_learned(self, layer) -> None:
        """The slide normalised by the chosen trained normaliser (its card read and the
        normaliser adapted to the slide in the background; an unreadable card is one line in the
        status and a notification)."""
        from napari.utils.notifications import show_error

        name, calibration = self._model.value, float(self._calibration.value)
        project = self._project
        if name is None:
            self._set_status(NO_MODEL)
            show_error(NO_MODEL)
            self._show.value = False
            return
        self._start_view(
            layer,
            f"Normalised view ({name})",
            lambda levels, mpp: _learned(name, levels, layer.name, mpp, calibration, project),
            on_error=self._learned_failed,
        )

    def _learned_failed(self, exc) -> None:
        """The model could not be loaded: one line (the run's status says it too), unticked."""
        from napari.utils.notifications import show_error

        from ._layers import in_user_words

        show_error(in_user_words(exc))
        self._show.value = False

    def _show_normalised(self, slide, levels, adapted, slide_layer) -> None:
        """The normalised slide right above the slide: under the nuclei, tissue and stains."""
        from ..layers import normalised_layer

        learned = getattr(adapted, "method", "") == LEARNED
        reference = "" if learned else self._fitted_on
        layer_tuple = normalised_layer(slide, levels, adapted, reference, name=slide_layer.name)
        shown = put_layer(
            self.viewer,
            layer_tuple,
            "stain_normalised",
            index=just_above(self.viewer, slide_layer),
            slide=str(slide.path),
        )
        shown.visible = True  # reused in place, it kept the hidden state an untick gave it
        self.adapted = adapted
        self._adapted_slide = _layer_path(slide_layer)
        # The stain channels lie above it and cover it: asked to see the normalised slide, the
        # user saw the haematoxylin channel unchanged. They are hidden (their eyes show them).
        hidden = [
            ch
            for ch in find_layers(self.viewer, "stain_channel", slide=str(slide.path))
            if ch.visible
        ]
        for ch in hidden:
            ch.visible = False
        note = " The stain channels are hidden; their eyes show them again." if hidden else ""
        if learned:
            pull = (
                f", colour pull {adapted.calibration:g}"
                if adapted.lab_map is not None
                else " (network alone: no colour pull)"
            )
            self._set_status(
                f"The slide is shown normalised by the learned normaliser {adapted.name} "
                f"{adapted.card.version}{pull}.{note}"
            )
            return
        self._set_status(
            f"{adapted.method} fitted on {self._fitted_on}; the slide is shown normalised.{note}"
        )

    def _on_channels(self, _=None):
        """H, E and DAB optical density of the slide, lazily per chunk at every zoom, in grey,
        right above the slide (under the nuclei); one shown at a time, H first."""
        from ..layers import stain_channel_layers

        layer = self._need_slide("showing its stain channels")
        if layer is None:
            return
        slide = open_layer_slide(layer)
        if slide is None:
            return
        above = just_above(self.viewer, layer)
        normalised = find_layers(self.viewer, "stain_normalised", slide=str(slide.path))
        if normalised:  # above the normalised slide too
            above = max(above, just_above(self.viewer, normalised[0]))
        for k, layer_tuple in enumerate(
            stain_channel_layers(slide, list(layer.data), name=layer.name)
        ):
            meta = layer_tuple[1]["metadata"]["nucleiseg"]
            channel = put_layer(
                self.viewer,
                layer_tuple,
                "stain_channel",
                index=above + k,
                slide=meta["slide"],
                channel=meta["channel"],
            )
            channel.visible = k == 0
            channel.events.visible.disconnect(self._one_channel_visible)
            channel.events.visible.connect(self._one_channel_visible)
        self._set_status(
            "Haematoxylin shown in grey (dark = more stain); click the eye of eosin or DAB in "
            "the layer list to see that stain instead."
        )

    def _one_channel_visible(self, event=None) -> None:
        """Showing one stain channel hides the others of its slide: they cover each other."""
        shown = getattr(event, "source", None)
        if shown is None or not shown.visible:
            return
        slide = shown.metadata.get("nucleiseg", {}).get("slide")
        for other in find_layers(self.viewer, "stain_channel", slide=slide):
            if other is not shown and other.visible:
                other.visible = False

    def _on_save(self, _=None) -> Path | None:
        from napari.utils.notifications import show_error

        if self.learned:
            show_error(
                "A learned normaliser has no stain profile to save: its model card is what "
                "others use (choose it by name)."
            )
            return None
        if self.normaliser is None:
            show_error("Nothing to save: fit a normaliser first.")
            return None
        path = Path(self._profile_path.value)
        self.normaliser.profile.save(path)
        self._set_status(f"Profile ({self.normaliser.profile.method}) saved to {path}.")
        return path


NO_MODEL = (
    "No learned normaliser installed: train one in the Project panel (Train normaliser), or put "
    "a normaliser's model card in your model folder."
)


def _learned(
    name: str,
    levels,
    slide_name: str,
    mpp: float | None = None,
    calibration: float | None = None,
    project=None,
):
    """The trained normaliser ``name`` from its card, adapted to the slide (its stain measured
    on a sample of its tissue, as for Macenko), its network opened here (weights checked against
    the card) so that a broken model is said now, not when a chunk is drawn."""
    import numpy as np

    from ..stain import StainError
    from ..stain.lazy import adapt_to_levels
    from ..stain.learned_normaliser import load_learned

    yield 0, 2
    try:
        normaliser = load_learned(name, project=project, calibration=calibration)
        yield 1, 2
        adapted = adapt_to_levels(normaliser, levels, name=slide_name, mpp=mpp)
        m = adapted.multiple
        adapted.transform(np.full((m, m, 3), 255, np.uint8))
    except RuntimeError as exc:  # a damaged model (WeightsError): napari's worker would drop it
        raise StainError(str(exc)) from None
    yield 2, 2
    return adapted


def _recalibrated(adapted, strength: float):
    """The shown slide's learned normaliser with another colour pull (no network pass)."""
    yield 0, 1
    out = adapted.with_calibration(strength)
    yield 1, 1
    return out


def _layer_path(layer) -> str | None:
    """The slide file a slide layer shows (its record), to tell slides apart."""
    return (getattr(layer, "metadata", None) or {}).get("nucleiseg", {}).get("path")


def _fit_view(method: str, slide, box):
    """Fit on the visible region (read at a level that keeps it small: ``layers.read_view``)."""
    from ..layers import read_view
    from ..stain import make_normaliser

    yield 0, 1
    rgb = read_view(slide, box)
    normaliser = make_normaliser(method).fit(
        rgb, name=f"{slide.path.name} view x={int(max(0, box[0]))} y={int(max(0, box[1]))}"
    )
    yield 1, 1
    return normaliser


def _fit_file(method: str, path: Path):
    from ..stain import load_target

    yield 0, 1
    # A saved profile knows its method; the method box only matters for reference images.
    normaliser = load_target(None if path.suffix.lower() == ".json" else method, path)
    yield 1, 1
    return normaliser


def _adapted(normaliser, levels, name):
    """The normaliser adapted to the slide (reads a sample of its tissue)."""
    from ..stain.lazy import adapt_to_levels

    yield 0, 1
    adapted = adapt_to_levels(normaliser, levels, name=name)
    yield 1, 1
    return adapted
