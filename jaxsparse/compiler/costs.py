"""The policy's cost model: measured tables of sparse-kernel time over dense time.

A table (``cost_tables/<platform>.json``) is written by ``scripts/calibrate_costs.py``
(:mod:`jaxsparse.study.calibration`), which times each sparse kernel against XLA's dense conv
on ResNet-50 layer shapes, in one process, alternating, after warm-up, at several densities.
An entry is keyed by kernel (``block:16x16``,
``block:32x32``, ``unstructured``, ...) and shape class (``pointwise``: 1x1 convs and dense
layers; ``spatial``: larger windows) and holds the median ratio per density. ``policy="auto"``
runs a layer sparse when the predicted ratio is below :data:`MAX_RATIO`.

``js.sparsify(..., calibrate=True)`` measures every candidate layer at its real shape with
:func:`measure_pair` instead and decides from that; the report shows both.

A ``cuda`` table (written by ``scripts/bench_gpu.py --cost_table=...`` from its GEMM sweep,
:func:`jaxsparse.study.gpu_figures.cost_table`) holds ``gemms`` instead: per measured GEMM shape
``(K, N)``, the 2:4 kernel's best ratio over dense, the cuSPARSELt plan that reached it and the
algorithm the search chose. :meth:`CostTable.gemm` finds a layer's entry by its shape.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from jaxsparse.pruning.distributions import SpeedModel
from jaxsparse.pruning.patterns import Block, Pattern, Unstructured, parse_pattern

TABLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cost_tables")
MAX_RATIO = 0.9  # Go sparse only where the kernel is predicted >= ~1.1x faster than dense.


@dataclasses.dataclass(frozen=True)
class CostTable:
    """Measured ``sparse time / dense time`` by (kernel, shape class), per density."""

    platform: str
    machine: str
    entries: dict[str, dict[str, list[list[float]]]]  # kernel -> class -> [[density, ratio]]
    gemms: tuple[dict, ...] = ()  # {"kernel", "k", "n", "ratio", "layout", ...} per GEMM shape.
    # cuda: "BHxBW" -> {"kernel": "mosaic" | "triton", "mosaic_over_triton": median time ratio}.
    block_kernels: dict = dataclasses.field(default_factory=dict)

    def gemm(self, kernel: str, k: int, n: int) -> tuple[dict, bool] | None:
        """``(entry, exact)`` of :attr:`gemms` for ``kernel`` at GEMM shape ``(k, n)``: the
        entry of that shape (``exact``), else the measured shape nearest in ``log K`` and
        ``log N`` within a factor of 2 in each; None when none is that near.
        """
        same = [g for g in self.gemms if g["kernel"] == kernel]
        for g in same:
            if (g["k"], g["n"]) == (k, n):
                return g, True
        near = [g for g in same if max(abs(np.log2(g["k"] / k)), abs(np.log2(g["n"] / n))) <= 1]
        if not near:
            return None
        best = min(near, key=lambda g: abs(np.log2(g["k"] / k)) + abs(np.log2(g["n"] / n)))
        return best, False

    def ratio(self, kernel: str, shape_class: str, density: float) -> tuple[float, str] | None:
        """``(predicted ratio, table key used)``, interpolated in density; None if unknown.

        A block shape that was not measured uses the measured block shape of nearest area.
        """
        key = kernel
        if key not in self.entries and kernel.startswith("block:"):
            area = _area(kernel)
            blocks = [k for k in self.entries if k.startswith("block:")]
            if not blocks:
                return None
            key = min(blocks, key=lambda k: abs(np.log(_area(k) / area)))
        points = self.entries.get(key, {}).get(shape_class)
        if not points:
            return None
        d, r = np.asarray(points, np.float64).T
        return float(np.interp(density, d, r)), key


    def max_gaining_density(self, kernel: str, shape_class: str,
                            max_ratio: float = MAX_RATIO) -> float:
        """The largest density at which ``kernel`` is predicted to run below ``max_ratio`` of
        the dense time on ``shape_class`` layers, scanning up from the lowest measured density
        and never beyond the highest one (the table says nothing there); 0 when it never is."""
        points = self.ratio(kernel, shape_class, 0.0)
        if points is None:
            return 0.0
        measured = np.asarray(self.entries[points[1]][shape_class], np.float64)[:, 0]
        best = 0.0
        for d in np.linspace(measured.min(), measured.max(), 200):
            if self.ratio(kernel, shape_class, float(d))[0] >= max_ratio:
                break
            best = float(d)
        return best


def kernel_key(pattern: Pattern) -> str:
    """The cost-table key of a block or unstructured pattern's kernel."""
    return "unstructured" if isinstance(pattern, Unstructured) else \
        f"block:{pattern.bh}x{pattern.bw}"


