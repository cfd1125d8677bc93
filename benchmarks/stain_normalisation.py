"""Stain normalisation: agreement with another toolbox's outputs, and speed against torchstain,
torch-staintools and a bare numpy pass — all measured in the same run.

    python benchmarks/stain_normalisation.py [--repeats 7]
        [--out benchmarks/results/stain_normalisation.json]

1. Accuracy. ``../shared/data/stain``: each method is fitted on ``target_image.png`` and applied
   to ``source_image.png``; the mean absolute difference (0-1 scale) to the toolbox's
   ``norm_<method>.png`` must stay below 0.01. Vahadane is also shown at other sparsity weights λ
   (0.1 = StainTools/SPAMS, 0.01 = torch-staintools) because its reference output depends on it.
2. Speed (single thread for everyone; best of ``--repeats`` rounds in which the contenders run
   interleaved, so a busy machine slows all of them alike; wall and CPU seconds):
   * Macenko fit + transform against torchstain 1.4 (torch and numpy backends; the faster is the
     yardstick): fit on the 1000² target, normalise the source and a 1000² TCGA tile.
   * Vahadane fit against torch-staintools (SPAMS-free, FISTA dictionary learning, its defaults,
     ``torch.compile`` off: compiling needs a C++ toolchain and would dominate) on the 256² source,
     with the cosine similarity of the stain vectors.
   * Transforming a 1024² tile with an adapted profile against a bare numpy pass
     (``-log`` → 3×3 matmul → ``exp`` → uint8), the faster of a BLAS and a planar variant.

torchstain and torch-staintools are optional
(``pip install torchstain torch-staintools --no-deps``); their rows are skipped when absent.
torch-staintools imports one helper from torchvision, whose PyPI wheel needs a CUDA build of
torch; when torchvision cannot be imported that helper
(``convert_image_dtype``) is supplied by a six-line shim below.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NUCLEISEG_SHARED", REPO.parent / "shared")) / "data" / "stain"
METHODS = ("macenko", "reinhard", "vahadane", "ruifrok")


def load(name):
    from PIL import Image

    return np.asarray(Image.open(DATA / name).convert("RGB"))


def mae(a, b) -> float:
    return float(np.mean(np.abs(a / 255.0 - b / 255.0)))


def race(fns: dict, repeats: int) -> dict:
    """``{name: (min wall s, min cpu s, result)}``: one warm-up each, then ``repeats`` rounds in
    which every function runs once, interleaved, so a busy machine slows all of them alike."""
    outs = {k: f() for k, f in fns.items()}
    walls = {k: [] for k in fns}
    cpus = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            w, c = time.perf_counter(), time.process_time()
            outs[k] = f()
            walls[k].append(time.perf_counter() - w)
            cpus[k].append(time.process_time() - c)
    return {k: (min(walls[k]), min(cpus[k]), outs[k]) for k in fns}


def best(fn, repeats):
    """(min wall s, min cpu s, last result) over ``repeats`` calls after one warm-up."""
    return race({"f": fn}, repeats)["f"]


def torchvision_shim():
    """Provide torchvision.transforms.functional.convert_image_dtype if torchvision is unusable."""
    try:
        import torchvision.transforms.functional  # noqa: F401

        return False
    except Exception:
        import torch

        def convert_image_dtype(image, dtype=torch.float):
            if image.dtype == dtype:
                return image
            if image.is_floating_point():
                return image.to(dtype)
            return image.to(dtype) / float(torch.iinfo(image.dtype).max)

        tv, tr, fn = (
            types.ModuleType(n)
            for n in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
        )
        fn.convert_image_dtype = convert_image_dtype
        tv.transforms, tr.functional = tr, fn
        sys.modules.update(
            {
                "torchvision": tv,
                "torchvision.transforms": tr,
                "torchvision.transforms.functional": fn,
            }
        )
        return True


def accuracy(src, tgt):
    from napari_nucleiseg.stain import make_normaliser

    rows = {}
    for m in METHODS:
        ref = load(f"norm_{m}.png")
        out = make_normaliser(m).fit(tgt).transform(src)
        rows[m] = {
            "mae": mae(out, ref),
            "mae_source_unchanged": mae(src, ref),
            "max_abs_levels": int(np.abs(out.astype(int) - ref).max()),
        }
    rows["vahadane"]["mae_by_lambda"] = {
        str(lam): mae(
            make_normaliser("vahadane", lam=lam).fit(tgt).transform(src), load("norm_vahadane.png")
        )
        for lam in (0.1, 0.05, 0.02, 0.01)
    }
    rows["vahadane"]["mae_to_norm_macenko"] = mae(
        load("norm_vahadane.png"), load("norm_macenko.png")
    )
    return rows


def speed_macenko(src, tgt, tile, repeats):
    from napari_nucleiseg.stain import make_normaliser

    res = {}
    for label, img in (("source 256x256", src), ("TCGA tile 1000x1000", tile)):
        fns = {"ours": lambda img=img: make_normaliser("macenko").fit(tgt).transform(img)}
        row = {}
        try:
            import torch
            import torchstain

            torch.set_num_threads(1)
            tt, ti = (
                torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))) for a in (tgt, img)
            )

            def ts_torch(tt=tt, ti=ti):
                n = torchstain.normalizers.MacenkoNormalizer(backend="torch")
                n.fit(tt)
                return n.normalize(I=ti, stains=False)

            def ts_numpy(img=img):
                n = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
                n.fit(tgt)
                return n.normalize(I=img, stains=False)

            fns.update(torchstain_torch=ts_torch, torchstain_numpy=ts_numpy)
        except ImportError as exc:
            row["torchstain"] = f"not installed ({exc})"
        t = race(fns, repeats)
        for k, (wall, cpu, _) in t.items():
            row[f"{k}_s"], row[f"{k}_cpu_s"] = wall, cpu
        if "torchstain_torch" in t:
            row["speedup"] = (
                min(row["torchstain_torch_s"], row["torchstain_numpy_s"]) / row["ours_s"]
            )
            row["speedup_cpu"] = (
                min(row["torchstain_torch_cpu_s"], row["torchstain_numpy_cpu_s"])
                / row["ours_cpu_s"]
            )
        res[label] = row
    return res


def speed_vahadane(src, repeats):
    from napari_nucleiseg.stain import make_normaliser

    row = {}
    wall, cpu, ours = best(lambda: make_normaliser("vahadane").fit(src), repeats)
    w_ours = np.asarray(ours.profile.stain_matrix)
    row.update(
        ours_fit_s=wall,
        ours_fit_cpu_s=cpu,
        ours_iterations=ours.profile.params["iterations"],
        ours_stains=w_ours.tolist(),
    )
    w_ours_001 = np.asarray(make_normaliser("vahadane", lam=0.01).fit(src).profile.stain_matrix)
    try:
        row["torchvision_shim"] = torchvision_shim()
        import torch
        from torch_staintools.constants import CONFIG
        from torch_staintools.normalizer import NormalizerBuilder

        torch.set_num_threads(1)
        CONFIG.ENABLE_COMPILE = False
        x = torch.from_numpy(np.ascontiguousarray(src.transpose(2, 0, 1)))[None].float() / 255.0

        def fit():
            n = NormalizerBuilder.build("vahadane", rng=0)
            n.fit(x)
            return n

        rwall, rcpu, ref = best(fit, max(1, repeats // 4))
        w_ref = ref.stain_matrix_target[0].numpy().astype(np.float64)
        w_ref /= np.linalg.norm(w_ref, axis=1, keepdims=True)
        row.update(
            torch_staintools_fit_s=rwall,
            torch_staintools_fit_cpu_s=rcpu,
            torch_staintools_stains=w_ref.tolist(),
            speedup=rwall / wall,
            speedup_cpu=rcpu / cpu,
            cosine_h=float(w_ours[0] @ w_ref[0]),
            cosine_e=float(w_ours[1] @ w_ref[1]),
            cosine_h_same_lambda=float(w_ours_001[0] @ w_ref[0]),
            cosine_e_same_lambda=float(w_ours_001[1] @ w_ref[1]),
        )
    except ImportError as exc:
        row["torch_staintools"] = f"not installed ({exc})"
    return row


def speed_transform(tgt, tile, repeats):
    from napari_nucleiseg.stain import make_normaliser

    tile = np.ascontiguousarray(
        np.pad(tile, ((0, 1024 - tile.shape[0]), (0, 1024 - tile.shape[1]), (0, 0)), mode="reflect")
    )
    n = make_normaliser("macenko").fit(tgt).adapt(tile)
    m32 = n.od_matrix().astype(np.float32)

    def bare_blas():
        od = -np.log(np.maximum(tile.astype(np.float32), 1) / np.float32(255))
        out = np.exp(-(od.reshape(-1, 3) @ m32)) * np.float32(255)
        return np.clip(out, 0, 255).astype(np.uint8).reshape(tile.shape)

    def bare_planar():
        od = tile.reshape(-1, 3).astype(np.float32)
        np.maximum(od, 1, out=od)
        od *= np.float32(1 / 255)
        np.log(od, out=od)  # = -OD
        out = np.empty_like(od)
        for k in range(3):
            acc = od[:, 0] * m32[0, k]
            acc += od[:, 1] * m32[1, k]
            acc += od[:, 2] * m32[2, k]
            out[:, k] = acc  # = -(OD @ M)
        np.exp(out, out=out)
        out *= np.float32(255)
        return np.clip(out, 0, 255).astype(np.uint8).reshape(tile.shape)

    fns = {"bare_blas": bare_blas, "bare_planar": bare_planar}
    normalisers = {m: make_normaliser(m).fit(tgt).adapt(tile) for m in METHODS}
    for m, nm in normalisers.items():
        fns[m] = nm.transform
    t = race({k: (lambda f=f: f(tile)) if k in METHODS else f for k, f in fns.items()}, repeats)
    bare = min(t["bare_blas"][0], t["bare_planar"][0])
    rows = {"bare_blas_s": t["bare_blas"][0], "bare_planar_s": t["bare_planar"][0]}
    for m in METHODS:
        rows[m] = {"s": t[m][0], "ratio_to_bare": t[m][0] / bare}
    rows["macenko"]["max_abs_levels_vs_bare"] = int(
        np.abs(t["macenko"][2].astype(int) - t["bare_blas"][2]).max()
    )
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument(
        "--out", default=str(REPO / "benchmarks" / "results" / "stain_normalisation.json")
    )
    args = ap.parse_args(argv)
    if not DATA.exists():
        sys.exit(f"{DATA} not found: this benchmark needs ../shared/data/stain")
    src, tgt, tile = (
        load("source_image.png"),
        load("target_image.png"),
        load("TCGA-HE-7130-01Z-00-DX1.png"),
    )

    acc = accuracy(src, tgt)
    print("\nAgreement with the reference toolbox (source_image -> target_image, MAE on 0-1)\n")
    print(f"{'method':<12}{'MAE':>10}{'unchanged':>12}{'max |Δ| levels':>16}")
    for m, r in acc.items():
        print(f"{m:<12}{r['mae']:10.4f}{r['mae_source_unchanged']:12.4f}{r['max_abs_levels']:16d}")
    print(
        "vahadane by λ: "
        + ", ".join(f"λ={k}: {v:.4f}" for k, v in acc["vahadane"]["mae_by_lambda"].items())
        + f"  (norm_vahadane vs norm_macenko: {acc['vahadane']['mae_to_norm_macenko']:.4f})"
    )

    mac = speed_macenko(src, tgt, tile, args.repeats)
    print("\nMacenko fit (1000² target) + transform, single thread, best of", args.repeats, "\n")
    print(
        f"{'image':<22}{'ours s':>10}{'torchstain torch':>18}{'torchstain numpy':>18}"
        f"{'speed-up':>10}{'(CPU)':>8}"
    )
    for k, r in mac.items():
        if "speedup" in r:
            print(
                f"{k:<22}{r['ours_s']:10.4f}{r['torchstain_torch_s']:18.4f}"
                f"{r['torchstain_numpy_s']:18.4f}{r['speedup']:9.1f}x{r['speedup_cpu']:7.1f}x"
            )
        else:
            print(f"{k:<22}{r['ours_s']:10.4f}  {r['torchstain']}")

    vah = speed_vahadane(src, args.repeats)
    print("\nVahadane fit on source_image (256²), single thread\n")
    if "speedup" in vah:
        print(
            f"ours {vah['ours_fit_s']:.3f} s ({vah['ours_iterations']} iterations), "
            f"torch-staintools {vah['torch_staintools_fit_s']:.2f} s: {vah['speedup']:.0f}x "
            f"faster (CPU {vah['speedup_cpu']:.0f}x)"
        )
        print(
            f"stain-vector cosine to torch-staintools: H {vah['cosine_h']:.4f}, "
            f"E {vah['cosine_e']:.4f} (ours at its λ=0.01: H {vah['cosine_h_same_lambda']:.4f}, "
            f"E {vah['cosine_e_same_lambda']:.4f})"
        )
    else:
        print(f"ours {vah['ours_fit_s']:.3f} s; {vah['torch_staintools']}")

    tr = speed_transform(tgt, tile, args.repeats)
    print("\nTransform a 1024² tile with an adapted profile vs a bare numpy log/matmul/exp pass\n")
    blas, planar = tr["bare_blas_s"] * 1e3, tr["bare_planar_s"] * 1e3
    print(f"bare pass: BLAS {blas:.1f} ms, planar {planar:.1f} ms")
    for m in METHODS:
        print(f"{m:<12}{tr[m]['s'] * 1e3:8.1f} ms  ratio {tr[m]['ratio_to_bare']:.2f}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "stain_normalisation",
                "data": str(DATA),
                "repeats": args.repeats,
                "machine": {
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "load_average": os.getloadavg(),
                },
                "accuracy": acc,
                "macenko_speed": mac,
                "vahadane_fit": vah,
                "transform_1024": tr,
            },
            indent=1,
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
