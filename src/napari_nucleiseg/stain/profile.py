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
from .extract import MAX_STAIN_COSINE

#: The classical stain normalisers, in the order the interfaces offer them: the one list every face
#: (CLI choices, Stain panel, messages, profiles) imports.
STAIN_METHODS = ("macenko", "reinhard", "vahadane", "ruifrok")
METHODS = STAIN_METHODS  # the older name, kept for scripts
FORMAT = "napari-nucleiseg stain profile"
VERSION = 1

# What a profile may hold: physical limits where there are some, else what real fits give with a
# wide margin. A profile outside them makes every image white or black, and segmentation then
# finds nothing without an error. Measured on 162 images fitted with every method (MoNuSeg 2018
# train and test, the stain regression set, the 107 colour DSB 2018 images, the CMU and TCGA
# slides); none of those profiles is refused.
STAINS = ("haematoxylin", "eosin")
LAB_CHANNELS = ("L", "a", "b")
#: A stain row's length may differ from 1 by this much (hand-typed or rounded vectors) and is then
#: made unit; further off, concentrations fitted with it no longer mean what they say. (Fits
#: write rows unit to 1e-8; Ruifrok-Johnston's published rows are 0.998 long.)
UNIT_TOLERANCE = 0.05
#: A stain absorbs, so its optical-density vector is non-negative. Macenko's vectors come from a
#: principal plane and can dip below 0: the lowest component measured was -0.0008 (one DSB
#: brightfield image; H&E images: +0.04 or more), so 0.1 is over 100x that.
MAX_NEGATIVE_OD = 0.1
#: 99th-percentile concentrations (natural-log OD along a unit stain vector); measured 0.16-6.7
#: (H&E images 0.32-6.2). The floor is the fit's own "no stain to measure" limit (100x below the
#: least measured); the ceiling is the most any 8-bit pixel can give: an OD vector of at most
#: ln(255) per channel, through the least-squares inverse of two unit stains that are
#: MAX_STAIN_COSINE apart (norm 1 / sqrt(1 - cos)), about 196 (29x the most measured).
CONCENTRATION_RANGE = (1e-3, math.log(255) * math.sqrt(3 / (1 - MAX_STAIN_COSINE)))
#: CIELAB means can only lie in CIELAB's range for sRGB colours (L 0-100, a and b within ±128;
#: measured L 32-83, a 2-51, b -49 to -3), and a deviation of a bounded quantity is at most half
#: its range (measured 2.4-29). The floors are the fit's own: each deviation is clamped at 1e-3,
#: and an image whose largest is under LAB_MIN_SPREAD is one flat colour (ReinhardNormaliser).
LAB_MEAN_RANGE = ((0.0, 100.0), (-128.0, 128.0), (-128.0, 128.0))
LAB_STD_RANGE = ((1e-3, 50.0), (1e-3, 128.0), (1e-3, 128.0))
LAB_MIN_SPREAD = 0.5
#: The fit's settings a profile may record, and their sensible ranges: the luminosity threshold
#: (fraction of L*), Vahadane's λ (0.02 shipped; 100x margin), Macenko's angular percentile, and
#: the iterations the sparse NMF took (at most 300 by default).
PARAM_RANGES = {
    "luminosity": (0.01, 1.0),
    "lambda": (0.0, 2.0),
    "angular_percentile": (50.0, 100.0),
    "iterations": (0, 1_000_000),
}


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
        """Refuse a profile whose numbers cannot describe stained tissue (see the ranges above):
        such a profile normalises every image to white or black, and segmentation then finds no
        nuclei without saying why. Stain rows within :data:`UNIT_TOLERANCE` of unit length are
        made unit; the message names the field."""
        if not isinstance(self.method, str) or self.method not in METHODS:
            raise StainError(
                f"unknown stain method {_short(self.method)}; choose one of {', '.join(METHODS)}"
            )
        if self.method == "reinhard":
            _check_numbers(self.lab_mean, 3, "lab_mean")
            _check_numbers(self.lab_std, 3, "lab_std", positive=True)
            for k, name in enumerate(LAB_CHANNELS):
                lo, hi = LAB_MEAN_RANGE[k]
                if not lo <= self.lab_mean[k] <= hi:
                    raise StainError(
                        f"lab_mean {name} is {self.lab_mean[k]:.6g}, outside CIELAB's "
                        f"{lo:g} to {hi:g}: not the colour of an image"
                    )
                lo, hi = LAB_STD_RANGE[k]
                if not lo <= self.lab_std[k] <= hi:
                    raise StainError(
                        f"lab_std {name} is {self.lab_std[k]:.6g}, outside the plausible "
                        f"{lo:g} to {hi:g}"
                    )
            if max(self.lab_std) < LAB_MIN_SPREAD:
                raise StainError(
                    f"lab_std {_short(self.lab_std)}: every deviation is under {LAB_MIN_SPREAD:g}, "
                    "the colours of one flat fill; every image would be normalised to it"
                )
        else:
            if not isinstance(self.stain_matrix, (list, tuple)) or len(self.stain_matrix) != 2:
                raise StainError(
                    "stain_matrix must be two rows (haematoxylin, eosin) of three numbers"
                )
            self.stain_matrix = [
                _stain_vector(row, name) for row, name in zip(self.stain_matrix, STAINS)
            ]
            h, e = self.stain_matrix
            cos = sum(a * b for a, b in zip(h, e))
            if cos > MAX_STAIN_COSINE:
                raise StainError(
                    f"stain_matrix: the haematoxylin and eosin vectors are "
                    f"{math.degrees(math.acos(min(cos, 1.0))):.2g}° apart (collinear): two "
                    "stains of one colour cannot be told apart"
                )
            _check_numbers(self.max_concentrations, 2, "max_concentrations", positive=True)
            lo, hi = CONCENTRATION_RANGE
            for c, name in zip(self.max_concentrations, STAINS):
                if not lo <= c <= hi:
                    raise StainError(
                        f"max_concentrations {name} is {c:.6g}, outside the plausible {lo:g} to "
                        f"{hi:.3g} (fitted images: 0.16 to 6.7)"
                    )
        self.params = _checked_params(self.params)
        if not isinstance(self.fitted_on, dict):
            raise StainError(f"fitted_on must be a mapping, got {_short(self.fitted_on)}")

    def to_dict(self) -> dict:
        """Plain JSON-ready data, recorded with every result normalised to this profile."""
        d = {k: v for k, v in asdict(self).items() if v is not None}
        return {"format": FORMAT, "version": VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict) -> StainProfile:
        if not isinstance(d, dict) or "method" not in d:
            raise StainError("not a stain profile (no 'method')")
        version = d.get("version", VERSION)
        if isinstance(version, bool) or not isinstance(version, int):
            raise StainError(f"version must be a whole number, got {_short(version)}")
        if version > VERSION:
            raise StainError(
                f"profile version {version} is newer than this napari-nucleiseg reads ({VERSION})"
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


def _short(value, limit: int = 60) -> str:
    """``repr`` cut to a line: a message must stay one line whatever junk a file holds."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_numbers(values, n: int, what: str, positive: bool = False) -> None:
    if not isinstance(values, (list, tuple)) or len(values) != n:
        raise StainError(f"{what} must be {n} numbers, got {_short(values)}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise StainError(f"{what} must be finite numbers, got {_short(values)}")
        if positive and v <= 0:
            raise StainError(f"{what} must be positive, got {_short(values)}")


def _stain_vector(row, stain: str) -> list:
    """One stain's OD colour vector, checked (finite, non-negative, unit length) and returned
    as a unit list: rows off unit length by rounding are renormalised, others refused."""
    what = f"stain_matrix {stain} row"
    _check_numbers(row, 3, what)
    row = [float(v) for v in row]
    low = min(row)
    if low < -MAX_NEGATIVE_OD:
        raise StainError(
            f"{what} {_short(row)} has a component of {low:.3g}: a stain absorbs light (optical "
            f"density ≥ 0; at most {MAX_NEGATIVE_OD:g} below 0 is tolerated)"
        )
    # Squares of values near 1e308 overflow and near 1e-200 underflow: scale first.
    big = max(abs(v) for v in row)
    length = big * math.sqrt(sum((v / big) ** 2 for v in row)) if big > 0 else 0.0
    if not abs(length - 1.0) <= UNIT_TOLERANCE:
        raise StainError(
            f"{what} {_short(row)} has length {length:.3g}: stain vectors are unit length "
            f"(within {UNIT_TOLERANCE:g})"
        )
    if abs(length - 1.0) > 1e-6:  # leave fitted rows (unit to their 8 decimals) as they are
        row = [v / length for v in row]
    return row


def _checked_params(params) -> dict:
    """The fit's settings: a mapping of known keys to numbers in range, one line naming the key
    otherwise (a typo would be ignored, and nested data has no meaning here)."""
    if not isinstance(params, dict):
        raise StainError(f"params must be a mapping of settings, got {_short(params)}")
    for key, value in params.items():
        if key not in PARAM_RANGES:
            raise StainError(
                f"params: unknown setting {_short(key)}; known: {', '.join(PARAM_RANGES)}"
            )
        lo, hi = PARAM_RANGES[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or not lo <= value <= hi
        ):
            raise StainError(
                f"params: {key} must be a number from {lo:g} to {hi:g}, got {_short(value)}"
            )
    return dict(params)
