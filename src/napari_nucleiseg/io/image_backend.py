"""Plain images (PNG, JPEG, BMP, small untiled TIFF) as single-level slides.

Opening reads the header only (size, resolution) and checks the file is whole — a PNG's chunk
checksums, a JPEG's end marker — so ``nucleiseg info`` on a 144 MP PNG neither decodes it nor
holds its pixels. The pixels are decoded once, at the first read; coarser levels are added by
area averaging, each when first read, so napari can still show a large one smoothly.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np

from .errors import CorruptSlideError, SlideError, UnsupportedFormatError
from .slide import Slide

#: dpi values that image writers put in by default; they say nothing about a microscope.
_MIN_MICROSCOPE_DPI = 1000
#: Coarser levels are added while the coarsest is larger than this (×2 each).
_SMALLEST_LEVEL = 2048
#: Modes whose pixels are not intensities as they stand (palette indices, CMYK, ...).
_CONVERT = {"P": "RGBA", "PA": "RGBA", "1": "L", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB"}
_UNSUPPORTED = (
    "not an image or slide format this plugin reads (OpenSlide formats, "
    "OME-TIFF, OME-Zarr, TIFF, PNG, JPEG)"
)


def _open_image(path: Path):
    """``PIL.Image.open`` with its errors as ours. Pillow's decompression-bomb warning is
    silenced: slides are large by nature, and opening reads the header only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except UnidentifiedImageError as exc:
        raise UnsupportedFormatError(path, _UNSUPPORTED) from exc
    except Image.DecompressionBombError as exc:
        raise SlideError(
            path, f"too large for a plain image ({exc}); convert it to a tiled pyramidal TIFF"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptSlideError(path, f"the image is corrupt or truncated: {exc}") from exc


def _mpp_of(info: dict) -> float | None:
    dpi = info.get("dpi")
    try:
        if dpi and float(dpi[0]) >= _MIN_MICROSCOPE_DPI:
            return 25400.0 / float(dpi[0])
    except (TypeError, ValueError, ZeroDivisionError):
        pass
    return None


def read_header(path: Path) -> tuple[tuple[int, int], float | None, bool]:
    """``((height, width), µm/px or None, whole)`` without decoding pixels. ``whole`` is True
    when the file was checked complete here (PNG, JPEG); other formats are decoded to check."""
    img = _open_image(path)
    try:
        w, h = img.size
        mpp = _mpp_of(img.info)
        fmt = img.format
        if fmt == "PNG":
            try:
                img.verify()  # every chunk's CRC up to IEND: catches truncation, not decoding
            except Exception as exc:
                raise CorruptSlideError(path, f"the image is corrupt or truncated: {exc}") from exc
        elif fmt == "JPEG":
            _check_jpeg_end(path)
    finally:
        img.close()
    return (h, w), mpp, fmt in ("PNG", "JPEG")


def _check_jpeg_end(path: Path) -> None:
    # A cut JPEG loses its end-of-image marker; decoders then pad the rest with grey silently.
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - 1024))
        tail = f.read()
    if b"\xff\xd9" not in tail:
        raise CorruptSlideError(path, "the image is corrupt or truncated: no JPEG end marker")


def load_rgb(path: Path) -> tuple[np.ndarray, float | None]:
    """Decode an image file to RGB uint8 and return its µm/px if the file states a plausible one."""
    img = _open_image(path)
    try:
        with img:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img.load()
            mpp = _mpp_of(img.info)
            if img.mode in _CONVERT:
                img = img.convert(_CONVERT[img.mode])
            arr = np.asarray(img)
            mode = img.mode
    except SlideError:
        raise
    except MemoryError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptSlideError(path, f"the image is corrupt or truncated: {exc}") from exc
    return to_rgb_uint8(arr, mode), mpp


def to_rgb_uint8(arr: np.ndarray, mode: str = "") -> np.ndarray:
    """Grey, grey+alpha, RGBA, 16-bit and float images to RGB uint8 (alpha composited on white)."""
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        a = arr.astype(np.float32)
        if arr.dtype.kind == "f" and a.max() <= 1.0:
            a = a * 255.0
        elif arr.dtype == np.uint16 and a.size and a.max() > 4095:
            a = a / 257.0  # full-range 16-bit: the exact inverse of 8-bit * 257
        elif arr.dtype.kind in "ui":
            # 10/12-bit data in a 16-bit container, or other integer types: stretch to 8 bits.
            hi = float(np.percentile(a, 99.9)) if a.size else 1.0
            a = a * (255.0 / max(hi, 1.0)) if hi > 255 else a
        arr = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    c = arr.shape[2]
    if c in (2, 4):  # trailing alpha: composite on white glass
        alpha = arr[:, :, -1:].astype(np.float32) / 255.0
        colour = arr[:, :, :-1].astype(np.float32)
        arr = np.clip(colour * alpha + 255.0 * (1 - alpha), 0, 255).astype(np.uint8)
        c -= 1
    if c == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])


def level_shapes(shape: tuple[int, int]) -> list[tuple[int, int]]:
    """Level 0 and ×2 reductions down to about :data:`_SMALLEST_LEVEL` px. A reduction stops
    before an edge would fall under 1 px, so very thin images (3 × 50,000 px) keep valid
    levels."""
    shapes = [(int(shape[0]), int(shape[1]))]
    while max(shapes[-1]) > _SMALLEST_LEVEL and min(shapes[-1]) >= 2:
        h, w = shapes[-1]
        shapes.append((h // 2, w // 2))
    return shapes


class ImageSlide(Slide):
    backend = "image"

    def __init__(
        self,
        path: str | Path,
        mpp: float | None = None,
        *,
        array: np.ndarray | None = None,
        mpp_file: float | None = None,
    ):
        path = Path(path)
        self._levels: dict[int, np.ndarray] = {}
        # Reentrant: building level k reads level k-1 under the same lock.
        self._lock = threading.RLock()
        if array is None:
            shape, mpp_file, whole = read_header(path)
            if not whole:  # no cheap completeness check for this format: decode to check it
                array, _ = load_rgb(path)
        if array is not None:
            shape = array.shape[:2]
            self._levels[0] = array
        shapes = level_shapes(shape)
        super().__init__(
            path,
            format=path.suffix.lower().lstrip(".") or "image",
            level_shapes=shapes,
            level_downsamples=[2.0**i for i in range(len(shapes))],
            mpp_file=mpp_file,
            mpp_override=mpp,
        )

    def _level(self, level: int) -> np.ndarray:
        with self._lock:
            arr = self._levels.get(level)
            if arr is not None:
                return arr
            if level == 0:
                arr, _ = load_rgb(self.path)
                if arr.shape[:2] != self.level_shapes[0]:
                    raise CorruptSlideError(
                        self.path, "the image's pixels do not match its header's size"
                    )
            else:
                prev = self._level(level - 1)
                h, w = self.level_shapes[level]
                arr = (
                    prev[: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).mean(axis=(1, 3)).astype(np.uint8)
                )
            self._levels[level] = arr
            return arr

    def _read_level(self, level, x, y, width, height):
        # A copy: callers may write into what they get without corrupting the slide.
        return self._level(level)[y : y + height, x : x + width].copy()

    def close(self):
        with self._lock:
            self._levels.clear()  # the decoded pixels are the memory a closed slide holds
        super().close()
