"""Finding and replacing this plugin's layers by their metadata tag, never by name."""

from __future__ import annotations

from ..layers import META_KEY


def tag(layer) -> dict:
    return layer.metadata.get(META_KEY, {}) if hasattr(layer, "metadata") else {}


def find_layers(viewer, kind: str, **match):
    return [
        lyr for lyr in viewer.layers
        if tag(lyr).get("kind") == kind and all(tag(lyr).get(k) == v for k, v in match.items())
    ]


def put_layer(viewer, layer_tuple, replace_kind: str | None = None, **match):
    """Add a layer data tuple, replacing (in place) an earlier layer of ours of the same kind."""
    from napari.layers import Layer

    data, kwargs, ltype = layer_tuple
    new = Layer.create(data, dict(kwargs), ltype)
    old = find_layers(viewer, replace_kind, **match) if replace_kind else []
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
