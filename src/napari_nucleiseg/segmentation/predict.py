"""Run the nuclei network on an image at any µm/px: resample to the model's resolution, infer in
overlapping tiles (only each tile's centre is kept, so no seams), bring the maps back to the
input resolution, then post-process into instances there.

Test-time flips, by a constant-work rule: an input finer than the model (40x for a 20x model)
is shrunk before the network, which then covers a quarter of the input's pixels; the spare work
goes into averaging the maps of the flipped image (4 passes at 40x, 2 at ~28x, 1 at 20x), so
the network's work per input pixel — and the speed against reading those pixels — stays that of
a 20x input. ``NUCLEISEG_TTA=off`` (or 1, 2, 4) overrides the rule.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np

from ..models.runtime import tta_mode, usable_cores
from .postprocess import PostprocessSettings, instances_from_maps

__all__ = ["Predictor", "flip_passes", "sharing_cores", "tta_mode", "usable_cores"]


def _resize(arr: np.ndarray, shape: tuple[int, int], shrink: bool) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(arr)
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.asarray(img.resize((shape[1], shape[0]), method))


def _resize_maps(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resampling of float32 maps (C, h, w) to (C, H, W), pixel centres aligned (the
    same convention as torch's ``align_corners=False``), without importing torch."""
    from PIL import Image

    out = np.empty((maps.shape[0], *shape), np.float32)
    for c, m in enumerate(maps):
        out[c] = np.asarray(
            Image.fromarray(np.ascontiguousarray(m), mode="F").resize(
                (shape[1], shape[0]), Image.Resampling.BILINEAR
            )
        )
    return out


#: Image axes flipped in each test-time pass (rows = 0, columns = 1), by number of passes.
FLIPS = {1: ((),), 2: ((), (1,)), 4: ((), (1,), (0,), (0, 1))}


def flip_passes(model_mpp: float, mpp: float) -> int:
    """Passes for an input at ``mpp`` into a model at ``model_mpp`` (see the module docstring)."""
    mode = tta_mode()
    if mode != "auto":
        return 1 if mode == "off" else int(mode)
    # Model pixels per input pixel, squared: the work a 20x input would cost, left over. 5 %
    # slack so a 0.2527 µm/px Aperio 40x scan counts as 40x.
    spare = (model_mpp / mpp) ** 2 * 1.05
    return 4 if spare >= 4 else 2 if spare >= 2 else 1


_SHARING = threading.local()


@contextmanager
def sharing_cores(passes: int):
    """Within this, the calling thread's network passes run beside ``passes - 1`` others (tiles
    segmented in parallel): each takes its share of the cores and none waits for another.

    Two single-threaded passes side by side beat one two-threaded pass at a time on this 2-core
    machine: a pass's threads wait for each other at every layer, and the tile's watershed, run
    in between, leaves one of them idle. Eight 1664² blocks took 3.3 s against 3.85 s; the 4000²
    region 5.4-6.4 s against 6.6-6.9 s. The shipped int8 network gives identical maps either way
    (tested). The PyTorch runtime does not share: its passes take turns, as before.
    """
    before = getattr(_SHARING, "passes", 1)
    _SHARING.passes = max(1, int(passes))
    try:
        yield
    finally:
        _SHARING.passes = before


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    out = np.negative(logits, dtype=np.float32)
    np.exp(out, out=out)
    out += 1
    return np.reciprocal(out, out=out)


