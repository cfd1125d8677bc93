"""Network throughput on this CPU: every registered nuclei model, and the candidate architectures
the shipped model was chosen from, run by ONNX Runtime on one tile of a tiled job.

    python benchmarks/network_speed.py [--tile 1024] [--rounds 3]
        [--out benchmarks/results/network_speed.json]

Throughput is model-resolution megapixels per second for a tile plus its halo (the block every
tiled and whole-slide job feeds the network), best of ``--rounds``. Candidates carry random
weights: speed does not depend on the weights. The speed of the whole command, against OpenSlide's
read, is ``segment_speed.py``; accuracy is ``nuclei_accuracy.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: (widths, decoder) pairs measured when choosing nuclei-unet-v2 and v4 (the last: v4's sixth
#: level).
CANDIDATES = [
    ((8, 24, 48, 96), "double"),
    ((8, 24, 48, 96), "light"),
    ((16, 32, 64, 128), "light"),
    ((8, 16, 32, 64, 128), "light"),
    ((12, 24, 48, 96, 192), "light"),
    ((16, 32, 64, 128, 256), "light"),
    ((12, 24, 48, 96, 192, 384), "light"),
]


def _session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _time(session, block: np.ndarray, rounds: int) -> float:
    session.run(None, {"rgb": block})  # warm-up: first run plans memory
    best = np.inf
    for _ in range(rounds):
        t = time.perf_counter()
        session.run(None, {"rgb": block})
        best = min(best, time.perf_counter() - t)
    return block.shape[2] * block.shape[3] / 1e6 / best


def main(argv=None):
    import torch

    from napari_nucleiseg.models import MODELS_DIR, list_models, load_card
    from napari_nucleiseg.segmentation.unet import UNet
    from napari_nucleiseg.training.export import export_onnx

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--halo", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "network_speed.json"))
    args = ap.parse_args(argv)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    side = args.tile + 2 * args.halo
    block = np.random.default_rng(0).random((1, 3, side, side), dtype=np.float32)
    rows = []
    for name in list_models():
        card = load_card(name)
        if not card.onnx:
            continue
        test = card.metrics.get("monuseg2018_test", {})
        fp32_aji = card.metrics.get("monuseg2018_test_float32", test).get("aji")
        files = [(card.onnx, "float32", fp32_aji)] + (
            [(card.onnx_int8, "int8", test.get("aji"))] if card.onnx_int8 else []
        )
        for file, precision, aji in files:
            mps = _time(_session(MODELS_DIR / file, threads), block, args.rounds)
            rows.append(
                {
                    "network": f"{name} ({precision})",
                    "widths": card.widths,
                    "decoder": card.decoder,
                    "mpp": card.mpp,
                    "params_m": None,
                    "mp_per_s": mps,
                    "shipped": True,
                    "aji": aji,
                }
            )
    tmp = Path(tempfile.mkdtemp())
    for widths, decoder in CANDIDATES:
        torch.manual_seed(0)
        net = UNet(widths, decoder=decoder).eval()
        path = export_onnx(net.state_dict(), widths, tmp / "candidate.onnx", decoder)
        mps = _time(_session(path, threads), block, args.rounds)
        rows.append(
            {
                "network": f"candidate {decoder} {','.join(map(str, widths))}",
                "widths": list(widths),
                "decoder": decoder,
                "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
                "mp_per_s": mps,
                "shipped": False,
            }
        )
    print(
        f"\nONNX Runtime, {threads} threads, {side}x{side} block "
        f"(tile {args.tile} + halo {args.halo})\n"
    )
    head = f"{'network':<42}{'params M':>10}{'MP/s':>8}{'s per 16 MP':>13}{'test AJI':>10}"
    print(head)
    print("-" * len(head))
    for r in rows:
        p = f"{r['params_m']:10.2f}" if r["params_m"] else f"{'':>10}"
        aji = f"{r['aji']:10.4f}" if r.get("aji") else f"{'':>10}"
        print(f"{r['network']:<42}{p}{r['mp_per_s']:8.2f}{16 / r['mp_per_s']:13.1f}{aji}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"benchmark": "network_speed", "threads": threads, "block": side, "rows": rows},
            indent=1,
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
