"""What every method is, and the registry every face asks.

A *method* turns an RGB array at some µm/px into a result: nuclei instance labels today; tissue
class probabilities (classifiers) and normalised RGB (learned normalisers) are the next kinds,
with the same description. The CLI's ``--method`` choices, the Nuclei panel's list, the
whole-slide job, the current view and the benchmarks all ask :func:`get_method` and
:func:`method_names`; none of them switches on a method's name.

Methods come from four places, asked in this order:

1. registered at run time (:func:`register_method`) — a Python object, e.g. a plug-in's;
2. a project's ``models/`` folder (``project=``), for models a user trained there;
3. the user's model folder (:func:`~napari_nucleiseg.models.user_models_dir`);
4. shipped: the model cards in the package, and the built-in classical methods.

A path to a model card (``.json``), or to a folder holding exactly one, is a method too.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from ..models import WeightsError

#: Kinds of method the registry knows; a model card's architecture says which one it is.
KINDS = ("nuclei", "classifier", "normaliser")


class MethodError(WeightsError):
    """No such method, or one that cannot run; the message names it and what is available. (A
    :class:`~napari_nucleiseg.models.WeightsError`, which callers already catch.)"""


class Method(ABC):
    """A method of any kind: what it is, at which resolution it works, and how it is tiled.

    ``tile_px`` is the tile core in the method's own pixels (at :attr:`mpp`) and ``context_um``
    the context a tile needs on every side for tiled results to match an untiled pass; the
    tile planner (:mod:`napari_nucleiseg.tiling.plan`) turns them into pixels of any input.
    """

    kind: str = "nuclei"
    name: str
    #: µm/px the method works at (it adapts inputs at other resolutions).
    mpp: float
    #: Input sides must be a multiple of this many of the method's pixels (a network's total
    #: pooling factor; 1 for the classical methods), and tiles sit on that grid.
    multiple: int = 1
    tile_px: int = 1024
    context_um: float = 32.0
    #: What it returns, for the user and for provenance.
    outputs: tuple[str, ...] = ()
    #: Where it was found: "built-in", "shipped", "user", "project", "path" or "run time".
    source: str = "run time"

    @abstractmethod
    def describe(self) -> dict:
        """Everything that decides its results, recorded in every output (provenance)."""

    def warm_up(self) -> None:  # noqa: B027  (optional: most methods have nothing to load)
        """Load weights and initialise runtimes ahead of the first real call."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} ({self.kind}, {self.mpp:g} µm/px)>"


class NucleiMethod(Method):
    """Nuclei instance segmentation: ``segment(rgb, mpp)`` → uint32 labels, 0 = background."""

    kind = "nuclei"
    outputs = ("nuclei instance labels",)

    @abstractmethod
    def segment(self, rgb: np.ndarray, mpp: float) -> np.ndarray:
        """Labels of one block (untiled: the tile planner cuts large images)."""

    def describe(self) -> dict:
        return {"method": self.name}


# --------------------------------------------------------------------------- the registry
_REGISTERED: dict[tuple[str, str], Method] = {}
_LOCK = threading.Lock()


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Make ``method`` available by its name to every face of this process (CLI, panels,
    whole-slide jobs on threads). Returns it. A name already taken is refused unless
    ``replace``."""
    if not isinstance(method, Method):
        raise TypeError(f"{method!r} is not a napari_nucleiseg.methods.Method")
    if method.kind not in KINDS:
        raise MethodError(f"{method.name}: unknown kind {method.kind!r}; one of {', '.join(KINDS)}")
    key = (method.kind, method.name)
    with _LOCK:
        if not replace and (key in _REGISTERED or method.name in _builtin_names(method.kind)):
            raise MethodError(f"a {method.kind} method named {method.name!r} exists already")
        method.source = "run time"
        _REGISTERED[key] = method
    return method


def unregister_method(name: str, kind: str = "nuclei") -> None:
    with _LOCK:
        _REGISTERED.pop((kind, name), None)


def _builtin_names(kind: str) -> list[str]:
    from .classical import CLASSICAL_METHODS

    return list(CLASSICAL_METHODS) if kind == "nuclei" else []


def default_method_name(kind: str = "nuclei", project=None) -> str:
    """The method a face uses when none is chosen: the project's current model where a project
    says so, else the shipped default."""
    if project is not None:
        from ..models import project_current_model

        current = project_current_model(project, kind)
        if current:
            return current
    if kind == "classifier":
        from .classifier import DEFAULT_CLASSIFIER_MODEL

        return DEFAULT_CLASSIFIER_MODEL
    if kind == "normaliser":
        from .normaliser import DEFAULT_NORMALISER_MODEL

        return DEFAULT_NORMALISER_MODEL
    from ..models import DEFAULT_NUCLEI_MODEL

    return DEFAULT_NUCLEI_MODEL


def method_names(kind: str = "nuclei", project=None) -> list[str]:
    """Every method of ``kind`` by name, in the order a user is offered them: the default first,
    then shipped, user, project and run-time models, then the classical methods."""
    from ..models import list_cards

    names: list[str] = []
    for card in list_cards(kind=kind, project=project):
        if card.name not in names:
            names.append(card.name)
    with _LOCK:
        names += [n for (k, n) in _REGISTERED if k == kind and n not in names]
    names += [n for n in _builtin_names(kind) if n not in names]
    default = default_method_name(kind, project)
    if default in names:
        names.remove(default)
        names.insert(0, default)
    return names


def with_detection_threshold(method, threshold: float | None, project=None) -> Method:
    """``method`` (anything :func:`get_method` takes) with the user's detection threshold, a
    foreground probability (see :class:`~napari_nucleiseg.methods.learned.CardMethod`); None
    leaves it as it is. Raises :class:`MethodError` for a method without one (the classical
    methods threshold haematoxylin by Otsu or Phansalkar, not a probability) or a threshold
    out of range."""
    m = get_method(method, project=project)
    if threshold is None:
        return m
    if not hasattr(m, "with_detection_threshold"):
        raise MethodError(
            f"{m.name} has no detection threshold to set (only learned models have one)"
        )
    return m.with_detection_threshold(threshold)


def get_method(
    name_or_path: str | Path | Method | None = None, kind: str = "nuclei", project=None
) -> Method:
    """The method called ``name_or_path`` (see the module docstring for where it is looked up);
    ``None`` is the default. Raises :class:`MethodError` naming what is available."""
    if isinstance(name_or_path, Method):
        return name_or_path
    name = name_or_path if name_or_path is not None else default_method_name(kind, project)
    with _LOCK:
        found = _REGISTERED.get((kind, str(name)))
    if found is not None:
        return found
    from .classical import CLASSICAL_METHODS

    if kind == "nuclei" and str(name) in CLASSICAL_METHODS:
        return CLASSICAL_METHODS[str(name)]
    from ..models import WeightsError, find_card

    try:
        card_path, source = find_card(name, project=project)
    except WeightsError as exc:
        available = ", ".join(method_names(kind, project)) or "none"
        raise MethodError(f"no {kind} method {str(name)!r}; available: {available}") from exc
    from .learned import card_method

    method = card_method(card_path, source)
    if method.kind != kind:
        raise MethodError(f"{card_path}: a {method.kind} model, not a {kind} method")
    return method
