"""What the viewer shows of a slide layer: the visible rectangle in level-0 pixels.

Computed from the camera (centre, zoom) and the canvas size rather than from the layer's
``corner_pixels``, which napari only updates when it draws: this is right the moment the user
has panned, before any redraw, and in a viewer that was never shown.
"""

from __future__ import annotations

import numpy as np


def _camera(viewer):
    scene = getattr(viewer, "scene", None)  # napari >= 0.9; viewer.camera before
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def canvas_size(viewer) -> tuple[int, int]:
    """Canvas (rows, cols) in screen pixels."""
    canvas = getattr(viewer, "canvas", None)  # napari >= 0.9
    size = getattr(canvas, "size", None) if canvas is not None else None
    if size is None:
        size = viewer._canvas_size
    return int(size[0]), int(size[1])


def visible_box(viewer, layer) -> tuple[float, float, float, float]:
    """The rectangle of ``layer``'s level 0 on screen, ``(x0, y0, x1, y1)`` in pixel-edge
    coordinates (pixel ``i`` spans ``[i, i + 1)``), not clipped to the image."""
    cam = _camera(viewer)
    rows, cols = canvas_size(viewer)
    cy, cx = np.asarray(cam.center, float)[-2:]
    half = np.array([rows, cols], float) / (2.0 * cam.zoom)
    corners = [np.array([cy, cx]) - half, np.array([cy, cx]) + half]
    data = [np.asarray(layer.world_to_data(c))[-2:] for c in corners]  # shorter: zero-padded
    (y0, x0), (y1, x1) = np.minimum(*data), np.maximum(*data)
    # Data coordinates are pixel centres: pixel i is centred on i, so its edges are i +- 0.5.
    return (x0 + 0.5, y0 + 0.5, x1 + 0.5, y1 + 0.5)
