"""Offline calibration of the CPU cost table: each sparse kernel timed against XLA's dense conv.

``scripts/calibrate_costs.py`` calls :func:`calibrate` and writes the result as
``jaxsparse/compiler/cost_tables/<platform>.json``, the table ``policy="auto"`` reads at
compile time (:mod:`jaxsparse.compiler.costs`, which keeps only the runtime side: loading,
prediction and :func:`~jaxsparse.compiler.costs.measure_pair`).
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable

import jax
import numpy as np
from jax import lax

from jaxsparse.compiler import lowering
from jaxsparse.compiler.costs import measure_pair, shape_class
from jaxsparse.compiler.packed import BlockWeight, DenseWeight, Layout, block_shape
from jaxsparse.primitives.block_sparse_dot import pack_block_ell
from jaxsparse.pruning.masks import compute_mask
from jaxsparse.pruning.patterns import parse_pattern

# ResNet-50 (v1.5, 224 px) conv shapes, (H, W, cin, cout, k, stride), for calibration.
RESNET50_SHAPES = (
    (56, 56, 64, 256, 1, 1), (56, 56, 256, 64, 1, 1), (28, 28, 512, 128, 1, 1),
    (14, 14, 256, 1024, 1, 1), (7, 7, 2048, 512, 1, 1),
    (56, 56, 64, 64, 3, 1), (28, 28, 128, 128, 3, 1), (14, 14, 256, 256, 3, 1),
    (7, 7, 512, 512, 3, 1), (56, 56, 128, 128, 3, 2),
)


def calibrate(kernels: tuple[str, ...], densities: tuple[float, ...], batch: int,
              shapes: tuple[tuple[int, ...], ...] = RESNET50_SHAPES, reps: int = 3,
              log: Callable[[str], None] = print) -> dict:
    """Measures ``sparse / dense`` time ratios of the CPU kernels; returns a table dict.

    For each kernel (``"block:BHxBW"`` or ``"unstructured"``), density and conv shape it
    prunes a random float32 weight to that density (magnitude), packs it, and times XLA's
    dense conv against the kernel (:func:`measure_pair`). The table holds, per kernel and
    shape class, the median ratio over the shapes at each density, plus every measurement.
    """
    rng = np.random.default_rng(0)
    raw: list[dict] = []
    for h, w, cin, cout, k, s in shapes:
        params = {"window_strides": (s, s), "padding": ((k // 2, k // 2),) * 2,
                  "lhs_dilation": (1, 1), "rhs_dilation": (1, 1),
                  "dimension_numbers": lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1),
                                                                (0, 3, 1, 2)),
                  "precision": None, "preferred_element_type": None}
        kernel = rng.standard_normal((k, k, cin, cout)).astype(np.float32)
        x = jax.random.normal(jax.random.key(0), (batch, h, w, cin), np.float32)
        layout = Layout((k, k, cin, cout), None, None)
        for name in kernels:
            pattern = parse_pattern(name)
            bh, bw = block_shape(pattern)
            for d in densities:
                mask = np.asarray(compute_mask(kernel, pattern, sparsity=1.0 - d))
                gemm_w = (kernel * mask).reshape(-1, cout)
                values, rows = pack_block_ell(gemm_w, mask.reshape(-1, cout), bh, bw)
                sparse = BlockWeight(values, rows, layout)
                dense = DenseWeight(kernel * mask, layout)
                td, ts = measure_pair(
                    functools.partial(lowering.conv, weight=dense, params=params, impl="xla"),
                    functools.partial(lowering.conv, weight=sparse, params=params, impl="cpu"),
                    x, reps)
                raw.append({"kernel": name, "class": shape_class((k, k)), "density": d,
                            "shape": [batch, h, w, cin, cout, k, s], "dense_ms": td,
                            "sparse_ms": ts, "ratio": ts / td})
                log(f"{name:>12} d={d:.2f} {h}x{w}x{cin}->{cout} k{k}s{s}: dense {td:7.2f} "
                    f"ms, sparse {ts:7.2f} ms, ratio {ts / td:.2f}")
    ratios: dict[tuple[str, str, float], list[float]] = collections.defaultdict(list)
    for r in raw:
        ratios[(r["kernel"], r["class"], r["density"])].append(r["ratio"])
    entries: dict[str, dict[str, list[list[float]]]] = {}
    for (name, cls, d), rs in sorted(ratios.items()):  # Ascending density, for interpolation.
        entries.setdefault(name, {}).setdefault(cls, []).append([d, float(np.median(rs))])
    return {"entries": entries, "measurements": raw, "batch": batch}
