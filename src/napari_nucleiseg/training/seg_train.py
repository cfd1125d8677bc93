"""Resumable training of the nuclei U-Net.

One command reproduces the shipped weights from scratch (see docs/researcher.md); a killed run
restarted with the same command resumes from its last checkpoint. Training data: the training
sets only — a fixed subset of training images is held out for model selection; test sets are
never read here.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class TrainConfig:
    data: str
    out: str
    mpp: float = 0.5
    widths: tuple = (8, 24, 48, 96)
    decoder: str = "double"
    patch: int = 256
    batch: int = 8
    iters: int = 6000
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 2
    checkpoint_every: int = 250
    validate_every: int = 1000
    holdout: list = field(
        default_factory=lambda: [
            "TCGA-18-5592-01Z-00-DX1",
            "TCGA-49-4488-01Z-00-DX1",
            "TCGA-E2-A1B5-01Z-00-DX1",
            "TCGA-RD-A8N9-01A-01-TS1",
        ]
    )
    # Cosine cycles with warm restarts (SGDR). Empty: one cycle of ``iters``. Given, ``iters`` is
    # their sum and cycle k peaks at ``lr * cycle_lr_decay**k``.
    cycles: tuple = ()
    cycle_lr_decay: float = 0.5
    # Start from a shipped model's weights (registry name or .safetensors file) instead of random
    # ones: every level they share is copied (see ``unet.warm_start``). Ignored on resume.
    init_from: str = ""
    # More labelled data from other sources (issue 17): ``PATH`` or ``PATH:KIND`` data sets, a
    # share of every batch drawn from them, and their stems held out (whole look-alike clusters,
    # ``nuclei_data.appearance_holdout``; chosen when the run starts, recorded here).
    extra_data: list = field(default_factory=list)
    extra_share: float = 0.0
    extra_holdout: list = field(default_factory=list)
    augment: str = "standard"
    # Move each data set's labels onto its nuclei before training (``label_alignment``): the
    # MoNuSeg training labels sit a pixel off. The moves found are recorded in ``label_moves``.
    align_labels: bool = False
    label_moves: dict = field(default_factory=dict)

    def __post_init__(self):
        self.extra_data = [str(d) for d in self.extra_data]
        if not 0.0 <= self.extra_share < 1.0:
            raise ValueError(f"extra_share must be in [0, 1), got {self.extra_share}")
        if self.extra_share and not self.extra_data:
            raise ValueError("extra_share given without extra_data")
        self.cycles = tuple(int(c) for c in self.cycles)
        if self.cycles:
            if min(self.cycles) < 1:
                raise ValueError(f"cycles must be positive, got {self.cycles}")
            self.iters = sum(self.cycles)
        # Values that would fail part way, or train nothing: refused before any work.
        self.widths = tuple(int(w) for w in self.widths)
        if not 2 <= len(self.widths) <= 8 or min(self.widths) < 1:
            raise ValueError(f"widths must be 2 to 8 positive numbers, got {self.widths}")
        multiple = 2 ** (len(self.widths) - 1)
        if self.patch < 2 * multiple or self.patch % multiple:
            raise ValueError(
                f"patch must be a multiple of {multiple} (the network's {len(self.widths)} "
                f"levels) and at least {2 * multiple}, got {self.patch}"
            )
        for name in ("iters", "batch", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "mpp", "cycle_lr_decay"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be above 0, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be 0 or more, got {self.seed}")

    def cycle_starts(self) -> list[int]:
        """Iterations where a cycle begins (0 first)."""
        return [int(c) for c in np.cumsum((0,) + self.cycles[:-1])] if self.cycles else [0]

    def lr_at(self, it: int) -> float:
        """Learning rate of iteration ``it`` (0-based): cosine from the cycle's peak to zero."""
        lengths = self.cycles or (self.iters,)
        start = 0
        for k, n in enumerate(lengths):
            if it < start + n or k == len(lengths) - 1:
                return (
                    self.lr
                    * self.cycle_lr_decay**k
                    * 0.5
                    * (1 + math.cos(math.pi * (it - start) / n))
                )
            start += n
        raise AssertionError("unreachable")


