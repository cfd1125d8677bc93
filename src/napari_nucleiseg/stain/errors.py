"""The one error stain fitting and profile loading raise: a message a user can act on."""

from __future__ import annotations

from pathlib import Path


class StainError(ValueError):
    """Fitting is impossible on this image, or a profile file is unusable.

    ``str()`` names the file (when there is one) and the problem, like
    :class:`napari_nucleiseg.io.SlideError`, so the CLI prints it as one line and the GUI as one
    notification.
    """

    def __init__(self, problem: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")

    def for_path(self, path: str | Path) -> StainError:
        """The same problem, now naming the file it came from."""
        return StainError(self.problem, path)
