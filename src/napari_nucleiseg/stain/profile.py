"""A fitted stain profile: the few numbers that describe a lab's target colours, as small JSON.

A lab fits a profile once on a reference image it likes (``nucleiseg normalize ... --save-profile``)
and shares the file; everyone then normalises to the same colours without the reference image.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import StainError

#: The classical stain normalisers, in the order the interfaces offer them: the one list every face
#: (CLI choices, Stain panel, messages, profiles) imports.
STAIN_METHODS = ("macenko", "reinhard", "vahadane", "ruifrok")
METHODS = STAIN_METHODS  # the older name, kept for scripts
FORMAT = "napari-nucleiseg stain profile"
VERSION = 1


@dataclass
class StainProfile:
    """Colour statistics of a reference (or of a source image being normalised).

    Attributes
    ----------
    method : str
        ``"reinhard"``, ``"macenko"``, ``"vahadane"`` or ``"ruifrok"``.
    stain_matrix : list of 2 lists of 3 floats, or None
        Haematoxylin and eosin colour vectors (unit length, natural-log optical density of R, G, B);
        stain-vector methods only.
    max_concentrations : list of 2 floats, or None
        99th percentile of the haematoxylin and eosin concentrations: the scale each stain is
        matched at.
    lab_mean, lab_std : list of 3 floats, or None
        CIELAB mean and standard deviation (Reinhard only).
    params : dict
        Settings the fit used (luminosity threshold, percentiles, λ).
    fitted_on : dict
        Where the numbers came from: ``name`` (file or description), ``pixels`` sampled,
        ``tissue_pixels`` among them.
    """

    method: str
    stain_matrix: list | None = None
    max_concentrations: list | None = None
    lab_mean: list | None = None
    lab_std: list | None = None
    params: dict = field(default_factory=dict)
    fitted_on: dict = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.method not in METHODS:
            raise StainError(
                f"unknown stain method {self.method!r}; choose one of {', '.join(METHODS)}"
            )
        if self.method == "reinhard":
            _check_numbers(self.lab_mean, 3, "lab_mean")
            _check_numbers(self.lab_std, 3, "lab_std", positive=True)
        else:
            if not isinstance(self.stain_matrix, (list, tuple)) or len(self.stain_matrix) != 2:
                raise StainError(
                    "stain_matrix must be two rows (haematoxylin, eosin) of three numbers"
                )
            for row in self.stain_matrix:
                _check_numbers(row, 3, "stain_matrix row")
            _check_numbers(self.max_concentrations, 2, "max_concentrations", positive=True)

    def to_dict(self) -> dict:
        """Plain JSON-ready data, recorded with every result normalised to this profile."""
        d = {k: v for k, v in asdict(self).items() if v is not None}
        return {"format": FORMAT, "version": VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict) -> StainProfile:
        if not isinstance(d, dict) or "method" not in d:
            raise StainError("not a stain profile (no 'method')")
        if d.get("version", VERSION) > VERSION:
            raise StainError(
                f"profile version {d['version']} is newer than this napari-nucleiseg "
                f"reads ({VERSION})"
            )
        keys = {
            "method",
            "stain_matrix",
            "max_concentrations",
            "lab_mean",
            "lab_std",
            "params",
            "fitted_on",
        }
        return cls(**{k: v for k, v in d.items() if k in keys})

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON (a few hundred bytes); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> StainProfile:
        """Read a profile written by :meth:`save`; a clear :class:`StainError` naming the file
        when it is missing, not JSON, or not a valid profile."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise StainError("no such stain profile file", path) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StainError(f"not a readable JSON stain profile ({exc})", path) from None
        try:
            return cls.from_dict(data)
        except StainError as exc:
            raise exc.for_path(path) from None
        except TypeError as exc:
            raise StainError(f"not a valid stain profile ({exc})", path) from None


def average_profiles(profiles: list[StainProfile], name: str | None = None) -> StainProfile:
    """One target from several references of one method (a lab's set of slides, or a model's
    training images): unit stain vectors averaged and renormalised, concentration scales by their
    median, Reinhard means and deviations averaged. An outlier image moves it little."""
    import numpy as np

    if not profiles:
        raise StainError("no profiles to average")
    methods = {p.method for p in profiles}
    if len(methods) != 1:
        raise StainError(
            f"cannot average profiles of different methods: {', '.join(sorted(methods))}"
        )
    first = profiles[0]
    fitted_on = {
        "name": name,
        "images": [p.fitted_on.get("name") for p in profiles],
        "pixels": int(sum(p.fitted_on.get("pixels", 0) for p in profiles)),
        "tissue_pixels": int(sum(p.fitted_on.get("tissue_pixels", 0) for p in profiles)),
    }
    if first.method == "reinhard":
        return StainProfile(
            "reinhard",
            lab_mean=np.mean([p.lab_mean for p in profiles], axis=0).round(6).tolist(),
            lab_std=np.mean([p.lab_std for p in profiles], axis=0).round(6).tolist(),
            params=dict(first.params),
            fitted_on=fitted_on,
        )
    w = np.mean([np.asarray(p.stain_matrix, dtype=float) for p in profiles], axis=0)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    maxc = np.median([p.max_concentrations for p in profiles], axis=0)
    return StainProfile(
        first.method,
        stain_matrix=w.round(8).tolist(),
        max_concentrations=maxc.round(8).tolist(),
        params=dict(first.params),
        fitted_on=fitted_on,
    )


def _check_numbers(values, n: int, what: str, positive: bool = False) -> None:
    if not isinstance(values, (list, tuple)) or len(values) != n:
        raise StainError(f"{what} must be {n} numbers, got {values!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise StainError(f"{what} must be finite numbers, got {values!r}")
        if positive and v <= 0:
            raise StainError(f"{what} must be positive, got {values!r}")
