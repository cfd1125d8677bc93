"""Finding and replacing this plugin's layers by their metadata tag, never by name."""

from __future__ import annotations

import numpy as np

from ..layers import META_KEY


def tag(layer) -> dict:
    return layer.metadata.get(META_KEY, {}) if hasattr(layer, "metadata") else {}


def find_layers(viewer, kind: str, **match):
    return [
        lyr
        for lyr in viewer.layers
        if tag(lyr).get("kind") == kind and all(tag(lyr).get(k) == v for k, v in match.items())
    ]


def put_layer(viewer, layer_tuple, replace_kind: str | None = None, **match):
    """Add a layer data tuple, replacing an earlier layer of ours of the same kind.

    An earlier layer of the same type takes the new data in place: it keeps its position and the
    user's display settings, and removing a layer would cost napari a full garbage collection.
    """
    from napari.layers import Layer

    data, kwargs, ltype = layer_tuple
    old = find_layers(viewer, replace_kind, **match) if replace_kind else []
    if (
        old
        and old[0]._type_string == ltype
        and bool(getattr(old[0], "multiscale", False)) == bool(kwargs.get("multiscale", False))
    ):
        layer = old[0]
        for extra in old[1:]:
            viewer.layers.remove(extra)
        # Each change of scale or translate redraws the layer: set only what changed, then the
        # data (which redraws once more).
        for key in ("scale", "translate"):
            if key in kwargs and not np.allclose(getattr(layer, key), kwargs[key]):
                setattr(layer, key, kwargs[key])
        if "units" in kwargs and tuple(map(str, layer.units)) != tuple(map(str, kwargs["units"])):
            layer.units = kwargs["units"]
        layer.metadata = kwargs.get("metadata", layer.metadata)
        layer.data = data
        if "name" in kwargs:
            layer.name = kwargs["name"]
        return layer
    new = Layer.create(data, dict(kwargs), ltype)
    if old:
        index = viewer.layers.index(old[0])
        for lyr in old:
            viewer.layers.remove(lyr)
        viewer.layers.insert(min(index, len(viewer.layers)), new)
    else:
        viewer.layers.append(new)
    return new


def slide_layers(viewer):
    """The slide layers open in ``viewer``, as (name, layer) choices for a combo box."""
    return [(lyr.name, lyr) for lyr in find_layers(viewer, "slide")]


def open_layer_slide(layer):
    """Open the slide behind one of our slide layers (with its µm/px override), or None after
    telling the user why not (the file moved, ...)."""
    import warnings

    from napari.utils.notifications import show_error

    from ..io import SlideError, open_slide

    meta = tag(layer)
    override = meta["mpp"] if meta.get("mpp_source") == "override" else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return open_slide(meta["path"], mpp=override, backend=meta.get("backend"))
    except SlideError as exc:
        show_error(str(exc))
        return None
