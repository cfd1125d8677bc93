"""OME-Zarr (NGFF 0.4 and 0.5) multiscale images, local directories.

The NGFF ``multiscales`` metadata is a short JSON list, read here directly so that both the 0.4
(``.zattrs``) and 0.5 (``zarr.json`` under ``ome``) layouts open with the installed zarr.
"""

from __future__ import annotations

from pathlib import Path

from .axes import display_range, read_window
from .errors import CorruptSlideError, SlideError
from .slide import Slide

_UNIT_TO_UM = {
    "micrometer": 1.0,
    "nanometer": 1e-3,
    "millimeter": 1e3,
    "centimeter": 1e4,
    "meter": 1e6,
}


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
        self._axes = "".join({"channel": "c", "time": "t"}.get(n, n[:1]) for n in names).upper()
        if len(set(self._axes)) != len(self._axes):
            raise SlideError(path, f"OME-Zarr axes {names} are ambiguous")
        if not {"Y", "X"} <= set(self._axes):
            raise SlideError(path, f"OME-Zarr axes {self._axes!r} have no y and x")
        try:
            self._arrays = [group[d["path"]] for d in ms["datasets"]]
        except KeyError as exc:
            raise CorruptSlideError(path, f"a multiscale level is missing: {exc}") from exc
        yi, xi = self._axes.index("Y"), self._axes.index("X")
        shapes = [(a.shape[yi], a.shape[xi]) for a in self._arrays]
        mpp_file = None
        xaxis = axes[xi] if isinstance(axes[xi], dict) else {}
        for t in ms["datasets"][0].get("coordinateTransformations", []):
            if t.get("type") == "scale":
                unit = xaxis.get("unit")
                if unit in _UNIT_TO_UM:
                    mpp_file = float(t["scale"][xi]) * _UNIT_TO_UM[unit]
        self._scale = display_range(self._arrays[-1], self._axes)
        super().__init__(
            path,
            format="ome-zarr",
            level_shapes=shapes,
            mpp_file=mpp_file,
            mpp_override=mpp,
            properties={
                "ngff.axes": self._axes,
                "ngff.version": str(ms.get("version", attrs.get("ome", {}).get("version", ""))),
            },
        )

    def _read_level(self, level, x, y, width, height):
        return read_window(self._arrays[level], self._axes, x, y, width, height, self._scale)
