"""The kernel policy of the pass: for one layer's kept sub-weight, which lowering runs it.

``choose`` applies the policy (``"auto"``: the cost model, ``"sparse"``, ``"dense"``) to a
:class:`Candidate` and returns the lowering with the reason, from the measured cost tables
(:mod:`~jaxsparse.compiler.costs`) and the hardware-measured constants below. ``kernel_name``
names the kernel a lowering runs on the target, ``kernel_block`` the block view it runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxsparse.compiler import costs
from jaxsparse.compiler.detect import block_views
from jaxsparse.compiler.packed import block_shape
from jaxsparse.compiler.report import LayerTiming
from jaxsparse.kernels.cpu import sparse_conv as cpu_sparse_conv
from jaxsparse.kernels.window import ConvWindow
from jaxsparse.primitives.block_sparse_dot import pallas_kernel
from jaxsparse.primitives.nm_dot import cuda_kernel
from jaxsparse.pruning.patterns import NM, Block, Unstructured

POLICIES = ("auto", "sparse", "dense")
# Cost model of policy="auto" for kernels without a measured table (the XLA gather lowering,
# Pallas): the block-sparse kernel pays a gather of the input's row blocks, so it only wins over
# a dense GEMM well below half density and on layers large enough for the gather to amortise.
# On CPU the XLA lowering measured slower than dense even at 90% sparsity
# (docs/results/bench_sparse_resnet50_cpu_*.md), so "auto" keeps it off there; the C++ kernels
# (impl "cpu") are chosen from their measured table instead (jaxsparse/compiler/costs.py).
BLOCK_MAX_DENSITY = 0.5
MIN_SPARSE_FLOPS = 2e7
BLOCK_SLOWER_PLATFORMS = ("cpu",)
# policy="auto" on cuda: 2:4 layers go to cuSPARSELt only where the cuda cost table
# (cost_tables/cuda.json, the GPU figures' GEMM sweep) measured it faster than dense at their
# shape (_nm_choice); without one they stay dense, since the first H200 figures
# (docs/results/nvidia-h200-2026-11-26.md, bf16, batch 256) had it at 0.22-0.89x of cuBLAS on
# every ResNet50 GEMM shape. The Pallas block kernel at 90% beat dense on most shapes with
# 128x128 blocks (up to 2.3x) but rarely with 32x32 ones, so "auto" takes blocks of at least
# this size.
CUDA_MIN_BLOCK = 64


@dataclasses.dataclass(frozen=True)
class Options:
    """Compile options shared by every layer.

    Attributes:
        policy: ``"auto"``, ``"sparse"`` or ``"dense"``.
        impl: block-sparse implementation (``"cpu"``, ``"xla"`` or ``"pallas"``).
        platform: the platform compiled for.
        calibrate: measure each candidate layer (dense vs sparse) instead of predicting.
        kernel_note: why the CPU kernels are not used, when they are not (for the report).
        precompress: make cuSPARSELt's compressed copy of every 2:4 weight at compile time
            (compiling for ``cuda`` on a machine with an NVIDIA GPU).
        missing_rule: ``"error"`` or ``"densify"`` (see :func:`jaxsparse.sparsify`).
        interpret: run the Pallas kernels in the Pallas interpreter (tests).
    """

    policy: str
    impl: str
    platform: str
    calibrate: bool = False
    kernel_note: str = ""
    precompress: bool = False  # Compress 2:4 weights for cuSPARSELt now (a local CUDA GPU).
    missing_rule: str = "error"
    interpret: bool = False


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A kept sub-weight that a sparse kernel could run, and how it would be packed."""

    pattern: Any
    density: float
    flops: float  # Dense FLOPs of the kept sub-weight.
    kernel_hw: tuple[int, int]
    x_shape: tuple[int, ...]
    x_dtype: Any
    gemm_kn: tuple[int, int] = (0, 0)  # (K, cout) of the kept sub-weight's GEMM view.
    window: ConvWindow | None = None  # A conv's window; None for a dense layer.


