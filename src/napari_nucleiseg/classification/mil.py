"""Attention-based multiple-instance learning on patch embeddings (reference 003).

A pathologist labels a region or a slide, not its patches: "this outline holds tumour" is true
even when most of its patches are stroma. Multiple-instance learning treats such a region as a
*bag* of patch embeddings (the classifier's encoder, :meth:`ClassifierMethod.embed`) with one
label, and learns from bag labels alone which patches carry it. With gated attention pooling
(Ilse, Tomczak & Welling 2018) the weights it learns are a per-patch map of where the evidence
is: the attention heatmap drawn over the view or the slide.

Poolings (``MILConfig.pooling``), all on the same instance features ``h_i = relu(W x_i + b)``
(``x_i`` standardised with the training instances' mean and spread) and the same linear bag
classifier ``c(·)``:

- ``"attention"``: ``a_i = softmax_i(wᵀ (tanh(V h_i) ⊙ sigm(U h_i)))``, bag logit ``c(Σ a_i h_i)``.
  The tanh branch alone can only express near-linear relevance; the sigmoid gate lets it switch
  instances off. :meth:`MILModel.attention` returns ``a`` (sums to 1).
- ``"max"``: bag logit ``max_i c(h_i)`` (the standard MIL assumption: a bag is positive when one
  instance is). Its pooling weight is the one-hot of the arg max, and that is what
  :meth:`MILModel.attention` returns; a map wants the instance scores (:meth:`instance_scores`).
  Training softens the max for the first half of the budget (``MILConfig.max_warmup``): a hard
  max from the first step can stall for good (see there).
- ``"mean"``: bag logit ``c(mean_i h_i)`` (= the mean of instance logits, ``c`` being linear).
  Its weights are uniform ``1/n``: mean pooling has no notion of where; again see
  :meth:`instance_scores`.

The label is binary (``positive``, by default ``tumour``, against the rest), because the MIL
assumption that makes max pooling and attention meaningful is binary: a bag is positive when it
holds positive instances, whatever else it holds.

Inference is numpy on the saved weights (no torch, as the classifier's ONNX twin): a head is
``<name>.safetensors`` plus ``<name>.json`` (settings, SHA-256 of the weights, the embedding model
it belongs to), never a pickle. Training (:func:`train_mil`) needs torch and follows
:mod:`.train`: a generator on a time or iteration budget yielding progress dicts.

Patch sampling (reference 003) picks a bag's members among a region's tissue patches:
:func:`sample_bag` with ``"all"``, ``"random"`` (a subset of ``k``) or ``"cluster"`` (one patch
per k-means cluster of the embeddings: ``k`` patches that cover the region's kinds of tissue, so
a small tumour focus keeps a representative where a random subset may miss it).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

POOLINGS = ("attention", "max", "mean")
SAMPLINGS = ("all", "random", "cluster")
#: Written into every head's JSON; :func:`load_mil` refuses anything else.
FORMAT = "nucleiseg-mil"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------- patch sampling
def kmeans(embeddings: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(centroids (k', D), labels (n,))``: k-means (k-means++ start, seeded) on the rows of
    ``embeddings``. Clusters left empty are dropped and the labels renumbered ``0..k'-1``, so
    every label names a non-empty cluster (``k' < k`` only with many duplicate rows)."""
    from scipy.cluster.vq import kmeans2

    x = np.asarray(embeddings, np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"embeddings must be a non-empty (n, D) array, got {x.shape}")
    k = max(1, min(int(k), len(x)))
    with warnings.catch_warnings():
        # Empty clusters are handled below, not worth a warning to the user.
        warnings.simplefilter("ignore", UserWarning)
        centroids, labels = kmeans2(x, k, minit="++", rng=np.random.default_rng(seed))
    used = np.unique(labels)
    remap = np.full(k, -1, np.int64)
    remap[used] = np.arange(len(used))
    return centroids[used], remap[labels]


def sample_bag(embeddings: np.ndarray, mode: str = "all", k: int = 16, seed: int = 0) -> np.ndarray:
    """Sorted indices of the patches that make a bag, among ``embeddings`` (n, D) of a region's
    tissue patches (telling tissue from glass is the caller's job, before this):

    - ``"all"``: every patch;
    - ``"random"``: ``min(k, n)`` distinct patches drawn at random;
    - ``"cluster"``: one patch per k-means cluster of the embeddings (``min(k, n)`` clusters;
      fewer only when rows repeat), the one nearest its cluster's centroid.
    """
    x = np.asarray(embeddings)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (n, D), got {x.shape}")
    n = len(x)
    if mode not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {mode!r}")
    if mode == "all" or n <= k:
        return np.arange(n)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if mode == "random":
        return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))
    centroids, labels = kmeans(x, k, seed)
    picks = []
    for c, centre in enumerate(centroids):
        members = np.flatnonzero(labels == c)
        d = ((x[members].astype(np.float64) - centre) ** 2).sum(1)
        picks.append(members[int(np.argmin(d))])
    return np.sort(np.asarray(picks, np.int64))