class Predictor:
    """Wraps a :class:`~napari_nucleiseg.segmentation.unet.UNet` trained at ``mpp`` µm/px."""

    def __init__(
        self,
        model,
        mpp: float,
        tile: int = 1024,
        halo: int = 64,
        threads: int | None = None,
        settings: PostprocessSettings = PostprocessSettings(),
        session=None,
        multiple: int | None = None,
        make_session=None,
    ):
        #: The PyTorch network, or None when ``session`` runs it (then torch is never imported,
        #: which saves seconds of start-up for a command-line run).
        self.model = model.eval() if model is not None else None
        self.mpp = float(mpp)
        self.multiple = multiple or getattr(model, "multiple", 8)
        self.tile = tile - tile % self.multiple
        self.halo = halo
        self.settings = settings
        #: An ONNX Runtime session running the same network (2-3x faster on CPU), or None.
        self.session = session
        if model is None and session is None:
            raise ValueError("a Predictor needs a model or an ONNX Runtime session")
        #: One full-width network pass at a time: such a pass already spreads over every core,
        #: and two at once only contend. Everything else (resampling, watershed) may run beside
        #: it. Passes inside :func:`sharing_cores` take their share of the cores instead, and
        #: run side by side without this lock.
        self._network = threading.Lock()
        #: ``make_session(threads)`` → a session of the same network using that many threads,
        #: for passes that share the cores (:func:`sharing_cores`); made once per thread count.
        self._make_session = make_session
        self._shared_sessions: dict[int, object] = {}
        self._sessions_lock = threading.Lock()
        if threads and self.session is None:
            import torch

            torch.set_num_threads(threads)

    @property
    def runtime(self) -> str:
        if self.session is None:
            return "torch"
        return (
            "onnxruntime-int8"
            if getattr(self.session, "nucleiseg_precision", "") == "int8"
            else "onnxruntime"
        )

    # ------------------------------------------------------------------ maps
    def _forward(self, rgb: np.ndarray, passes: int = 1) -> np.ndarray:
        """Probabilities (3, h, w) for an RGB uint8 block, reflect-padded to the model's multiple,
        averaged over ``passes`` flipped copies (flipped after padding: a padded side is a
        multiple of the pooling factor, so a flipped block still sits on the network's grid)."""
        h, w = rgb.shape[:2]
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            rgb = np.pad(
                rgb,
                ((0, ph), (0, pw), (0, 0)),
                mode="reflect" if min(h, w) > max(ph, pw) else "edge",
            )
        total = None
        for axes in FLIPS[passes]:
            probs = self._forward_once(np.ascontiguousarray(np.flip(rgb, axes)) if axes else rgb)
            if axes:
                probs = np.flip(probs, tuple(a + 1 for a in axes))
            total = probs if total is None else np.add(total, probs, out=total)
        if passes > 1:
            total /= passes
        return np.ascontiguousarray(total[:, :h, :w])

    def _shared_session(self):
        """The session for a pass that shares the cores with others, or None (pass alone)."""
        passes = getattr(_SHARING, "passes", 1)
        if passes <= 1 or self._make_session is None:
            return None
        threads = max(1, usable_cores() // passes)
        with self._sessions_lock:
            if threads not in self._shared_sessions:
                self._shared_sessions[threads] = self._make_session(threads)
            return self._shared_sessions[threads]

    def _forward_once(self, rgb: np.ndarray) -> np.ndarray:
        if self.session is not None:
            x = np.multiply(np.moveaxis(rgb, 2, 0)[None], np.float32(1 / 255), dtype=np.float32)
            shared = self._shared_session()
            if shared is not None:  # its share of the cores: runs beside the other passes
                return _sigmoid(shared.run(None, {"rgb": x})[0][0])
            with self._network:
                logits = self.session.run(None, {"rgb": x})[0]
            return _sigmoid(logits[0])
        import torch

        x = (
            torch.from_numpy(np.require(rgb, requirements="CW"))
            .permute(2, 0, 1)[None]
            .float()
            .div_(255.0)
        )
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._network:
            out = torch.sigmoid(self.model(x))[0]
        return out.numpy()

    def maps_at_model_resolution(
        self, rgb: np.ndarray, progress=None, passes: int = 1
    ) -> np.ndarray:
        """Seam-free probability maps over an image already at the model's µm/px."""
        h, w = rgb.shape[:2]
        t, halo = self.tile, self.halo
        # One pass up to 1.5 tiles: callers that tile already (segment_image, whole-slide jobs)
        # hand over a tile plus its halo, which must not be split again into slivers.
        if h <= t * 3 // 2 + 2 * halo and w <= t * 3 // 2 + 2 * halo:
            return self._forward(rgb, passes)
        out = np.zeros((3, h, w), np.float32)
        padded = np.pad(rgb, ((halo, halo), (halo, halo), (0, 0)), mode="reflect")
        boxes = [(y, x) for y in range(0, h, t) for x in range(0, w, t)]
        for i, (y, x) in enumerate(boxes):
            y1, x1 = min(y + t, h), min(x + t, w)
            block = padded[y : y1 + 2 * halo, x : x1 + 2 * halo]
            probs = self._forward(block, passes)
            out[:, y:y1, x:x1] = probs[:, halo : halo + (y1 - y), halo : halo + (x1 - x)]
            if progress is not None:
                progress(i + 1, len(boxes))
        return out

    def maps(self, rgb: np.ndarray, mpp: float, progress=None) -> np.ndarray:
        """Probability maps (3, H, W) at the input's own resolution."""
        h, w = rgb.shape[:2]
        f = mpp / self.mpp
        passes = flip_passes(self.mpp, mpp)
        if abs(f - 1) < 0.02:
            return self.maps_at_model_resolution(rgb, progress, passes)
        mh, mw = max(1, round(h * f)), max(1, round(w * f))
        small = _resize(rgb, (mh, mw), shrink=f < 1)
        probs = self.maps_at_model_resolution(small, progress, passes)
        return _resize_maps(probs, (h, w))

    # ------------------------------------------------------------------ instances
    def segment(
        self,
        rgb: np.ndarray,
        mpp: float,
        progress=None,
        settings: PostprocessSettings | None = None,
    ) -> np.ndarray:
        """Instance labels (uint32) at the input's resolution; ``settings`` (default: this
        predictor's) post-process the maps."""
        return instances_from_maps(self.maps(rgb, mpp, progress), mpp, settings or self.settings)
