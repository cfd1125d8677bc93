"""Train the tissue network on labelled tiles within a time budget (references 001 and 004).

Each iteration is reference 001's two alternating steps: (1) a batch of pixel-labelled images
(mosaics of tiles, :func:`~.tiles.mosaic`) trains the segmentation decoder and the shared
encoder with the pixel loss; (2) a batch of tile-labelled patches trains the classification head
and the encoder with ``α ·`` cross-entropy. ``pixel_loss="none"`` skips step 1: the classifier
alone, for measuring what the multi-task loss adds.

With ``stepwise`` (reference 004) a first share of the budget trains on an intermediate task made
with no pathologist: the training images' patches clustered by nuclei density and area
(:mod:`.intermediate`); the encoder then carries over to the labelled task, with a new head.

The learning rate follows a cosine over the time budget rather than over iterations, so a run
ends annealed whatever the machine's speed. The generator yields progress dicts (``stage``,
``iter``, ``loss``, ``fraction``, ``eta_s``) and finally ``{"stage": "done", "state": ...,
"tags": ...}``; closing it stops the run between iterations.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .losses import PIXEL_LOSSES
from .tiles import IGNORE, LabelledTile, mosaic, random_patch

#: The model's µm/px: a 112-px patch covers 112 µm, a few glands or a field of cells, the size
#: of the tiles pathologists and public tile sets (0.5 µm/px × 224 px) label.
DEFAULT_MPP = 1.0
DEFAULT_PATCH = 112


@dataclass
class ClassifierConfig:
    minutes: float = 5.0
    #: When > 0, stop after this many iterations instead (the schedule follows iterations):
    #: benchmarks compare settings at equal work whatever else the machine is doing.
    iterations: int = 0
    mpp: float = DEFAULT_MPP
    patch: int = DEFAULT_PATCH
    batch: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    #: Pixel loss for the segmentation step ("none": classifier alone), its β, and α weighting
    #: the classification loss (reference 001: dynamic, β = 3, α = 1).
    pixel_loss: str = "dynamic"
    beta: float = 3.0
    alpha: float = 1.0
    #: Reference 004: share of the budget spent on the pathologist-free intermediate task.
    stepwise: bool = False
    stepwise_share: float = 0.3
    #: Colour augmentation: haematoxylin/eosin concentration jitter (σ) and brightness.
    hed_sigma: float = 0.08
    #: Labs differ in the hue of their stains, not only in how much: each image is recomposed
    #: with its own stain vectors, the Ruifrok vectors moved by N(0, σ) per component. Measured
    #: (600 iterations, held-out LC25000 groups recoloured by Macenko to a MoNuSeg image / the
    #: CMU slide): AUC 0.63 / 0.55 without, 0.85 / 0.73 with σ 0.1, 0.94 / 0.91 with σ 0.2 and
    #: concentration jitter 0.08, for 0.991 → 0.988 on the tiles as they are.
    stain_vector_sigma: float = 0.2
    scale_jitter: float = 0.15
    seed: int = 0
    widths: tuple = (16, 32, 64, 128)

    def __post_init__(self):
        if self.pixel_loss not in (*PIXEL_LOSSES, "none"):
            raise ValueError(f"pixel_loss must be one of {PIXEL_LOSSES} or 'none'")
        if not self.minutes > 0:
            raise ValueError(f"minutes must be positive, got {self.minutes}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d


def _augment(batch: np.ndarray, rng, cfg: ClassifierConfig) -> np.ndarray:
    """Stain jitter of a whole (N, H, W, 3) batch at once: each image's stain concentrations
    scaled and shifted (``c' = c·α + β``, as :func:`~..stain.augment.hed_jitter`) and recomposed
    with its own perturbed stain vectors (another lab's hues); vectorised, since per-patch
    jitter cost more than the network's step."""
    from ..stain.deconvolution import HED_FROM_RGB, RGB_FROM_HED

    if cfg.hed_sigma <= 0 and cfg.stain_vector_sigma <= 0:
        return batch
    n = len(batch)
    od = _OD_LUT[batch]  # (N, H, W, 3) float32
    hed = od @ HED_FROM_RGB.astype(np.float32)
    alpha = rng.uniform(1 - 4 * cfg.hed_sigma, 1 + 4 * cfg.hed_sigma, (n, 1, 1, 3))
    beta = rng.uniform(-cfg.hed_sigma, cfg.hed_sigma, (n, 1, 1, 3))
    hed = hed * alpha.astype(np.float32) + beta.astype(np.float32)
    vectors = RGB_FROM_HED[None] + rng.normal(0, cfg.stain_vector_sigma, (n, 3, 3))
    vectors = np.abs(vectors) / np.linalg.norm(vectors, axis=2, keepdims=True)
    od = np.einsum("nhwc,ncd->nhwd", hed, vectors.astype(np.float32), optimize=True)
    od = np.clip(od, 0, None)
    return np.clip(255.0 * np.power(10.0, -od), 0, 255).astype(np.uint8)


#: Optical density of each 8-bit value (0 clipped to 1, as the stain module does).
_OD_LUT = (-np.log10(np.clip(np.arange(256, dtype=np.float32), 1, 255) / 255.0)).astype(np.float32)


def _scaled_patch(tile: LabelledTile, cfg: ClassifierConfig, rng):
    """A patch with a random scale change of ±``scale_jitter`` (log): crop a larger or smaller
    square and resize it to the patch size."""
    from PIL import Image

    s = float(np.exp(rng.uniform(-cfg.scale_jitter, cfg.scale_jitter)))
    side = max(16, round(cfg.patch * s))
    patch, mask = random_patch(tile.rgb, side, rng, tile.mask)
    if side != cfg.patch:
        patch = np.asarray(Image.fromarray(patch).resize((cfg.patch, cfg.patch), Image.BILINEAR))
        if mask is not None:
            mask = np.asarray(Image.fromarray(mask).resize((cfg.patch,) * 2, Image.NEAREST))
    return patch, mask


def _to_tensor(batch: np.ndarray):
    import torch

    x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last)


def train_classifier(
    tiles: list[LabelledTile],
    cfg: ClassifierConfig,
    *,
    init_state: dict | None = None,
    intermediate: tuple[list[np.ndarray], np.ndarray] | None = None,
    threads: int | None = None,
    checkpoint: Path | None = None,
    resume: dict | None = None,
):
    """Generator: train on ``tiles`` (at ``cfg.mpp``) for ``cfg.minutes``; see the module doc.

    ``init_state``: encoder weights to start from (a previous classifier's ``state_dict``;
    heads are re-made for these tags). ``intermediate``: ``(patches, labels)`` for the stepwise
    stage; computed from the tiles' own images when ``cfg.stepwise`` and it is None.
    ``checkpoint``: a file the labelled stage saves itself to every :data:`CHECKPOINT_S` seconds
    (network, optimiser, iteration, time spent); ``resume``: such a checkpoint, loaded
    (:func:`load_checkpoint`), to go on from for the budget it had left."""
    import torch

    from .losses import pixel_loss
    from .network import TissueNet

    if threads:
        torch.set_num_threads(threads)
    tags = sorted({t.tag for t in tiles})
    if len(tags) < 2:
        raise ValueError(f"a classifier needs tiles of at least two tags, got {tags}")
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = TissueNet(len(tags), cfg.widths)
    if init_state:
        encoder = {k: v for k, v in init_state.items() if k.startswith("encoder.")}
        model.load_state_dict(encoder, strict=False)
    model = model.to(memory_format=torch.channels_last)
    budget = float(cfg.iterations) if cfg.iterations > 0 else cfg.minutes * 60.0
    t0 = time.perf_counter() - (resume["spent"] if resume else 0.0)

    if cfg.stepwise and not resume:
        if intermediate is None:
            from .intermediate import intermediate_labels

            patches = [_scaled_patch(t, cfg, rng)[0] for t in tiles for _ in range(2)]
            yield {"stage": "intermediate", "fraction": 0.0, "patches": len(patches)}
            labels, _ = intermediate_labels(patches, cfg.mpp, seed=cfg.seed)
            intermediate = (patches, labels)
        patches, labels = intermediate
        k = int(np.max(labels)) + 1
        step_model = TissueNet(k, cfg.widths).to(memory_format=torch.channels_last)
        step_model.encoder = model.encoder  # shared: what it learns here carries over
        end = budget * cfg.stepwise_share
        yield from _loop(
            step_model,
            cfg,
            rng,
            t0,
            end,
            budget,
            "stepwise",
            image_batch=lambda: _image_batch_from(patches, labels, cfg, rng),
            pixel_batch=None,
            pixel_loss=pixel_loss,
        )
    if resume:
        model.load_state_dict(resume["model"])
        start = resume["start"]
    else:
        start = (
            (round(budget * cfg.stepwise_share) if cfg.stepwise else 0)
            if cfg.iterations > 0
            else (time.perf_counter() - t0)
        )
    yield from _loop(
        model,
        cfg,
        rng,
        t0,
        budget,
        budget,
        "train",
        start=start,
        image_batch=lambda: _image_batch(tiles, tags, cfg, rng),
        pixel_batch=(
            None if cfg.pixel_loss == "none" else lambda: _pixel_batch(tiles, tags, cfg, rng)
        ),
        pixel_loss=pixel_loss,
        checkpoint=checkpoint,
        resume=resume,
    )
    model.eval()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    yield {
        "stage": "done",
        "state": state,
        "tags": tags,
        "seconds": time.perf_counter() - t0,
        "config": cfg.to_dict(),
    }


def _image_batch(tiles, tags, cfg, rng):
    import torch

    # Balanced over tags: a rare tag (3 tiles of mucus) still appears in every batch.
    per_tag = {tag: [t for t in tiles if t.tag == tag] for tag in tags}
    chosen = rng.integers(len(tags), size=cfg.batch)
    xs, ys = [], []
    for c in chosen:
        pool = per_tag[tags[c]]
        tile = pool[int(rng.integers(len(pool)))]
        for _ in range(8):
            patch, mask = _scaled_patch(tile, cfg, rng)
            if mask is None:
                break
            # An outlined region: the patch's tag is the one most of its labelled pixels have,
            # and a patch mostly outside every outline is drawn again.
            counts = np.bincount(mask[mask != IGNORE].ravel(), minlength=len(tags))
            if counts.sum() >= mask.size // 2:
                c = int(np.argmax(counts))
                break
        xs.append(patch)
        ys.append(int(c))
    return _to_tensor(_augment(np.stack(xs), rng, cfg)), torch.tensor(ys)


def _image_batch_from(patches, labels, cfg, rng):
    import torch

    idx = rng.integers(len(patches), size=cfg.batch)
    xs = []
    for i in idx:
        p, _ = random_patch(patches[i], cfg.patch, rng)
        xs.append(p)
    return _to_tensor(_augment(np.stack(xs), rng, cfg)), torch.tensor(
        np.asarray(labels)[idx], dtype=torch.long
    )


def _pixel_batch(tiles, tags, cfg, rng):
    import torch

    xs, ms = [], []
    masked = [t for t in tiles if t.mask is not None]
    for _ in range(cfg.batch // 2):
        if masked and rng.random() < 0.5:
            tile = masked[int(rng.integers(len(masked)))]
            image, mask = _scaled_patch(tile, cfg, rng)
        else:
            image, mask = mosaic(tiles, tags, cfg.patch, rng)
        xs.append(image)
        ms.append(mask.astype(np.int64))
    return _to_tensor(_augment(np.stack(xs), rng, cfg)), torch.from_numpy(np.stack(ms))


def _loop(
    model,
    cfg,
    rng,
    t0,
    end,
    budget,
    stage,
    *,
    image_batch,
    pixel_batch,
    pixel_loss,
    start=0.0,
    checkpoint=None,
    resume=None,
):
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    it = 0
    if resume:
        opt.load_state_dict(resume["optimizer"])
        it = int(resume["iter"])
    save = None
    if checkpoint is not None:

        def save(it, spent):
            _save_checkpoint(checkpoint, model, opt, it, spent, stage, start)

    batches = _Prefetch(lambda: (pixel_batch() if pixel_batch else None, image_batch()))
    try:
        yield from _steps(
            model, opt, cfg, t0, end, budget, stage, start, batches, pixel_loss, it, save
        )
    finally:
        batches.stop()


#: Seconds between two checkpoints of a run.
CHECKPOINT_S = 30.0


def _save_checkpoint(path: Path, model, opt, it: int, spent: float, stage: str, start) -> None:
    """Written aside and renamed: a kill during the write leaves the previous checkpoint."""
    import os

    import torch

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "iter": it,
        "spent": spent,
        "stage": stage,
        "start": start,
    }
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by a run (tensors and numbers only: loaded with
    ``weights_only=True``, nothing in it can execute)."""
    import torch

    return torch.load(path, weights_only=True)


class _Prefetch:
    """Batches made in a thread while the network trains on the previous ones: cutting, resizing
    and colour-jittering patches is numpy work that would otherwise wait for the step (and a step
    for it); torch and numpy release the GIL for most of it. One thread draws every batch, so a
    seed still gives the same batches."""

    def __init__(self, make, depth: int = 2):
        import queue
        import threading

        self._queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._make = make
        self._thread = threading.Thread(target=self._run, daemon=True, name="batches")
        self._thread.start()

    def _run(self):
        import queue

        while not self._stop.is_set():
            try:
                item = self._make()
            except BaseException as exc:  # handed to the training loop, which raises it
                item = exc
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def get(self):
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)


def _steps(model, opt, cfg, t0, end, budget, stage, start, batches, pixel_loss, it, save):
    import torch.nn.functional as F

    smooth = None
    saved = time.perf_counter()
    # In iterations mode ``end`` and ``budget`` are iteration counts, ``start`` one too.
    by_iter = cfg.iterations > 0
    while True:
        now = time.perf_counter() - t0
        if (it + start if by_iter else now) >= end:
            break
        frac = ((it + start if by_iter else now) - start) / max(1e-6, end - start)
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
        warm = min(1.0, (it + 1) / 20)  # a short warm-up: batch norm statistics settle first
        for g in opt.param_groups:
            g["lr"] = lr * warm
        loss_px = None
        (px_batch, img_batch) = batches.get()
        if px_batch is not None:  # step 1: pixel-labelled images
            x, m = px_batch
            loss_px = pixel_loss(model.segment(x), m, cfg.pixel_loss, cfg.beta)
            opt.zero_grad(set_to_none=True)
            loss_px.backward()
            opt.step()
        x, y = img_batch  # step 2: tile-labelled patches
        logits, _ = model(x)
        loss = cfg.alpha * F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        it += 1
        if save is not None and time.perf_counter() - saved >= CHECKPOINT_S:
            save(it, time.perf_counter() - t0)
            saved = time.perf_counter()
        value = loss.item() + (loss_px.item() if loss_px is not None else 0.0)
        smooth = value if smooth is None else 0.9 * smooth + 0.1 * value
        spent = time.perf_counter() - t0
        done = (it + start) / budget if by_iter else spent / budget
        yield {
            "stage": stage,
            "iter": it,
            "loss": smooth,
            "fraction": min(1.0, done),
            "eta_s": max(0.0, spent / max(done, 1e-6) - spent),
        }