# --------------------------------------------------------------------------- the head
@dataclass
class MILConfig:
    pooling: str = "attention"
    #: Width of the instance features h (M in Ilse et al.) and of the attention's hidden layer
    #: (L). Embeddings are already pooled encoder features; a small head is enough and does not
    #: overfit a few dozen outlined regions.
    hidden: int = 64
    attention_dim: int = 32
    dropout: float = 0.1
    #: Budget: ``minutes``, or when ``iterations`` > 0 that many steps (benchmarks: results that
    #: do not depend on how busy the machine is).
    minutes: float = 1.0
    iterations: int = 0
    #: Bags per step, half positive and half negative: a rare positive region still counts.
    batch: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    #: Max pooling only: for this share of the budget the max is softened (a log-mean-exp whose
    #: temperature falls from 1 to 0), then exact. A hard max from the start sends gradient to
    #: one patch per bag, and when the initial weights happen to score the tumour patches low
    #: they are never that patch: training stalls or learns the opposite (seen on real
    #: embeddings, one seed in a few). 0: hard max throughout.
    max_warmup: float = 0.5
    positive: str = "tumour"
    seed: int = 0

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if not (self.minutes > 0 or self.iterations > 0):
            raise ValueError("give a positive minutes or iterations budget")

    def to_dict(self) -> dict:
        return asdict(self)


def _sigmoid(x):
    # The tanh form never overflows, where 1 / (1 + exp(-x)) warns for a confident logit.
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x)))


class MILModel:
    """A trained MIL head on numpy arrays. ``predict(bag)`` is the probability that a bag (n, D)
    is ``positive``; ``attention(bag)`` the pooling weights (n,) (see the module doc for max and
    mean); ``instance_scores(bag)`` each patch's own probability under the bag classifier."""

    def __init__(self, weights: dict[str, np.ndarray], config: MILConfig, meta: dict | None = None):
        self.weights = {k: np.asarray(v, np.float32) for k, v in weights.items()}
        self.config = config
        self.meta = dict(meta or {})
        self.in_dim = int(self.weights["fc.weight"].shape[1])

    @property
    def pooling(self) -> str:
        return self.config.pooling

    def _forward(self, bag: np.ndarray):
        w = self.weights
        x = np.asarray(bag, np.float32)
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"a bag must be (n, {self.in_dim}) embeddings, got {x.shape}")
        if len(x) == 0:
            raise ValueError("an empty bag has no attention and no label")
        x = (x - w["mean"]) / w["std"]
        h = np.maximum(x @ w["fc.weight"].T + w["fc.bias"], 0.0)
        cw, cb = w["cls.weight"][0], w["cls.bias"][0]
        inst = h @ cw + cb
        if self.pooling == "attention":
            gate = np.tanh(h @ w["att_v.weight"].T + w["att_v.bias"]) * _sigmoid(
                h @ w["att_u.weight"].T + w["att_u.bias"]
            )
            raw = gate @ w["att_w.weight"][0] + w["att_w.bias"][0]
            a = np.exp(raw - raw.max())
            a /= a.sum()
            logit = (a @ h) @ cw + cb
        elif self.pooling == "max":
            i = int(np.argmax(inst))
            a = np.zeros(len(x), np.float32)
            a[i] = 1.0
            logit = inst[i]
        else:
            a = np.full(len(x), 1.0 / len(x), np.float32)
            logit = h.mean(0) @ cw + cb
        return float(logit), a.astype(np.float32), inst

    def predict(self, bag: np.ndarray) -> float:
        """Probability that the bag is ``positive``."""
        return float(_sigmoid(self._forward(bag)[0]))

    def attention(self, bag: np.ndarray) -> np.ndarray:
        """Pooling weights (n,), summing to 1: the gated attention; for ``max`` the one-hot of the
        instance that decides the bag; for ``mean`` uniform."""
        return self._forward(bag)[1]

    def instance_scores(self, bag: np.ndarray, logits: bool = False) -> np.ndarray:
        """Each patch's probability of ``positive`` as if it were a bag on its own (the bag
        classifier on its features): the map for max and mean pooling. ``logits``: the logits
        instead (they average and compare without saturating at 0 or 1)."""
        inst = self._forward(bag)[2]
        return inst.astype(np.float32) if logits else _sigmoid(inst).astype(np.float32)

    def check_embedder(self, method) -> None:
        """Refuse a classifier whose embeddings this head was not trained on (another encoder's
        features are other numbers in the same shape: the attention would be noise)."""
        want = self.meta.get("embedder", {}).get("sha256")
        if want and want != method.card.sha256:
            raise ValueError(
                f"this MIL head was trained on embeddings of {self.meta['embedder'].get('name')!r}"
                f" (sha256 {want[:12]}…), not of {method.name!r}: retrain it on this classifier"
            )

    # ------------------------------------------------------------------ files
    def save(self, folder: str | Path, name: str) -> Path:
        """Write ``<name>.safetensors`` then ``<name>.json`` (last: the JSON appears only with
        its weights complete). Returns the JSON path."""
        from safetensors.numpy import save_file

        from ..io.output import shareable
        from ..models import sha256_of

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / f"{name}.safetensors"
        save_file({k: np.ascontiguousarray(v) for k, v in self.weights.items()}, str(weights))
        shareable(weights)
        doc = {
            **self.meta,  # first: the keys below are this file's, whatever an old head said
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": name,
            "weights": weights.name,
            "sha256": sha256_of(weights),
            "in_dim": self.in_dim,
            "config": self.config.to_dict(),
            "created": datetime.date.today().isoformat(),
        }
        path = folder / f"{name}.json"
        tmp = folder / f".{name}.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, path)
        return path


