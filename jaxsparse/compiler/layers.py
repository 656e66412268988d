"""The layer rules of the pass: what to do with one conv or dense layer, and doing it.

``decide`` (compile time) looks at the layer's mask and its input's kept channels, slices away
removed input and output channels, folds removed-but-constant input channels into a bias map,
picks a kernel by the policy's cost model, builds the rewritten weight and returns a
:class:`LayerPlan`. ``apply`` (both times) runs the layer from its plan.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsparse.compiler import costs, lowering
from jaxsparse.compiler.detect import block_views, removed_outputs, sub_pattern
from jaxsparse.compiler.interpreter import Context, default_rule
from jaxsparse.compiler.packed import (
    BlockWeight,
    DenseWeight,
    Layout,
    NMWeight,
    block_shape,
    nbytes,
)
from jaxsparse.compiler.report import CompiledLayer, LayerTiming
from jaxsparse.compiler.values import Sliced, WRef
from jaxsparse.gpu import cusparselt
from jaxsparse.kernels import cpu_sparse_conv
from jaxsparse.primitives.block_sparse_dot import pack_block_ell, pallas_kernel
from jaxsparse.primitives.nm_dot import cuda_kernel, pack_nm, unpack_nm
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
# policy="auto" on cuda, from docs/results/nvidia-h200-2026-11-26.md (bf16, batch 256): the
# cuSPARSELt 2:4 kernel alone ran at 0.22-0.89x the speed of cuBLAS on every ResNet50 GEMM shape
# (they are memory-bound at this size), so "auto" keeps 2:4 layers dense there (until a measured
# cuda cost table says otherwise); the Pallas block kernel at 90% beat dense on most shapes with
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
class LayerPlan:
    """What ``decide`` chose for one layer, replayed by ``apply`` at run time.

    Attributes:
        lowering: ``"unchanged"`` (the original op), ``"dense"``, ``"nm"`` or ``"block"``.
        kind: ``"conv"`` or ``"dot"``.
        in_keep: the input channels kept (the input arrives sliced to them), or None.
        out_keep: the output channels computed (the output leaves sliced), or None.
        fold: whether a constant bias map from removed input channels is added.
    """

    lowering: str
    kind: str = ""
    in_keep: tuple[int, ...] | None = None
    out_keep: tuple[int, ...] | None = None
    fold: bool = False


UNCHANGED = LayerPlan("unchanged")


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


def _layer_shape(eqn, w: WRef) -> tuple[str | None, int]:
    """``(why unsupported or None, GEMM rows)`` of a conv or dot layer."""
    out_shape = eqn.outvars[0].aval.shape
    shape = np.shape(w.value)
    if eqn.primitive is lax.conv_general_dilated_p:
        why = lowering.conv_supported(eqn.params)
        return why, int(np.prod(out_shape[:-1]))
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    x_ndim = eqn.invars[0].aval.ndim
    if len(shape) != 2 or tuple(rc) != (0,) or tuple(lc) != (x_ndim - 1,) or lb or rb:
        return "dot_general is not x @ W with W of shape (in, out)", 0
    return None, int(np.prod(out_shape[:-1]))


def _cpu_kernel_choice(c: Candidate, opts: Options) -> tuple[str, str, LayerTiming | None]:
    """``(lowering, why, timing)`` for a block/unstructured layer with the C++ CPU kernels."""
    why = cpu_sparse_conv.unsupported(c.x_shape, c.x_dtype, (1, 1, *block_shape(c.pattern)),
                                      None)
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


def _nm_choice(c: Candidate, opts: Options) -> tuple[str, str, LayerTiming | None]:
    """``(lowering, why, timing)`` for an N:M layer. ``policy="sparse"`` runs ``nm_dot``
    (cuSPARSELt on ``cuda`` where it runs, else the portable lowering); ``"auto"`` keeps it
    dense, since no platform has a 2:4 kernel measured faster than dense yet
    (the H200 measurements above)."""
    pattern = c.pattern
    kernel, why = (None, f"no {pattern} sparse tensor cores on {opts.platform}")
    if opts.platform == "cuda":
        kernel, why = cuda_kernel(c.gemm_kn[0], pattern.n, pattern.m, c.gemm_kn[1], c.x_dtype)
        why = why if kernel else f"no cuSPARSELt kernel: {why}"
    if opts.policy == "sparse":
        detail = why if kernel else f"portable nm_dot densifies; {why}"
        return "nm", f"policy='sparse' ({detail})", None
    if kernel is None:
        return "dense", f"{why}; the portable nm_dot densifies (policy='sparse' forces it)", None
    return "dense", ("cuSPARSELt 2:4 measured slower than dense on ResNet50's GEMMs (H200, "
                     "bf16); policy='sparse' forces it"), None


def _choose(c: Candidate | None, opts: Options) -> tuple[str, str, LayerTiming | None]:
    """``(lowering, why, timing)`` for the kept sub-weight by the policy's cost model.

    ``lowering`` is ``"dense"``, ``"nm"``, ``"block"`` (blocked-ELL, 1x1 blocks for
    unstructured) or ``"measure"`` (calibrate: decided after timing both).
    """
    if c is None:
        return "dense", "no zeros left after channel slicing", None
    pattern = c.pattern
    if opts.policy == "dense":
        return "dense", "policy='dense'", None
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
        kernel, why = _pallas(opts, pattern.bh, pattern.bw)
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


def _pallas(opts: Options, bh: int, bw: int) -> tuple[str | None, str]:
    """``(Pallas kernel or None, why)`` for ``bh x bw`` blocks on the target (the interpreter
    with ``interpret=True``)."""
    if opts.interpret:
        return "pallas-interpret", "Pallas interpreter (interpret=True)"
    return pallas_kernel(opts.platform, bh, bw)


def _kernel_block(pattern, opts: Options):
    """The block view of a detected block pattern that the kernel runs: the largest the
    target's Pallas kernel supports, or up to 32x32 for the CPU kernels and the XLA gather
    (the sizes their cost tables measured)."""
    if not isinstance(pattern, Block):
        return pattern
    views = block_views(pattern)
    if opts.impl == "pallas":
        return next((v for v in views if _pallas(opts, v.bh, v.bw)[0]), pattern)
    return next((v for v in views if v.bh <= 32 and v.bw <= 32), pattern)


def _fold(eqn, x: Sliced, w_full: np.ndarray, out_keep) -> np.ndarray | None:
    """Constant contribution of removed-but-nonzero input channels (None when all zero)."""
    removed = x.removed
    fill = np.asarray(x.fill, np.float32)[removed]
    if not np.any(fill):
        return None
    w_r = w_full[..., removed, :]
    if out_keep is not None:
        w_r = w_r[..., out_keep]
    if eqn.primitive is lax.dot_general_p:
        return fill @ w_r.reshape(len(removed), -1)
    h, wd = eqn.invars[0].aval.shape[1:3]
    image = np.broadcast_to(fill, (1, h, wd, len(removed))).astype(np.float32)
    p = eqn.params
    with jax.ensure_compile_time_eval():  # A constant: evaluate it now, do not stage it.
        return np.asarray(lax.conv_general_dilated(
            image, w_r.astype(np.float32), p["window_strides"], p["padding"],
            p["lhs_dilation"], p["rhs_dilation"], p["dimension_numbers"],
            precision=lax.Precision.HIGHEST))


def _measure(eqn, c: Candidate, weight: BlockWeight, dense_kernel: np.ndarray,
             opts: Options) -> tuple[float, float]:
    """Times the layer at its shape: XLA dense conv/dot vs the sparse kernel (ms).

    ``decide`` runs while the model is traced; the measurement must run for real, so it is
    evaluated eagerly (``ensure_compile_time_eval``) on concrete inputs.
    """
    x = np.random.default_rng(0).standard_normal(c.x_shape).astype(c.x_dtype)
    with jax.ensure_compile_time_eval():
        if eqn.primitive is lax.conv_general_dilated_p:
            dense = DenseWeight(dense_kernel, weight.layout)
            return costs.measure_pair(
                lambda a: lowering.conv(a, dense, eqn.params, "xla"),
                lambda a: lowering.conv(a, weight, eqn.params, opts.impl, opts.interpret), x)
        k2 = dense_kernel.reshape(-1, dense_kernel.shape[-1])
        return costs.measure_pair(lambda a: a @ k2,
                                  lambda a: lowering.gemm(a, weight, opts.impl, opts.interpret),
                                  x.reshape(-1, c.x_shape[-1]))


def _pack(low: str, pattern, gemm_w: np.ndarray, gemm_m: np.ndarray, layout: Layout):
    """The rewritten weight for a lowering, and the fraction of the dense FLOPs it runs."""
    if low == "nm":
        values, idx = pack_nm(gemm_w, gemm_m, pattern.n, pattern.m)
        return NMWeight(values, idx, pattern.m, layout), pattern.n / pattern.m
    bh, bw = block_shape(pattern)
    values, brows = pack_block_ell(gemm_w, gemm_m, bh, bw)
    stored = int((brows >= 0).sum()) * bh * bw
    return BlockWeight(values, brows, layout), stored / gemm_w.size


def _with_blob(weight: NMWeight, dtype, gemm_kn: tuple[int, int]) -> NMWeight:
    """The weight with its cuSPARSELt-compressed copy in ``dtype``, made now on the local GPU
    (``decide`` runs while tracing: evaluate eagerly, as ``_measure`` does)."""
    k, _ = gemm_kn
    with jax.ensure_compile_time_eval():
        dense = unpack_nm(jnp.asarray(weight.values, dtype), jnp.asarray(weight.indices), k,
                          weight.m)
        blob = np.asarray(jax.jit(cusparselt.compress)(dense))
    return dataclasses.replace(weight, blob=blob)


def _action(low: str, pattern, opts: Options, gemm_kn: tuple[int, int], dtype) -> str:
    if low == "nm":
        kernel = None
        if opts.platform == "cuda":
            kernel = cuda_kernel(gemm_kn[0], pattern.n, pattern.m, gemm_kn[1], dtype)[0]
        return f"nm_dot ({kernel or 'portable'})"
    if low != "block":
        return "dense"
    if opts.impl == "cpu":
        kind = "ell" if isinstance(pattern, Unstructured) else "block"
        return f"block_sparse_dot (cpu {kind} kernel)"
    if opts.impl == "pallas":
        kernel = _pallas(opts, *block_shape(pattern))[0]
        return f"block_sparse_dot ({kernel or 'portable'})"
    return f"block_sparse_dot ({opts.impl})"


def decide(ctx: Context, key: str, eqn, x: Any, w: WRef) -> LayerPlan:
    """Compile-time decision for one layer; fills ``ctx.rewritten``, ``ctx.folded``, rows."""
    opts: Options = ctx.options
    kind = "conv" if eqn.primitive is lax.conv_general_dilated_p else "dot"
    w_full = np.asarray(w.value, np.float32)  # compile() hands over weights already masked.
    shape = w_full.shape
    dense_bytes = nbytes(w.value)
    why, rows = _layer_shape(eqn, w)
    k_full = int(np.prod(shape[:-1]))
    before = lowering.gemm_flops(rows, k_full, shape[-1]) if rows else 0.0
    mask = np.ones(shape, bool) if w.mask is None else np.asarray(w.mask, bool)
    if why is None and w.path in ctx.forced_dense:
        why = "weight is also read by another operation, so it is kept whole"
    in_keep = x.keep if isinstance(x, Sliced) and x.axis == x.data.ndim - 1 else None
    out_keep = removed_outputs(mask) if why is None else None
    if out_keep is not None and len(out_keep) == 0:
        out_keep = np.zeros(1, np.int64)  # Keep one (all-zero) channel: no zero-size arrays.
    if why is not None or (in_keep is None and out_keep is None and w.mask is None):
        action = "dense (unchanged)" if why is None else "dense (unsupported)"
        ctx.rows.append(CompiledLayer(w.path, kind, shape,
                                      "dense" if w.mask is None else "masked", action, before,
                                      before, why or "no mask", dense_bytes, dense_bytes))
        return UNCHANGED
    x_aval = eqn.invars[0].aval
    dtype = np.dtype(w.dtype or x_aval.dtype)
    kernel_hw = tuple(shape[:2]) if kind == "conv" else (1, 1)

    def kept(out_keep):
        """The kept sub-weight, its pattern, its candidate and the policy's choice."""
        kw, km = w_full, mask
        if in_keep is not None:
            kw, km = kw[..., in_keep, :], km[..., in_keep, :]
        if out_keep is not None:
            kw, km = kw[..., out_keep], km[..., out_keep]
        pat = _kernel_block(sub_pattern(km), opts)
        flops = lowering.gemm_flops(rows, int(np.prod(kw.shape[:-1])), kw.shape[-1])
        c = None if pat is None else Candidate(
            pat, float(km.mean()) if km.size else 1.0, flops, kernel_hw,
            (*x_aval.shape[:-1], kw.shape[-2]), dtype,
            (int(np.prod(kw.shape[:-1])), kw.shape[-1]))
        return kw, km, pat, flops, c, _choose(c, opts)

    kept_w, kept_m, pattern, after, cand, (low, reason, timing) = kept(out_keep)
    if low in ("block", "measure") and out_keep is not None:
        # A block/unstructured kernel skips removed filters by itself (columns with no stored
        # weights); slicing its output would only add gathers where a residual stream is
        # widened again. Keep the full output when the kernel still wins on it.
        alt = kept(None)
        if alt[-1][0] in ("block", "measure"):
            out_keep = None
            kept_w, kept_m, pattern, after, cand, (low, reason, timing) = alt
    k, n = int(np.prod(kept_w.shape[:-1])), kept_w.shape[-1]
    layout = Layout(tuple(shape), None if in_keep is None else tuple(int(i) for i in in_keep),
                    None if out_keep is None else tuple(int(i) for i in out_keep))
    gemm_w, gemm_m = kept_w.reshape(k, n), kept_m.reshape(k, n)
    dense = DenseWeight(kept_w.astype(np.asarray(w.value).dtype), layout)
    weight, frac = dense, 1.0
    if low in ("nm", "block", "measure"):
        weight, frac = _pack("nm" if low == "nm" else "block", pattern, gemm_w, gemm_m, layout)
    if low == "nm" and opts.precompress and \
            cuda_kernel(k, pattern.n, pattern.m, n, dtype)[0] == "cusparselt":
        weight = _with_blob(weight, dtype, (k, n))
    if low == "measure":
        td, ts = _measure(eqn, cand, weight, dense.kernel, opts)
        timing = dataclasses.replace(timing, measured_dense_ms=td, measured_sparse_ms=ts,
                                     sparse_flops=after * frac)
        low = "block" if ts < costs.MAX_RATIO * td else "dense"
        reason = f"measured {td:.2f} ms dense vs {ts:.2f} ms sparse (calibrate=True)"
        if low == "dense":
            weight, frac = dense, 1.0
    after *= frac
    action = _action(low, pattern, opts, (k, n), dtype)
    if in_keep is not None or out_keep is not None:
        action = f"channel-sliced {kept_w.shape[-2]}/{shape[-2]} in, {n}/{shape[-1]} out + " \
                 f"{action}"
    if w.path in ctx.rewritten:
        ctx.conflicts.add(w.path)
    ctx.rewritten[w.path] = weight
    fold = _fold(eqn, x, w_full, out_keep) if isinstance(x, Sliced) and \
        in_keep is not None else None
    if fold is not None:
        ctx.folded[key] = fold.astype(np.float32)
    if w.mask is None:
        label = "dense (input sliced)"
    elif out_keep is not None:
        label = "channel" if pattern is None else f"channel+{pattern}"
    else:
        label = str(pattern) if pattern is not None else "dense"
    ctx.rows.append(CompiledLayer(w.path, kind, shape, label, action, before, after, reason,
                                  dense_bytes, nbytes(weight), timing))
    return LayerPlan(low, kind, layout.in_keep, layout.out_keep, fold is not None)


