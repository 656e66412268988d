"""The layer rules of the pass: what to do with one conv or dense layer, and doing it.

``decide`` (compile time) looks at the layer's mask and its input's kept channels, slices away
removed input and output channels, folds removed-but-constant input channels into a bias map,
picks a kernel by the policy's cost model, builds the rewritten weight and returns the plan
entry. ``apply`` (both times) runs the layer from the plan entry.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax import lax

from jaxsparse.compiler import lowering
from jaxsparse.compiler.detect import removed_outputs, sub_pattern
from jaxsparse.compiler.interpreter import Context, default_rule
from jaxsparse.compiler.packed import BlockWeight, DenseWeight, Layout, NMWeight
from jaxsparse.compiler.report import LayerRow
from jaxsparse.compiler.values import Sliced, WRef
from jaxsparse.primitives.block_sparse_dot import pack_block_ell
from jaxsparse.primitives.nm_dot import pack_nm
from jaxsparse.pruning.patterns import NM, Block, Unstructured

POLICIES = ("auto", "sparse", "dense")
# Cost model of policy="auto": the block-sparse kernel pays a gather of the input's row blocks,
# so it only wins over a dense GEMM well below half density and on layers large enough for the
# gather to amortise. On CPU the XLA lowering measured slower than dense even at 90% sparsity
# (docs/results/bench_sparse_resnet50_cpu_*.md), so "auto" keeps block layers dense there.
BLOCK_MAX_DENSITY = 0.5
MIN_SPARSE_FLOPS = 2e7
BLOCK_SLOWER_PLATFORMS = ("cpu",)


@dataclasses.dataclass(frozen=True)
class Options:
    """Compile options shared by every layer."""

    policy: str
    impl: str
    platform: str


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


def _choose(pattern, density: float, flops: float, opts: Options) -> tuple[str, str]:
    """``(lowering, why)`` for the kept sub-weight by the policy's cost model."""
    if pattern is None:
        return "dense", "no zeros left after channel slicing"
    if isinstance(pattern, Unstructured):
        return "dense", "unstructured zeros: no kernel can skip them (mask only)"
    if opts.policy == "dense":
        return "dense", "policy='dense'"
    if isinstance(pattern, NM):
        if opts.policy == "sparse":
            return "nm", f"policy='sparse' (portable nm_dot on {opts.platform} densifies)"
        return "dense", (f"no fast {pattern} kernel on {opts.platform}: the portable nm_dot "
                         f"lowering densifies; policy='sparse' forces it")
    assert isinstance(pattern, Block)
    if opts.policy == "sparse":
        return "block", "policy='sparse'"
    if opts.platform in BLOCK_SLOWER_PLATFORMS and opts.impl == "xla":
        return "dense", (f"block_sparse_dot's XLA lowering measured slower than dense on "
                         f"{opts.platform}; policy='sparse' forces it")
    if density > BLOCK_MAX_DENSITY:
        return "dense", f"density {density:.2f} > {BLOCK_MAX_DENSITY}: dense GEMM is faster"
    if flops < MIN_SPARSE_FLOPS:
        return "dense", f"small layer ({flops / 1e6:.1f} MFLOP): dense GEMM is faster"
    return "block", f"density {density:.2f} <= {BLOCK_MAX_DENSITY} on a large layer"


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


def decide(ctx: Context, key: str, eqn, x: Any, w: WRef) -> dict:
    """Compile-time decision for one layer; fills ``ctx.rewritten``, ``ctx.folded``, rows."""
    opts: Options = ctx.options
    kind = "conv" if eqn.primitive is lax.conv_general_dilated_p else "dot"
    w_full = np.asarray(w.value, np.float32)  # compile() hands over weights already masked.
    shape = w_full.shape
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
        ctx.rows.append(LayerRow(w.path, kind, shape, "dense" if w.mask is None else "masked",
                                 action, before, before, why or "no mask"))
        return {"lowering": "unchanged"}
    kept_w, kept_m = w_full, mask
    if in_keep is not None:
        kept_w, kept_m = kept_w[..., in_keep, :], kept_m[..., in_keep, :]
    if out_keep is not None:
        kept_w, kept_m = kept_w[..., out_keep], kept_m[..., out_keep]
    pattern = sub_pattern(kept_m)
    k, n = int(np.prod(kept_w.shape[:-1])), kept_w.shape[-1]
    density = float(kept_m.mean()) if kept_m.size else 1.0
    after = lowering.gemm_flops(rows, k, n)
    low, reason = _choose(pattern, density, after * density, opts)
    layout = Layout(tuple(shape), None if in_keep is None else tuple(int(i) for i in in_keep),
                    None if out_keep is None else tuple(int(i) for i in out_keep))
    gemm_w, gemm_m = kept_w.reshape(k, n), kept_m.reshape(k, n)
    if low == "nm":
        values, idx = pack_nm(gemm_w, gemm_m, pattern.n, pattern.m)
        weight = NMWeight(values, idx, pattern.m, layout)
        after *= pattern.n / pattern.m
        action = "nm_dot"
    elif low == "block":
        values, brows = pack_block_ell(gemm_w, gemm_m, pattern.bh, pattern.bw)
        weight = BlockWeight(values, brows, layout)
        after = lowering.gemm_flops(rows, values.shape[1] * pattern.bh, n)
        action = f"block_sparse_dot ({opts.impl})"
    else:
        weight = DenseWeight(kept_w.astype(np.asarray(w.value).dtype), layout)
        action = "dense"
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
    ctx.rows.append(LayerRow(w.path, kind, shape, label, action, before, after, reason))
    return {"lowering": low, "in_keep": in_keep, "out_keep": out_keep, "fold": fold is not None,
            "kind": kind}


def apply(ctx: Context, key: str, entry: dict, eqn, x: Any, w: WRef) -> list:
    """Runs one layer as planned (the same code at compile time and at run time)."""
    if entry["lowering"] == "unchanged":
        return default_rule(ctx, eqn, [x, w])
    weight = ctx.rewritten[w.path] if ctx.compiling else w.value
    in_keep, out_keep = entry["in_keep"], entry["out_keep"]
    if in_keep is not None:
        if not (isinstance(x, Sliced) and np.array_equal(x.keep, in_keep)):
            raise RuntimeError(f"jaxsparse.compile: the input channels of {w.path} changed "
                               f"between compile time and run time; recompile.")
        xd = x.data
    else:
        xd = ctx.plain(x)
    out_dtype = eqn.outvars[0].aval.dtype
    if w.dtype is not None:
        xd = xd.astype(w.dtype) if xd.dtype != w.dtype else xd
    if entry["kind"] == "conv":
        y = lowering.conv(xd, weight, eqn.params, ctx.options.impl)
    else:
        y = lowering.gemm(xd.reshape(-1, xd.shape[-1]), weight, ctx.options.impl)
        y = y.reshape(*xd.shape[:-1], y.shape[-1])
    y = y.astype(out_dtype)
    if entry["fold"]:
        y = y + ctx.folded[key].astype(out_dtype)
    if out_keep is not None:
        full = weight.layout.shape[-1]
        return [Sliced(y, y.ndim - 1, np.asarray(out_keep), full, np.zeros((full,), out_dtype))]
    return [y]