def load_mil(path: str | Path) -> MILModel:
    """Read a head written by :meth:`MILModel.save` (its JSON path), checking the weights'
    SHA-256 before reading them."""
    from safetensors.numpy import load_file

    from ..models import WeightsError, sha256_of

    path = Path(path)
    doc = json.loads(path.read_text())
    if doc.get("format") != FORMAT or int(doc.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path}: not a MIL head this version can read")
    weights = path.parent / doc["weights"]
    if not weights.exists():
        raise WeightsError(f"{weights}: weights file missing for MIL head {doc.get('name')!r}")
    if sha256_of(weights) != doc["sha256"]:
        raise WeightsError(f"{weights}: SHA-256 does not match {path.name}; refusing to load it")
    keys = set(MILConfig.__dataclass_fields__)
    config = MILConfig(**{k: v for k, v in doc["config"].items() if k in keys})
    meta = {
        k: v
        for k, v in doc.items()
        if k not in ("format", "format_version", "weights", "sha256", "in_dim", "config")
    }
    return MILModel(load_file(str(weights)), config, meta)


# --------------------------------------------------------------------------- training
def embedder_meta(method) -> dict:
    """What to store with a head about the classifier whose ``embed`` made its bags (pass as
    ``train_mil(..., meta=embedder_meta(method))``; :meth:`MILModel.check_embedder` reads it)."""
    return {
        "embedder": {
            "name": method.name,
            "sha256": method.card.sha256,
            "mpp": float(method.mpp),
            "tile_px": int(method.tile_px),
        }
    }


def _torch_head(in_dim: int, cfg: MILConfig):
    """The torch twin of :meth:`MILModel._forward` (same parameter names), for training."""
    import torch
    from torch import nn

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.zeros(in_dim))
            self.register_buffer("std", torch.ones(in_dim))
            self.fc = nn.Linear(in_dim, cfg.hidden)
            self.drop = nn.Dropout(cfg.dropout)
            self.att_v = nn.Linear(cfg.hidden, cfg.attention_dim)
            self.att_u = nn.Linear(cfg.hidden, cfg.attention_dim)
            self.att_w = nn.Linear(cfg.attention_dim, 1)
            self.cls = nn.Linear(cfg.hidden, 1)

        def forward(self, x, mask, tau: float = 0.0):
            """Bag logits (B,) for padded bags ``x`` (B, n, D), ``mask`` (B, n) true on real
            instances; ``tau`` > 0 softens the max (``tau · log mean exp(s_i / tau)``: the mean
            of the instance logits as tau grows, their max as it falls to 0)."""
            h = self.drop(torch.relu(self.fc((x - self.mean) / self.std)))
            if cfg.pooling == "attention":
                gate = torch.tanh(self.att_v(h)) * torch.sigmoid(self.att_u(h))
                raw = self.att_w(gate).squeeze(-1).masked_fill(~mask, -torch.inf)
                z = (torch.softmax(raw, 1).unsqueeze(-1) * h).sum(1)
                return self.cls(z).squeeze(-1)
            if cfg.pooling == "max":
                inst = self.cls(h).squeeze(-1).masked_fill(~mask, -torch.inf)
                if tau > 0:
                    n = mask.sum(1).to(h.dtype)
                    return tau * (torch.logsumexp(inst / tau, 1) - torch.log(n))
                return inst.max(1).values
            m = mask.unsqueeze(-1).to(h.dtype)
            return self.cls((h * m).sum(1) / m.sum(1)).squeeze(-1)

    return Head()