def _cpu_kernel_choice(c: Candidate, opts: Options) -> tuple[str, str, LayerTiming | None]:
    """``(lowering, why, timing)`` for a block/unstructured layer with the C++ CPU kernels."""
    why = cpu_sparse_conv.unsupported(c.x_shape, c.x_dtype, (1, 1, *block_shape(c.pattern)),
                                      c.window)
    if why is not None:
        return "dense", f"no CPU kernel: {why}", None
    if opts.policy == "sparse":
        return "block", "policy='sparse'", None
    table = costs.load_table(opts.platform)
    key = costs.kernel_key(c.pattern)
    pred = table.ratio(key, costs.shape_class(c.kernel_hw), c.density) if table else None
    timing = LayerTiming(predicted_ratio=None if pred is None else pred[0])
    if opts.calibrate:
        return "measure", "", timing
    if pred is None:
        return "dense", f"no measured cost table for {key} on {opts.platform}; run " \
                        f"scripts/calibrate_costs.py or compile with calibrate=True", timing
    ratio, used = pred
    src = "" if used == key else f" (table of {used})"
    if ratio < costs.MAX_RATIO:
        return "block", f"predicted {1 / ratio:.1f}x faster than dense{src}", timing
    return "dense", f"predicted sparse/dense time {ratio:.2f} >= {costs.MAX_RATIO}{src}", timing


# The block views a dense (no zeros) layer may run on the C++ block kernel, largest first.
FULL_DENSITY_BLOCKS = (Block(32, 32), Block(16, 16), Block(8, 8))


def full_density_block(k: int, n: int, cin: int | None = None,
                       window: ConvWindow | None = None) -> Block | None:
    """The block shape that runs a dense ``(k, n)`` GEMM on the C++ kernel (None: none tiles
    it). ``cin``: a conv's input channels, which a block's height must divide (the kernel
    reads a block from one tap); with fewer than 8 of them (an RGB stem) a block covers a
    whole kernel row, ``kw * cin`` high (one tap, ``cin`` high, under dilation), so the
    kernel reads long runs of the input rather than 3 values per block."""
    c = k if cin is None else cin
    got = next((b for b in FULL_DENSITY_BLOCKS if c % b.bh == 0 and n % b.bw == 0), None)
    if got is None and c < FULL_DENSITY_BLOCKS[-1].bh and k % c == 0:
        bh = c * window.kernel[1] if window is not None else c
        if not cpu_sparse_conv.block_rows_are_runs(bh, c, window):
            bh = c
        got = next((Block(bh, b.bw) for b in FULL_DENSITY_BLOCKS if n % b.bw == 0), None)
    return got


def _full_density_choice(c: Candidate, opts: Options) -> tuple[str, str, LayerTiming | None]:
    """``(lowering, why, timing)`` for a layer with no zeros left: XLA's dense conv, or the
    C++ block kernel with every block stored where it was measured faster at this layer's
    shape (``calibrate=True``; XLA's CPU 1x1 convs are slow, docs/results)."""
    dense_why = "no zeros left after channel slicing"
    if opts.impl != "cpu" or opts.policy != "auto":
        return "dense", dense_why, None
    why = cpu_sparse_conv.unsupported(c.x_shape, c.x_dtype, (1, 1, *block_shape(c.pattern)),
                                      c.window)
    if why is not None:
        return "dense", f"{dense_why}; no CPU kernel: {why}", None
    if opts.calibrate:
        return "measure", "", LayerTiming()
    return "dense", (f"{dense_why}: XLA's conv (the C++ kernel runs a dense layer only where "
                     f"measured faster at its shape: calibrate=True)"), None


NO_CUDA_TABLE = ("the last H200 figures (docs/results/nvidia-h200-2026-11-26.md) had cuSPARSELt "
                 "2:4 at 0.22-0.89x of dense on ResNet50's GEMMs")


