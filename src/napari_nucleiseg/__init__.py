"""napari-nucleiseg: nuclei segmentation and whole-slide analysis for digital pathology.

The package is split into a compute core that imports neither napari nor Qt (``io``, ``tissue``,
``tiling``, ``demo``, ``layers``, ``cli``) and a thin napari layer in ``_napari``. Heavy imports
(openslide, torch) happen inside functions so that napari starts fast and reading the manifest costs
nothing.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "open_slide"]


def open_slide(path, mpp=None, **kwargs):
    """Open a whole-slide image or plain image; see :func:`napari_nucleiseg.io.open_slide`."""
    from .io import open_slide as _open_slide

    return _open_slide(path, mpp=mpp, **kwargs)
