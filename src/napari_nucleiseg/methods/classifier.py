"""Tissue classifiers from their cards: patch → class probabilities and an embedding.

The same card layout as nuclei models (safetensors + ONNX twin + hashes, checked before every
load); the ONNX twin runs without torch, as for nuclei. A classifier is asked by the registry
with ``kind="classifier"`` and works at its card's µm/px on ``tile_px``-sided patches.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ..models import ModelCard, WeightsError, sha256_of
from .base import Method

DEFAULT_CLASSIFIER_MODEL = "tissue-tumour-v3"
#: The tag heatmaps and ``p_tumour`` read.
TUMOUR = "tumour"


class ClassifierMethod(Method):
    """``probabilities(patches)`` for uint8 (N, P, P, 3) patches at :attr:`mpp`; ``embed`` also
    returns the encoder's pooled features (attention pooling weighs them)."""

    kind = "classifier"

    def __init__(self, card: ModelCard, card_path: Path, source: str):
        self.card = card
        self.card_path = Path(card_path)
        self.source = source
        self.name = card.name
        self.mpp = float(card.mpp)
        self.tile_px = int(card.tile_px)
        self.context_um = 0.0
        self.classes = list(card.classes)
        self.outputs = tuple(f"p_{c}" for c in self.classes)
        self._run = None
        self._loading = threading.Lock()

    # ------------------------------------------------------------------ loading
    def runtime(self, warn: bool = True) -> str:
        from ..models.runtime import runtime_for

        return runtime_for(self.card, self.card_path.parent, warn=warn)

    def _runner(self):
        with self._loading:
            if self._run is None:
                self._run = self._load()
        return self._run

    def _load(self):
        from ..models.runtime import onnx_session

        folder = self.card_path.parent
        weights = folder / self.card.weights
        if not weights.exists():
            raise WeightsError(f"{weights}: weights file missing for model {self.card.name!r}")
        if sha256_of(weights) != self.card.sha256:
            raise WeightsError(
                f"{weights}: SHA-256 does not match the model card; the file is corrupt or was "
                "replaced — refusing to load it"
            )
        session = onnx_session(self.card, folder, self.runtime(warn=False))
        if session is not None:

            def run(x):
                return session.run(None, {"rgb": x})

            return run
        import torch
        from safetensors.torch import load_file

        from ..classification.network import TissueNet

        model = TissueNet(len(self.classes), tuple(self.card.widths))
        try:
            model.load_state_dict(load_file(str(weights)))
        except Exception as exc:
            raise WeightsError(f"{weights}: weights do not fit the card ({exc})") from None
        model.eval()

        def run(x):
            with torch.inference_mode():
                logits, emb = model(torch.from_numpy(x))
                return [torch.softmax(logits, 1).numpy(), emb.numpy()]

        return run

    def warm_up(self) -> None:
        self._runner()

    # ------------------------------------------------------------------ running
    def embed(self, patches: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities (N, C), embeddings (N, D))`` for uint8 (N, H, W, 3) patches at the
        model's µm/px."""
        patches = np.asarray(patches)
        if patches.ndim != 4 or patches.shape[-1] != 3:
            raise ValueError(f"patches must be (N, H, W, 3) RGB, got {patches.shape}")
        run = self._runner()
        probs, embs = [], []
        for i in range(0, len(patches), batch):
            x = np.ascontiguousarray(
                np.moveaxis(patches[i : i + batch], 3, 1), dtype=np.float32
            ) * np.float32(1 / 255)
            p, e = run(x)
            probs.append(np.asarray(p, np.float32))
            embs.append(np.asarray(e, np.float32).reshape(len(x), -1))
        if not probs:
            d = int(self.card.widths[-1])
            return np.zeros((0, len(self.classes)), np.float32), np.zeros((0, d), np.float32)
        return np.concatenate(probs), np.concatenate(embs)

    def probabilities(self, patches: np.ndarray) -> np.ndarray:
        return self.embed(patches)[0]

    def classify_image(self, rgb: np.ndarray, mpp: float) -> np.ndarray:
        """Class probabilities of a whole image (a tile): brought to the model's µm/px, cut into
        patches of the model's size (one patch, padded, when smaller), probabilities averaged."""
        from ..classification.tiles import to_mpp

        patches = image_patches(to_mpp(np.asarray(rgb), mpp, self.mpp), self.tile_px)
        return self.probabilities(patches).mean(0)

    def describe(self) -> dict:
        c = self.card
        return {
            "method": self.name,
            "model": c.name,
            "version": c.version,
            "sha256": c.sha256,
            "model_mpp": c.mpp,
            "classes": list(c.classes),
            "runtime": self.runtime(),
        }


def image_patches(rgb: np.ndarray, size: int) -> np.ndarray:
    """Non-overlapping ``size``² patches covering an image, the last row and column shifted
    inward to stay inside it; an image smaller than a patch is reflect-padded to one."""
    h, w = rgb.shape[:2]
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        mode = "reflect" if min(h, w) > max(ph, pw) // 2 + 1 else "edge"
        rgb = np.pad(rgb, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode=mode)
        h, w = rgb.shape[:2]
    ys = sorted({min(y, h - size) for y in range(0, h, size)})
    xs = sorted({min(x, w - size) for x in range(0, w, size)})
    return np.stack([rgb[y : y + size, x : x + size] for y in ys for x in xs])


def save_classifier(
    state: dict,
    tags: list[str],
    folder: str | Path,
    name: str,
    *,
    version: str,
    mpp: float,
    patch: int,
    widths,
    training_data: list,
    licence: str,
    metrics: dict | None = None,
    training: dict | None = None,
    notes: str = "",
    parent: str = "",
) -> Path:
    """Write ``<name>.safetensors``, its ONNX twin and ``<name>.json`` (the card, last: a card
    appears only with its files complete). Returns the card path."""
    import datetime
    import json
    import os

    import torch
    from safetensors.torch import save_file

    from ..classification.network import TissueNet
    from ..io.output import shareable

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    shareable(weights)  # safetensors writes 0600: a model is for every user of the folder
    model = TissueNet(len(tags), tuple(widths))
    model.load_state_dict(state)
    model.eval()

    class _Probs(torch.nn.Module):  # the ONNX twin returns probabilities, not logits
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            logits, emb = self.net(x)
            return torch.softmax(logits, 1), emb

    onnx_path = folder / f"{name}.onnx"
    torch.onnx.export(
        _Probs(model),
        torch.rand(2, 3, patch, patch),
        str(onnx_path),
        input_names=["rgb"],
        output_names=["probabilities", "embedding"],
        dynamic_axes={"rgb": {0: "n", 2: "h", 3: "w"}, "probabilities": {0: "n"}},
        opset_version=17,
        dynamo=False,
    )
    card = ModelCard(
        name=name,
        version=version,
        architecture="TissueNet",
        widths=list(widths),
        mpp=float(mpp),
        sha256=sha256_of(weights),
        weights=weights.name,
        task="tissue classification",
        outputs=[f"p_{t}" for t in tags],
        classes=list(tags),
        training_data=training_data,
        licence=licence,
        metrics=metrics or {},
        training={**(training or {}), **({"parent": parent} if parent else {})},
        created=datetime.date.today().isoformat(),
        notes=notes,
        onnx=onnx_path.name,
        onnx_sha256=sha256_of(onnx_path),
        tile_px=int(patch),
        context_um=float(patch * mpp / 2),
    )
    path = folder / f"{name}.json"
    tmp = folder / f".{name}.json.tmp"
    tmp.write_text(card.to_json())
    os.replace(tmp, path)
    json.loads(path.read_text())
    return path
