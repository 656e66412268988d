"""The external dense baselines of the speed study: ONNX Runtime and OpenVINO on the same model
with the same weights, exported by :func:`~jaxsparse.compiler.onnx_export.export_onnx`.

Each runtime is optional (extra ``baselines``); one that is not installed gives a row that says
so instead of a time. An installed one returns a callable, which the speed study checks
against the JAX model and :func:`~jaxsparse.training.bench.benchmark` times alternating with
the JAX models, in the same process: every runtime gets the cores XLA uses, and its worker
threads sleep (ONNX Runtime's spinning is off) while the others run.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

RUNTIMES = ("onnxruntime", "openvino")


@dataclasses.dataclass(frozen=True)
class Baseline:
    """One external runtime of the study: ``run`` is None when it cannot run here (``why``)."""

    runtime: str
    version: str | None
    run: Callable[[np.ndarray], np.ndarray] | None
    why: str = ""
    threads: int = 0


def check_runtimes(names: Any) -> tuple[str, ...]:
    """``names`` (a sequence or a comma-separated string) as a tuple of known runtimes.

    Raises:
        ValueError: naming an unknown runtime and the valid ones.
    """
    if isinstance(names, str):
        names = [n for n in names.split(",") if n]
    names = tuple(names)
    unknown = sorted(set(names) - set(RUNTIMES))
    if unknown:
        raise ValueError(f"speed.baselines has unknown runtimes {unknown}; valid: "
                         f"{list(RUNTIMES)} (or empty for none).")
    return names


def version(runtime: str) -> str | None:
    """The installed version of ``runtime``'s package, or None."""
    try:
        return importlib.metadata.version(runtime)
    except importlib.metadata.PackageNotFoundError:
        return None


def default_threads() -> int:
    """The cores this process may use (what XLA's CPU client uses too)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _onnxruntime(model_bytes: bytes, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {"x": x})[0]


def _openvino(model_bytes: bytes, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    # OpenVINO's import starts its usage telemetry, which forks this (multithreaded JAX)
    # process to send it; with the telemetry package hidden it uses its own no-op stub.
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)
    import openvino as ov

    core = ov.Core()
    model = core.read_model(model_bytes, b"")
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                 "PERFORMANCE_HINT": "LATENCY",
                                                 "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        return np.array(request.infer({0: x})[0])
    return run


_SESSIONS = {"onnxruntime": _onnxruntime, "openvino": _openvino}


def prepare(names: Any, model_fn: Callable[[], Any], threads: int | None = None,
            save_to: str | None = None) -> list[Baseline]:
    """One :class:`Baseline` per runtime of ``names``, in order.

    Args:
        names: runtimes (see :func:`check_runtimes`).
        model_fn: makes the ONNX model (called once, only if some runtime is installed).
        threads: threads per runtime (default: :func:`default_threads`).
        save_to: also write the ONNX model to this path.

    Raises:
        ValueError: for an unknown runtime, or an export that fails.
    """
    names = check_runtimes(names)
    threads = threads or default_threads()
    versions = {n: version(n) for n in names}
    model_bytes = None
    if any(v is not None for v in versions.values()):
        model = model_fn()
        model_bytes = model.SerializeToString()
        if save_to:
            with open(save_to, "wb") as f:
                f.write(model_bytes)
    out = []
    for n, v in versions.items():
        if v is None:
            out.append(Baseline(n, None, None, "not installed (pip install "
                                                "'jaxsparse[baselines]')"))
            continue
        try:
            run = _SESSIONS[n](model_bytes, threads)
        except Exception as e:  # A runtime that cannot load the model gets a row saying why.
            out.append(Baseline(n, v, None, f"could not load the model: {type(e).__name__}: "
                                            f"{str(e).splitlines()[0] if str(e) else ''}"))
            continue
        out.append(Baseline(n, v, run, threads=threads))
    return out

