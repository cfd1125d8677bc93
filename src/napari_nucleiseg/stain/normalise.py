"""Stain normalisers: Reinhard (2001), Macenko (2009), Vahadane (2016) and Ruifrok-Johnston (2001).

A normaliser maps a *source* (the image, or the whole slide, being normalised) onto a *target*
profile (the colours of a reference). Both are described by a :class:`StainProfile`:

    n = make_normaliser("macenko").fit(reference_rgb)   # target profile
    out = n.transform(image)                              # the image is its own source
    n2 = n.adapt(slide_sample)                            # source fixed once for a whole slide...
    tiles = [n2.transform(t) for t in tiles]              # ...so every tile gets the same mapping

Once adapted, the mapping is a fixed per-pixel function of the 8-bit colour, so transforming is
chunk-safe (a block's result never depends on the block's own statistics) and cheap:

* stain-vector methods: ``OD_out = OD_in · M`` with
  ``M = pinv(W_src) · diag(c_tgt / c_src) · W_tgt``
  (3 × 3), and ``255·exp(−OD_out)`` factorises over the input channels into three 256-entry
  tables per output channel — three row gathers and two products per pixel, no log or exp.
* Reinhard: an affine map in CIELAB, folded into one 3 × 3 mix of the CIE ``f`` values.

Conventions follow TIAToolbox/StainTools (natural-log OD, luminosity threshold 0.8, 99th
percentiles, least-squares concentrations) so results agree with theirs.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from .errors import StainError
from .extract import RUIFROK_HE, VAHADANE_LAMBDA, macenko_stains, order_he, vahadane_stains
from .lab import lab_affine_rgb, rgb_to_lab
from .optical import (
    LUMINOSITY_THRESHOLD,
    MAX_FIT_PIXELS,
    MIN_TISSUE_PIXELS,
    OD_LUT,
    OD_LUT32,
    as_pixels,
    sample_pixels,
    tissue_selection,
)
from .profile import METHODS, StainProfile

#: Concentrations are matched at this percentile (robust maximum, as TIAToolbox/StainTools).
CONCENTRATION_PERCENTILE = 99.0
#: Pixels per block when transforming: small enough for the cache, large enough for numpy.
BLOCK = 1 << 16


class Normaliser:
    """Base class. Use :func:`make_normaliser` or :func:`normaliser_from_profile`.

    Attributes
    ----------
    profile : StainProfile or None
        The target, set by :meth:`fit` (or given).
    source : StainProfile or None
        The source statistics when adapted (:meth:`adapt`); ``None`` means each call of
        :meth:`transform` treats its input as a whole image and measures it.
    """

    method = "abstract"

    def __init__(
        self,
        profile: StainProfile | None = None,
        source: StainProfile | None = None,
        luminosity: float = LUMINOSITY_THRESHOLD,
        max_pixels: int = MAX_FIT_PIXELS,
    ):
        self.luminosity = float(luminosity)
        self.max_pixels = int(max_pixels)
        self.profile = profile
        self.source = source
        self._mapping = None  # per-pixel tables for (profile, source), built once

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_profile(cls, profile: StainProfile) -> Normaliser:
        return normaliser_from_profile(profile)

    def __repr__(self) -> str:
        state = (
            "unfitted"
            if self.profile is None
            else ("adapted" if self.source is not None else "fitted")
        )
        return f"<{type(self).__name__} {state}>"

    def __getstate__(self):  # pickles small (for dask.distributed): tables are rebuilt on arrival
        state = self.__dict__.copy()
        state["_mapping"] = None
        return state

    # ------------------------------------------------------------------ fitting
    def fit(self, rgb, name: str | None = None) -> Normaliser:
        """Fit the target profile on a reference image (H, W, 3) or pixel list (N, 3).

        At most ``max_pixels`` pixels are sampled (seeded, so the fit is reproducible); stains are
        estimated from the tissue among them (darker than the luminosity threshold, no channel
        clipped at 0). Raises :class:`StainError` when that is impossible.
        """
        self.profile = self.measure(rgb, name)
        self._mapping = None
        return self

    def adapt(self, rgb, name: str | None = None) -> Normaliser:
        """A copy whose source statistics are fixed to those of ``rgb`` (a sample of the slide or
        image to normalise). Its :meth:`transform` is then the same function for every block."""
        self._require_fitted()
        other = copy.copy(self)
        other.source = self.measure(rgb, name)
        other._mapping = other._build(other.source)
        return other

    def measure(self, rgb, name: str | None = None) -> StainProfile:
        """The profile of an image or pixel sample (the statistics :meth:`fit` and :meth:`adapt`
        store)."""
        pixels = sample_pixels(rgb, self.max_pixels)
        tissue = tissue_selection(pixels, self.luminosity)
        n_tissue = int(tissue.sum())
        if n_tissue < MIN_TISSUE_PIXELS:
            raise StainError(
                f"only {n_tissue} of {len(pixels)} sampled pixels are stained tissue (at least "
                f"{MIN_TISSUE_PIXELS} needed): the image is mostly glass, blank or saturated"
            )
        profile = self._measure(pixels, tissue)
        profile.fitted_on = {
            "name": str(name) if name is not None else None,
            "pixels": int(len(pixels)),
            "tissue_pixels": n_tissue,
        }
        profile.params = {"luminosity": self.luminosity, **profile.params}
        return profile

    def _measure(self, pixels: np.ndarray, tissue: np.ndarray) -> StainProfile:
        raise NotImplementedError

    @property
    def adapted(self) -> bool:
        return self.source is not None

    def _require_fitted(self) -> None:
        if self.profile is None:
            raise StainError(
                f"the {self.method} normaliser has no target yet: fit it on a reference "
                "image or load a profile"
            )

    # ------------------------------------------------------------------ transforming
    def transform(self, rgb) -> np.ndarray:
        """Normalise an RGB uint8 image or block (H, W, 3); returns uint8 of the same shape.

        Adapted (see :meth:`adapt`): a fixed per-pixel mapping, so any tiling gives the same
        result. Not adapted: ``rgb`` is measured first as a whole image (raises
        :class:`StainError` if it holds too little tissue to measure).
        """
        self._require_fitted()
        arr = np.asarray(rgb)
        shape = arr.shape
        px = as_pixels(arr)
        if px.size == 0:
            return np.asarray(arr, dtype=np.uint8).copy()
        mapping = self._mapping
        if mapping is None:
            if self.source is not None:
                mapping = self._mapping = self._build(self.source)
            else:
                mapping = self._build(self.measure(px))
        return self._apply(px, mapping).reshape(shape[:-1] + (3,))

    __call__ = transform

    def _build(self, source: StainProfile):
        raise NotImplementedError

    def _apply(self, px: np.ndarray, mapping) -> np.ndarray:
        raise NotImplementedError

    # ------------------------------------------------------------------ records
    def describe(self) -> dict:
        """What results normalised with this normaliser record: ``{"method", "profile"}``."""
        self._require_fitted()
        return {"method": self.method, "profile": self.profile.to_dict()}


class StainVectorNormaliser(Normaliser):
    """Shared machinery of Macenko, Vahadane and Ruifrok: stain vectors + concentration scales."""

    def _stains(self, od_tissue: np.ndarray) -> tuple[np.ndarray, dict]:
        raise NotImplementedError

    def _measure(self, pixels, tissue):
        od = OD_LUT32[pixels]
        w, params = self._stains(od[tissue])
        c = concentrations(od, w)
        maxc = np.percentile(c, CONCENTRATION_PERCENTILE, axis=0)
        for k, stain in enumerate(("haematoxylin", "eosin")):
            if not np.isfinite(maxc[k]) or maxc[k] < 1e-3:
                raise StainError(
                    f"no {stain} to measure (its {CONCENTRATION_PERCENTILE:g}th-percentile "
                    f"concentration is {maxc[k]:.2g})"
                )
        return StainProfile(
            self.method,
            stain_matrix=w.round(8).tolist(),
            max_concentrations=[float(v) for v in maxc.round(8)],
            params=params,
        )

    def _build(self, source):
        wt = np.asarray(self.profile.stain_matrix, dtype=np.float64)
        ws = np.asarray(source.stain_matrix, dtype=np.float64)
        scale = np.asarray(self.profile.max_concentrations) / np.asarray(source.max_concentrations)
        m = np.linalg.pinv(ws) @ np.diag(scale) @ wt  # (3, 3): OD_out = OD_in @ m
        return exp_tables(m)

    def _apply(self, px, tables):
        return apply_exp_tables(px, tables)

    def od_matrix(self) -> np.ndarray:
        """The adapted OD-space mapping ``M`` (3 × 3), for inspection."""
        if self.source is None:
            raise StainError("not adapted to a source yet")
        wt = np.asarray(self.profile.stain_matrix)
        ws = np.asarray(self.source.stain_matrix)
        scale = np.asarray(self.profile.max_concentrations) / np.asarray(
            self.source.max_concentrations
        )
        return np.linalg.pinv(ws) @ np.diag(scale) @ wt


class MacenkoNormaliser(StainVectorNormaliser):
    """Macenko et al. 2009 (angular extremes in the OD plane)."""

    method = "macenko"

    def _stains(self, od_tissue):
        return macenko_stains(od_tissue), {"angular_percentile": 99.0}


class VahadaneNormaliser(StainVectorNormaliser):
    """Vahadane et al. 2016 (sparse non-negative factorisation), with our own exact two-stain
    solver (:mod:`.sparse_nmf`)."""

    method = "vahadane"

    def __init__(self, *args, lam: float = VAHADANE_LAMBDA, **kwargs):
        super().__init__(*args, **kwargs)
        self.lam = float(lam)

    def _stains(self, od_tissue):
        w, iters = vahadane_stains(od_tissue, lam=self.lam)
        return w, {"lambda": self.lam, "iterations": iters}


class RuifrokNormaliser(StainVectorNormaliser):
    """Fixed Ruifrok-Johnston H and E vectors; only the stain amounts are matched."""

    method = "ruifrok"

    def _stains(self, od_tissue):
        return order_he(RUIFROK_HE), {}


class ReinhardNormaliser(Normaliser):
    """Reinhard et al. 2001: match the mean and standard deviation of each CIELAB channel.

    Statistics are over all sampled pixels of the image, glass included (the classic definition,
    and TIAToolbox's); a slide's sample is taken from its tissue regions (:mod:`.lazy`).
    """

    method = "reinhard"

    def _measure(self, pixels, tissue):
        lab = rgb_to_lab(pixels)
        mean, std = lab.mean(axis=0, dtype=np.float64), lab.std(axis=0, dtype=np.float64)
        if float(std.max()) < 0.5:
            raise StainError("the image is a single flat colour (no variation to match)")
        std = np.maximum(std, 1e-3)
        return StainProfile(
            self.method,
            lab_mean=[float(v) for v in mean.round(6)],
            lab_std=[float(v) for v in std.round(6)],
        )

    def _build(self, source):
        ss = np.maximum(np.asarray(source.lab_std), 0.05)
        scale = np.asarray(self.profile.lab_std) / ss
        shift = np.asarray(self.profile.lab_mean) - scale * np.asarray(source.lab_mean)
        return scale, shift

    def _apply(self, px, mapping):
        scale, shift = mapping
        return lab_affine_rgb(px, scale, shift)


_CLASSES = {
    "reinhard": ReinhardNormaliser,
    "macenko": MacenkoNormaliser,
    "vahadane": VahadaneNormaliser,
    "ruifrok": RuifrokNormaliser,
}
assert set(_CLASSES) == set(METHODS), "stain.profile.STAIN_METHODS and the normalisers disagree"


def concentrations(od: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Least-squares stain concentrations (N, 2) of optical densities (N, 3) for stain rows ``w``
    (unconstrained, as TIAToolbox: the transform is then linear in OD)."""
    p = np.linalg.pinv(np.asarray(w, dtype=np.float64)).astype(np.float32)  # (3, 2)
    out = np.empty((len(od), 2), np.float32)
    for k in range(2):
        out[:, k] = od[:, 0] * p[0, k] + od[:, 1] * p[1, k] + od[:, 2] * p[2, k]
    return out


def exp_tables(m: np.ndarray) -> np.ndarray:
    """(3, 256, 3) float32 tables ``T[c, v, k] = exp(−OD(v)·m[c, k])``, the first scaled by 255:
    then ``out_k = T[0, r, k] · T[1, g, k] · T[2, b, k]`` is ``255·exp(−(OD·m)_k)``."""
    t = np.exp(-OD_LUT[None, :, None] * np.asarray(m, dtype=np.float64)[:, None, :])
    t[0] *= 255.0
    return np.minimum(t, 1e30).astype(np.float32)


def apply_exp_tables(px: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 through :func:`exp_tables` tables, rounded and clipped to uint8."""
    out = np.empty(px.shape, np.uint8)
    t0, t1, t2 = tables
    for s in range(0, len(px), BLOCK):
        b = px[s : s + BLOCK]
        acc = t0.take(b[:, 0], axis=0)
        acc *= t1.take(b[:, 1], axis=0)
        acc *= t2.take(b[:, 2], axis=0)
        acc += np.float32(0.5)
        np.minimum(acc, np.float32(255), out=acc)
        out[s : s + BLOCK] = acc
    return out


def make_normaliser(method: str, **params) -> Normaliser:
    """An unfitted normaliser: ``"reinhard"``, ``"macenko"``, ``"vahadane"`` or ``"ruifrok"``."""
    key = str(method).lower()
    if key not in _CLASSES:
        raise StainError(
            f"unknown stain normalisation method {method!r}; choose one of {', '.join(METHODS)}"
        )
    return _CLASSES[key](**params)


def normaliser_from_profile(profile: StainProfile) -> Normaliser:
    """A normaliser with ``profile`` as its target (as fitted, ready to transform)."""
    params = dict(profile.params or {})
    kwargs = {}
    if "luminosity" in params:
        kwargs["luminosity"] = params["luminosity"]
    if profile.method == "vahadane" and "lambda" in params:
        kwargs["lam"] = params["lambda"]
    n = make_normaliser(profile.method, **kwargs)
    n.profile = profile
    return n


#: Files a reference folder contributes (a data set's ``images/`` subfolder is used if present).
REFERENCE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".svs", ".ndpi")


def load_target(method: str | None, path: str | Path) -> Normaliser:
    """A fitted normaliser from a saved profile (``.json``), a reference image/slide, or a folder
    of reference images (each fitted, the profiles averaged: see
    :func:`~.profile.average_profiles`).

    A reference image is read whole (PNG, JPEG, TIFF); a whole slide is sampled from its tissue
    (see :func:`~.lazy.sample_slide`). Errors name the file: :class:`StainError` for a reference
    that cannot be fitted or a bad profile, :class:`~napari_nucleiseg.io.SlideError` for an
    unreadable image.
    """
    path = Path(path)
    if path.is_dir() and not path.name.lower().endswith(".zarr"):
        return _load_target_folder(method, path)
    if path.suffix.lower() == ".json":
        profile = StainProfile.load(path)
        if method is not None and profile.method != str(method).lower():
            raise StainError(f"the profile was fitted with {profile.method}, not {method}", path)
        return normaliser_from_profile(profile)
    if method is None:
        raise StainError(f"give a method ({', '.join(METHODS)}) to fit a reference image", path)
    normaliser = make_normaliser(method)
    from .lazy import sample_image_or_slide

    pixels = sample_image_or_slide(path, normaliser.max_pixels)
    try:
        return normaliser.fit(pixels, name=path.name)
    except StainError as exc:
        raise StainError(f"cannot be used as a {method} reference: {exc.problem}", path) from None


def _load_target_folder(method: str | None, folder: Path) -> Normaliser:
    from .profile import average_profiles

    if method is None:
        raise StainError(f"give a method ({', '.join(METHODS)}) to fit reference images", folder)
    images = folder / "images" if (folder / "images").is_dir() else folder
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in REFERENCE_SUFFIXES)
    if not files:
        raise StainError(
            f"no reference images ({', '.join(REFERENCE_SUFFIXES)}) in the folder", images
        )
    profiles = [load_target(method, f).profile for f in files]
    return normaliser_from_profile(
        average_profiles(profiles, name=f"{folder.name} ({len(files)} images)")
    )


def normalise_image(rgb, normaliser: Normaliser, mpp: float | None = None) -> np.ndarray:
    """Normalise one whole image to ``normaliser``'s target, the image being its own source
    (unless the normaliser is already adapted). Returns the image unchanged if it holds too
    little tissue to measure (a blank field needs no normalisation). ``mpp``: the image's
    µm/px, which a learned normaliser uses to work at its own scale (colour maps ignore it)."""
    kw = {"mpp": mpp} if mpp is not None and normaliser.method == "learned" else {}
    if normaliser.adapted or normaliser.method == "learned":  # learned: adapts in its one pass
        return normaliser.transform(rgb, **kw)
    try:
        return normaliser.adapt(rgb).transform(rgb)
    except StainError:
        if normaliser.profile is None:
            raise
        return np.asarray(rgb)
