"""Running a checked model file: ONNX Runtime sessions on this machine's usable cores."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from .registry import ModelCard, WeightsError, sha256_of

#: ``NUCLEISEG_RUNTIME``: ``auto`` (the int8 ONNX model when shipped and this CPU runs it exactly,
#: else float32 ONNX, else PyTorch), ``onnx-int8``, ``onnx-fp32`` (float32 ONNX), or ``torch``.
RUNTIMES = ("auto", "onnx-int8", "onnx-fp32", "torch")


@functools.cache  # the CPU does not change; describe() asks at every output
def int8_is_exact() -> bool:
    """Whether ONNX Runtime's int8 kernels compute exactly on this CPU.

    On x86 CPUs with AVX2 or AVX-512 but no VNNI, ONNX Runtime's u8s8 kernels add pairs of
    products in 16 bits, which saturates (its quantization guide warns of it). Measured on an AMD
    EPYC with AVX2 only: the shipped int8 model found a nucleus in a blank image, lost 0.006 AJI
    on the CI subset of MoNuSeg, and tiled and untiled passes disagreed (AJI 0.87). With VNNI
    (``avx512_vnni``, ``avx_vnni``) and on ARM the sums are exact, and the int8 model gives its
    card's figures. Where the flags cannot be read, the answer is no: float32 is always right.
    """
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return True
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which a container or ``taskset`` may
    narrow below the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def runtime_setting() -> str:
    runtime = os.environ.get("NUCLEISEG_RUNTIME", "auto")
    if runtime not in RUNTIMES:
        raise WeightsError(f"NUCLEISEG_RUNTIME={runtime!r}: use one of {', '.join(RUNTIMES)}")
    return runtime


def _onnxruntime_missing() -> str | None:
    """Why ONNX Runtime cannot run here (``None`` when it can)."""
    try:
        import onnxruntime  # noqa: F401  (optional: without it, the PyTorch weights run)
    except ImportError as exc:
        return f"onnxruntime is not installed ({exc})"
    return None


def runtime_for(card: ModelCard, folder: Path, warn: bool = True) -> str:
    """The runtime that computes ``card``'s model here: ``onnx-int8``, ``onnx-fp32`` or ``torch``.

    Decided from the setting, the card, the files beside it and this CPU, without loading any
    weights, so a method's identity (what result files and stores record) and the session that
    :func:`~napari_nucleiseg.methods.learned.load_predictor` opens are one decision. Where the
    runtime the setting asks for cannot run (its file is missing, onnxruntime is not installed)
    the next one does (int8 → float32 ONNX → PyTorch), with a warning naming the model and both
    runtimes: results then differ from the card's figures, and outputs record which computed them.
    """
    setting = runtime_setting()
    if setting == "torch":
        return "torch"
    folder = Path(folder)
    if setting == "auto":
        # The int8 twin where it is shipped and exact on this CPU, else the float32 twin; a card
        # with neither runs on PyTorch, which is then its runtime, not a fallback.
        if card.onnx_int8 and int8_is_exact():
            wanted = "onnx-int8"
        elif card.onnx:
            wanted = "onnx-fp32"
        else:
            return "torch"
    else:
        wanted = setting
    files = {"onnx-int8": card.onnx_int8, "onnx-fp32": card.onnx}
    why = _onnxruntime_missing()
    got = "torch"
    if why is None:
        for runtime in ("onnx-int8", "onnx-fp32") if wanted == "onnx-int8" else ("onnx-fp32",):
            name = files[runtime]
            if name and (folder / name).exists():
                got = runtime
                break
            why = why or (
                f"{folder / name} is missing" if name else f"its card names no {runtime} model"
            )
    if got != wanted and warn:
        import warnings

        warnings.warn(
            f"model {card.name!r}: {why}; computing with {got} instead of {wanted} "
            "(results differ slightly; every output records the runtime)",
            RuntimeWarning,
            stacklevel=2,
        )
    return got


def onnx_session(card: ModelCard, folder: Path, runtime: str | None = None):
    """An ONNX Runtime session for the card's ONNX twin that ``runtime`` (default:
    :func:`runtime_for`) names, or None for PyTorch."""
    runtime = runtime or runtime_for(card, folder)
    if runtime == "torch":
        return None
    name, expected = (
        (card.onnx_int8, card.onnx_int8_sha256)
        if runtime == "onnx-int8"
        else (card.onnx, card.onnx_sha256)
    )
    path = Path(folder) / name
    digest = sha256_of(path)
    if digest != expected:
        raise WeightsError(
            f"{path}: SHA-256 {digest[:12]}… does not match the model card "
            f"({expected[:12]}…); refusing to load it"
        )
    session = open_session(path)
    session.nucleiseg_precision = "int8" if runtime == "onnx-int8" else "float32"
    return session


def open_session(path: Path, threads: int | None = None):
    """An ONNX Runtime session (CPU) for a model file already checked against its card, using
    ``threads`` cores (default: every core this process may run on)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or usable_cores()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # No memory pattern: ONNX Runtime plans one per input shape, and the pass that records it is
    # slow. Tiles and views come in many shapes, each seen once or twice, so the plan rarely
    # pays back (figures in docs/researcher.md, "Speed").
    opts.enable_mem_pattern = False
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    session.nucleiseg_path = str(path)
    return session


def tta_mode() -> str:
    """``NUCLEISEG_TTA`` normalised: ``auto`` (the rule), ``off``, ``2`` or ``4``. One reading of
    the variable for the predictor and for the method identity that outputs record."""
    mode = os.environ.get("NUCLEISEG_TTA", "auto").strip().lower() or "auto"
    mode = "off" if mode in ("0", "1", "none") else mode
    if mode not in ("auto", "off", "2", "4"):
        raise ValueError(f"NUCLEISEG_TTA={mode!r}: use auto, off, 2 or 4")
    return mode