def _bag_label(label, positive: str) -> int:
    if isinstance(label, str):
        return int(label == positive)
    return int(bool(label))


def train_mil(bags, cfg: MILConfig | None = None, *, meta: dict | None = None, threads=None):
    """Generator: train a MIL head on ``bags``, a sequence of ``(embeddings (n_i, D), label)``
    (label: bool/0-1, or a tag compared with ``cfg.positive``), within the budget of ``cfg``.

    Yields ``{"stage": "mil", "iter", "loss", "fraction", "eta_s"}`` every 10 steps and last
    ``{"stage": "done", "model": MILModel, "seconds", "iterations", "config"}``; closing the
    generator stops the run between steps. ``meta`` is stored with the head (e.g. the embedding
    model's name and SHA-256, so a head is never used on another encoder's embeddings)."""
    import torch

    cfg = cfg or MILConfig()
    if threads:
        torch.set_num_threads(threads)
    xs = [np.asarray(b, np.float32) for b, _ in bags]
    ys = np.array([_bag_label(y, cfg.positive) for _, y in bags], np.int64)
    if any(x.ndim != 2 or len(x) == 0 for x in xs):
        raise ValueError("every bag must be a non-empty (n, D) array of embeddings")
    if len({x.shape[1] for x in xs}) != 1:
        raise ValueError("bags have embeddings of different widths")
    pos, neg = np.flatnonzero(ys == 1), np.flatnonzero(ys == 0)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("MIL needs positive and negative bags")
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    head = _torch_head(xs[0].shape[1], cfg)
    every = np.concatenate(xs)
    head.mean.copy_(torch.from_numpy(every.mean(0)))
    # The floor keeps a dimension that never varies (a dead channel) from blowing up.
    head.std.copy_(torch.from_numpy(np.maximum(every.std(0), 1e-3 * every.std() + 1e-6)))
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    by_iter = cfg.iterations > 0
    budget = float(cfg.iterations) if by_iter else cfg.minutes * 60.0
    half = max(1, cfg.batch // 2)
    t0 = time.perf_counter()
    it, smooth = 0, None
    head.train()
    while True:
        spent = time.perf_counter() - t0
        done = it / budget if by_iter else spent / budget
        if done >= 1.0:
            break
        # Cosine over the budget (iterations or time), so a run ends annealed on any machine.
        for g in opt.param_groups:
            g["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * done))
        idx = np.concatenate([rng.choice(pos, half), rng.choice(neg, half)])
        n = max(len(xs[i]) for i in idx)
        x = np.zeros((len(idx), n, xs[0].shape[1]), np.float32)
        mask = np.zeros((len(idx), n), bool)
        for j, i in enumerate(idx):
            x[j, : len(xs[i])] = xs[i]
            mask[j, : len(xs[i])] = True
        tau = 0.0
        if cfg.pooling == "max" and done < cfg.max_warmup:
            tau = 1.0 - done / cfg.max_warmup
        logits = head(torch.from_numpy(x), torch.from_numpy(mask), tau)
        target = torch.from_numpy(ys[idx].astype(np.float32))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        it += 1
        smooth = loss.item() if smooth is None else 0.9 * smooth + 0.1 * loss.item()
        if it % 10 == 0:  # a step takes about a millisecond: every step would flood a GUI
            spent = time.perf_counter() - t0
            done = it / budget if by_iter else spent / budget
            yield {
                "stage": "mil",
                "iter": it,
                "loss": smooth,
                "fraction": min(1.0, done),
                "eta_s": max(0.0, spent / max(done, 1e-6) - spent),
            }
    head.eval()
    state = {k: v.detach().numpy().copy() for k, v in head.state_dict().items()}
    info = {
        "bags": int(len(xs)),
        "positive_bags": int(len(pos)),
        "iterations": it,
        "seconds": round(time.perf_counter() - t0, 3),
        "final_loss": smooth,
    }
    model = MILModel(state, cfg, {**(meta or {}), "training": info})
    yield {
        "stage": "done",
        "model": model,
        "seconds": info["seconds"],
        "iterations": it,
        "config": cfg.to_dict(),
    }


def fit_mil(bags, cfg: MILConfig | None = None, **kwargs) -> MILModel:
    """:func:`train_mil` run to the end, for scripts and tests: the trained :class:`MILModel`."""
    for progress in train_mil(bags, cfg, **kwargs):
        if progress["stage"] == "done":
            return progress["model"]
    raise RuntimeError("training ended without a model")
