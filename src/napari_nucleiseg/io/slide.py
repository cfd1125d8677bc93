"""The format-independent slide object: levels, physical pixel size, region reads, lazy pyramid.

A backend (OpenSlide, tifffile, zarr, Pillow) only implements ``_read_level``: read an in-bounds
rectangle of one level as RGB uint8. Everything users touch — bounds handling, µm coordinates,
thumbnails, the dask pyramid, pickling for dask.distributed, read accounting — lives here once.

Coordinates: ``x``/``y``/``width``/``height`` are pixels of the level being read (unlike
OpenSlide, whose ``location`` is always level 0), arrays are ``(rows, cols, 3)``.
"""

from __future__ import annotations

import math
import threading
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import (
    ImplausibleResolutionWarning,
    MissingResolutionWarning,
    NoPyramidWarning,
    SlideError,
)

#: Background for areas outside the scanned image: brightfield glass is white.
BACKGROUND = 255

#: Default chunk edge of the dask pyramid. 512 px is a multiple of the common scanner tile sizes
#: (256, 512) and keeps a 1920x1080 screen at about 12 chunks.
DEFAULT_CHUNK = 512

#: A µm/px above this is no microscope (72 dpi = 352 µm/px is a TIFF writer's default).
PLAUSIBLE_MPP_MAX = 100.0
#: µm/px a user may state for level 0 (``--mpp``): from beyond a 100x objective (about 0.1) to a
#: macro photograph of a whole slide (tens of µm/px). Outside it, a typo (1e-9, 250 for 0.25).
MPP_RANGE = (0.05, 50.0)


#: Every slide object alive in this process (tests and the GUI find a layer's slide through it).
_OPEN_SLIDES: weakref.WeakSet[Slide] = weakref.WeakSet()


def open_slides() -> list[Slide]:
    """Slides currently open in this process."""
    return [s for s in list(_OPEN_SLIDES) if not s._closed]


@dataclass
class ReadStats:
    """Counts reads so tests and benchmarks can verify laziness (only visible chunks are read)."""

    chunks: int = 0
    regions: int = 0
    pixels: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, pixels: int, chunk: bool) -> None:
        with self._lock:
            self.regions += 1
            self.pixels += pixels
            if chunk:
                self.chunks += 1

    def reset(self) -> None:
        with self._lock:
            self.chunks = self.regions = self.pixels = 0


