"""Micro-batching: a compiled model that runs its batch a few examples at a time.

A CPU runs a network layer by layer, so at batch 16 every activation of ResNet-50's first
stage (16 x 56 x 56 x 256 floats, 51 MiB) goes out to memory and back between two layers.
Run on two examples at a time the same activations are 6.4 MiB, which stay in L3 for the
next layer: the layer-by-layer cousin of running consecutive layers tile by tile (what
DeepSparse calls tensor columns). A sparse model, whose layers do a tenth of the arithmetic,
is the one held back by that traffic.

:func:`choose` decides the micro-batch of a :func:`~jaxsparse.sparsify` call and
:func:`run_in_chunks` runs a function chunk by chunk (``lax.map``). Splitting a batch is only
exact for a function whose every output row depends on that row of the inputs alone (an
inference-mode network; not a training-mode BatchNorm, which mixes the batch's statistics).
:func:`why_not_separable` proves it on the jaxpr: a value domain of
:mod:`~jaxsparse.compiler.engine` follows the batch axis of every activation through each
primitive (:data:`ROWS`) and names the first one that mixes rows or that it has no rule for.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax import lax

from jaxsparse.compiler import engine
from jaxsparse.compiler.channels import LAYERS

AUTO = "auto"
# "auto" keeps the largest layer's input and output of one micro-batch within this share of
# L3 (the rest holds weights, the residual and what the kernels' threads touch).
CACHE_SHARE = 0.5


@dataclasses.dataclass(frozen=True)
class MicroBatch:
    """How a compiled model splits its batch.

    Attributes:
        size: examples per chunk (``batch`` when the batch is not split).
        batch: the batch size it was compiled for (the example inputs' leading axis).
        note: why this size (for the report).
        measure: a split ``"auto"`` proposes, to be timed against the whole batch before it
            is kept.
        until: the split runs only the first ``until`` top-level equations of the traced
            function in chunks (up to a cut of :func:`~jaxsparse.compiler.engine.cuts`,
            chosen by :func:`best_cut`: the layers that measured faster in chunks) and the
            rest on the whole batch; None: all of it in chunks.
    """

    size: int
    batch: int
    note: str
    measure: bool = False
    until: int | None = None

    @property
    def chunks(self) -> int:
        return self.batch // self.size


@dataclasses.dataclass(frozen=True)
class _Rows:
    """An activation whose axis ``axis`` is the batch."""

    axis: int


@dataclasses.dataclass
class _Walk:
    batch: int
    why: str | None = None
    layer_row_bytes: int = 0  # The largest layer's input + output bytes per example.
    layers: int = 0  # Conv/dot layers of an activation by a constant, in the order run.


def _varying(v: Any, aval: Any) -> frozenset[int]:
    """The axes along which a value that does not depend on the inputs may vary (a weight,
    a constant, an iota: every axis longer than 1, unless it is known to be a broadcast)."""
    shape = getattr(aval, "shape", ())
    axes = v if isinstance(v, frozenset) else frozenset(range(len(shape)))
    return frozenset(d for d in axes if shape[d] != 1)


def _fail(ctx: _Walk, eqn, why: str) -> list:
    if ctx.why is None:
        ctx.why = f"{eqn.primitive.name} {why}"
    return [None] * len(eqn.outvars)


def _axes(eqn, invals: list) -> list[int | None]:
    return [v.axis if isinstance(v, _Rows) else None for v in invals]


def _elementwise(ctx: _Walk, eqn, invals: list) -> list:
    axes = {a for a in _axes(eqn, invals) if a is not None}
    if len(axes) != 1:
        return _fail(ctx, eqn, "combines activations whose batch axes differ")
    (a,) = axes
    for var, v in zip(eqn.invars, invals, strict=True):
        if not isinstance(v, _Rows) and a in _varying(v, var.aval):
            return _fail(ctx, eqn, "combines an activation with a constant that varies along "
                                   "the batch axis")
    return [_Rows(a)] * len(eqn.outvars)


def _broadcast(ctx: _Walk, eqn, invals: list) -> list:
    (a,) = _axes(eqn, invals[:1])
    to = eqn.params["broadcast_dimensions"][a]
    if eqn.invars[0].aval.shape[a] != eqn.outvars[0].aval.shape[to]:
        return _fail(ctx, eqn, "broadcasts the batch axis")
    return [_Rows(to)]


def _reshape(ctx: _Walk, eqn, invals: list) -> list:
    (a,) = _axes(eqn, invals[:1])
    shape, sizes = eqn.invars[0].aval.shape, tuple(eqn.params["new_sizes"])
    if a != 0 or eqn.params.get("dimensions") is not None or sizes[:1] != shape[:1]:
        return _fail(ctx, eqn, "merges or splits the batch axis")
    return [_Rows(0)]


def _squeeze(ctx: _Walk, eqn, invals: list) -> list:
    (a,) = _axes(eqn, invals)
    dims = tuple(eqn.params["dimensions"])
    return [_Rows(a - sum(d < a for d in dims))]


def _transpose(ctx: _Walk, eqn, invals: list) -> list:
    (a,) = _axes(eqn, invals)
    return [_Rows(tuple(eqn.params["permutation"]).index(a))]


def _reduce(ctx: _Walk, eqn, invals: list) -> list:
    a = _axes(eqn, invals)[0]
    reduced = tuple(eqn.params["axes"])
    if a in reduced:
        return _fail(ctx, eqn, "reduces over the batch axis")
    return [_Rows(a - sum(d < a for d in reduced))] * len(eqn.outvars)


def _along(param: str) -> Callable:
    """A primitive that works along one axis ``params[param]``: rows stay apart unless that
    axis is the batch."""

    def rule(ctx: _Walk, eqn, invals: list) -> list:
        axes = {x for x in _axes(eqn, invals) if x is not None}
        a = axes.pop() if len(axes) == 1 else None
        if a is None or eqn.params[param] == a:
            return _fail(ctx, eqn, f"works along the batch axis or across activations whose "
                                   f"batch axes differ ({param}={eqn.params[param]})")
        if any(not isinstance(v, _Rows) and a in _varying(v, var.aval)
               for var, v in zip(eqn.invars, invals, strict=True)):
            return _fail(ctx, eqn, "joins an activation with a constant that varies along the "
                                   "batch axis")
        return [_Rows(a)] * len(eqn.outvars)
    return rule


def _window(ctx: _Walk, eqn, invals: list) -> list:
    a = _axes(eqn, invals)[0]
    p = eqn.params
    ones = all(p.get(k) is None or tuple(p[k])[a] == 1
               for k in ("window_dimensions", "window_strides", "base_dilation",
                         "window_dilation"))
    if a is None or not ones or tuple(p["padding"][a]) != (0, 0):
        return _fail(ctx, eqn, "has a window that spans the batch axis")
    return [_Rows(a)] * len(eqn.outvars)


def _pad(ctx: _Walk, eqn, invals: list) -> list:
    (a, pad_value) = _axes(eqn, invals)
    if a is None or pad_value is not None or tuple(eqn.params["padding_config"][a]) != (0, 0, 0):
        return _fail(ctx, eqn, "pads the batch axis")
    return [_Rows(a)]


def _slice(ctx: _Walk, eqn, invals: list) -> list:
    (a,) = _axes(eqn, invals)
    p, n = eqn.params, eqn.invars[0].aval.shape[a]
    strides = p.get("strides") or (1,) * eqn.invars[0].aval.ndim
    if p["start_indices"][a] != 0 or p["limit_indices"][a] != n or strides[a] != 1:
        return _fail(ctx, eqn, "slices the batch axis")
    return [_Rows(a)]


def _layer_bytes(ctx: _Walk, eqn, rows_of: int) -> None:
    size = sum(math.prod(v.aval.shape) * v.aval.dtype.itemsize
               for v in (eqn.invars[0], eqn.outvars[0]))
    ctx.layer_row_bytes = max(ctx.layer_row_bytes, -(-size // rows_of))
    ctx.layers += 1


def _conv(ctx: _Walk, eqn, invals: list) -> list:
    a, w = _axes(eqn, invals)
    dn = eqn.params["dimension_numbers"]
    if w is not None or a != dn.lhs_spec[0] or eqn.params["batch_group_count"] != 1:
        return _fail(ctx, eqn, "does not keep the batch as the convolution's batch dimension")
    _layer_bytes(ctx, eqn, ctx.batch)
    return [_Rows(dn.out_spec[0])]


def _dot(ctx: _Walk, eqn, invals: list) -> list:
    a, b = _axes(eqn, invals)
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs_nd, rhs_nd = (v.aval.ndim for v in eqn.invars)
    lhs_free = [d for d in range(lhs_nd) if d not in lc and d not in lb]
    rhs_free = [d for d in range(rhs_nd) if d not in rc and d not in rb]
    if a is not None and b is not None:  # A batched matmul of two activations (attention).
        if a in lb and b in rb and lb.index(a) == rb.index(b):
            return [_Rows(lb.index(a))]
        return _fail(ctx, eqn, "multiplies two activations along their batch axes")
    x, free, const, con_batch = (a, lhs_free, invals[1], rb) if a is not None else (
        b, rhs_free, invals[0], lb)
    own_c, own_b = (lc, lb) if a is not None else (rc, rb)
    const_aval = eqn.invars[1 if a is not None else 0].aval
    if x in own_c:
        return _fail(ctx, eqn, "contracts the batch axis")
    if x in own_b:
        if con_batch[own_b.index(x)] in _varying(const, const_aval):
            return _fail(ctx, eqn, "multiplies by a constant that varies along the batch axis")
        return [_Rows(own_b.index(x))]
    out = len(lb) + (free.index(x) if a is not None else len(lhs_free) + free.index(x))
    _layer_bytes(ctx, eqn, ctx.batch)
    return [_Rows(out)]


def _names(*names: str) -> list:
    return [p for p in (getattr(lax, n + "_p", None) for n in names) if p is not None]


ROWS: dict[Any, Callable] = {
    **{p: _elementwise for p in _names(
        "add", "sub", "mul", "div", "rem", "max", "min", "neg", "exp", "exp2", "log", "log1p",
        "expm1", "tanh", "logistic", "sqrt", "rsqrt", "cbrt", "abs", "sign", "floor", "ceil",
        "round", "square", "pow", "integer_pow", "erf", "erfc", "erf_inv", "sin", "cos", "tan",
        "atan2", "is_finite", "nextafter", "select_n", "clamp", "eq", "ne", "lt", "le", "gt",
        "ge", "and", "or", "not", "xor", "convert_element_type", "reduce_precision", "copy",
        "stop_gradient")},
    **{p: _reduce for p in _names("reduce_sum", "reduce_max", "reduce_min", "reduce_prod",
                                  "reduce_and", "reduce_or", "argmax", "argmin")},
    **{p: _along("axis") for p in _names("cumsum", "cumprod", "cummax", "cummin",
                                         "cumlogsumexp", "split")},
    **{p: _along("dimension") for p in _names("concatenate", "sort")},
    **{p: _window for p in _names("reduce_window_max", "reduce_window_min", "reduce_window_sum",
                                  "reduce_window")},
    lax.broadcast_in_dim_p: _broadcast,
    lax.reshape_p: _reshape,
    lax.squeeze_p: _squeeze,
    lax.transpose_p: _transpose,
    lax.pad_p: _pad,
    lax.slice_p: _slice,
    LAYERS[0]: _conv,
    LAYERS[1]: _dot,
}


def _constant(ctx: _Walk, eqn, invals: list) -> list:
    """An equation of constants: a broadcast keeps track of the axes it may vary along."""
    if eqn.primitive is lax.broadcast_in_dim_p:
        dims = eqn.params["broadcast_dimensions"]
        src = eqn.invars[0].aval
        return [frozenset(dims[d] for d in _varying(invals[0], src))]
    if eqn.primitive in ROWS and ROWS[eqn.primitive] is _elementwise:
        axes = frozenset().union(*(_varying(v, var.aval) for var, v in
                                   zip(eqn.invars, invals, strict=True)))
        return [axes] * len(eqn.outvars)
    return [frozenset(range(getattr(v.aval, "ndim", 0))) for v in eqn.outvars]


DOMAIN = engine.Domain(
    name="batch rows",
    rules=ROWS,
    tracks=lambda v: isinstance(v, _Rows),
    untracked=_constant,
    no_rule=lambda ctx, eqn, invals: _fail(ctx, eqn, "has no rule in compiler/microbatch.ROWS "
                                                     "(rows may mix)"),
    lift=lambda v: frozenset(range(np.ndim(v))),
)


def walk(closed: Any, n_weights: int, batch: int) -> _Walk:
    """The rows walk of ``closed`` (see :func:`why_not_separable`): its ``why``, the largest
    layer's bytes per example and how many conv/dot layers it ran."""
    ctx = _Walk(batch)
    args = closed.jaxpr.invars
    ins = [frozenset(range(v.aval.ndim)) for v in args[:n_weights]] + [_Rows(0)] * (
        len(args) - n_weights)
    outs = engine.run(DOMAIN, ctx, closed.jaxpr,
                      [frozenset(range(np.ndim(c))) for c in closed.consts], ins)
    if ctx.why is None:
        for i, (o, var) in enumerate(zip(outs, closed.jaxpr.outvars, strict=True)):
            if not isinstance(o, _Rows) or o.axis != 0:
                ctx.why = f"output {i} {var.aval.str_short()} is not batched on its first axis"
                break
    return ctx


def why_not_separable(closed: Any, n_weights: int, batch: int) -> tuple[str | None, int]:
    """``(why not, bytes)``: why the outputs of ``closed`` (a closed jaxpr whose first
    ``n_weights`` invars are weights and the rest inputs batched on axis 0) may not be
    computed a chunk of the batch at a time (None: every output row depends on that row of
    the inputs alone), and the largest conv/dot layer's input and output bytes per example."""
    w = walk(closed, n_weights, batch)
    return w.why, w.layer_row_bytes


def l3_cache_bytes() -> int | None:
    """L3's size in bytes as Linux reports it for cpu0 (what a VM guest sees), or None."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in sorted(os.listdir(base)):
            with open(os.path.join(base, entry, "level")) as f:
                if f.read().strip() != "3":
                    continue
            with open(os.path.join(base, entry, "size")) as f:
                text = f.read().strip()
            scale = {"K": 2**10, "M": 2**20}.get(text[-1:], 1)
            return int(text.rstrip("KM")) * scale
    except (OSError, ValueError):
        return None
    return None


def batch_of(example_args: Any) -> tuple[int | None, str]:
    """``(B, "")``: the leading axis every input leaf shares, or ``(None, why not)``."""
    leaves = jax.tree.leaves(example_args)
    shapes = [tuple(np.shape(a)) for a in leaves]
    if not shapes or any(len(s) == 0 for s in shapes):
        return None, "an input is a scalar (no batch axis)"
    if len({s[0] for s in shapes}) != 1:
        return None, f"the inputs' leading axes differ ({[s[0] for s in shapes]})"
    return shapes[0][0], ""


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_request(micro_batch: int | str | None) -> None:
    """Raises ValueError unless ``micro_batch`` is None, ``"auto"`` or a positive int."""
    if micro_batch is None or micro_batch == AUTO:
        return
    if isinstance(micro_batch, bool) or not isinstance(micro_batch, int | np.integer) \
            or micro_batch < 1:
        raise ValueError(f"micro_batch={micro_batch!r} is not valid; use None (the whole "
                         f"batch), 'auto' or a positive int dividing the batch.")


def choose(micro_batch: int | str | None, batch: int | None, batch_why: str, why: str | None,
           row_bytes: int, platform: str, calibrate: bool = True,
           cache_bytes: int | None = None) -> MicroBatch:
    """The micro-batch of a compile.

    Args:
        micro_batch: None (the whole batch), ``"auto"`` (on ``cpu``: the largest divisor of
            the batch whose largest layer input and output fit in :data:`CACHE_SHARE` of L3,
            marked ``measure`` when ``calibrate``; the whole batch without ``calibrate``,
            elsewhere, or when it fits anyway), or an int dividing the batch.
        batch, batch_why: :func:`batch_of` of the example inputs.
        why, row_bytes: :func:`why_not_separable` of the function.
        platform: the platform compiled for.
        calibrate: whether the compile measures (``"auto"`` splits only what is measured:
            a split only pays where the layers are bound by memory traffic).
        cache_bytes: L3's size (default: :func:`l3_cache_bytes`).

    Raises:
        ValueError: for an int ``micro_batch`` that does not divide the batch, or a function
            or inputs that cannot be split (an int asks for it; ``"auto"`` says why not).
    """
    check_request(micro_batch)
    whole = batch or 1
    if micro_batch is None:
        return MicroBatch(whole, whole, "the whole batch (micro_batch=None)")
    blocker = batch_why or (f"the function's rows are not independent: {why}" if why else "")
    if micro_batch == AUTO:
        if platform != "cpu":
            return MicroBatch(whole, whole, f"the whole batch ('auto' splits on cpu only, not "
                                            f"{platform})")
        if blocker:
            return MicroBatch(whole, whole, f"the whole batch: {blocker}")
        cache = l3_cache_bytes() if cache_bytes is None else cache_bytes
        if not cache:
            return MicroBatch(whole, whole, "the whole batch: L3's size is not known")
        budget = CACHE_SHARE * cache
        mib = f"{row_bytes / 2**20:.2f} MiB per example, {budget / 2**20:.0f} MiB of L3"
        fits = [d for d in _divisors(whole) if d * row_bytes <= budget]
        if not fits or fits[-1] == whole:
            return MicroBatch(whole, whole, "the whole batch: its largest layer's activations "
                                            + ("fit" if fits else "do not fit even for one "
                                               "example") + f" ({mib})")
        m = fits[-1]
        if not calibrate:
            return MicroBatch(whole, whole, f"the whole batch: chunks of {m} would keep the "
                                            f"largest layer's activations in L3 ({mib}); "
                                            f"calibrate=True measures whether they run faster")
        return MicroBatch(m, whole, f"{m} of {whole} examples at a time: the largest layer's "
                                    f"activations stay in L3 ({mib})", measure=True)
    m = int(micro_batch)
    if batch is None or whole % m:
        raise ValueError(f"micro_batch={m} does not divide the batch "
                         f"{batch if batch is not None else '(none: ' + batch_why + ')'}; "
                         f"use one of {_divisors(whole)}, 'auto' or None.")
    if blocker and m != whole:
        raise ValueError(f"micro_batch={m} cannot split this function's batch: {blocker}.")
    return MicroBatch(m, whole, f"{m} of {whole} examples at a time (micro_batch={m})")


def split_args(args: Any, mb: MicroBatch) -> Any:
    """The first chunk of every input leaf: what the chunked function is traced on."""
    return jax.tree.map(lambda a: a[:mb.size], args)


def run_in_chunks(fn: Callable[..., Any], args: list, mb: MicroBatch) -> Any:
    """``fn(*args)`` run on ``mb.chunks`` chunks of ``mb.size`` examples one after another
    (``lax.map``); the outputs are put back together on their batch axis."""
    if mb.chunks == 1:
        return fn(*args)
    stacked = [a.reshape(mb.chunks, mb.size, *a.shape[1:]) for a in args]
    outs = lax.map(lambda xs: fn(*xs), stacked)
    return jax.tree.map(lambda o: o.reshape(mb.batch, *o.shape[2:]), outs)
