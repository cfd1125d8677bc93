"""npe2 reader: whole-slide images open as multiscale RGB layers scaled in µm.

A slide that cannot be opened becomes a napari error notification naming the file and the
problem; the reader then returns napari's "nothing to add" sentinel so no traceback reaches the
user and the viewer carries on.
"""

from __future__ import annotations

import warnings
from pathlib import Path


def napari_get_reader(path):
    from ..io import SLIDE_SUFFIXES

    paths = path if isinstance(path, (list, tuple)) else [path]
    for p in paths:
        name = str(p).rstrip("/\\").lower()
        if not name.endswith(SLIDE_SUFFIXES):
            return None
    return read_slides


def read_slides(path):
    from napari.utils.notifications import show_error, show_warning

    from ..io import SlideError, open_slide
    from ..layers import slide_layer
    from ._layers import in_user_words

    paths = path if isinstance(path, (list, tuple)) else [path]
    layers = []
    for p in paths:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                slide = open_slide(Path(p))
        except SlideError as exc:
            show_error(in_user_words(exc))
            continue
        for w in caught:
            show_warning(in_user_words(w.message))
        layers.append(slide_layer(slide))
    return layers or [(None,)]
