"""The layer rule of the pass: what to do with one conv or dense layer, and doing it.

``decide`` (compile time) looks at the layer's mask and its input's kept channels, slices away
removed input and output channels, folds removed-but-constant input channels into a bias map,
asks :mod:`~jaxsparse.compiler.policy` for a lowering, builds the rewritten weight and returns
a :class:`LayerPlan`. ``apply`` (both times) runs the layer from its plan. ``layer_rule`` is
registered into the interpreter's table for every layer primitive when this module loads.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsparse.compiler import channels, costs, lowering, policy
from jaxsparse.compiler.detect import removed_outputs, sub_pattern
from jaxsparse.compiler.interpreter import RULES, Context, default_rule
from jaxsparse.compiler.packed import (
    BlockWeight,
    DenseWeight,
    Layout,
    NMWeight,
    block_shape,
    nbytes,
)
from jaxsparse.compiler.report import CompiledLayer
from jaxsparse.compiler.values import Pending, Sliced, WRef, epilogue_fill
from jaxsparse.kernels.cpu.sparse_conv import apply_epilogue
from jaxsparse.kernels.gpu import cusparselt
from jaxsparse.kernels.window import ConvWindow
from jaxsparse.primitives.block_sparse_dot import Epilogue, pack_block_ell
from jaxsparse.primitives.nm_dot import cuda_kernel, pack_nm, unpack_nm


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """What ``decide`` chose for one layer, replayed by ``apply`` at run time.

    Attributes:
        lowering: ``"unchanged"`` (the original op), ``"dense"``, ``"nm"`` or ``"block"``.
        kind: ``"conv"`` or ``"dot"``.
        in_keep: the input channels kept (the input arrives sliced to them), or None.
        out_keep: the output channels computed (the output leaves sliced), or None.
        fold: whether a constant bias map from removed input channels is added.
        affine_ops: how many per-channel affine ops after the layer (an inference BatchNorm)
            are folded into its weights and a per-channel bias (0: none).
        epilogue: the ops after those that its kernel applies before storing the output:
            ``("add",)`` (a residual), ``("relu",)`` or ``("add", "relu")``; the layer then
            runs where its epilogue ends (it needs the residual).
        supported: False for a layer the pass cannot rewrite (nothing is folded into it).
    """

    lowering: str
    kind: str = ""
    in_keep: tuple[int, ...] | None = None
    out_keep: tuple[int, ...] | None = None
    fold: bool = False
    affine_ops: int = 0
    epilogue: tuple[str, ...] = ()
    supported: bool = True


UNCHANGED = LayerPlan("unchanged")
UNSUPPORTED = LayerPlan("unchanged", supported=False)


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


def _measure(eqn, c: policy.Candidate, weight: BlockWeight, dense_kernel: np.ndarray,
             opts: policy.Options, bias: bool = False, epilogue: tuple[str, ...] = (),
             ) -> tuple[float, float]:
    """Times the layer at its shape: XLA dense conv/dot vs the sparse kernel (ms), each with
    what follows it (a folded ``bias``, the ``epilogue``): in the kernel, XLA's as its own
    fused op after the conv.

    ``decide`` runs while the model is traced; the measurement must run for real, so it is
    evaluated eagerly (``ensure_compile_time_eval``) on concrete inputs.
    """
    rng = np.random.default_rng(0)
    x = rng.standard_normal(c.x_shape).astype(c.x_dtype)
    conv = eqn.primitive is lax.conv_general_dilated_p
    n = dense_kernel.shape[-1]
    out = (*eqn.outvars[0].aval.shape[:-1], n) if conv else (int(np.prod(c.x_shape[:-1])), n)
    spec = Epilogue(bias, "add" in epilogue, "relu" in epilogue)
    extra = [rng.standard_normal(shape).astype(c.x_dtype)
             for shape, on in (((n,), spec.bias), (out, spec.residual)) if on]

    def ops(e):
        b, r = spec.split(e)
        return dict(bias=b, residual=r, relu=spec.relu)
    with jax.ensure_compile_time_eval():
        if conv:
            dense = DenseWeight(dense_kernel, weight.layout)
            return costs.measure_pair(
                lambda a, *e: lowering.conv(a, dense, eqn.params, "xla", **ops(e)),
                lambda a, *e: lowering.conv(a, weight, eqn.params, opts.impl, opts.interpret,
                                            **ops(e)), x, extra=tuple(extra))
        dense = DenseWeight(dense_kernel.reshape(-1, n), weight.layout)
        return costs.measure_pair(
            lambda a, *e: lowering.gemm(a, dense, "xla", **ops(e)),
            lambda a, *e: lowering.gemm(a, weight, opts.impl, opts.interpret, **ops(e)),
            x.reshape(-1, c.x_shape[-1]), extra=tuple(extra))


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
        blob = np.asarray(jax.jit(cusparselt.compress, static_argnums=1)(
            dense, weight.cusparselt_layout))
    return dataclasses.replace(weight, blob=blob)


def decide(ctx: Context, key: str, eqn, x: Any, w: WRef) -> LayerPlan:
    """Compile-time decision for one layer; fills ``ctx.rewritten``, ``ctx.folded``, rows."""
    opts: policy.Options = ctx.options
    kind = "conv" if eqn.primitive is lax.conv_general_dilated_p else "dot"
    w_full = np.asarray(w.value, np.float32)  # compile() hands over weights already masked.
    shape = w_full.shape
    # (scale, shift, ops, epilogue) of the BatchNorm etc. after it, if folded.
    affine = ctx.folds.get(key)
    epilogue = () if affine is None else affine[3]
    if affine is not None and not affine[2]:  # Only an epilogue: no scale or bias.
        affine = None
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
    # A plain dense layer is left as it is, unless calibrating may move it to the C++ kernel.
    may_measure = opts.calibrate and opts.impl == "cpu" and opts.policy == "auto"
    if why is not None or (in_keep is None and out_keep is None and w.mask is None and
                           affine is None and not epilogue and not may_measure):
        ctx.rows.append(CompiledLayer(w.path, kind, shape,
                                      "dense" if w.mask is None else "masked", "unchanged",
                                      before, before, why or "no mask", dense_bytes,
                                      dense_bytes, supported=why is None))
        return UNCHANGED if why is None else UNSUPPORTED
    if affine is not None:  # Scaling an output column keeps its zeros: masks keep meaning.
        w_full = w_full * affine[0].astype(np.float32)
    x_aval = eqn.invars[0].aval
    dtype = np.dtype(w.dtype or x_aval.dtype)
    kernel_hw = tuple(shape[:2]) if kind == "conv" else (1, 1)
    window = ConvWindow.from_conv_params(kernel_hw, eqn.params) if kind == "conv" else None

    def kept(out_keep):
        """The kept sub-weight, its pattern, its candidate and the policy's choice."""
        kw, km = w_full, mask
        if in_keep is not None:
            kw, km = kw[..., in_keep, :], km[..., in_keep, :]
        if out_keep is not None:
            kw, km = kw[..., out_keep], km[..., out_keep]
        pat = policy.kernel_block(sub_pattern(km), opts)
        gemm_kn = (int(np.prod(kw.shape[:-1])), kw.shape[-1])
        flops = lowering.gemm_flops(rows, *gemm_kn)
        # No zeros left: the C++ kernel may still run it, every block stored (measured).
        run = pat if pat is not None or opts.impl != "cpu" else \
            policy.full_density_block(*gemm_kn, kw.shape[-2] if kind == "conv" else None,
                                      window)
        c = None if run is None else policy.Candidate(
            run, float(km.mean()) if km.size else 1.0, flops, kernel_hw,
            (*x_aval.shape[:-1], kw.shape[-2]), dtype, gemm_kn, window)
        return kw, km, pat, flops, c, policy.choose(c, opts)

    kept_w, kept_m, pattern, after, cand, (low, reason, timing) = kept(out_keep)
    full_density = cand is not None and pattern is None  # Runs a dense layer on a kernel.
    if low in ("block", "measure") and out_keep is not None and not full_density:
        # A block/unstructured kernel skips removed filters by itself (columns with no stored
        # weights); slicing its output would only add gathers where a residual stream is
        # widened again. Keep the full output when the kernel still wins on it.
        alt = kept(None)
        if alt[-1][0] in ("block", "measure"):
            out_keep = None
            kept_w, kept_m, pattern, after, cand, (low, reason, timing) = alt
    if w.mask is None and in_keep is None and low == "dense":
        reason = "no mask"
    k, n = int(np.prod(kept_w.shape[:-1])), kept_w.shape[-1]
    layout = Layout(tuple(shape), None if in_keep is None else tuple(int(i) for i in in_keep),
                    None if out_keep is None else tuple(int(i) for i in out_keep))
    gemm_w, gemm_m = kept_w.reshape(k, n), kept_m.reshape(k, n)
    dense = DenseWeight(kept_w.astype(np.asarray(w.value).dtype), layout)
    weight, frac = dense, 1.0
    if low in ("nm", "block", "measure"):
        weight, frac = _pack("nm" if low == "nm" else "block", cand.pattern, gemm_w, gemm_m,
                             layout)
    if low == "block" and opts.platform == "cuda" and opts.impl == "pallas":
        weight = dataclasses.replace(weight, gpu_kernel=policy.cuda_block_kernel(
            *block_shape(cand.pattern))[0])
    if low == "nm" and opts.platform == "cuda":  # The plan measured fastest at this shape.
        weight = dataclasses.replace(weight, cusparselt_layout=policy.cuda_nm_plan(k, n)[0])
    if low == "nm" and opts.precompress and \
            cuda_kernel(k, pattern.n, pattern.m, n, dtype)[0] == "cusparselt":
        weight = _with_blob(weight, dtype, (k, n))
    if low == "measure" and ctx.analyze:
        # The folding pass: what follows the layer is not known yet, so it is planned on the
        # kernel (whose epilogue the pass then tracks) and measured in the next pass, with it.
        low, ctx.unmeasured = "block", True
    if low == "measure":
        fused = (affine is not None, epilogue)
        if (key, cand, fused) not in ctx.measured:  # Each layer is timed once per compile.
            ctx.measured[key, cand, fused] = _measure(eqn, cand, weight, dense.kernel, opts,
                                                      *fused)
        td, ts = ctx.measured[key, cand, fused]
        timing = dataclasses.replace(timing, measured_dense_ms=td, measured_sparse_ms=ts,
                                     sparse_flops=after * frac, dense_flops=after)
        low = "block" if ts < costs.MAX_RATIO * td else "dense"
        what = f"the C++ kernel at full density ({cand.pattern} blocks)" if full_density \
            else "sparse"
        reason = f"measured {td:.2f} ms XLA dense vs {ts:.2f} ms {what} (calibrate=True)"
        if low == "dense":
            weight, frac = dense, 1.0
    after *= frac
    if w.path in ctx.rewritten:
        ctx.conflicts.add(w.path)
    ctx.rewritten[w.path] = weight
    fold = _fold(eqn, x, w_full, out_keep) if isinstance(x, Sliced) and \
        in_keep is not None else None
    if fold is not None:
        ctx.folded[key] = fold.astype(np.float32)
    if affine is not None:
        ctx.folded[shift_key(key)] = affine[1].astype(np.float32)
    if w.mask is None and in_keep is None:
        label = "dense"
    elif w.mask is None:
        label = "dense (input sliced)"
    elif out_keep is not None:
        label = "channel" if pattern is None else f"channel+{pattern}"
    else:
        label = str(pattern) if pattern is not None else "dense"
    sliced = in_keep is not None or out_keep is not None
    ctx.rows.append(CompiledLayer(
        w.path, kind, shape, label, low, before, after, reason, dense_bytes, nbytes(weight),
        timing, kernel=policy.kernel_name(low, cand.pattern if cand else None, opts, (k, n),
                                          dtype, full_density),
        in_channels=(kept_w.shape[-2], shape[-2]) if sliced else None,
        out_channels=(n, shape[-1]) if sliced else None,
        affine_folded=0 if affine is None else affine[2],
        epilogue=epilogue if _fuses(low, fold is not None, ctx.options) else ()))
    return LayerPlan(low, kind, layout.in_keep, layout.out_keep, fold is not None,
                     0 if affine is None else affine[2], epilogue)