def cuda_nm_plan(k: int, n: int) -> tuple[str, dict | None, bool]:
    """``(cuSPARSELt layout, cuda cost-table entry or None, exact)`` for a 2:4 ``(k, n)``
    GEMM: the plan measured fastest at that shape (or the nearest measured one), else
    ``cusparselt.DEFAULT_LAYOUT``."""
    from jaxsparse.kernels.gpu.cusparselt import DEFAULT_LAYOUT

    table = costs.load_table("cuda")
    found = table.gemm("2:4", k, n) if table is not None else None
    if found is None:
        return DEFAULT_LAYOUT, None, False
    entry, exact = found
    return entry["layout"], entry, exact


def _nm_choice(c: Candidate, opts: Options) -> tuple[str, str, LayerTiming | None]:
    """``(lowering, why, timing)`` for an N:M layer. ``policy="sparse"`` runs ``nm_dot``
    (cuSPARSELt on ``cuda`` where it runs, else the portable lowering); ``"auto"`` runs it on
    cuSPARSELt only where the ``cuda`` cost table (the GPU figures' GEMM sweep) measured it
    faster than dense at the layer's GEMM shape, and keeps it dense elsewhere."""
    pattern = c.pattern
    k, n = c.gemm_kn
    kernel, why = (None, f"no {pattern} sparse tensor cores on {opts.platform}")
    if opts.platform == "cuda":
        layout, entry, exact = cuda_nm_plan(k, n)
        kernel, why = cuda_kernel(k, pattern.n, pattern.m, n, c.x_dtype)
        why = f"{why}, plan {layout}" if kernel else f"no cuSPARSELt kernel: {why}"
    if opts.policy == "sparse":
        detail = why if kernel else f"portable nm_dot densifies; {why}"
        return "nm", f"policy='sparse' ({detail})", None
    if kernel is None:
        return "dense", f"{why}; the portable nm_dot densifies (policy='sparse' forces it)", None
    if entry is None:
        return "dense", (f"no measured 2:4 entry near K={k}, N={n} in the cuda cost table "
                         f"(compiler/cost_tables/cuda.json, written by scripts/gpu_check.sh on "
                         f"a GPU); {NO_CUDA_TABLE}; policy='sparse' forces it"), None
    ratio = float(entry["ratio"])
    src = "" if exact else f" (nearest measured shape K={entry['k']}, N={entry['n']})"
    timing = LayerTiming(predicted_ratio=ratio)
    if ratio < costs.MAX_RATIO:
        return "nm", (f"measured {1 / ratio:.2f}x faster than dense with cuSPARSELt plan "
                      f"{layout}{src}"), timing
    return "dense", (f"measured sparse/dense time {ratio:.2f} >= {costs.MAX_RATIO} with the "
                     f"fastest cuSPARSELt plan ({layout}){src}; policy='sparse' forces it"), timing


def choose(c: Candidate | None, opts: Options) -> tuple[str, str, LayerTiming | None]:
    """``(lowering, why, timing)`` for the kept sub-weight by the policy's cost model.

    ``lowering`` is ``"dense"``, ``"nm"``, ``"block"`` (blocked-ELL, 1x1 blocks for
    unstructured) or ``"measure"`` (calibrate: decided after timing both).
    """
    if c is None:
        return "dense", "no zeros left after channel slicing", None
    pattern = c.pattern
    if opts.policy == "dense":
        return "dense", "policy='dense'", None
    if c.density >= 1.0:
        return _full_density_choice(c, opts)
    if isinstance(pattern, NM):
        return _nm_choice(c, opts)
    if opts.impl == "cpu":
        return _cpu_kernel_choice(c, opts)
    if isinstance(pattern, Unstructured):
        note = f" ({opts.kernel_note})" if opts.kernel_note else ""
        return "dense", (f"unstructured zeros: no kernel on {opts.platform} with impl "
                         f"{opts.impl!r} skips them (mask only){note}"), None
    assert isinstance(pattern, Block)
    if opts.impl == "pallas":
        kernel, why = pallas(opts, pattern.bh, pattern.bw, c.x_dtype)
        if kernel is None:
            if opts.policy == "sparse":
                return "block", f"policy='sparse' (portable block_sparse_dot: {why})", None
            return "dense", f"no Pallas kernel on {opts.platform}: {why}", None
    if opts.policy == "sparse":
        return "block", "policy='sparse'", None
    if opts.platform == "cuda" and min(pattern.bh, pattern.bw) < CUDA_MIN_BLOCK:
        return "dense", (f"{pattern.bh}x{pattern.bw} blocks: the Pallas GPU kernel measured "
                         f"faster than dense only with blocks of {CUDA_MIN_BLOCK}+ (H200); "
                         f"policy='sparse' forces it"), None
    if opts.platform in BLOCK_SLOWER_PLATFORMS and opts.impl == "xla":
        note = f"; CPU kernels: {opts.kernel_note}" if opts.kernel_note else ""
        return "dense", (f"block_sparse_dot's XLA lowering measured slower than dense on "
                         f"{opts.platform}; policy='sparse' forces it{note}"), None
    if c.density > BLOCK_MAX_DENSITY:
        return "dense", f"density {c.density:.2f} > {BLOCK_MAX_DENSITY}: dense GEMM is " \
                        f"faster", None
    if c.flops * c.density < MIN_SPARSE_FLOPS:
        return "dense", f"small layer ({c.flops * c.density / 1e6:.1f} MFLOP): dense GEMM " \
                        f"is faster", None
    return "block", f"density {c.density:.2f} <= {BLOCK_MAX_DENSITY} on a large layer", None


