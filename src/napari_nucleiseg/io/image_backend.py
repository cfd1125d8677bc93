"""Plain images (PNG, JPEG, BMP, small untiled TIFF) as single-level slides.

These are small by nature (a camera frame, a data-set tile), so they are decoded once into memory;
coarser levels are added lazily by area averaging so napari can still show a large one smoothly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import CorruptSlideError, UnsupportedFormatError
from .slide import Slide

#: dpi values that image writers put in by default; they say nothing about a microscope.
_MIN_MICROSCOPE_DPI = 1000


def load_rgb(path: Path) -> tuple[np.ndarray, float | None]:
    """Decode an image file to RGB uint8 and return its µm/px if the file states a plausible one."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            dpi = img.info.get("dpi")
            arr = np.asarray(img)
            mode = img.mode
    except UnidentifiedImageError as exc:
        raise UnsupportedFormatError(
            path,
            "not an image or slide format this plugin reads (OpenSlide formats, "
            "OME-TIFF, OME-Zarr, TIFF, PNG, JPEG)",
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptSlideError(path, f"the image is corrupt or truncated: {exc}") from exc
    rgb = to_rgb_uint8(arr, mode)
    mpp = None
    if dpi and float(dpi[0]) >= _MIN_MICROSCOPE_DPI:
        mpp = 25400.0 / float(dpi[0])
    return rgb, mpp


def to_rgb_uint8(arr: np.ndarray, mode: str = "") -> np.ndarray:
    """Grey, grey+alpha, RGBA, 16-bit and float images to RGB uint8 (alpha composited on white)."""
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
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
        if array is None:
            array, mpp_file = load_rgb(path)
        self._levels = [array]
        # Add ×2 levels down to ~1024 px: the pixels are in memory already, so this is cheap.
        while max(self._levels[-1].shape[:2]) > 2048:
            prev = self._levels[-1]
            h, w = prev.shape[0] // 2 * 2, prev.shape[1] // 2 * 2
            self._levels.append(
                prev[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).astype(np.uint8)
            )
        super().__init__(
            path,
            format=path.suffix.lower().lstrip(".") or "image",
            level_shapes=[lv.shape[:2] for lv in self._levels],
            level_downsamples=[2.0**i for i in range(len(self._levels))],
            mpp_file=mpp_file,
            mpp_override=mpp,
        )

    def _read_level(self, level, x, y, width, height):
        # A copy: callers may write into what they get without corrupting the slide.
        return self._levels[level][y : y + height, x : x + width].copy()