def weight_shape_class(shape: tuple[int, ...]) -> str:
    """:func:`shape_class` of a conv (``(kh, kw, cin, cout)``) or dense (``(in, out)``) weight."""
    return shape_class(tuple(shape[:2]) if len(shape) == 4 else (1, 1))


def speed_model(platform: str, pattern: str | Pattern, target: float) -> SpeedModel:
    """The speed-aware distribution's model from ``platform``'s measured cost table: a layer
    gains up to the largest density at which its kernel is predicted faster than dense
    (:meth:`CostTable.max_gaining_density`, below :data:`MAX_RATIO`, as ``policy="auto"``
    decides).

    Raises:
        ValueError: for a pattern without a CPU-style kernel, or no table for it.
    """
    pattern = parse_pattern(pattern)
    if not isinstance(pattern, Block | Unstructured):
        raise ValueError(f"distribution='speed' needs a block or unstructured pattern; got "
                         f"{pattern}.")
    table, key = load_table(platform), kernel_key(pattern)
    if table is None or table.ratio(key, "spatial", 0.5) is None and \
            table.ratio(key, "pointwise", 0.5) is None:
        raise ValueError(f"distribution='speed' needs a measured cost table for {key} on "
                         f"{platform} (compiler/cost_tables/{platform}.json); run "
                         f"scripts/calibrate_costs.py on that platform first.")
    cache: dict[str, float] = {}

    def max_density(shape: tuple[int, ...]) -> float:
        cls = weight_shape_class(shape)
        if cls not in cache:
            cache[cls] = table.max_gaining_density(key, cls)
        return cache[cls]

    return SpeedModel(max_density, float(target),
                      f"cost_tables/{platform}.json ({table.machine})")


def _area(kernel: str) -> float:
    bh, bw = kernel.split(":")[1].split("x")
    return float(bh) * float(bw)


def shape_class(kernel_hw: tuple[int, int]) -> str:
    """``"pointwise"`` for 1x1 convs and dense layers, ``"spatial"`` otherwise."""
    return "pointwise" if tuple(kernel_hw) == (1, 1) else "spatial"


@functools.cache
def load_table(platform: str) -> CostTable | None:
    """The shipped table for ``platform`` (None when there is none)."""
    path = os.path.join(TABLE_DIR, f"{platform}.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        data = json.load(f)
    return CostTable(data["platform"], data["machine"], data.get("entries", {}),
                     tuple(data.get("gemms", ())), data.get("block_kernels", {}))


def _once(fn: Callable, args: tuple) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return 1e3 * (time.perf_counter() - t0)


def measure(calls: Sequence[tuple[Callable, tuple]], reps: int = 5, warmup: int = 1,
            ) -> list[float]:
    """The median ms of each ``fn(*args)`` of ``calls``: all jitted and run ``warmup`` times
    in turn, then timed in turn, ``reps`` rounds.

    The arguments are placed on the device once first: a host (numpy) array would be copied
    in on every call, adding the same time to each and pulling their ratio towards 1 (for a
    1x1 256->64 conv of ResNet-50's layer1 at batch 16 it read 57 ms for a kernel that runs
    in 8).
    """
    jitted = [(jax.jit(fn), tuple(jax.device_put(a) for a in args)) for fn, args in calls]
    for _ in range(max(warmup, 1)):
        for fn, args in jitted:
            jax.block_until_ready(fn(*args))
    times: list[list[float]] = [[] for _ in jitted]
    for _ in range(reps):
        for t, (fn, args) in zip(times, jitted, strict=True):
            t.append(_once(fn, args))
    return [float(np.median(t)) for t in times]


def measure_pair(dense: Callable, sparse: Callable, x: jax.Array, reps: int = 5,
                 extra: tuple = ()) -> tuple[float, float]:
    """``(dense ms, sparse ms)``: :func:`measure` of ``f(x, *extra)`` for both."""
    td, ts = measure([(dense, (x, *extra)), (sparse, (x, *extra))], reps)
    return td, ts
