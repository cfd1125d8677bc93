"""A learned stain normaliser (issue 18) with the same face as Reinhard, Macenko and Vahadane.

:func:`load_learned` gives a :class:`LearnedNormaliser` for a model card of kind ``normaliser``
(name, card path or project model). Like the classical normalisers it has ``transform``,
``adapt`` (measures the slide's stain and the colour calibration, below), ``describe`` and a
stable ``token``, so :func:`~.lazy.normalise_levels`, ``segment_image(...,
normaliser=)``, the Stain panel and ``nucleiseg normalize`` take it as they are.

Like Macenko it is adapted to each slide first (``adapt``, from a sample of the slide's tissue):
the slide's H and E vectors and amounts are measured once and give the optical-density map the
network starts from; the network adds its learnt, local correction. One map per slide, so every
block of the slide gets the same treatment.

Colour calibration: on stains far from what it learnt (a re-stained slide, another lab) the
network moves colour only part of the way; measured on held-out tissue, its output stayed
further from the style's Lab statistics than Macenko's. So ``adapt`` also runs the network on
the sample, measures its output's per-channel Lab mean and standard deviation over tissue, and
fixes a per-channel Lab affine map that pulls them a ``calibration`` share of the way (default
:data:`DEFAULT_CALIBRATION`) to the style's, which the card records (``reference_lab``). Full
strength (1) is Reinhard on the network's output (the scale bounded to :data:`MAX_LAB_SCALE`):
the closest colour, but the haematoxylin map drifts from the input's; 0 is the network alone.
``benchmarks/learned_normaliser.py`` reports both ends and the default. One map per slide, like
the stain map, so chunks join without seams; the measured statistics are kept, so another
strength (:meth:`LearnedNormaliser.with_calibration`) needs no second pass of the network.

The network runs with ONNX Runtime (no PyTorch needed), on blocks with a margin of context that
is cut off again, so a large image and a lazily computed slide come out the same as one pass.

Scale: the model learnt at its card's µm/px. An input finer than that (a 40x slide for a model
of 0.5 µm/px) is shrunk to the model's scale, the network's change of colour (a residual in
logit space) is computed there and enlarged back onto the input, so every pixel of the input
keeps its own detail. An input at or coarser than the model's scale is run as it is.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from .errors import StainError

#: Block core and context (model pixels) of one network pass. The normalisation path reads four
#: encoder levels and two decoder blocks: 64 px of context keeps blocks' seams below one grey
#: level (measured in tests/test_learned_normaliser.py).
BLOCK_PX = 1024
CONTEXT_PX = 64
#: The residual is computed at the model's scale only when the input is this much finer.
RESCALE_BELOW = 0.75
EPS = 1.0 / 512
#: Share of the way from the network's output colour statistics to the style's (0: none).
DEFAULT_CALIBRATION = 0.5
#: Pixels of the sample the network runs on to measure its output's colour (a few seconds).
CALIBRATION_PX = 1024 * 1024
#: Fewer tissue pixels than this in the sample: no calibration (the network alone).
MIN_CALIBRATION_TISSUE_PX = 4096
#: The Lab scale of the calibration stays within [1 / this, this]: a low-contrast sample must
#: not have its contrast blown up (nor a noisy one flattened).
MAX_LAB_SCALE = 2.0
#: A single image larger than the calibration budget is sampled on a grid of this many cells a
#: side (a centred crop of each), not from one corner.
CALIBRATION_GRID = 4


class LearnedNormaliser:
    """A trained normaliser's network, ready to transform (see the module docstring)."""

    method = "learned"
    source = None
    profile = None

    def __init__(
        self,
        card,
        card_path: Path,
        source: str = "path",
        runtime: str | None = None,
        calibration: float | None = None,
    ):
        self.card = card
        self.card_path = Path(card_path)
        self.origin = source
        self.name = card.name
        self.mpp = float(card.mpp)
        self.multiple = 2 ** (int(card.generator["norm_levels"]) - 1)
        self.reference = np.asarray(card.generator["reference_stain"], np.float32)
        ref_lab = card.generator.get("reference_lab")
        #: The style's Lab mean and std over tissue (6,), None on cards that predate it.
        self.reference_lab = None if ref_lab is None else np.asarray(ref_lab, np.float64)
        #: How far colour is pulled to ``reference_lab`` (0 where the card has none).
        self.calibration = self._strength(
            DEFAULT_CALIBRATION if calibration is None else calibration
        )
        #: The slide's stain vector and map, and the Lab (scale, shift) (set by :meth:`adapt`).
        self.source_stain: np.ndarray | None = None
        self.stain_map: np.ndarray | None = None
        self.lab_map: tuple[np.ndarray, np.ndarray] | None = None
        #: The network output's Lab mean and std on the sample (what the map was fitted to).
        self.output_lab: np.ndarray | None = None
        self._runtime = runtime
        self._session = None
        self._torch = None
        self._lock = threading.Lock()

    # -- the classical normalisers' face
    @property
    def max_pixels(self) -> int:
        from .optical import MAX_FIT_PIXELS

        return MAX_FIT_PIXELS

    @property
    def adapted(self) -> bool:
        return self.stain_map is not None

    def adapt(self, rgb, name: str | None = None, mpp: float | None = None) -> LearnedNormaliser:
        """A copy adapted to the slide or image ``rgb`` is a sample of: its stain measured, the
        map to the reference style fixed, and the colour calibration measured on the network's
        output for the sample (see the module docstring). ``rgb``: an image (H, W, 3), a list of
        images (blocks of a slide) or bare pixels (N, 3), which have no layout for the network
        to run on and so get no calibration. ``mpp``: the sample's µm/px, where known. A sample
        with too little tissue to measure gets the neutral H&E vectors (see
        :func:`~.learned.data.stain_vector`)."""
        from .learned.data import stain_vector
        from .optical import as_pixels

        blocks = isinstance(rgb, (list, tuple)) and all(
            isinstance(im, np.ndarray) and im.ndim == 3 for im in rgb
        )
        images = [np.asarray(im) for im in rgb] if blocks and rgb else [np.asarray(rgb)]
        other = self.adapted_to(stain_vector(np.concatenate([as_pixels(im) for im in images])))
        spatial = [
            im[..., :3] for im in images if im.ndim == 3 and min(im.shape[:2]) >= self.multiple
        ]
        if self.calibration > 0 and spatial:
            crops = _calibration_crops(spatial)
            other._fit_lab_map(crops, [other._styled(_uint8(c), mpp) for c in crops])
        return other

    def _fit_lab_map(self, inputs, outputs) -> None:
        """Set ``output_lab`` and ``lab_map`` from the network's ``outputs`` for ``inputs``;
        neither when the inputs hold too little tissue (glass has no colour to pull, and its
        tiny spread would be blown up)."""
        from ..metrics.colour import lab_stats, tissue_pixels
        from .optical import as_pixels

        tissue = sum(int(tissue_pixels(as_pixels(im)).sum()) for im in inputs)
        if tissue < MIN_CALIBRATION_TISSUE_PX:
            self.output_lab, self.lab_map = None, None
            return
        self.output_lab = lab_stats(np.concatenate([as_pixels(o) for o in outputs]))
        self.lab_map = self._lab_map_for(self.calibration)

    def _lab_map_for(self, strength: float) -> tuple[np.ndarray, np.ndarray] | None:
        """The Lab (scale, shift) that pulls ``output_lab`` ``strength`` of the way to the
        style's (None at 0)."""
        if self.output_lab is None or self.reference_lab is None or strength <= 0:
            return None
        mean, std = self.output_lab[:3], np.maximum(self.output_lab[3:], 0.05)
        scale = np.clip(
            (self.reference_lab[3:] / std) ** strength, 1 / MAX_LAB_SCALE, MAX_LAB_SCALE
        )
        shift = mean + strength * (self.reference_lab[:3] - mean) - scale * mean
        return scale, shift

    def with_calibration(self, strength: float) -> LearnedNormaliser:
        """A copy with another calibration strength; an adapted one keeps its slide's stain and
        measured output colour, so no network pass is needed."""
        import copy

        other = copy.copy(self)
        other._lock = threading.Lock()
        other.calibration = self._strength(strength)
        other.lab_map = other._lab_map_for(other.calibration)
        return other

    def _strength(self, value) -> float:
        """A calibration strength checked to lie in 0-1; 0 where the card gives no style
        statistics to pull to."""
        strength = float(value)
        if not 0.0 <= strength <= 1.0:
            raise StainError(f"calibration must be between 0 and 1, got {strength}")
        return strength if self.reference_lab is not None else 0.0

    def adapted_to(self, source_stain, calibration: dict | None = None) -> LearnedNormaliser:
        """A copy adapted to a slide whose stain vector (:func:`~.learned.data.stain_vector`)
        is known already (a layer's record, a run's log), and its colour calibration
        (``describe()["calibration"]``) where one was measured."""
        import copy

        from .learned.data import stain_map

        other = copy.copy(self)
        other._lock = threading.Lock()
        other.source_stain = np.asarray(source_stain, np.float32)
        other.stain_map = stain_map(other.source_stain, self.reference)
        other.lab_map, other.output_lab = None, None
        if calibration and "scale" in calibration:
            other.calibration = float(calibration["strength"])
            other.lab_map = (
                np.asarray(calibration["scale"], np.float64),
                np.asarray(calibration["shift"], np.float64),
            )
            if calibration.get("output_lab") is not None:
                other.output_lab = np.asarray(calibration["output_lab"], np.float64)
        return other

    def fit(self, rgb=None, name: str | None = None) -> LearnedNormaliser:
        raise StainError(
            f"{self.name} is a trained normaliser: it has no target to fit; train another one "
            "on a project to learn another style (`nucleiseg train-normaliser`)"
        )

    def token(self) -> str:
        import hashlib

        adapted = b"" if self.stain_map is None else np.round(self.stain_map, 5).tobytes()
        if self.lab_map is not None:
            adapted += np.round(np.concatenate(self.lab_map), 5).tobytes()
        return hashlib.sha1(self.card.sha256.encode() + adapted).hexdigest()[:16]

    def describe(self) -> dict:
        return {
            "method": "learned",
            "model": self.name,
            "version": self.card.version,
            "sha256": self.card.sha256,
            "mpp": self.mpp,
            "runtime": self.runtime,
            "source_stain": None
            if self.source_stain is None
            else [round(float(v), 5) for v in self.source_stain],
            "calibration_strength": self.calibration,
            "calibration": None
            if self.lab_map is None
            else {
                "strength": self.calibration,
                # Unrounded: a layer's record reproduces its colours exactly.
                "scale": [float(v) for v in self.lab_map[0]],
                "shift": [float(v) for v in self.lab_map[1]],
                "output_lab": None
                if self.output_lab is None
                else [float(v) for v in self.output_lab],
            },
        }

    def __repr__(self) -> str:
        return f"LearnedNormaliser({self.name} {self.card.version})"

    def __getstate__(self):  # pickles small (dask.distributed): the session is opened on arrival
        state = dict(self.__dict__)
        state.update(_session=None, _torch=None, _lock=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- running
    @property
    def runtime(self) -> str:
        from ..models.runtime import runtime_for

        if self._runtime is None:
            self._runtime = runtime_for(self.card, self.card_path.parent)
        return self._runtime

    def _run(self, block: np.ndarray) -> np.ndarray:
        """float32 (1, 3, H, W) in [0, 1] → the network's output, same shape."""
        with self._lock:
            if self.runtime == "torch":
                if self._torch is None:
                    from .learned import load_generator

                    self._torch = load_generator(self.card, self.card_path.parent)
                import torch

                a = torch.from_numpy(self.stain_map[None])
                with torch.no_grad():
                    return self._torch.normalise(torch.from_numpy(block), a).numpy()
            if self._session is None:
                from ..models.runtime import onnx_session

                self._session = onnx_session(self.card, self.card_path.parent, self.runtime)
        return self._session.run(None, {"rgb": block, "stain_map": self.stain_map[None]})[0]

    def _network(self, rgb: np.ndarray) -> np.ndarray:
        """The network on a whole uint8 image, block by block with context; float32 (H, W, 3)
        in [0, 1]."""
        h, w = rgb.shape[:2]
        out = np.empty((h, w, 3), np.float32)
        m, c = self.multiple, CONTEXT_PX
        for y0 in range(0, h, BLOCK_PX):
            for x0 in range(0, w, BLOCK_PX):
                y1, x1 = min(h, y0 + BLOCK_PX), min(w, x0 + BLOCK_PX)
                ya, xa = max(0, y0 - c), max(0, x0 - c)
                yb, xb = min(h, y1 + c), min(w, x1 + c)
                part = rgb[ya:yb, xa:xb]
                ph, pw = (-part.shape[0]) % m, (-part.shape[1]) % m
                if ph or pw:
                    mode = "reflect" if min(part.shape[:2]) > max(ph, pw) else "edge"
                    part = np.pad(part, ((0, ph), (0, pw), (0, 0)), mode=mode)
                x = np.ascontiguousarray(part.transpose(2, 0, 1)[None], np.float32) / 255.0
                res = self._run(x)[0].transpose(1, 2, 0)
                out[y0:y1, x0:x1] = res[y0 - ya : y1 - ya, x0 - xa : x1 - xa]
        return out

    def transform(self, rgb, mpp: float | None = None) -> np.ndarray:
        """``rgb`` (H, W, 3) uint8 in the style the model learnt, uint8. ``mpp``: the input's
        µm/px, where known (see the module docstring)."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise StainError(f"expected an RGB image (H, W, 3), got shape {rgb.shape}")
        if rgb.dtype != np.uint8:
            rgb = np.clip(rgb, 0, 255).astype(np.uint8)
        if rgb.shape[0] == 0 or rgb.shape[1] == 0:
            return rgb.copy()
        if not self.adapted:  # an image on its own is its own sample, as for Macenko
            return self._self_adapted(rgb, mpp)
        return self._calibrated(self._styled(rgb, mpp))

    def _self_adapted(self, rgb: np.ndarray, mpp: float | None) -> np.ndarray:
        """An image that is its own sample: its stain measured, the network run once, and its
        output's colour (the whole image's: the best sample there is) calibrated."""
        from .learned.data import stain_vector

        other = self.adapted_to(stain_vector(rgb))
        out = other._styled(rgb, mpp)
        if self.calibration > 0 and min(rgb.shape[:2]) >= self.multiple:
            other._fit_lab_map([rgb], [out])
        return other._calibrated(out)

    def _calibrated(self, out: np.ndarray) -> np.ndarray:
        """The network's output through the slide's Lab map, where it has one."""
        if self.lab_map is None:
            return out
        from .lab import lab_affine_rgb

        return lab_affine_rgb(out.reshape(-1, 3), *self.lab_map).reshape(out.shape)

    def _styled(self, rgb: np.ndarray, mpp: float | None) -> np.ndarray:
        """The network's output (uint8), at the model's scale where the input is finer."""
        factor = None if mpp is None else float(mpp) / self.mpp
        if factor is None or factor >= RESCALE_BELOW:
            out = self._network(rgb)
            return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
        from .learned.data import resample

        small, _ = resample(rgb, None, factor)
        residual = _logit(self._network(small)) - _logit(small.astype(np.float32) / 255.0)
        residual = _enlarge(residual, rgb.shape[:2])
        out = 1.0 / (1.0 + np.exp(-(_logit(rgb.astype(np.float32) / 255.0) + residual)))
        return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def _logit(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, EPS, 1.0 - EPS)
    return np.log(x) - np.log1p(-x)


def _enlarge(residual: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) float → (H, W, 3), bilinear."""
    from PIL import Image

    h, w = shape
    return np.stack(
        [
            np.asarray(Image.fromarray(residual[..., k]).resize((w, h), Image.Resampling.BILINEAR))
            for k in range(3)
        ],
        axis=-1,
    )