def loss_fn(logits, targets):
    import torch
    from torch.nn import functional as F

    fg, contour, dist = targets[:, 0], targets[:, 1], targets[:, 2]
    l_fg = F.binary_cross_entropy_with_logits(logits[:, 0], fg)
    p = torch.sigmoid(logits[:, 0])
    dice = 1 - (2 * (p * fg).sum() + 1) / (p.sum() + fg.sum() + 1)
    l_contour = F.binary_cross_entropy_with_logits(
        logits[:, 1], contour, pos_weight=torch.tensor(3.0)
    )
    l_dist = F.mse_loss(torch.sigmoid(logits[:, 2]), dist)
    return l_fg + dice + l_contour + 2.0 * l_dist


def train(cfg: TrainConfig) -> Iterator[dict]:
    """Train, yielding a progress dict after every iteration (the CLI prints, tests drain)."""
    import torch

    from ..segmentation.unet import UNet
    from . import distributed
    from .nuclei_data import PatchSampler, appearance_holdout, load_dataset, load_spec

    run = distributed.setup()  # several processes under torchrun, else one
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"
    torch.manual_seed(cfg.seed)
    images = load_dataset(cfg.data)
    if cfg.align_labels:
        images = _aligned(images, cfg.data, cfg)
    train_imgs = [im for im in images if im.stem not in cfg.holdout]
    val_imgs = [im for im in images if im.stem in cfg.holdout]
    extra = [
        im
        for spec in cfg.extra_data
        for im in (_aligned(load_spec(spec), spec, cfg) if cfg.align_labels else load_spec(spec))
    ]
    if extra and not cfg.extra_holdout:
        saved = out / "config.json"
        if saved.exists():  # a resumed run keeps the split it started with
            cfg.extra_holdout = json.loads(saved.read_text()).get("extra_holdout", [])
        if not cfg.extra_holdout:
            cfg.extra_holdout = appearance_holdout(extra, seed=cfg.seed)
    extra_train = [im for im in extra if im.stem not in cfg.extra_holdout]
    extra_val = [im for im in extra if im.stem in cfg.extra_holdout]
    weights = None
    if extra_train and cfg.extra_share:
        weights = np.r_[
            np.full(len(train_imgs), (1 - cfg.extra_share) / len(train_imgs)),
            np.full(len(extra_train), cfg.extra_share / len(extra_train)),
        ]
        train_imgs = train_imgs + extra_train
    # The run folder is made once the data have loaded: a data set that fails to load leaves no
    # empty run folder behind.
    out.mkdir(parents=True, exist_ok=True)
    model = UNet(tuple(cfg.widths), decoder=cfg.decoder).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    if cfg.init_from and not ckpt_path.exists():
        _warm_start(model, cfg.init_from, log_to=out / "train.log" if run.main else None)
    # Each rank its own patches; one process draws exactly what it always drew.
    seed = cfg.seed if not run.active else [cfg.seed, run.rank]
    sampler = PatchSampler(
        train_imgs, cfg.mpp, cfg.patch, seed=seed, augment=cfg.augment, weights=weights
    )
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = int(state["iter"])
        # Re-seed deterministically from the iteration so a resumed run sees fresh patches.
        sampler.rng = np.random.default_rng(_stream(cfg.seed, start, run))
    if run.main:
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    log = open(out / "train.log", "a") if run.main else None
    net = distributed.wrap(model, run)  # gradients averaged over the ranks at every step
    model.train()
    t0 = time.perf_counter()
    # The next batch is cut and augmented in a thread while the network trains on this one (torch
    # releases the GIL in its kernels); batches come in the same order, so runs stay reproducible.
    from concurrent.futures import ThreadPoolExecutor

    prefetch = ThreadPoolExecutor(max_workers=1)
    pending = prefetch.submit(sampler.batch, cfg.batch)
    restarts = set(int(c) for c in cfg.cycle_starts()) - {0}
    for it in range(start, cfg.iters):
        if it in restarts and it != start:
            # A new cycle re-seeds the sampler exactly as a run resumed here does, so one
            # uninterrupted command and a run continued from the previous cycle's checkpoint
            # see the same patches.
            pending.result()
            sampler.rng = np.random.default_rng(_stream(cfg.seed, it, run))
            pending = prefetch.submit(sampler.batch, cfg.batch)
        lr = cfg.lr_at(it)
        for g in opt.param_groups:
            g["lr"] = lr
        rgb, targets = pending.result()
        pending = prefetch.submit(sampler.batch, cfg.batch)
        x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float().div_(255.0)
        x = x.contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(targets)
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        info = {
            "iter": it + 1,
            "iters": cfg.iters,
            "start": start,
            "loss": float(loss.detach()),
            "lr": lr,
            "elapsed_s": time.perf_counter() - t0,
        }
        if it + 1 == cfg.iters:
            distributed.sync_buffers(model, run)  # the checkpoint is every rank's model
        if run.main and ((it + 1) % cfg.checkpoint_every == 0 or it + 1 == cfg.iters):
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "iter": it + 1}, tmp)
            tmp.replace(ckpt_path)  # atomic: a kill never leaves half a checkpoint
        validating = (it + 1) % cfg.validate_every == 0 or it + 1 == cfg.iters
        if run.main and val_imgs and validating:
            info["val"] = validate(model, val_imgs, cfg)
            if extra_val:
                info["val_extra"] = validate(model, extra_val, cfg)
            model.train()
        if log is not None:
            log.write(json.dumps(info) + "\n")
            log.flush()
        yield info
    if log is not None:
        log.close()
    prefetch.shutdown(cancel_futures=True)
    if run.active:
        _record_rank(out, run, model, cfg.iters)
        distributed.barrier(run)
        # DistributedDataParallel's reducer goes before its process group: freed after it (when
        # this generator's frame is cleared), it can abort the process at exit ("terminate
        # called without an active exception", once in about thirty CI runs).
        del net, loss
        distributed.teardown(run)


