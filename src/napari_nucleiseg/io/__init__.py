"""Slide access: one ``open_slide`` for every format, returning a :class:`Slide`.

Dispatch order, and why:

1. OME-Zarr directories (zarr) — a directory is never an OpenSlide file, except MIRAX's data dir.
2. OME-TIFF (tifffile) — OpenSlide would read it as generic TIFF and lose the OME pixel size.
3. Anything OpenSlide detects (.svs, .ndpi, .mrxs, .scn, .bif, generic tiled TIFF, DICOM, ...).
4. Other TIFFs (tifffile): untiled or unusual layouts OpenSlide refuses.
5. Plain images (Pillow): PNG, JPEG, BMP.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

from .errors import (
    CorruptSlideError,
    ImplausibleResolutionWarning,
    MissingResolutionWarning,
    NoPyramidWarning,
    SlideError,
    SlideNotFoundError,
    UnsupportedFormatError,
)
from .slide import DEFAULT_CHUNK, Slide

__all__ = [
    "open_slide",
    "Slide",
    "SlideError",
    "SlideNotFoundError",
    "UnsupportedFormatError",
    "CorruptSlideError",
    "MissingResolutionWarning",
    "ImplausibleResolutionWarning",
    "NoPyramidWarning",
    "DEFAULT_CHUNK",
    "SLIDE_SUFFIXES",
]

#: File suffixes the napari reader claims (OpenSlide's formats, OME-TIFF/TIFF, DICOM, OME-Zarr).
SLIDE_SUFFIXES = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".dcm",
    ".zarr",
)
_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
_VENDOR_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm")


def open_slide(
    path: str | os.PathLike, mpp: float | None = None, backend: str | None = None
) -> Slide:
    """Open a whole-slide image, OME-TIFF, OME-Zarr or plain image.

    Parameters
    ----------
    path
        The file (or OME-Zarr directory).
    mpp
        µm per pixel at level 0, overriding what the file says (or stating it when it says nothing).
    backend
        Force ``"openslide"``, ``"tifffile"``, ``"zarr"`` or ``"image"`` instead of detecting.

    Raises
    ------
    SlideError
        With a message naming the file and the problem: missing, unsupported, corrupt, invalid.
    """
    p = Path(path).expanduser()
    try:
        return _open(p, mpp, backend)
    except SlideError:
        raise
    except ValueError as exc:
        if backend is not None and "unknown backend" in str(exc):
            raise
        raise CorruptSlideError(p, f"cannot be read: {exc}") from exc
    except MemoryError as exc:
        raise SlideError(
            p, "too large to load as a plain image; convert it to a tiled pyramidal TIFF"
        ) from exc
    except Exception as exc:  # a library's own error type: still one line naming the file
        raise CorruptSlideError(p, f"cannot be read ({type(exc).__name__}: {exc})") from exc


@contextmanager
def slide_for_job(slide, mpp: float | None = None):
    """The slide a job works on: a path is opened (its warnings left to the job, which reports
    a missing µm/px its own way), an open :class:`Slide` is used as it is unless ``mpp`` overrides
    its µm/px (then it is opened again with it); whatever was opened here is closed on exit."""
    import warnings

    opened = not hasattr(slide, "read_region")
    if opened:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slide = open_slide(slide, mpp=mpp)
    elif mpp is not None and slide.mpp != mpp:
        slide = open_slide(slide.path, mpp=mpp)
        opened = True
    try:
        yield slide
    finally:
        if opened:
            slide.close()


def _open(p: Path, mpp, backend) -> Slide:
    from .image_backend import ImageSlide
    from .openslide_backend import OpenSlideSlide, detect_format
    from .tiff_backend import TiffSlide
    from .zarr_backend import OmeZarrSlide, is_ome_zarr

    if not p.exists():
        raise SlideNotFoundError(p, "no such file or directory")
    backends = {
        "openslide": OpenSlideSlide,
        "tifffile": TiffSlide,
        "zarr": OmeZarrSlide,
        "image": ImageSlide,
    }
    if backend is not None:
        if backend not in backends:
            raise ValueError(f"unknown backend {backend!r}; choose from {sorted(backends)}")
        return backends[backend](p, mpp=mpp)
    if p.is_dir():
        if is_ome_zarr(p):
            return OmeZarrSlide(p, mpp=mpp)
        raise UnsupportedFormatError(p, "a directory that is not an OME-Zarr image")
    if p.stat().st_size == 0:
        raise CorruptSlideError(p, "the file is empty (0 bytes)")
    name = p.name.lower()
    if name.endswith((".ome.tif", ".ome.tiff", ".ome.btf")):
        return TiffSlide(p, mpp=mpp)
    if detect_format(p) is not None:
        return OpenSlideSlide(p, mpp=mpp)
    if name.endswith(_VENDOR_SUFFIXES):
        # A vendor slide OpenSlide does not recognise: the content is broken, not the format.
        raise CorruptSlideError(
            p,
            "has a slide file name but OpenSlide cannot recognise its content "
            "(truncated, corrupt, or not really a slide)",
        )
    if name.endswith(_TIFF_SUFFIXES) or _looks_like_tiff(p):
        return TiffSlide(p, mpp=mpp)
    return ImageSlide(p, mpp=mpp)


def _looks_like_tiff(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            return f.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
    except OSError:
        return False


# Worker processes (dask.distributed) receive pickled pyramids; each unpickled chunk task would
# re-open the slide, so handles are cached per process, keyed by everything that defines them.
_REOPEN_CACHE: OrderedDict = OrderedDict()
_REOPEN_LOCK = threading.Lock()
_REOPEN_MAX = 8


def _reopen(path: str, mpp_override: float | None, backend: str) -> Slide:
    import warnings

    key = (path, mpp_override, backend, os.getpid())
    with _REOPEN_LOCK:
        slide = _REOPEN_CACHE.get(key)
        if slide is not None and not slide._closed:
            _REOPEN_CACHE.move_to_end(key)
            return slide
    with warnings.catch_warnings():  # the opener already saw the resolution warnings
        warnings.simplefilter("ignore", MissingResolutionWarning)
        warnings.simplefilter("ignore", ImplausibleResolutionWarning)
        slide = open_slide(path, mpp=mpp_override, backend=backend)
    with _REOPEN_LOCK:
        _REOPEN_CACHE[key] = slide
        while len(_REOPEN_CACHE) > _REOPEN_MAX:
            # Not closed: tasks may still hold it; its handles are released when the last goes.
            _REOPEN_CACHE.popitem(last=False)
    return slide
