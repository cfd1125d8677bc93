"""napari-nucleiseg: nuclei segmentation and whole-slide analysis for digital pathology.

The package is a compute core that imports neither napari nor Qt, in layers, each using only
those before it:

- ``io`` (slides and images, lazy pyramids), ``models`` (model cards, hashes, runtimes),
  ``tissue`` (tissue masks), ``tiling`` (the tile grid, planner and merge rule), ``stain``,
  ``metrics``;
- ``methods`` (the one registry of nuclei methods and models), ``segmentation`` (networks,
  post-processing, in-memory and current-view segmentation, measurements);
- ``wholeslide`` (resumable whole-slide jobs and cohorts), ``training``, ``demo``, ``layers``
  (layer data in µm for any viewer);
- ``cli`` (the ``nucleiseg`` command: all printing and exit codes),

and a thin napari layer in ``_napari``. Heavy imports (openslide, torch, onnxruntime) happen
inside functions so that napari starts fast and reading the manifest costs nothing.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "open_slide"]


def open_slide(path, mpp=None, **kwargs):
    """Open a whole-slide image or plain image; see :func:`napari_nucleiseg.io.open_slide`."""
    from .io import open_slide as _open_slide

    return _open_slide(path, mpp=mpp, **kwargs)