def _fuses(lowering_name: str, fold: bool, opts: policy.Options) -> bool:
    """Whether a layer on this lowering runs an epilogue in its kernel (the C++ CPU kernels;
    not with a constant map from removed input channels, which must come first); elsewhere a
    planned epilogue runs as the separate ops it was."""
    return lowering_name == "block" and opts.impl == "cpu" and not fold


def shift_key(key: str) -> str:
    """Where a layer's folded per-channel bias lives in ``variables["folded"]``."""
    return f"{key}/shift"


def apply(ctx: Context, key: str, plan: LayerPlan, eqn, x: Any, w: WRef) -> list:
    """Runs one layer as planned (the same code at compile time and at run time); while the
    pass analyses, its output comes back :class:`Pending`, so the affine ops (and, on a kernel
    that fuses them, the residual add and ReLU) after it are tracked; with ``plan.affine_ops``
    the output already holds them (folded); with ``plan.epilogue`` the layer runs when its
    value is needed, with the residual then known."""
    final = plan.affine_ops + len(plan.epilogue)
    if plan.epilogue:
        return [Pending(None, key, folded=True, final=final, epilogue=plan.epilogue,
                        run=lambda residual: _run(ctx, key, plan, eqn, x, w, residual))]
    out = _run(ctx, key, plan, eqn, x, w)
    if plan.affine_ops:
        return [Pending(out, key, folded=True, final=final)]
    if ctx.analyze and plan.supported:
        full = (out.full if isinstance(out, Sliced) else out.shape[-1])
        return [Pending(out, key, np.ones(full), np.zeros(full),
                        fusable=_fuses(plan.lowering, plan.fold, ctx.options))]
    return [out]