def _aligned(images, name: str, cfg: TrainConfig) -> list:
    """``images`` with their labels moved onto the nuclei, the move recorded under ``name``."""
    from .label_alignment import aligned

    images, move = aligned(images)
    cfg.label_moves[str(name)] = list(move)
    return images


def _stream(seed: int, it: int, run) -> list[int]:
    """The sampler's seed from an iteration on (a resume or a new cycle): one process keeps the
    stream it always had, each of several ranks gets its own."""
    return [seed, it] if not run.active else [seed, it, run.rank]


def _record_rank(out: Path, run, model, iters: int) -> None:
    """``ranks/<rank>.json``: each rank's final weights' SHA-256. DistributedDataParallel keeps
    every rank's weights identical; this is the evidence (and what the test compares)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    folder = out / "ranks"
    folder.mkdir(exist_ok=True)
    record = {"rank": run.rank, "world_size": run.world_size, "iters": iters}
    record["weights_sha256"] = digest.hexdigest()
    (folder / f"{run.rank}.json").write_text(json.dumps(record))


def _warm_start(model, source: str, log_to: Path | None) -> None:
    """Load ``source`` (a registered model name or a .safetensors file) into ``model``."""
    from safetensors.torch import load_file

    from ..models import WeightsError, find_card, load_card, sha256_of
    from ..segmentation.unet import warm_start

    path = Path(source)
    if path.suffix != ".safetensors":
        card_path = find_card(source)[0]
        card = load_card(card_path)
        path = card_path.parent / card.weights
        if sha256_of(path) != card.sha256:
            raise WeightsError(
                f"{path}: SHA-256 does not match the card of {card.name!r}; not starting from it"
            )
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such weights file to start training from")
    copied = warm_start(model, load_file(str(path)))
    total = len(model.state_dict())
    if log_to is None:  # a rank other than 0: rank 0 logs it
        return
    with open(log_to, "a") as log:
        log.write(
            json.dumps({"init_from": str(source), "tensors_copied": len(copied), "tensors": total})
            + "\n"
        )


def validate(model, images, cfg) -> dict:
    """Aggregate AJI/F1/PQ on held-out training images with the default post-processing."""
    from ..metrics import aggregate, score_image
    from ..segmentation.predict import Predictor

    pred = Predictor(model=model.eval(), mpp=cfg.mpp)
    scores = [score_image(im.labels, pred.segment(im.rgb, im.mpp), im.stem) for im in images]
    a = aggregate(scores)
    return {k: round(a[k], 4) for k in ("aji", "f1", "pq", "ap")}
