"""OME-TIFF and plain TIFF files that OpenSlide does not take, read through tifffile.

tifffile exposes every pyramid level as a zarr store, so regions are read tile by tile without
decoding the file; that store serialises its own file access, so many threads may read at once.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from .axes import display_range, read_window
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
            raise CorruptSlideError(
                path, f"not a readable TIFF (truncated or corrupt): {exc or type(exc).__name__}"
            ) from exc
        finally:
            log.removeHandler(problems)
            log.propagate = propagate
        if problems.messages:
            self._tif.close()
            raise CorruptSlideError(
                path, "the TIFF is truncated or corrupt: " + "; ".join(problems.messages[:3])
            )
        self._axes = series.axes
        if not set("YX") <= set(self._axes):
            raise SlideError(path, f"the image has axes {self._axes!r}; a slide needs Y and X")
        try:
            store = series.aszarr()
            group = zarr.open(store, mode="r")
            self._arrays = (
                [group]
                if isinstance(group, zarr.Array)
                else [group[str(i)] for i in range(len(levels))]
            )
        except Exception as exc:
            raise CorruptSlideError(path, f"cannot read the TIFF's image data: {exc}") from exc
        shapes = []
        for arr in self._arrays:
            shp = dict(zip(self._axes, arr.shape))
            shapes.append((shp["Y"], shp["X"]))
        dtype = np.dtype(self._arrays[0].dtype)
        # Display range from the coarsest level: cheap, and representative of the slide.
        self._scale = display_range(self._arrays[-1], self._axes)
        fmt = "ome-tiff" if self._tif.is_ome else "tiff"
        super().__init__(
            path,
            format=fmt,
            level_shapes=shapes,
            mpp_file=_tiff_mpp(self._tif),
            mpp_override=mpp,
            properties={"tiff.axes": self._axes, "tiff.dtype": str(dtype)},
        )

    def _read_level(self, level, x, y, width, height):
        return read_window(self._arrays[level], self._axes, x, y, width, height, self._scale)

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