def _run(ctx: Context, key: str, plan: LayerPlan, eqn, x: Any, w: WRef,
         residual: Any = None) -> Any:
    if plan.lowering == "unchanged":
        return default_rule(ctx, eqn, [x, w])[0]
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
    full = weight.layout.shape[-1]
    fill, bias = np.zeros((full,), out_dtype), None
    if plan.affine_ops:  # The folded BatchNorm's bias; a removed channel's value is its bias.
        shift = ctx.folded[shift_key(key)]
        fill = shift.astype(out_dtype) if isinstance(shift, np.ndarray) else \
            jnp.asarray(shift, out_dtype)
        bias = fill if out_keep is None else fill[np.asarray(out_keep)]
    res = None
    if "add" in plan.epilogue:
        res = _residual_data(residual, out_keep, w.path)
    fused = _fuses(plan.lowering, plan.fold, ctx.options)  # Bias, residual, ReLU in-kernel.
    epi = {}
    if fused:
        kernel_res = res
        if res is not None and plan.kind != "conv":  # A dense layer runs on 2-D rows.
            kernel_res = res.reshape(-1, res.shape[-1])
        epi = dict(bias=None if bias is None else jnp.asarray(bias, out_dtype),
                   residual=kernel_res, relu="relu" in plan.epilogue)
    if plan.kind == "conv":
        y = lowering.conv(xd, weight, eqn.params, ctx.options.impl, ctx.options.interpret,
                          **epi)
    else:
        y = lowering.gemm(xd.reshape(-1, xd.shape[-1]), weight, ctx.options.impl,
                          ctx.options.interpret, **epi)
        y = y.reshape(*xd.shape[:-1], y.shape[-1])
    y = y.astype(out_dtype)
    if not fused:
        if plan.fold:
            y = y + ctx.folded[key].astype(out_dtype)
        if bias is not None:
            y = y + bias
        y = apply_epilogue(y, None, res, "relu" in plan.epilogue)
    if out_keep is None:
        return y
    # A removed channel's value: relu?(its bias + the residual's).
    fill = epilogue_fill(fill, None if res is None else residual.fill,
                         "relu" in plan.epilogue)
    return Sliced(y, y.ndim - 1, np.asarray(out_keep), full, fill)


