"""Correcting a whole-slide result in the viewer: the Project panel's "Correct this view" and
"Save to slide result".

Thin by design: :mod:`napari_nucleiseg.wholeslide.edit` does the work. "Correct this view" cuts
the region on screen, grown to whole nuclei (``whole_nuclei_box``), from the result store at
level 0 into an editable single-scale labels layer placed on the slide (its scope starts with
``view``, so the Project panel's delete / merge / split tools and napari's brush act on it);
"Save to slide result" writes it back (``write_region_labels``: only the touched chunks, table
rows and outlines change) and redraws the whole-slide layer from the store.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._layers import find_layers, in_user_words, open_layer_slide, tag

#: Scope of the editable layer cut from a whole-slide result.
EDIT_SCOPE = "view-slide-edit"
#: Largest region (level-0 pixels) cut for correcting: zoom in for more.
MAX_EDIT_PX = 16_000_000


def whole_slide_layer(viewer):
    """The whole-slide result to correct: the active layer when it is one, else the last one."""

    def is_result(lyr):
        t = tag(lyr)
        return t.get("kind") == "nuclei" and t.get("scope") == "slide" and bool(t.get("store"))

    active = viewer.layers.selection.active
    if active is not None and is_result(active):
        return active
    layers = [lyr for lyr in viewer.layers if is_result(lyr)]
    return layers[-1] if layers else None


def edit_layer(viewer):
    """The editable layer cut from a whole-slide result, or None."""
    layers = find_layers(viewer, "nuclei", scope=EDIT_SCOPE)
    return layers[-1] if layers else None


def cut_view(viewer):
    """Cut the view of the whole-slide result into an editable layer. Returns the layer, or a
    message saying why not (in the user's words)."""
    from ..layers import region_labels_layer
    from ..wholeslide.edit import RegionEditError, read_region_labels, whole_nuclei_box
    from ..wholeslide.store import read_attrs
    from ._view import visible_box

    result = whole_slide_layer(viewer)
    if result is None:
        return "Open or segment a whole slide first: there is no whole-slide result to correct."
    if edit_layer(viewer) is not None:
        return (
            "A region of the slide result is being corrected already: save it (Save to slide "
            "result) or delete its layer first."
        )
    meta = tag(result)
    store = Path(meta["store"])
    try:
        if not read_attrs(store).get("nucleiseg", {}).get("finished"):
            return "The whole-slide job has not finished: let it finish before correcting."
    except Exception as exc:  # a store moved or deleted since it was shown
        return in_user_words(str(exc))
    slides = [s for s in find_layers(viewer, "slide") if tag(s).get("path") == meta.get("slide")]
    slide = open_layer_slide(slides[-1]) if slides else None
    if slide is None:
        return "The slide of this result is not open: open it to correct its nuclei."
    x0, y0, x1, y1 = visible_box(viewer, result)
    box = (int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1)))
    if (box[2] - box[0]) * (box[3] - box[1]) > MAX_EDIT_PX:
        return "The view is too large to correct at full resolution: zoom in on the nuclei."
    try:
        box = whole_nuclei_box(store, *box)
        labels = read_region_labels(store, *box)
    except (RegionEditError, OSError) as exc:
        return in_user_words(str(exc))
    data, kwargs, _ = region_labels_layer(
        slide,
        labels,
        origin_px=(box[0], box[1]),
        name="nuclei (correcting the slide result)",
        scope=EDIT_SCOPE,
        store=str(store),
        region_px=list(box),
        method=meta.get("method"),
    )
    layer = viewer.add_labels(data, **kwargs)
    from ._unsaved import watch_edits

    watch_edits(layer)
    viewer.layers.selection.active = layer
    return layer


def save(viewer) -> str:
    """Write the editable layer back into its store, redraw the whole-slide layer, drop the
    editable one. Returns what happened, in words (raises nothing the user caused)."""
    from ..io.errors import SlideError
    from ..layers import labels_display_pyramid
    from ..wholeslide import open_labels
    from ..wholeslide.edit import RegionEditError, write_region_labels

    layer = edit_layer(viewer)
    if layer is None:
        return "Nothing to save: click 'Correct this view' on a whole-slide result first."
    meta = tag(layer)
    store = Path(meta["store"])
    x0, y0 = meta["region_px"][:2]
    slide = meta.get("slide")
    slide = slide if slide and Path(slide).exists() else None
    try:
        done = write_region_labels(store, x0, y0, np.asarray(layer.data), slide=slide)
    except (RegionEditError, SlideError, OSError) as exc:
        return f"Not saved: {in_user_words(str(exc))}"
    for lyr in find_layers(viewer, "nuclei", scope="slide"):
        if tag(lyr).get("store") == str(store):
            levels, _, _ = open_labels(store)
            lyr.data = labels_display_pyramid(levels)
            lyr.refresh()
    viewer.layers.remove(layer)
    if done["edit"] is None:
        return "Nothing had changed: the slide result is as it was."
    from ._layers import RESULT_CHANGED

    RESULT_CHANGED.emit(str(store))
    parts = [f"{len(done[k])} {k}" for k in ("deleted", "changed", "added") if done[k]]
    return (
        f"Saved to the slide result (correction {done['edit']}): nuclei "
        f"{', '.join(parts)}; the table and GeoJSON in {store.parent} follow."
    )
