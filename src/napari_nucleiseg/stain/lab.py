"""sRGB <-> CIELAB (D65) for Reinhard normalisation, in float32 blocks with no per-pixel power
other than one cube root per channel.

The colour maths is the standard one (OpenCV's and scikit-image's, without OpenCV's 8-bit
quantisation of L, a and b): sRGB decoding through a 256-entry table, a 3×3 matrix to XYZ over
the D65 white, the CIE ``f`` (cube root with a linear toe), and back. Encoding back to 8-bit sRGB
goes through a 65,536-entry table on linear light, so no ``pow`` is evaluated per pixel either.
"""

from __future__ import annotations

import numpy as np

from .optical import SRGB_TO_LINEAR

#: Linear sRGB -> XYZ (IEC 61966-2-1), rows divided by the D65 white so that white is (1, 1, 1).
_XYZ = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_WHITE = np.array([0.950456, 1.0, 1.088754])
XYZN_FROM_LIN = _XYZ / _WHITE[:, None]
LIN_FROM_XYZN = np.linalg.inv(XYZN_FROM_LIN)
#: (L, a, b) = LAB_FROM_F @ (fx, fy, fz) + LAB_OFFSET
LAB_FROM_F = np.array([[0.0, 116.0, 0.0], [500.0, -500.0, 0.0], [0.0, 200.0, -200.0]])
LAB_OFFSET = np.array([-16.0, 0.0, 0.0])
_EPS = (6.0 / 29.0) ** 3
_DELTA = 6.0 / 29.0
_LIN32 = SRGB_TO_LINEAR.astype(np.float32)
_ENCODE_STEPS = 65535
_lin = np.linspace(0.0, 1.0, _ENCODE_STEPS + 1)
#: Linear light quantised to 1/65535 -> 8-bit sRGB (error < 0.03 of a level even near black).
_ENCODE = np.clip(
    np.rint(
        255.0 * np.where(_lin <= 0.0031308, 12.92 * _lin, 1.055 * np.power(_lin, 1 / 2.4) - 0.055)
    ),
    0,
    255,
).astype(np.uint8)
BLOCK = 1 << 16


def _mix(m: np.ndarray, cols: list[np.ndarray], offset=None) -> list[np.ndarray]:
    """``m @ cols (+ offset)`` for planar columns, as explicit multiply-adds (see sparse_nmf)."""
    out = []
    for i in range(3):
        acc = cols[0] * float(m[i, 0])
        acc += cols[1] * float(m[i, 1])
        acc += cols[2] * float(m[i, 2])
        if offset is not None and offset[i] != 0:
            acc += float(offset[i])
        out.append(acc)
    return out


def _f(t: np.ndarray) -> np.ndarray:
    cube = np.cbrt(t)
    if t.min() > _EPS:  # the usual block: nothing in the linear toe (L* < 8, near black)
        return cube
    lin = t * np.float32(1.0 / (3 * _DELTA**2)) + np.float32(4.0 / 29.0)
    m = (t > _EPS).astype(np.float32)
    lin += m * (cube - lin)
    return lin


def _f_inv(f: np.ndarray) -> np.ndarray:
    cube = f * f * f
    if f.min() > _DELTA:
        return cube
    lin = (f - np.float32(4.0 / 29.0)) * np.float32(3 * _DELTA**2)
    m = (f > _DELTA).astype(np.float32)
    lin += m * (cube - lin)
    return lin


def _f_of_pixels(px: np.ndarray) -> list[np.ndarray]:
    cols = [_LIN32.take(px[:, c]) for c in range(3)]  # planar linear light, one gather per channel
    return [_f(t) for t in _mix(XYZN_FROM_LIN, cols)]


def rgb_to_lab(pixels: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 sRGB -> (N, 3) float32 CIELAB (L in 0-100)."""
    out = np.empty(pixels.shape, np.float32)
    for s in range(0, len(pixels), BLOCK):
        f = _f_of_pixels(pixels[s : s + BLOCK])
        lab = _mix(LAB_FROM_F, f, LAB_OFFSET)
        out[s : s + BLOCK] = np.stack(lab, axis=1)
    return out


def _encode(lin_cols: list[np.ndarray], out: np.ndarray) -> None:
    for c, v in enumerate(lin_cols):
        v *= np.float32(_ENCODE_STEPS)
        v += np.float32(0.5)
        np.clip(v, 0, _ENCODE_STEPS, out=v)
        out[:, c] = _ENCODE.take(v.astype(np.int32))


def lab_affine_rgb(pixels: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``lab -> scale * lab + shift`` applied to (N, 3) uint8 sRGB pixels, returned as uint8.

    L, a and b are linear in the CIE ``f`` values, so the whole per-channel affine map in LAB is
    one 3×3 matrix plus offset on ``f``, folded here into a single mixing step per pixel.
    """
    a = LAB_FROM_F
    a_inv = np.linalg.inv(a)
    k = a_inv @ np.diag(scale) @ a
    k0 = a_inv @ (np.asarray(scale) * LAB_OFFSET + np.asarray(shift) - LAB_OFFSET)
    out = np.empty(pixels.shape, np.uint8)
    for s in range(0, len(pixels), BLOCK):
        f = _mix(k, _f_of_pixels(pixels[s : s + BLOCK]), k0)
        _encode(_mix(LIN_FROM_XYZN, [_f_inv(v) for v in f]), out[s : s + BLOCK])
    return out