def apply(ctx: Context, key: str, plan: LayerPlan, eqn, x: Any, w: WRef) -> list:
    """Runs one layer as planned (the same code at compile time and at run time)."""
    if plan.lowering == "unchanged":
        return default_rule(ctx, eqn, [x, w])
    weight = ctx.rewritten[w.path] if ctx.compiling else w.value
    in_keep, out_keep = plan.in_keep, plan.out_keep
    if in_keep is not None:
        if not (isinstance(x, Sliced) and np.array_equal(x.keep, in_keep)):
            raise RuntimeError(f"jaxsparse.sparsify: the input channels of {w.path} changed "
                               f"between compile time and run time; sparsify again.")
        xd = x.data
    else:
        xd = ctx.plain(x)
    out_dtype = eqn.outvars[0].aval.dtype
    if w.dtype is not None:
        xd = xd.astype(w.dtype) if xd.dtype != w.dtype else xd
    if plan.kind == "conv":
        y = lowering.conv(xd, weight, eqn.params, ctx.options.impl, ctx.options.interpret)
    else:
        y = lowering.gemm(xd.reshape(-1, xd.shape[-1]), weight, ctx.options.impl,
                          ctx.options.interpret)
        y = y.reshape(*xd.shape[:-1], y.shape[-1])
    y = y.astype(out_dtype)
    if plan.fold:
        y = y + ctx.folded[key].astype(out_dtype)
    if out_keep is not None:
        full = weight.layout.shape[-1]
        return [Sliced(y, y.ndim - 1, np.asarray(out_keep), full, np.zeros((full,), out_dtype))]
    return [y]
