"""Errors and warnings for slide access.

Every message names the file and the problem, because a pathologist sees it in a notification
with no traceback and a researcher sees it in a cohort log beside hundreds of other slides.
"""

from __future__ import annotations

from pathlib import Path


class SlideError(Exception):
    """A slide could not be opened or read. ``str()`` is the user-facing message."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class SlideNotFoundError(SlideError, FileNotFoundError):
    """The path does not exist."""


class UnsupportedFormatError(SlideError):
    """The file exists but no backend reads it (a non-image, or a format we do not support)."""


class CorruptSlideError(SlideError):
    """The format is recognised but the file is truncated, corrupt or geometrically invalid."""


class MissingResolutionWarning(UserWarning):
    """The file states no physical pixel size; measurements are in pixels until one is given."""


class ImplausibleResolutionWarning(UserWarning):
    """The file states a pixel size no microscope produces (typically a 72 dpi default)."""


class NoPyramidWarning(UserWarning):
    """A large image without reduced-resolution levels: viewing it zoomed out is slow."""
