"""OME-Zarr (NGFF 0.4 and 0.5) multiscale images, local directories.

The NGFF ``multiscales`` metadata is a short JSON list, read here directly so that both the 0.4
(``.zattrs``) and 0.5 (``zarr.json`` under ``ome``) layouts open with the installed zarr.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import CorruptSlideError, SlideError
from .slide import Slide
from .tiff_backend import _sample_index

_UNIT_TO_UM = {"micrometer": 1.0, "nanometer": 1e-3, "millimeter": 1e3, "centimeter": 1e4, "meter": 1e6}


def is_ome_zarr(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in (".zattrs", "zarr.json", ".zgroup"))


class OmeZarrSlide(Slide):
    backend = "zarr"

    def __init__(self, path: str | Path, mpp: float | None = None):
        import zarr

        path = Path(path)
        try:
            group = zarr.open_group(str(path), mode="r")
            attrs = dict(group.attrs)
        except Exception as exc:
            raise CorruptSlideError(path, f"not a readable zarr group: {exc}") from exc
        multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
        if not multiscales:
            raise SlideError(path, "zarr group has no OME-NGFF 'multiscales' metadata")
        ms = multiscales[0]
        try:
            ndim = len(group[ms["datasets"][0]["path"]].shape)
        except (KeyError, IndexError) as exc:
            raise CorruptSlideError(path, f"the first multiscale level is missing: {exc}") from exc
        axes = ms.get("axes") or [{"name": n} for n in "tczyx"[-ndim:]]
        names = [str(a["name"] if isinstance(a, dict) else a).lower() for a in axes]
        # One letter per axis from here on; NGFF allows long names such as "channel".
        self._axes = "".join({"channel": "c", "time": "t"}.get(n, n[:1]) for n in names)
        if len(set(self._axes)) != len(self._axes):
            raise SlideError(path, f"OME-Zarr axes {names} are ambiguous")
        if not {"y", "x"} <= set(self._axes):
            raise SlideError(path, f"OME-Zarr axes {self._axes!r} have no y and x")
        try:
            self._arrays = [group[d["path"]] for d in ms["datasets"]]
        except KeyError as exc:
            raise CorruptSlideError(path, f"a multiscale level is missing: {exc}") from exc
        yi, xi = self._axes.index("y"), self._axes.index("x")
        shapes = [(a.shape[yi], a.shape[xi]) for a in self._arrays]
        mpp_file = None
        xaxis = axes[xi] if isinstance(axes[xi], dict) else {}
        for t in ms["datasets"][0].get("coordinateTransformations", []):
            if t.get("type") == "scale":
                unit = xaxis.get("unit")
                if unit in _UNIT_TO_UM:
                    mpp_file = float(t["scale"][xi]) * _UNIT_TO_UM[unit]
        self._scale = None
        if np.dtype(self._arrays[0].dtype) != np.uint8:
            low = self._to_yxc(np.asarray(self._arrays[-1][_sample_index(self._arrays[-1].shape, self._axes.upper())]))
            lo, hi = float(np.percentile(low, 0.1)), float(np.percentile(low, 99.9))
            self._scale = (lo, max(hi - lo, 1e-6))
        super().__init__(
            path,
            format="ome-zarr",
            level_shapes=shapes,
            mpp_file=mpp_file,
            mpp_override=mpp,
            properties={"ngff.axes": self._axes, "ngff.version": str(ms.get("version", attrs.get("ome", {}).get("version", "")))},
        )

    def _to_yxc(self, block: np.ndarray) -> np.ndarray:
        index = tuple(slice(None) if a in "yxc" else 0 for a in self._axes)
        block = block[index]
        kept = [a for a in self._axes if a in "yxc"]
        order = [kept.index("y"), kept.index("x")] + ([kept.index("c")] if "c" in kept else [])
        block = np.transpose(block, order)
        if block.ndim == 2:
            block = block[:, :, None]
        if block.shape[2] == 1:
            block = np.repeat(block, 3, axis=2)
        elif block.shape[2] == 2:
            block = np.concatenate([block, block[:, :, :1]], axis=2)
        return block[:, :, :3]

    def _read_level(self, level, x, y, width, height):
        spans = {"y": slice(y, y + height), "x": slice(x, x + width), "c": slice(None)}
        index = tuple(spans.get(a, slice(0, 1)) for a in self._axes)
        out = self._to_yxc(np.asarray(self._arrays[level][index]))
        if self._scale is not None:
            lo, span = self._scale
            out = np.clip((out.astype(np.float32) - lo) * (255.0 / span), 0, 255)
        return np.ascontiguousarray(out, dtype=np.uint8)