def _residual_data(residual: Any, out_keep, path: str) -> Any:
    """The residual's array for a layer's epilogue: plain, or its data when the output is
    sliced (to the same channels, as the pass checked at compile time)."""
    if out_keep is None:
        if isinstance(residual, Sliced):
            raise RuntimeError(f"jaxsparse.sparsify: the residual added to {path} changed "
                               f"between compile time and run time; sparsify again.")
        return residual
    if not (isinstance(residual, Sliced) and np.array_equal(residual.keep, out_keep)):
        raise RuntimeError(f"jaxsparse.sparsify: the residual added to {path} changed "
                           f"between compile time and run time; sparsify again.")
    return residual.data


def layer_rule(ctx: Context, eqn, invals: list) -> list:
    """The interpreter's rule for conv_general_dilated and dot_general: at compile time
    :func:`decide` records the layer's plan; both times :func:`apply` runs it."""
    x, w = invals[0], invals[1]
    if isinstance(x, WRef) or not isinstance(w, WRef):
        return default_rule(ctx, eqn, invals)
    key = ctx.next_key(eqn.primitive.name)
    if ctx.compiling:
        ctx.plan[key] = decide(ctx, key, eqn, x, w)
    return apply(ctx, key, ctx.plan[key], eqn, x, w)


for _p in channels.LAYERS:
    RULES[_p] = layer_rule
