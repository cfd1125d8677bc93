"""Whole slides and whole cohorts: every nucleus, streamed to an OME-Zarr labels pyramid, a table
(CSV, Parquet) and QuPath GeoJSON; resumable, memory-flat, on threads or a dask cluster."""

from .export import export_geojson, export_table, outlines, read_table, write_table
from .job import JobInterrupted, SlideProgress, segment_slide
from .store import (
    DiskFullError,
    StoreLockedError,
    StoreMismatchError,
    StoreRepairWarning,
    open_labels,
    store_path,
)
from .tasks import DamagedRecordError

__all__ = [
    "segment_slide",
    "SlideProgress",
    "open_labels",
    "export_geojson",
    "export_table",
    "write_table",
    "read_table",
    "outlines",
    "store_path",
    "StoreMismatchError",
    "DiskFullError",
    "StoreLockedError",
    "StoreRepairWarning",
    "DamagedRecordError",
    "JobInterrupted",
]
