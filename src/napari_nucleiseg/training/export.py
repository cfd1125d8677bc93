"""Turn a training checkpoint into a shipped model: safetensors weights + model card with hash."""

from __future__ import annotations

import datetime
import json
from pathlib import Path


def export_model(
    run_dir: str | Path,
    name: str,
    version: str,
    out_dir: str | Path,
    *,
    training_data: list,
    licence: str,
    metrics: dict | None = None,
    postprocess: dict | None = None,
    notes: str = "",
) -> Path:
    from safetensors.torch import save_file

    from ..io.output import shareable
    from ..models.registry import ModelCard, sha256_of

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cfg = json.loads((run_dir / "config.json").read_text())
    state = load_checkpoint(run_dir / "checkpoint.pt")
    weights = out_dir / f"{name}.safetensors"
    # Plain contiguous float tensors only: nothing in the file can execute when loaded.
    save_file({k: v.contiguous() for k, v in state["model"].items()}, str(weights))
    shareable(weights)
    decoder = cfg.get("decoder", "double")
    onnx_path = export_onnx(state["model"], tuple(cfg["widths"]), out_dir / f"{name}.onnx", decoder)
    int8_path = quantize_onnx(
        onnx_path,
        out_dir / f"{name}.int8.onnx",
        calibration_blocks(cfg["data"], cfg["mpp"], exclude=cfg.get("holdout", [])),
    )
    card = ModelCard(
        name=name,
        version=version,
        architecture="UNet",
        widths=list(cfg["widths"]),
        decoder=decoder,
        mpp=cfg["mpp"],
        sha256=sha256_of(weights),
        weights=weights.name,
        training_data=training_data,
        licence=licence,
        metrics=metrics or {},
        postprocess=postprocess or {},
        training={
            k: cfg[k]
            for k in (
                "iters",
                "cycles",
                "cycle_lr_decay",
                "batch",
                "patch",
                "lr",
                "seed",
                "holdout",
                "init_from",
                "extra_data",
                "extra_share",
                "extra_holdout",
                "augment",
                "align_labels",
                "label_moves",
            )
            if cfg.get(k) not in (None, "", [], {}, 0, 0.0, "standard")
        }
        | {
            "iterations_done": int(state["iter"]),
            "command": "nucleiseg train --data <monuseg2018_train> --out <run> "
            f"{_schedule_args(cfg)} "
            f"--widths {','.join(map(str, cfg['widths']))} --decoder {decoder} --lr {cfg['lr']} "
            f"--batch {cfg['batch']} --patch {cfg['patch']} --model-mpp {cfg['mpp']} "
            f"--seed {cfg['seed']}"
            f"{_init_args(cfg)}{_data_args(cfg)}",
        },
        created=datetime.date.today().isoformat(),
        notes=notes,
        onnx=onnx_path.name,
        onnx_sha256=sha256_of(onnx_path),
        onnx_int8=int8_path.name,
        onnx_int8_sha256=sha256_of(int8_path),
        tile_px=TILE_PX_BY_LEVELS.get(len(cfg["widths"]), 1024),
        context_um=CONTEXT_UM_BY_LEVELS.get(len(cfg["widths"]), 96.0),
    )
    (out_dir / f"{name}.json").write_text(card.to_json() + "\n")
    return weights


#: Context (µm) a tile needs on every side, by network depth, for tiled and untiled maps to agree
#: (AJI >= 0.99 on the 2000 px CMU crop in 640 px tiles). Measured for 6 levels (nuclei-unet-v4):
#: 32 µm 0.959, 48 µm 0.975, 64 µm 0.988, 80 µm 0.994, 96 µm 0.998; 5 levels: 32 µm >= 0.99.
CONTEXT_UM_BY_LEVELS = {4: 32.0, 5: 32.0, 6: 80.0}
#: Tile core in model pixels (a pass adds the context on both sides). v4's 80 µm context makes
#: a 1024 px core a 1344² pass, 54 % more network work than image on a 4000² region; a 1344 px
#: core (1664² passes, which ONNX Runtime runs at the same 5.5-5.8 MP/s here) cuts that to 34 %.
#: Images are cut into tiles of at most this size, balanced (tiling.plan.balanced_tile).
TILE_PX_BY_LEVELS = {4: 1024, 5: 1024, 6: 1344}