class Slide:
    """An opened slide. Use :func:`napari_nucleiseg.io.open_slide` to get one.

    Attributes
    ----------
    path : Path
        The file (or directory, for OME-Zarr) it was opened from.
    format : str
        What read it, e.g. ``"aperio"``, ``"generic-tiff"``, ``"ome-tiff"``, ``"ome-zarr"``,
        ``"png"``.
    level_shapes : tuple of (height, width)
        Pixel size of each pyramid level, finest first.
    level_downsamples : tuple of float
        Level-0 pixels per pixel of each level.
    mpp : float or None
        µm per pixel at level 0 (the override if one was given, else the file's, else None).
    mpp_source : str
        ``"override"``, ``"file"`` or ``"none"``.
    properties : dict
        The format's own metadata, as strings.
    """

    backend = "abstract"

    def __init__(
        self,
        path: str | Path,
        *,
        format: str,
        level_shapes: list[tuple[int, int]],
        level_downsamples: list[float] | None = None,
        mpp_file: float | None,
        mpp_override: float | None = None,
        properties: dict[str, str] | None = None,
        warn_resolution: bool = True,
    ):
        self.path = Path(path)
        self.format = format
        self.level_shapes = tuple((int(h), int(w)) for h, w in level_shapes)
        if not self.level_shapes:
            raise SlideError(self.path, "the file has no image levels")
        for i, (h, w) in enumerate(self.level_shapes):
            if h <= 0 or w <= 0:
                raise SlideError(self.path, f"level {i} has zero size ({w}x{h} px)")
        if level_downsamples is None:
            h0, w0 = self.level_shapes[0]
            level_downsamples = [((h0 / h) + (w0 / w)) / 2 for h, w in self.level_shapes]
        self.level_downsamples = tuple(float(d) for d in level_downsamples)
        self.properties = dict(properties or {})
        self.mpp_file = _valid_mpp(mpp_file)
        self.mpp_override = None if mpp_override is None else float(mpp_override)
        if self.mpp_override is not None and not (0 < self.mpp_override < math.inf):
            raise SlideError(
                self.path, f"the µm/px override {mpp_override!r} must be a positive number"
            )
        self.stats = ReadStats()
        self._pyramids: dict[tuple, list] = {}
        self._warned_bad_chunk = False
        self._closed = False
        _OPEN_SLIDES.add(self)
        if warn_resolution and self.mpp_override is None:
            self._warn_about_resolution()
        if max(self.level_shapes[-1]) > 16384:
            warnings.warn(
                f"{self.path}: the file has no reduced-resolution levels below "
                f"{self.level_shapes[-1][1]}x{self.level_shapes[-1][0]} px, "
                "so zoomed-out views must "
                "read the full resolution and will be slow; save it as a pyramidal TIFF",
                NoPyramidWarning,
                stacklevel=3,
            )

    # ----------------------------------------------------------------- geometry and units
    @property
    def mpp(self) -> float | None:
        return self.mpp_override if self.mpp_override is not None else self.mpp_file

    @property
    def mpp_source(self) -> str:
        if self.mpp_override is not None:
            return "override"
        return "file" if self.mpp_file is not None else "none"

    @property
    def level_count(self) -> int:
        return len(self.level_shapes)

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of level 0."""
        return self.level_shapes[0]

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0, as OpenSlide reports it."""
        h, w = self.level_shapes[0]
        return (w, h)

    def level_mpp(self, level: int) -> float | None:
        """µm per pixel of a level, or None when the slide has no resolution."""
        mpp = self.mpp
        return None if mpp is None else mpp * self.level_downsamples[level]

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level that is still at least as fine as ``downsample`` (as OpenSlide)."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * 1.001:
                best = i
        return best

    def best_level_for_mpp(self, mpp: float) -> int:
        return self.best_level_for_downsample(mpp / self._require_mpp())

    def _require_mpp(self) -> float:
        if self.mpp is None:
            raise SlideError(
                self.path,
                "the file states no µm/px, so physical coordinates are undefined; "
                "open it with an explicit resolution (mpp=..., or --mpp on the command line)",
            )
        return self.mpp

    def _warn_about_resolution(self) -> None:
        if self.mpp_file is None:
            warnings.warn(
                f"{self.path}: the file states no µm/px; sizes are in pixels until you give one "
                "(mpp=..., --mpp, or the Slide widget's override)",
                MissingResolutionWarning,
                stacklevel=3,
            )
        elif self.mpp_file > PLAUSIBLE_MPP_MAX:
            warnings.warn(
                f"{self.path}: the file states {self.mpp_file:.4g} µm/px, which no microscope "
                "produces (probably a 72 dpi default); give the real one (mpp=..., --mpp, or "
                "the Slide widget's override)",
                ImplausibleResolutionWarning,
                stacklevel=3,
            )

    # ----------------------------------------------------------------- reading
    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Backend hook: an in-bounds region of one level as (height, width, 3) uint8."""
        raise NotImplementedError

    def read_region(
        self, x: int, y: int, width: int, height: int, level: int = 0, *, _chunk: bool = False
    ) -> np.ndarray:
        """Read a region of ``level`` in that level's pixel coordinates.

        Parts outside the image are white (glass), so any rectangle may be asked for.
        """
        self._check_open()
        if not 0 <= level < self.level_count:
            raise SlideError(
                self.path, f"level {level} does not exist (the slide has {self.level_count})"
            )
        width, height = int(width), int(height)
        if width < 0 or height < 0:
            raise ValueError(f"region size must be non-negative, got {width}x{height}")
        x, y = int(x), int(y)
        lh, lw = self.level_shapes[level]
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, lw), min(y + height, lh)
        inside = (x0, y0, x1, y1) == (x, y, x + width, y + height)
        data = None
        if x1 > x0 and y1 > y0:
            try:
                data = self._read_level(level, x0, y0, x1 - x0, y1 - y0)
            except SlideError:
                raise
            except Exception as exc:  # the native libraries raise their own types; name the file
                raise SlideError(
                    self.path,
                    f"could not read level {level} region x={x0} y={y0} {x1 - x0}x{y1 - y0}: {exc}",
                ) from exc
        self.stats.record(width * height, _chunk)
        if inside and data is not None:  # the common case: no padding, no extra copy
            return data
        out = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
        if data is not None:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = data
        return out

    def read_region_um(
        self, x_um: float, y_um: float, width_um: float, height_um: float, mpp: float | None = None
    ) -> np.ndarray:
        """Read a region given in µm from the slide origin, resampled to ``mpp`` µm/px.

        The source level is the coarsest one at least as fine as ``mpp`` (never upsampled from a
        coarser level), and the resampling is an area average, so the result matches what a
        scanner at that resolution would record.
        """
        base = self._require_mpp()
        mpp = base if mpp is None else float(mpp)
        out_w = max(1, round(width_um / mpp))
        out_h = max(1, round(height_um / mpp))
        level = self.best_level_for_mpp(mpp)
        lmpp = base * self.level_downsamples[level]
        lx, ly = x_um / lmpp, y_um / lmpp
        x0, y0 = math.floor(lx), math.floor(ly)
        x1, y1 = math.ceil(lx + width_um / lmpp), math.ceil(ly + height_um / lmpp)
        region = self.read_region(x0, y0, max(1, x1 - x0), max(1, y1 - y0), level)
        if region.shape[:2] == (out_h, out_w):
            return region
        from PIL import Image

        box = (lx - x0, ly - y0, lx - x0 + width_um / lmpp, ly - y0 + height_um / lmpp)
        resample = Image.Resampling.BOX if out_w < region.shape[1] else Image.Resampling.BILINEAR
        img = Image.fromarray(region).resize((out_w, out_h), resample=resample, box=box)
        return np.asarray(img)

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """The whole slide, fitted into ``max_size`` px, read from the coarsest adequate level."""
        h0, w0 = self.shape
        downsample = max(h0, w0) / max_size
        level = self.best_level_for_downsample(max(downsample, 1.0))
        lh, lw = self.level_shapes[level]
        scale = max_size / max(lh, lw)
        if scale >= 1:
            return self.read_region(0, 0, lw, lh, level)
        from PIL import Image

        size = (max(1, round(lw * scale)), max(1, round(lh * scale)))
        if lh * lw <= 4096 * 4096:
            region = self.read_region(0, 0, lw, lh, level)
            return np.asarray(Image.fromarray(region).resize(size, Image.Resampling.BOX))
        # No level near the requested size (a pyramid-less file): shrink strip by strip so memory
        # stays at one strip, however large the level is.
        strip = max(1, int(4096 * 4096 // lw))
        rows_per_out = lh / size[1]
        out = np.empty((size[1], size[0], 3), np.uint8)
        y_out = 0
        while y_out < size[1]:
            n_out = max(1, int(strip // rows_per_out))
            y1_out = min(size[1], y_out + n_out)
            y0, y1 = round(y_out * rows_per_out), round(y1_out * rows_per_out)
            region = self.read_region(0, y0, lw, max(1, y1 - y0), level)
            out[y_out:y1_out] = np.asarray(
                Image.fromarray(region).resize((size[0], y1_out - y_out), Image.Resampling.BOX)
            )
            y_out = y1_out
        return out

    # ----------------------------------------------------------------- lazy pyramid
    def pyramid(self, chunk: int = DEFAULT_CHUNK, on_error: str = "raise") -> list:
        """One lazy dask array ``(rows, cols, 3)`` uint8 per level, finest first.

        Chunks are read on demand, from any number of threads; the arrays pickle (the slide is
        re-opened by path in the receiving process), so the same graph runs on dask.distributed.
        ``on_error="warn"`` turns an unreadable chunk (a damaged tile) into glass plus one warning
        per slide — for viewing, where one bad tile must not break the display; computations keep
        the default ``"raise"``.
        """
        self._check_open()
        if on_error not in ("raise", "warn"):
            raise ValueError(f"on_error must be 'raise' or 'warn', got {on_error!r}")
        key = (chunk, on_error)
        if key not in self._pyramids:
            import dask.array as da

            levels = []
            for level in range(self.level_count):
                proxy = _LevelArray(self, level, on_error)
                levels.append(
                    da.from_array(
                        proxy,
                        chunks=(chunk, chunk, 3),
                        name=f"slide-{self._token()}-l{level}-c{chunk}-{on_error}",
                        asarray=False,
                        fancy=False,
                        lock=False,
                        inline_array=True,
                        meta=np.empty((0, 0, 3), dtype=np.uint8),
                    )
                )
            self._pyramids[key] = levels
        return list(self._pyramids[key])

    def _token(self) -> str:
        import hashlib

        try:
            st = self.path.stat()
            stamp = f"{st.st_size}-{st.st_mtime_ns}"
        except OSError:
            stamp = "0"
        key = f"{self.path.resolve()}|{stamp}|{self.backend}".encode()
        return hashlib.sha1(key).hexdigest()[:16]

    # ----------------------------------------------------------------- metadata, lifecycle
    def metadata(self) -> dict[str, Any]:
        """Plain-data description, stored on napari layers and in result stores."""
        return {
            "path": str(self.path),
            "format": self.format,
            "backend": self.backend,
            "level_shapes": [list(s) for s in self.level_shapes],
            "level_downsamples": list(self.level_downsamples),
            "mpp": self.mpp,
            "mpp_source": self.mpp_source,
            "mpp_file": self.mpp_file,
        }

    def describe(self) -> str:
        """A short human-readable summary (the CLI's ``info`` and the Slide widget show it)."""
        mpp = "unknown" if self.mpp is None else f"{self.mpp:.4g} µm/px ({self.mpp_source})"
        lines = [f"{self.path.name}  [{self.format}]  {mpp}"]
        for i, ((h, w), d) in enumerate(zip(self.level_shapes, self.level_downsamples)):
            lm = self.level_mpp(i)
            unit = "" if lm is None else f"  {lm:.4g} µm/px"
            lines.append(f"  level {i}: {w} x {h} px  downsample {d:.4g}{unit}")
        return "\n".join(lines)

    def _check_open(self) -> None:
        if self._closed:
            raise SlideError(self.path, "the slide has been closed")

    def close(self) -> None:
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __reduce__(self):
        # Native handles do not pickle; a worker process re-opens the file by path (cached there).
        from . import _reopen

        return (_reopen, (str(self.path), self.mpp_override, self.backend))

    def __repr__(self) -> str:
        h, w = self.shape
        return (
            f"<{type(self).__name__} {self.path.name!r} {w}x{h} "
            f"levels={self.level_count} mpp={self.mpp}>"
        )


class _LevelArray:
    """Array-like view of one level for ``dask.array.from_array``: slicing reads the region."""

    def __init__(self, slide: Slide, level: int, on_error: str = "raise"):
        self.slide = slide
        self.level = level
        self.on_error = on_error
        h, w = slide.level_shapes[level]
        self.shape = (h, w, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (3 - len(key))
        ys, xs, cs = key
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        try:
            region = self.slide.read_region(
                x0, y0, max(0, x1 - x0), max(0, y1 - y0), self.level, _chunk=True
            )
        except SlideError as exc:
            if self.on_error == "raise":
                raise
            if not self.slide._warned_bad_chunk:
                self.slide._warned_bad_chunk = True
                warnings.warn(
                    f"{exc} (shown as glass; the file is damaged)", RuntimeWarning, stacklevel=2
                )
            region = np.full((max(0, y1 - y0), max(0, x1 - x0), 3), BACKGROUND, np.uint8)
        return region[:, :, cs]


def _valid_mpp(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None
