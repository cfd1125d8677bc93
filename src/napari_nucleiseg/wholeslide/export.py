"""Nucleus outlines as GeoJSON that QuPath imports as detections, and per-nucleus tables (CSV,
Parquet), written as streams so a slide's millions of nuclei never sit in memory together.

GeoJSON conventions (QuPath 0.4+ ``File > Import objects``, also read by shapely/geopandas):
a ``FeatureCollection`` of ``Feature`` objects with a ``Polygon`` geometry in **level-0 pixel
coordinates** of the slide, where pixel ``(i, j)`` covers ``[j, j+1) × [i, i+1)`` (QuPath's ROI
convention; outlines run along pixel edges, so a one-pixel nucleus is a unit diamond around its
centre); ``id`` is a UUID (QuPath keeps it as the object's id; ours is derived from the slide and
the label, so re-exports are identical); ``properties.objectType = "detection"``,
``classification = {"name": "Nucleus", "color": [r, g, b]}``, and ``measurements`` a flat
name → number map (QuPath's measurement list). The label id is also the ``name``.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..segmentation.measure import COLUMNS

#: Fixed namespace for nucleus UUIDs (uuid5 of this and "<seed>:<label>").
_NAMESPACE = uuid.UUID("5b0e3d0c-6f0e-4a57-9c1e-6e75636c6569")
CLASS_NAME = "Nucleus"
CLASS_COLOR = [0, 170, 255]


# --------------------------------------------------------------------------- outlines
def outline(mask: np.ndarray) -> np.ndarray:
    """Exterior ring ``(k, 2)`` of ``(row, col)`` around the largest part of a boolean mask.

    Marching squares at 0.5 on the zero-padded mask: vertices sit on pixel edges (half-integers),
    the ring never crosses itself (saddles are resolved one way throughout), and ``"high"``
    connectivity keeps diagonally touching pixels in one ring. Coordinates are in ``mask`` pixels.
    """
    from skimage.measure import find_contours

    padded = np.pad(mask.astype(np.uint8), 1)
    rings = find_contours(padded, 0.5, fully_connected="high")
    if not rings:
        return np.zeros((0, 2))
    # The outer ring of the largest part has the largest enclosed area (holes lie inside it).
    areas = [abs(_signed_area(r)) for r in rings]
    ring = rings[int(np.argmax(areas))] - 1.0
    if _signed_area(ring) < 0:  # one orientation throughout (counter-clockwise in x, y numbers)
        ring = ring[::-1]
    return ring


def _signed_area(ring_rc: np.ndarray) -> float:
    y, x = ring_rc[:, 0], ring_rc[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def outlines(labels: np.ndarray, ids=None, offset=(0, 0)) -> list[np.ndarray]:
    """Rings ``(k, 2)`` of ``(x, y)`` in slide level-0 pixel coordinates (pixel ``(i, j)`` spans
    ``[j, j+1) × [i, i+1)``), one per id of ``ids`` (default: 1..max), in that order."""
    labels = np.asarray(labels)
    n = int(labels.max()) if labels.size else 0
    ids = np.arange(1, n + 1) if ids is None else np.asarray(ids)
    slices = ndi.find_objects(labels, max_label=max(n, int(ids.max()) if len(ids) else 0))
    ox, oy = offset
    out = []
    for i in ids:
        sl = slices[int(i) - 1] if 0 < i <= len(slices) else None
        if sl is None:
            out.append(np.zeros((0, 2)))
            continue
        rc = outline(labels[sl] == i)
        # Pixel centres are at +0.5 in QuPath's continuous coordinates.
        xy = np.stack(
            [rc[:, 1] + sl[1].start + ox + 0.5, rc[:, 0] + sl[0].start + oy + 0.5], axis=1
        )
        out.append(xy)
    return out


# --------------------------------------------------------------------------- GeoJSON
def _number(v):
    v = float(v)
    return None if not np.isfinite(v) else round(v, 6)


def feature(ring_xy: np.ndarray, label: int, measurements: dict, id_seed: str = "") -> dict:
    coords = ring_xy.tolist()
    if coords and coords[0] != coords[-1]:
        coords.append(coords[0])
    return {
        "type": "Feature",
        "id": str(uuid.uuid5(_NAMESPACE, f"{id_seed}:{int(label)}")),
        "geometry": {"type": "Polygon", "coordinates": [coords]},
        "properties": {
            "objectType": "detection",
            "name": str(int(label)),
            "classification": {"name": CLASS_NAME, "color": CLASS_COLOR},
            "measurements": {k: _number(v) for k, v in measurements.items()},
        },
    }


class GeoJSONWriter:
    """Streams features into a FeatureCollection file; the file appears (atomically) on close."""

    def __init__(self, path, id_seed: str = ""):
        self.path = Path(path)
        self.id_seed = id_seed
        self.tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        self.f = open(self.tmp, "w", encoding="utf-8")
        self.f.write('{"type": "FeatureCollection", "features": [\n')
        self.count = 0

    def add(self, table: dict, rings: list[np.ndarray]) -> None:
        cols = [c for c in COLUMNS if c != "label"]
        for k, ring in enumerate(rings):
            if len(ring) < 3:  # an id without pixels (deleted, merged away): no polygon at all
                continue
            label = int(table["label"][k])
            meas = {"label": label, **{c: table[c][k] for c in cols}}
            if self.count:
                self.f.write(",\n")
            self.f.write(
                json.dumps(feature(ring, label, meas, self.id_seed), separators=(",", ":"))
            )
            self.count += 1

    def close(self) -> None:
        import os

        try:
            self.f.write("\n]}\n")
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
            os.replace(self.tmp, self.path)
        except BaseException:  # e.g. the disk filled on the last write: no temporary is left
            self.abort()
            raise

    def abort(self) -> None:
        try:
            self.f.close()
        except OSError:  # flushing the buffer into a full disk fails again; the file goes anyway
            pass
        self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        self.abort() if exc_type else self.close()


def export_geojson(
    labels_or_store,
    path,
    mpp: float | None = None,
    offset=(0, 0),
    table: dict | None = None,
    id_seed: str | None = None,
) -> int:
    """Write nucleus outlines as QuPath-importable GeoJSON; returns the number of features.

    ``labels_or_store`` is a label array (e.g. a current-view result; ``offset`` = its ``(x, y)``
    in slide level-0 pixels) or a finished whole-slide result store (its GeoJSON is copied).
    ``table`` (from :func:`~napari_nucleiseg.segmentation.measure.measure_nuclei`) supplies the
    measurements; without it shape measurements are computed from the labels at ``mpp``.
    ``id_seed`` makes the feature UUIDs (default: from ``offset``, so two views' nuclei differ).
    """
    import shutil

    from .store import read_attrs

    path = Path(path)
    if isinstance(labels_or_store, (str, Path)):
        meta = read_attrs(labels_or_store).get("nucleiseg", {})
        src = meta.get("outputs", {}).get("geojson")
        src = src.get("file") if isinstance(src, dict) else src  # {file, bytes, sha256} since 4
        if not meta.get("finished") or not src:
            raise ValueError(
                f"{labels_or_store}: the whole-slide job has not finished; no outlines yet"
            )
        src = Path(labels_or_store).parent / src
        if src.resolve() != path.resolve():
            shutil.copyfile(src, path)
        return int(meta.get("summary", {}).get("nuclei", 0))
    labels = np.asarray(labels_or_store)
    if table is None:
        if mpp is None:
            raise ValueError("give mpp (µm/px) or a measurement table")
        from ..segmentation.measure import measure_nuclei

        table = measure_nuclei(labels, None, mpp, origin_px=offset)
    if id_seed is None:
        id_seed = f"view:{int(offset[0])},{int(offset[1])}"
    with GeoJSONWriter(path, id_seed) as w:
        w.add(table, outlines(labels, table["label"], offset))
    return w.count


# --------------------------------------------------------------------------- tables
def _csv_rows(table: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    cols = [table[c] for c in COLUMNS[1:]]
    for i in range(len(table["label"])):
        w.writerow([int(table["label"][i])] + [f"{float(c[i]):.6g}" for c in cols])
    return buf.getvalue()


class TableWriter:
    """Streams per-nucleus rows into ``.csv`` and ``.parquet`` files (either may be None), in
    :data:`~napari_nucleiseg.segmentation.measure.COLUMNS` order with the same number format as
    ``nucleiseg segment``'s CSV. Files appear atomically on close."""

    ROW_GROUP = 65536

    def __init__(self, csv_path=None, parquet_path=None, label_type: str = "uint32"):
        self.paths = [Path(p) if p else None for p in (csv_path, parquet_path)]
        self.tmps = [
            p.with_name(f".{p.name}.{uuid.uuid4().hex}.tmp") if p else None for p in self.paths
        ]
        self.label_type = label_type
        self.count = 0
        self._csv = None
        self._pq = None
        self._buffer: list[dict] = []
        self._buffered = 0
        try:
            if self.tmps[0] is not None:
                self._csv = open(self.tmps[0], "w", newline="", encoding="utf-8")
                self._csv.write(",".join(COLUMNS) + "\r\n")
            if self.tmps[1] is not None:
                import pyarrow as pa
                import pyarrow.parquet as pq

                self._schema = pa.schema(
                    [
                        (c, getattr(pa, label_type)() if c == "label" else pa.float64())
                        for c in COLUMNS
                    ]
                )
                self._pq = pq.ParquetWriter(str(self.tmps[1]), self._schema, compression="zstd")
        except BaseException:  # the CSV's temporary exists already: it must not stay
            self.abort()
            raise

    def add(self, table: dict) -> None:
        n = len(table["label"])
        if not n:
            return
        if self._csv is not None:
            self._csv.write(_csv_rows(table))
        if self._pq is not None:
            self._buffer.append(table)
            self._buffered += n
            if self._buffered >= self.ROW_GROUP:
                self._flush()
        self.count += n

    def _flush(self) -> None:
        import pyarrow as pa

        if not self._buffer:
            return
        cols = {c: np.concatenate([np.asarray(t[c]) for t in self._buffer]) for c in COLUMNS}
        cols["label"] = cols["label"].astype(self.label_type)
        self._pq.write_table(pa.table({c: cols[c] for c in COLUMNS}, schema=self._schema))
        self._buffer, self._buffered = [], 0

    def close(self) -> None:
        import os

        try:
            if self._csv is not None:
                self._csv.flush()
                os.fsync(self._csv.fileno())
                self._csv.close()
            if self._pq is not None:
                self._flush()
                self._pq.close()
            for tmp, path in zip(self.tmps, self.paths):
                if tmp is not None:
                    os.replace(tmp, path)
        except BaseException:  # e.g. the disk filled on the last rows: no temporary is left
            self.abort()
            raise

    def abort(self) -> None:
        if self._csv is not None:
            try:
                self._csv.close()
            except OSError:  # flushing into a full disk fails again; the file goes anyway
                pass
        if self._pq is not None:
            try:
                self._pq.close()
            except Exception:  # already broken (e.g. disk full): the temporary goes anyway
                pass
        for tmp in self.tmps:
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        self.abort() if exc_type else self.close()


def write_table(table: dict, path) -> None:
    """Write a measurement table to ``path`` (``.csv`` or ``.parquet``, by suffix)."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        label_type = (
            "uint64" if len(table["label"]) and int(np.max(table["label"])) >= 2**32 else "uint32"
        )
        with TableWriter(None, path, label_type) as w:
            w.add(table)
    elif path.suffix.lower() == ".csv":
        with TableWriter(path, None) as w:
            w.add(table)
    else:
        raise ValueError(f"{path}: unknown table format (use .csv or .parquet)")


def read_table(path) -> dict:
    """A table written by :class:`TableWriter` or :func:`write_table`, as column arrays."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        t = pq.read_table(path)
        return {c: t.column(c).to_numpy() for c in t.column_names}
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    return {
        c: np.array([int(r[0]) for r in body], np.uint64)
        if c == "label"
        else np.array([float(r[i]) for r in body])
        for i, c in enumerate(header)
    }


def export_table(
    labels: np.ndarray, path, mpp: float, rgb: np.ndarray | None = None, offset=(0, 0)
) -> dict:
    """Measure the nuclei of a label array (e.g. the current view, whose pixel ``(0, 0)`` is at
    ``offset`` in slide level-0 pixels) and write the table (``.csv`` or ``.parquet``). Returns
    it."""
    from ..segmentation.measure import measure_nuclei

    table = measure_nuclei(labels, rgb, mpp, origin_px=offset)
    write_table(table, path)
    return table
