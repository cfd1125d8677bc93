"""One registry for every method and model: ask it by name, never switch on a name.

>>> from napari_nucleiseg.methods import get_method, method_names
>>> method_names()                       # the default first  # doctest: +SKIP
['nuclei-unet-v5', 'nuclei-unet-v3', 'nuclei-unet-v4', 'classical', 'classical-phansalkar']
>>> m = get_method("classical")
>>> m.mpp, m.tile_px, m.context_um
(0.5, 1024, 32.0)

Adding a nuclei method is one model card (in the user's or a project's model folder), or one
Python class registered with :func:`register_method`.
"""

from .base import (
    KINDS,
    Method,
    MethodError,
    NucleiMethod,
    default_method_name,
    get_method,
    method_names,
    register_method,
    unregister_method,
    with_detection_threshold,
)
from .classical import CLASSICAL_METHODS, ClassicalMethod
from .learned import CardMethod, load_predictor

__all__ = [
    "CLASSICAL_METHODS",
    "KINDS",
    "CardMethod",
    "ClassicalMethod",
    "Method",
    "MethodError",
    "NucleiMethod",
    "default_method_name",
    "get_method",
    "load_predictor",
    "method_names",
    "register_method",
    "unregister_method",
    "with_detection_threshold",
]