def pallas(opts: Options, bh: int, bw: int, dtype=None) -> tuple[str | None, str]:
    """``(Pallas kernel or None, why)`` for ``bh x bw`` blocks on the target (the interpreter
    with ``interpret=True``)."""
    if opts.interpret:
        return "pallas-interpret", "Pallas interpreter (interpret=True)"
    gpu_kernel = cuda_block_kernel(bh, bw)[0] if opts.platform == "cuda" else "triton"
    return pallas_kernel(opts.platform, bh, bw, gpu_kernel, dtype)


def cuda_block_kernel(bh: int, bw: int) -> tuple[str, str]:
    """``(gpu_kernel, why)``: the Pallas kernel for ``bh x bw`` blocks on ``cuda``: the Mosaic
    GPU kernel where the cuda cost table measured it faster than the Triton one for that block
    size (``block_kernels``), else Triton, the kernel the first H200 figures measured."""
    table = costs.load_table("cuda")
    entry = (table.block_kernels if table is not None else {}).get(f"{bh}x{bw}")
    if entry is None:
        return "triton", f"no Mosaic GPU measurement for {bh}x{bw} blocks in the cuda table"
    return entry["kernel"], (f"Mosaic GPU / Triton time {entry['mosaic_over_triton']:.2f} "
                             f"(cuda cost table)")


def kernel_block(pattern, opts: Options):
    """The block view of a detected block pattern that the kernel runs: the largest the
    target's Pallas kernel supports, or up to 32x32 for the CPU kernels and the XLA gather
    (the sizes their cost tables measured)."""
    if not isinstance(pattern, Block):
        return pattern
    views = block_views(pattern)
    if opts.impl == "pallas":
        return next((v for v in views if pallas(opts, v.bh, v.bw)[0]), pattern)
    return next((v for v in views if v.bh <= 32 and v.bw <= 32), pattern)


def kernel_name(low: str, pattern, opts: Options, gemm_kn: tuple[int, int], dtype,
                full_density: bool = False) -> str:
    """The kernel lowering ``low`` runs on the target ("" for dense lowerings);
    ``full_density``: a dense layer on the C++ block kernel, every block stored."""
    if low == "nm":
        kernel = None
        if opts.platform == "cuda":
            kernel = cuda_kernel(gemm_kn[0], pattern.n, pattern.m, gemm_kn[1], dtype)[0]
        return kernel or "portable"
    if low != "block":
        return ""
    if opts.impl == "cpu":
        kind = "ell" if isinstance(pattern, Unstructured) else "block"
        return f"cpu {kind} kernel" + (", full density" if full_density else "")
    if opts.impl == "pallas":
        return pallas(opts, *block_shape(pattern), dtype)[0] or "portable"
    return opts.impl
