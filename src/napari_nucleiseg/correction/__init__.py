"""Corrections to nuclei labels (delete, add, merge, split), shared by the panel and scripts."""

from .edits import EditError, add, delete, fresh_id, merge, split

__all__ = ["EditError", "add", "delete", "fresh_id", "merge", "split"]
