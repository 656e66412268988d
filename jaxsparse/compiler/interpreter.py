"""The sparsifying interpreter: evaluates a jaxpr, rewriting layers by a rule table.

``RULES`` maps a primitive to a rule ``rule(ctx, eqn, invals) -> outvals``. Equations without a
rule, or whose inputs are all plain arrays, are re-bound unchanged (special inputs are first made
plain, which is always correct). The same interpreter runs twice: at compile time
(``ctx.compiling``) the layer rules decide what to do, build the rewritten weights and record a
plan; at run time they replay the plan on the rewritten weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Literal, Primitive

from jaxsparse.compiler.values import Sliced, WRef, is_special, plain

Rule = Callable[["Context", Any, list], list]
RULES: dict[Primitive, Rule] = {}


@dataclasses.dataclass
class Context:
    """State shared by the rules during one interpretation.

    Attributes:
        compiling: True at compile time (decide and record), False at run time (replay).
        plan: per-layer decisions, keyed ``"<primitive><n>"`` in visiting order.
        decide: compile-time callback ``(ctx, key, eqn, x, wref) -> plan entry`` for a layer.
        apply: run-time callback ``(ctx, entry, eqn, x, wref) -> outputs`` for a layer.
        folded: constant bias maps folded from removed channels, by plan key.
        materialized: paths of weights read densely by an op without a rule (compile time).
        options: compile options (policy, kernel implementation, platform).
        rewritten: compile time: the rewritten weight of each rewritten leaf, by path.
        rows: compile time: the report rows.
        conflicts: compile time: leaves rewritten twice or also read densely.
        forced_dense: leaves the layer rules must leave whole (from an earlier attempt).
    """

    compiling: bool
    plan: dict[str, Any]
    decide: Callable | None = None
    apply: Callable | None = None
    folded: dict[str, Any] = dataclasses.field(default_factory=dict)
    materialized: set[str] = dataclasses.field(default_factory=set)
    options: Any = None
    rewritten: dict[str, Any] = dataclasses.field(default_factory=dict)
    rows: list = dataclasses.field(default_factory=list)
    conflicts: set[str] = dataclasses.field(default_factory=set)
    forced_dense: frozenset[str] = frozenset()
    counter: int = 0

    def next_key(self, name: str) -> str:
        self.counter += 1
        return f"{name}{self.counter}"

    def plain(self, v: Any) -> Any:
        return plain(v, lambda w: self.materialized.add(w.path) if self.compiling else None)


def eval_jaxpr(ctx: Context, jaxpr, consts: list, args: list) -> list:
    """Evaluates ``jaxpr`` on interpreter values (plain arrays, :class:`Sliced`, :class:`WRef`)."""
    env: dict = {}

    def read(v):
        return v.val if isinstance(v, Literal) else env[v]

    for var, val in zip(jaxpr.constvars, consts, strict=True):
        env[var] = val
    for var, val in zip(jaxpr.invars, args, strict=True):
        env[var] = val
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        if any(is_special(v) for v in invals):
            rule = RULES.get(eqn.primitive, default_rule)
            outvals = rule(ctx, eqn, invals)
        else:
            outvals = (ctx.compiling and numpy_eval(eqn, invals)) or bind(eqn, invals)
        for var, val in zip(eqn.outvars, outvals, strict=True):
            env[var] = val
    return [read(v) for v in jaxpr.outvars]


def bind_params(eqn) -> tuple[list, dict]:
    """``(subfunctions, params)`` to re-bind ``eqn`` (call primitives carry subfunctions)."""
    got = eqn.primitive.get_bind_params(eqn.params)
    return (list(got[0]), got[1]) if isinstance(got, tuple) else ([], got)


def bind(eqn, invals: list) -> list:
    """Re-binds an equation on plain arrays."""
    subfuns, params = bind_params(eqn)
    out = eqn.primitive.bind(*subfuns, *invals, **params)
    return list(out) if eqn.primitive.multiple_results else [out]


def default_rule(ctx: Context, eqn, invals: list) -> list:
    """No rule: make every input plain and re-bind (always correct)."""
    return bind(eqn, [ctx.plain(v) for v in invals])


def _inline(ctx: Context, eqn, invals: list) -> list:
    """Calls (jit, custom_jvp/vjp): interpret the body so rewrites reach inside."""
    closed = eqn.params.get("jaxpr") or eqn.params.get("call_jaxpr") or \
        eqn.params.get("fun_jaxpr")
    if closed is None:
        return default_rule(ctx, eqn, invals)
    inner = getattr(closed, "jaxpr", closed)
    consts = list(getattr(closed, "consts", []))
    return eval_jaxpr(ctx, inner, consts, invals)


def _convert(ctx: Context, eqn, invals: list) -> list:
    (x,) = invals
    if isinstance(x, WRef):
        return [dataclasses.replace(x, dtype=eqn.params["new_dtype"])]
    return _elementwise(ctx, eqn, invals)


def _channel_vector(v: Any, axis: int, full: int, ndim: int) -> Any:
    """``v`` as a ``(full,)`` vector if it is constant except along ``axis``, else None."""
    if np.ndim(v) != ndim or np.shape(v)[axis] != full or \
            any(d != 1 for i, d in enumerate(np.shape(v)) if i != axis):
        return None
    return v.reshape(full)


def _concrete(v: Any) -> bool:
    """A host (numpy) constant: only compile time produces these."""
    return isinstance(v, np.ndarray | np.generic | int | float | bool)


def _bdim(a, shape, broadcast_dimensions, **_):
    expanded = np.reshape(a, [a.shape[broadcast_dimensions.index(d)] if d in broadcast_dimensions
                              else 1 for d in range(len(shape))])
    return np.broadcast_to(expanded, shape)


# Constants (functions of the weights only) are computed in numpy at compile time, so the pass
# neither stages them nor compiles one tiny XLA program per BatchNorm vector.
_NUMPY = {
    lax.add_p: np.add, lax.sub_p: np.subtract, lax.mul_p: np.multiply, lax.div_p: np.divide,
    lax.max_p: np.maximum, lax.min_p: np.minimum, lax.neg_p: np.negative, lax.exp_p: np.exp,
    lax.log_p: np.log, lax.tanh_p: np.tanh, lax.sqrt_p: np.sqrt, lax.abs_p: np.abs,
    lax.sign_p: np.sign, lax.log1p_p: np.log1p, lax.expm1_p: np.expm1, lax.square_p: np.square,
    lax.pow_p: np.power, lax.rsqrt_p: lambda a: 1.0 / np.sqrt(a),
    lax.logistic_p: lambda a: 1.0 / (1.0 + np.exp(-a)),
    lax.convert_element_type_p: lambda a, new_dtype, **_: np.asarray(a).astype(new_dtype),
    lax.integer_pow_p: lambda a, y: np.power(a, y),
    lax.reshape_p: lambda a, new_sizes, dimensions, **_: (
        np.reshape(a, new_sizes) if dimensions is None else None),
    lax.broadcast_in_dim_p: _bdim,
}
_PARAMS = {lax.convert_element_type_p: ("new_dtype",), lax.integer_pow_p: ("y",),
           lax.reshape_p: ("new_sizes", "dimensions"),
           lax.broadcast_in_dim_p: ("shape", "broadcast_dimensions")}


def numpy_eval(eqn, args: list) -> list | None:
    """Evaluates ``eqn`` in numpy when every input is concrete and numpy knows the op."""
    fn = _NUMPY.get(eqn.primitive)
    if fn is None or eqn.primitive.multiple_results or not all(_concrete(a) for a in args):
        return None
    kw = {k: eqn.params[k] for k in _PARAMS.get(eqn.primitive, ())}
    dtype = eqn.outvars[0].aval.dtype if hasattr(eqn.outvars[0], "aval") else None
    with np.errstate(all="ignore"):
        out = fn(*[np.asarray(a) for a in args], **kw)
    if out is None:
        return None
    out = np.asarray(out)
    return [out.astype(dtype) if dtype is not None else out]


def _eval_fill(eqn, args: list) -> Any:
    """The fill constants of an elementwise op: numpy when concrete, else bound."""
    got = numpy_eval(eqn, args) if all(np.ndim(a) <= 1 for a in args) else None
    if got is not None:
        return got[0]
    subfuns, params = bind_params(eqn)
    return eqn.primitive.bind(*subfuns, *args, **params)


def _elementwise(ctx: Context, eqn, invals: list) -> list:
    """Per-channel ops keep an activation sliced; both operands sliced: union of channels."""
    sliced = [v for v in invals if isinstance(v, Sliced)]
    if any(isinstance(v, WRef) for v in invals):
        return default_rule(ctx, eqn, invals)
    axis, full, ndim = sliced[0].axis, sliced[0].full, sliced[0].data.ndim
    if any(s.axis != axis or s.full != full or s.data.ndim != ndim for s in sliced):
        return default_rule(ctx, eqn, invals)
    keep = sliced[0].keep
    for s in sliced[1:]:
        keep = np.union1d(keep, s.keep)
    if len(keep) == full:
        return default_rule(ctx, eqn, invals)
    data_args, fill_args = [], []
    for v in invals:
        if isinstance(v, Sliced):
            e = v.expand(keep)
            data_args.append(e.data)
            fill_args.append(e.fill.astype(e.data.dtype))  # numpy or jax, as e.fill is.
            continue
        if np.ndim(v) == 0:
            data_args.append(v)
            fill_args.append(v)
            continue
        vec = _channel_vector(v, axis, full, ndim)
        if vec is None:
            return default_rule(ctx, eqn, invals)
        data_args.append(np.take(v, keep, axis=axis) if _concrete(v) else
                         jnp.take(v, keep, axis=axis))
        fill_args.append(vec)
    subfuns, params = bind_params(eqn)
    data = eqn.primitive.bind(*subfuns, *data_args, **params)
    fill = _eval_fill(eqn, fill_args)
    fill = np.broadcast_to(fill, (full,)) if _concrete(fill) else jnp.broadcast_to(fill, (full,))
    return [Sliced(data, axis, keep, full, fill)]


def _reduce(ctx: Context, eqn, invals: list) -> list:
    """Reductions over non-channel axes keep the channel axis sliced."""
    (x,) = invals
    axes = tuple(eqn.params["axes"])
    if not isinstance(x, Sliced) or x.axis in axes:
        return default_rule(ctx, eqn, invals)
    data = bind(eqn, [x.data])[0]
    if eqn.primitive is lax.reduce_sum_p:
        count = int(np.prod([x.data.shape[a] for a in axes]))
        fill = x.fill * count
    else:
        fill = x.fill
    new_axis = x.axis - sum(a < x.axis for a in axes)
    return [Sliced(data, new_axis, x.keep, x.full, fill)]


def _reduce_window_max(ctx: Context, eqn, invals: list) -> list:
    """Max-pooling with a window of 1 along the channel axis keeps it sliced."""
    (x,) = invals
    p = eqn.params
    if not isinstance(x, Sliced) or p["window_dimensions"][x.axis] != 1 or \
            tuple(p["padding"][x.axis]) != (0, 0) or p["window_strides"][x.axis] != 1:
        return default_rule(ctx, eqn, invals)
    return [Sliced(bind(eqn, [x.data])[0], x.axis, x.keep, x.full, x.fill)]


def _reshape(ctx: Context, eqn, invals: list) -> list:
    """Reshapes that leave a last channel axis alone keep it sliced."""
    x = invals[0]
    sizes = tuple(eqn.params["new_sizes"])
    if len(invals) != 1 or not isinstance(x, Sliced) or x.axis != x.data.ndim - 1 or \
            sizes[-1] != x.full or eqn.params.get("dimensions") is not None:
        return default_rule(ctx, eqn, invals)
    data = jnp.reshape(x.data, (*sizes[:-1], len(x.keep)))
    return [Sliced(data, len(sizes) - 1, x.keep, x.full, x.fill)]


def _layer(ctx: Context, eqn, invals: list) -> list:
    """conv_general_dilated and dot_general: the layers the pass rewrites."""
    x, w = invals[0], invals[1]
    if isinstance(x, WRef) or not isinstance(w, WRef):
        return default_rule(ctx, eqn, invals)
    key = ctx.next_key(eqn.primitive.name)
    if ctx.compiling:
        ctx.plan[key] = ctx.decide(ctx, key, eqn, x, w)
    return ctx.apply(ctx, key, ctx.plan[key], eqn, x, w)


ELEMENTWISE = (lax.add_p, lax.sub_p, lax.mul_p, lax.div_p, lax.max_p, lax.min_p, lax.neg_p,
               lax.exp_p, lax.log_p, lax.tanh_p, lax.logistic_p, lax.rsqrt_p, lax.sqrt_p,
               lax.abs_p, lax.integer_pow_p, lax.pow_p, lax.square_p, lax.erf_p, lax.sign_p,
               lax.log1p_p, lax.expm1_p)
for _p in ELEMENTWISE:
    RULES[_p] = _elementwise
RULES[lax.convert_element_type_p] = _convert
RULES[lax.reduce_sum_p] = _reduce
RULES[lax.reduce_max_p] = _reduce
RULES[lax.reduce_window_max_p] = _reduce_window_max
RULES[lax.reshape_p] = _reshape
RULES[lax.conv_general_dilated_p] = _layer
RULES[lax.dot_general_p] = _layer


def register_call_rules() -> None:
    """Inlines call-like primitives (jit, custom_jvp_call, custom_vjp_call, closed_call)."""
    from jax.extend.core import primitives as P

    for name in ("pjit_p", "jit_p", "custom_jvp_call_p", "custom_vjp_call_p", "closed_call_p",
                 "custom_vjp_call_jaxpr_p"):
        prim = getattr(P, name, None)
        if prim is not None:
            RULES[prim] = _inline


register_call_rules()