def load_learned(
    name_or_path=None,
    project=None,
    runtime: str | None = None,
    calibration: float | None = None,
) -> LearnedNormaliser:
    """The learned normaliser called ``name_or_path`` (None: the project's current one, else the
    shipped default), through the one registry; :class:`StainError` naming it when it is not a
    normaliser or cannot be loaded. ``calibration``: see the module docstring (None: the
    default)."""
    from ..methods import get_method
    from ..models import WeightsError

    try:
        method = get_method(name_or_path, kind="normaliser", project=project)
    except WeightsError as exc:
        raise StainError(str(exc)) from None
    return method.normaliser(runtime=runtime, calibration=calibration)


def _uint8(rgb: np.ndarray) -> np.ndarray:
    return rgb if rgb.dtype == np.uint8 else np.clip(rgb, 0, 255).astype(np.uint8)


def _calibration_crops(images: list[np.ndarray]) -> list[np.ndarray]:
    """At most :data:`CALIBRATION_PX` of ``images`` for the network to run on, spread over all
    of them: a centred crop of each block of a slide's sample, or of each cell of a
    :data:`CALIBRATION_GRID` grid over a single large image (not its top-left corner)."""
    if len(images) == 1 and images[0].shape[0] * images[0].shape[1] > CALIBRATION_PX:
        im, n = images[0], CALIBRATION_GRID
        h, w = im.shape[:2]
        images = [
            im[i * h // n : (i + 1) * h // n, j * w // n : (j + 1) * w // n]
            for i in range(n)
            for j in range(n)
        ]
    side = max(8, int(np.sqrt(CALIBRATION_PX / len(images))))
    crops = []
    for im in images:
        h, w = im.shape[:2]
        y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
        crops.append(im[y0 : y0 + side, x0 : x0 + side])
    return crops
