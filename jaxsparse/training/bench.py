"""Inference throughput, measured like an MLPerf Offline run (compile, warm up, then time)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class BenchResult:
    """Timings of one benchmarked function."""

    batch_size: int
    latencies_ms: tuple[float, ...]
    compile_s: float

    @property
    def latency_ms_p50(self) -> float:
        return float(np.percentile(self.latencies_ms, 50))

    @property
    def latency_ms_p99(self) -> float:
        return float(np.percentile(self.latencies_ms, 99))

    @property
    def images_per_sec(self) -> float:
        """Batch size over the median batch latency."""
        return self.batch_size / (self.latency_ms_p50 / 1e3)

    def as_dict(self) -> dict[str, float]:
        return {"images_per_sec": self.images_per_sec, "latency_ms_p50": self.latency_ms_p50,
                "latency_ms_p99": self.latency_ms_p99, "batch_size": self.batch_size,
                "num_batches": len(self.latencies_ms), "compile_s": self.compile_s}


def benchmark(fns: Sequence[Callable[..., Any]], args: Sequence[tuple], batch_size: int, *,
              warmup: int = 3, num_batches: int = 20, reps: int = 1) -> list[BenchResult]:
    """Times several jitted functions back to back, alternating, in the same process.

    Each function is compiled and warmed up first; then the ``num_batches`` timed calls of
    every function are interleaved (A, B, A, B, ...) so that drift in machine load affects them
    alike. Every call is synchronised with ``block_until_ready``.

    Args:
        fns: jitted functions.
        args: the positional arguments for each function.
        batch_size: images per call (for images/s).
        warmup: untimed calls after compilation.
        num_batches: timed samples per function.
        reps: back-to-back calls per timed sample (synchronised once, at the end): the
            sample is their mean, so launch overhead is amortised (short GPU kernels).

    Returns:
        One :class:`BenchResult` per function.
    """
    if warmup < 0 or num_batches < 1 or reps < 1:
        raise ValueError(f"warmup={warmup} must be >= 0, num_batches={num_batches} and "
                         f"reps={reps} >= 1.")
    compile_s = []
    for fn, a in zip(fns, args, strict=True):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*a))
        compile_s.append(time.perf_counter() - t0)
        for _ in range(warmup):
            jax.block_until_ready(fn(*a))
    lat: list[list[float]] = [[] for _ in fns]
    for _ in range(num_batches):
        for i, (fn, a) in enumerate(zip(fns, args, strict=True)):
            t0 = time.perf_counter()
            out = None
            for _ in range(reps):
                out = fn(*a)
            jax.block_until_ready(out)
            lat[i].append((time.perf_counter() - t0) * 1e3 / reps)
    return [BenchResult(batch_size, tuple(lt), c) for lt, c in zip(lat, compile_s, strict=True)]
