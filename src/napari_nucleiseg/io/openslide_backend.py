"""Slides read by OpenSlide: Aperio .svs, Hamamatsu .ndpi, MIRAX .mrxs, Leica .scn, generic tiled
TIFF, DICOM WSI and the other vendor formats it knows.

Why a handle per thread: an OpenSlide handle becomes unusable after any read error and must not be
used across ``fork``; one handle per reading thread (dask's pool, napari's slicer) isolates
failures and lets JPEG decoding run in parallel, while a single shared ``OpenSlideCache`` keeps the
decoded-tile memory bounded whatever the number of threads.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from .errors import CorruptSlideError, SlideError
from .slide import BACKGROUND, Slide

#: Decoded-tile cache shared by all handles of all slides in this process.
CACHE_BYTES = 64 * 1024 * 1024
_shared_cache = None
_cache_lock = threading.Lock()


def _cache():
    global _shared_cache
    with _cache_lock:
        if _shared_cache is None:
            import openslide

            _shared_cache = openslide.OpenSlideCache(CACHE_BYTES)
        return _shared_cache


def detect_format(path: Path) -> str | None:
    import openslide

    try:
        return openslide.OpenSlide.detect_format(str(path))
    except Exception:  # detection of an unreadable file is "not ours", the caller reports it
        return None


#: Seconds close() waits for reads still going on in other threads.
CLOSE_WAIT_S = 30.0


class OpenSlideSlide(Slide):
    backend = "openslide"

    def __init__(self, path: str | Path, mpp: float | None = None):
        import openslide

        path = Path(path)
        self._exact_levels = None
        self._handles: dict[int, openslide.OpenSlide] = {}
        self._handles_lock = threading.Lock()
        # Reads going on in other threads: close() waits for them, because closing a handle
        # that a read is using aborts the process inside OpenSlide (Ctrl-C while dask's threads
        # read: "_openslide_tiffcache_destroy: assertion failed").
        self._reading = 0
        self._read_done = threading.Condition(self._handles_lock)
        self._pid = os.getpid()
        try:
            first = openslide.OpenSlide(str(path))
        except openslide.OpenSlideUnsupportedFormatError as exc:
            raise SlideError(path, f"OpenSlide does not support this file: {exc}") from exc
        except openslide.OpenSlideError as exc:
            raise CorruptSlideError(path, f"the slide is corrupt or truncated: {exc}") from exc
        first.set_cache(_cache())
        self._handles[threading.get_ident()] = first
        props = dict(first.properties)
        vendor = props.get("openslide.vendor", "openslide")
        mpp_file = None
        if "openslide.mpp-x" in props and "openslide.mpp-y" in props:
            mpp_file = (float(props["openslide.mpp-x"]) + float(props["openslide.mpp-y"])) / 2
        bg = props.get("openslide.background-color")
        self._background = (
            np.array([int(bg[i : i + 2], 16) for i in (0, 2, 4)], np.uint8) if bg else None
        )
        super().__init__(
            path,
            format=vendor,
            level_shapes=[(h, w) for (w, h) in first.level_dimensions],
            level_downsamples=list(first.level_downsamples),
            mpp_file=mpp_file,
            mpp_override=mpp,
            properties=props,
        )
        self._exact_levels = _exact_level_reader(
            path, vendor, self.level_shapes, self.level_downsamples
        )
        # A truncated file often opens (the header is intact) and fails on its last tiles. Probing
        # the first and last tile of the finest and coarsest levels turns most such failures into
        # a clear error now rather than a broken tile mid-session, for a few tile decodes.
        try:
            for level in {0, self.level_count - 1}:
                lh, lw = self.level_shapes[level]
                for x, y in ((0, 0), (max(lw - 64, 0), max(lh - 64, 0))):
                    self._read_level(level, x, y, min(64, lw), min(64, lh))
        except Exception as exc:
            self.close()
            if "can not handle" in str(exc).lower():  # libtiff: intact, not RGB (a label map)
                raise SlideError(
                    path,
                    f"not an RGB image ({str(exc).split(': ')[-1]}): a label map or another "
                    "non-colour TIFF, not a slide",
                ) from exc
            raise CorruptSlideError(path, f"the slide is corrupt or truncated: {exc}") from exc

    def _handle(self):
        import openslide

        if os.getpid() != self._pid:  # forked: inherited handles are not ours to use
            with self._handles_lock:
                self._handles = {}
                self._pid = os.getpid()
        tid = threading.get_ident()
        h = self._handles.get(tid)
        if h is None:
            self._check_open()
            h = openslide.OpenSlide(str(self.path))
            h.set_cache(_cache())
            with self._handles_lock:
                self._handles[tid] = h
        return h

    def _read_level(self, level, x, y, width, height):
        if level and self._exact_levels is not None:
            return self._exact_levels(level, x, y, width, height)
        ds = self.level_downsamples[level]
        loc = (int(round(x * ds)), int(round(y * ds)))
        with self._handles_lock:
            self._check_open()
            self._reading += 1
        try:
            h = self._handle()
            argb = _read_argb(h, loc, level, width, height)
        except Exception:
            # The handle is now in an error state: drop it so the next read starts clean.
            with self._handles_lock:
                self._handles.pop(threading.get_ident(), None)
            raise
        finally:
            with self._read_done:
                self._reading -= 1
                self._read_done.notify_all()
        return _argb_to_rgb(argb, BACKGROUND if self._background is None else self._background)

    def associated_images(self) -> list[str]:
        return list(self._handle().associated_images.keys())

    def close(self):
        super().close()  # first: no read starts from now on
        with self._read_done:
            idle = self._read_done.wait_for(lambda: self._reading == 0, CLOSE_WAIT_S)
            # Still reading after that: the handles are left open (a leak until the process
            # ends) rather than closed under a read (an abort).
            handles, self._handles = (list(self._handles.values()) if idle else []), {}
        if idle and self._exact_levels is not None:
            self._exact_levels.tif.close()
        for h in handles:
            h.close()


def _read_argb(handle, loc, level, width, height) -> np.ndarray:
    """OpenSlide's premultiplied ARGB straight into a numpy buffer.

    openslide-python's public ``read_region`` converts to RGBA in place and wraps a PIL image that
    ``np.asarray`` then copies; reading into our own buffer skips both, so one pass (the RGB copy)
    remains. Falls back to the public call if the binding's internals change.
    """
    from ctypes import POINTER, c_uint32

    from openslide import lowlevel

    buf = np.empty((height, width), np.uint32)
    reader = getattr(lowlevel, "_read_region", None)
    osr = getattr(handle, "_osr", None)
    if reader is None or osr is None:  # pragma: no cover - other binding versions
        rgba = np.asarray(handle.read_region(loc, level, (width, height)))
        a = rgba[:, :, 3:4].astype(np.uint32)
        # Back to premultiplied ARGB so one conversion path serves both.
        rgb = (rgba[:, :, :3].astype(np.uint32) * a // 255).astype(np.uint32)
        buf[:] = (a[:, :, 0] << 24) | (rgb[:, :, 0] << 16) | (rgb[:, :, 1] << 8) | rgb[:, :, 2]
        return buf
    reader(osr, buf.ctypes.data_as(POINTER(c_uint32)), loc[0], loc[1], level, width, height)
    return buf


def _argb_to_rgb(argb: np.ndarray, background) -> np.ndarray:
    """Premultiplied ARGB (native uint32) to RGB uint8; transparent pixels become background."""
    import sys

    b = argb.view(np.uint8).reshape(*argb.shape, 4)
    order = (2, 1, 0, 3) if sys.byteorder == "little" else (1, 2, 3, 0)  # byte index of R, G, B, A
    # Three plane copies: ~8x faster than one copy through a negative-stride view.
    rgb = np.empty((*argb.shape, 3), np.uint8)
    for c in range(3):
        rgb[:, :, c] = b[:, :, order[c]]
    alpha = b[:, :, order[3]]
    if (argb < np.uint32(0xFF000000)).any() if sys.byteorder == "little" else alpha.min() < 255:
        partial = (alpha > 0) & (alpha < 255)
        if partial.any():  # undo premultiplication at the (rare) semi-transparent edges
            a = alpha[partial].astype(np.float32)[:, None]
            rgb[partial] = np.clip(rgb[partial].astype(np.float32) * 255.0 / a, 0, 255).astype(
                np.uint8
            )
        rgb[alpha == 0] = background
    return rgb


def _exact_level_reader(path: Path, vendor: str, shapes, downsamples):
    """Pixel-exact reads of coarse levels for TIFF-based slides, or None.

    OpenSlide addresses every level in level-0 coordinates; with a non-integer downsample
    (4.016, 2.0005, ...) a chunk's origin falls between pixels and OpenSlide resamples it with an
    offset that differs from chunk to chunk, so neighbouring chunks disagree at their seam. For
    Aperio and generic TIFF files the levels are plain tiled TIFF pages that tifffile reads
    exactly; it is used when its level geometry matches OpenSlide's.
    """
    if vendor not in ("aperio", "generic-tiff") or all(
        abs(d - round(d)) < 1e-9 for d in downsamples
    ):
        return None
    try:
        import tifffile
        import zarr

        tif = tifffile.TiffFile(str(path))
        series = tif.series[0]
        levels = list(series.levels)
        if series.axes != "YXS" or [lv.shape[:2] for lv in levels] != [tuple(s) for s in shapes]:
            tif.close()
            return None
        group = zarr.open(series.aszarr(), mode="r")
        arrays = [group[str(i)] for i in range(len(levels))]
        arrays[-1][:1, :1]  # decodable here (codec available), or fall back to OpenSlide
    except Exception:
        return None

    def read(level, x, y, width, height):
        return np.ascontiguousarray(
            arrays[level][y : y + height, x : x + width, :3], dtype=np.uint8
        )

    read.tif = tif
    return read
