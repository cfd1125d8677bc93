"""OME-TIFF and plain TIFF files that OpenSlide does not take, read through tifffile.

tifffile exposes every pyramid level as a zarr store, so regions are read tile by tile without
decoding the file; that store serialises its own file access, so many threads may read at once.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from .errors import CorruptSlideError, SlideError
from .slide import Slide


class TiffSlide(Slide):
    backend = "tifffile"

    def __init__(self, path: str | Path, mpp: float | None = None):
        import tifffile
        import zarr

        path = Path(path)
        # tifffile reports damaged structure through logging and carries on with what it can
        # parse; for a slide, a damaged structure means a truncated or corrupt file.
        problems = _LogCollector()
        log = logging.getLogger("tifffile")
        log.addHandler(problems)
        log.propagate, propagate = False, log.propagate
        try:
            self._tif = tifffile.TiffFile(str(path))
            series = self._tif.series[0]
            levels = list(series.levels)
        except Exception as exc:
            raise CorruptSlideError(path, f"not a readable TIFF (truncated or corrupt): {exc or type(exc).__name__}") from exc
        finally:
            log.removeHandler(problems)
            log.propagate = propagate
        if problems.messages:
            self._tif.close()
            raise CorruptSlideError(path, "the TIFF is truncated or corrupt: " + "; ".join(problems.messages[:3]))
        self._axes = series.axes
        if not set("YX") <= set(self._axes):
            raise SlideError(path, f"the image has axes {self._axes!r}; a slide needs Y and X")
        try:
            store = series.aszarr()
            group = zarr.open(store, mode="r")
            self._arrays = [group] if isinstance(group, zarr.Array) else [group[str(i)] for i in range(len(levels))]
        except Exception as exc:
            raise CorruptSlideError(path, f"cannot read the TIFF's image data: {exc}") from exc
        shapes = []
        for arr in self._arrays:
            shp = dict(zip(self._axes, arr.shape))
            shapes.append((shp["Y"], shp["X"]))
        dtype = np.dtype(self._arrays[0].dtype)
        self._scale = None
        if dtype != np.uint8:
            # Display range from the coarsest level: cheap, and representative of the slide.
            low = self._to_yxc(np.asarray(self._arrays[-1][_sample_index(self._arrays[-1].shape, self._axes)]))
            lo, hi = float(np.percentile(low, 0.1)), float(np.percentile(low, 99.9))
            self._scale = (lo, max(hi - lo, 1e-6))
        fmt = "ome-tiff" if self._tif.is_ome else "tiff"
        super().__init__(
            path,
            format=fmt,
            level_shapes=shapes,
            mpp_file=_tiff_mpp(self._tif),
            mpp_override=mpp,
            properties={"tiff.axes": self._axes, "tiff.dtype": str(dtype)},
        )

    def _to_yxc(self, block: np.ndarray) -> np.ndarray:
        axes = self._axes
        # Take the first plane of any axis other than Y, X and samples/channels.
        index = tuple(slice(None) if a in "YXSC" else 0 for a in axes)
        block = block[index]
        kept = [a for a in axes if a in "YXSC"]
        order = [kept.index("Y"), kept.index("X")] + [i for i, a in enumerate(kept) if a in "SC"]
        block = np.transpose(block, order)
        if block.ndim == 2:
            block = block[:, :, None]
        if block.shape[2] == 1:
            block = np.repeat(block, 3, axis=2)
        elif block.shape[2] > 3:
            block = block[:, :, :3]  # RGBA or extra channels: keep the colour ones
        elif block.shape[2] == 2:
            block = np.concatenate([block, block[:, :, :1]], axis=2)
        return block

    def _read_level(self, level, x, y, width, height):
        # Slice every axis (length-1 for T/Z/...) so the block keeps the file's axis order.
        spans = {"Y": slice(y, y + height), "X": slice(x, x + width)}
        index = tuple(spans.get(a, slice(None) if a in "SC" else slice(0, 1)) for a in self._axes)
        out = self._to_yxc(np.asarray(self._arrays[level][index]))
        if self._scale is not None:
            lo, span = self._scale
            out = np.clip((out.astype(np.float32) - lo) * (255.0 / span), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(out, dtype=np.uint8)

    def close(self):
        self._tif.close()
        super().close()


def _tiff_mpp(tif) -> float | None:
    """µm/px from OME-XML, an Aperio-style description, or the TIFF resolution tags."""
    if tif.is_ome and tif.ome_metadata:
        m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
        if m:
            unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
            factor = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}.get(
                unit.group(1) if unit else "µm", 1.0
            )
            return float(m.group(1)) * factor
    page = tif.pages[0]
    desc = page.description or ""
    m = re.search(r"MPP\s*=\s*([0-9.]+)", desc)
    if m:
        return float(m.group(1))
    tags = page.tags
    if "XResolution" in tags and "ResolutionUnit" in tags:
        num, den = tags["XResolution"].value
        unit = int(tags["ResolutionUnit"].value)
        if num and den and unit in (2, 3):
            px_per_unit = num / den
            return (25400.0 if unit == 2 else 10000.0) / px_per_unit
    return None


class _LogCollector(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _sample_index(shape, axes: str, size: int = 2048):
    """A centred window of at most ``size`` px in Y and X: enough pixels to set a display range,
    bounded however large the (possibly only) level is."""
    index = []
    for n, a in zip(shape, axes):
        if a in "YX" and n > size:
            start = (n - size) // 2
            index.append(slice(start, start + size))
        else:
            index.append(slice(None))
    return tuple(index)