def _schedule_args(cfg: dict) -> str:
    """The training command's schedule options, as the run used them."""
    if cfg.get("cycles"):
        return (
            f"--cycles {','.join(map(str, cfg['cycles']))} "
            f"--cycle-lr-decay {cfg.get('cycle_lr_decay', 0.5)}"
        )
    return f"--iters {cfg['iters']}"


def _init_args(cfg: dict) -> str:
    """``--init-from`` as the run used it (a warm start is part of reproducing the weights)."""
    return f" --init-from {cfg['init_from']}" if cfg.get("init_from") else ""


def _data_args(cfg: dict) -> str:
    """``--extra-data``, ``--extra-share``, ``--augment`` and ``--align-labels`` as the run used
    them."""
    from .nuclei_data import split_spec

    args = ""
    for spec in cfg.get("extra_data", []):
        path, kind = split_spec(spec)
        args += f" --extra-data <{Path(path).name}>" + (f":{kind}" if kind else "")
    if cfg.get("extra_share"):
        args += f" --extra-share {cfg['extra_share']:g}"
    if cfg.get("augment", "standard") != "standard":
        args += f" --augment {cfg['augment']}"
    if cfg.get("align_labels"):
        args += " --align-labels"
    return args


def export_onnx(state_dict, widths, path: Path, decoder: str = "double") -> Path:
    """The same network, BatchNorm folded, as ONNX (protobuf: no code runs on load) for ONNX
    Runtime, which runs it 2-3x faster than PyTorch on CPU. Height and width are dynamic."""
    import torch

    from ..segmentation.unet import UNet, fuse_for_inference

    model = UNet(widths, decoder=decoder)
    model.load_state_dict(state_dict)
    fused = fuse_for_inference(model).to(memory_format=torch.contiguous_format)
    x = torch.rand(1, 3, 256, 256)
    torch.onnx.export(
        fused,
        x,
        str(path),
        input_names=["rgb"],
        output_names=["logits"],
        dynamic_axes={"rgb": {2: "h", 3: "w"}, "logits": {2: "h", 3: "w"}},
        opset_version=17,
        dynamo=False,
    )
    return Path(path)


def calibration_blocks(data_dir, mpp: float, exclude=(), n: int = 8, size: int = 512) -> list:
    """Training images (never test images) at the model's µm/px, as network inputs, for
    calibrating the int8 model's activation ranges."""
    import numpy as np
    from PIL import Image

    from .nuclei_data import load_dataset

    blocks = []
    for im in [im for im in load_dataset(data_dir) if im.stem not in exclude][:n]:
        f = im.mpp / mpp
        h, w = im.rgb.shape[:2]
        small = Image.fromarray(im.rgb).resize(
            (max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BOX
        )
        rgb = np.asarray(small)[:size, :size]
        rgb = rgb[: rgb.shape[0] - rgb.shape[0] % 16, : rgb.shape[1] - rgb.shape[1] % 16]
        blocks.append(np.moveaxis(rgb, 2, 0)[None].astype(np.float32) / 255)
    return blocks


def quantize_onnx(fp32_path: Path, out_path: Path, blocks: list) -> Path:
    """Static int8 quantisation (QDQ, per-channel weights, activations calibrated on ``blocks``):
    about twice as fast as float32 in ONNX Runtime on this CPU. The release measures the test set
    with it, since it is what runs by default."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Blocks(CalibrationDataReader):
        def __init__(self):
            self._it = iter(blocks)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {"rgb": x}

    pre = Path(out_path).with_suffix(".pre.onnx")
    quant_pre_process(str(fp32_path), str(pre))
    try:
        quantize_static(
            str(pre),
            str(out_path),
            Blocks(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
    finally:
        pre.unlink(missing_ok=True)
    return Path(out_path)


class CheckpointError(ValueError):
    """A training run's checkpoint cannot be read; the message names the file."""


def load_checkpoint(path: Path) -> dict:
    """A run's ``checkpoint.pt`` (weights only: nothing in it can execute), or
    :class:`CheckpointError` naming it, whatever the damage (the unpickler raises many kinds)."""
    import torch

    try:
        state = torch.load(path, weights_only=True)
        state["model"]  # noqa: B018 - a checkpoint holds the network's weights
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(
            f"{path}: cannot be read as a training checkpoint ({type(exc).__name__}); "
            "train again, or resume the run to write a new one"
        ) from None
    return state
