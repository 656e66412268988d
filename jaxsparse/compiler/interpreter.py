"""The sparsifying rewrite: a value domain of :mod:`~jaxsparse.compiler.engine`.

Values are plain arrays, :class:`~jaxsparse.compiler.values.Sliced` activations and
:class:`~jaxsparse.compiler.values.WRef` weights. ``RULES`` maps a primitive to
``rule(ctx, eqn, invals) -> outvals``: one per primitive of
:data:`jaxsparse.compiler.channels.FLOW` (where the channel axis survives, the activation stays
sliced; otherwise the rule rebuilds it in full, which is exact), plus the layer rule for
conv/dot, which :mod:`~jaxsparse.compiler.layers` registers.
Equations whose inputs are all plain are re-bound unchanged (folded in numpy at compile time when
their inputs are host constants). A weight read by a primitive with no rule is read densely and
the pass keeps that weight whole; a sliced activation reaching a primitive with no rule raises
:class:`UnsupportedPrimitiveError` naming it, unless ``missing_rule="densify"``.

The same interpreter runs twice: at compile time (``ctx.compiling``) the layer rules decide what
to do, build the rewritten weights and record a plan; at run time they replay the plan.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Primitive

from jaxsparse.compiler import channels, engine, pooling
from jaxsparse.compiler.values import Pending, Sliced, WRef, is_special, plain

RULES: dict[Primitive, engine.Rule] = {}
MISSING_RULE = ("error", "densify")
# Per-channel affine ops a layer's output may pass through and have folded into the layer.
AFFINE = (lax.mul_p, lax.add_p, lax.sub_p, lax.div_p)


class UnsupportedPrimitiveError(ValueError):
    """A sliced activation reached a primitive the pass has no rule for."""


@dataclasses.dataclass
class Context:
    """State shared by the rules during one interpretation.

    Attributes:
        compiling: True at compile time (decide and record), False at run time (replay).
        plan: per-layer decisions, keyed ``"<primitive><n>"`` in visiting order.
        folded: constant bias maps folded from removed channels, by plan key.
        materialized: paths of weights read densely by an op without a rule (compile time).
        options: compile options (``policy.Options``: policy, kernel implementation, platform,
            ``missing_rule``: a sliced activation at a primitive with no rule raises, or with
            ``"densify"`` is rebuilt in full there).
        rewritten: compile time: the rewritten weight of each rewritten leaf, by path.
        rows: compile time: the report rows.
        conflicts: compile time: leaves rewritten twice or also read densely.
        forced_dense: leaves the layer rules must leave whole (from an earlier attempt).
        densified: compile time: ``{primitive name: count}`` of the places a sliced activation
            was rebuilt in full because of ``missing_rule="densify"``.
        analyze: compile time, first pass: layers return :class:`Pending` outputs so that the
            per-channel affine ops after them are tracked (``affine_seen``).
        affine_seen: by layer key, every point its output was needed (``Pending.point``: ops,
            scale, shift, epilogue, which tracked value).
        folds: by layer key, the affine and epilogue to fold into it: ``(scale, shift, affine
            ops, epilogue)``.
        fold_notes: analysing: by layer key, why the per-channel ops after it cannot be
            folded (``js.sparsify`` puts them on the report's rows).
        measured: ``calibrate=True``: ``(dense ms, kernel ms)`` by ``(layer key, candidate,
            (bias, epilogue))``, shared by the passes of one compile so each layer is timed
            once.
        unmeasured: the folding pass planned a layer on the kernel without timing it (it is
            timed in the next pass, with the ops after it known).
        pools_as_maxima: max pools written as the maximum of strided slices (``cpu``:
            :mod:`~jaxsparse.compiler.pooling`).
    """

    compiling: bool
    plan: dict[str, Any]
    folded: dict[str, Any] = dataclasses.field(default_factory=dict)
    materialized: set[str] = dataclasses.field(default_factory=set)
    options: Any = None
    rewritten: dict[str, Any] = dataclasses.field(default_factory=dict)
    rows: list = dataclasses.field(default_factory=list)
    conflicts: set[str] = dataclasses.field(default_factory=set)
    forced_dense: frozenset[str] = frozenset()
    densified: dict[str, int] = dataclasses.field(default_factory=dict)
    analyze: bool = False
    affine_seen: dict[str, list] = dataclasses.field(default_factory=dict)
    folds: dict[str, tuple] = dataclasses.field(default_factory=dict)
    fold_notes: dict[str, str] = dataclasses.field(default_factory=dict)
    measured: dict = dataclasses.field(default_factory=dict)
    unmeasured: bool = False
    pools_as_maxima: int = 0
    counter: int = 0

    def next_key(self, name: str) -> str:
        self.counter += 1
        return f"{name}{self.counter}"

    def resolve(self, v: Any) -> Any:
        """A :class:`Pending` value as the program has it (recording, while analysing, where
        its layer's output was needed); any other value unchanged."""
        if not isinstance(v, Pending):
            return v
        if self.compiling and not v.folded:
            self.affine_seen.setdefault(v.key, []).append(v.point)
        return v.value()

    def plain(self, v: Any) -> Any:
        return plain(self.resolve(v),
                     lambda w: self.materialized.add(w.path) if self.compiling else None)


def eval_jaxpr(ctx: Context, jaxpr, consts: list, args: list) -> list:
    """Evaluates ``jaxpr`` on interpreter values (plain arrays, :class:`Sliced`, :class:`WRef`)."""
    return engine.run(DOMAIN, ctx, jaxpr, consts, args)


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
    """Make every input plain and re-bind (always correct): what a rule does with inputs it
    cannot keep sliced."""
    return bind(eqn, [ctx.plain(v) for v in invals])


def _untracked(ctx: Context, eqn, invals: list) -> list:
    """Plain inputs: fold host constants in numpy at compile time, else re-bind (a max pool
    as :func:`_max_pool` has it)."""
    folded = ctx.compiling and numpy_eval(eqn, invals)
    if folded:
        return folded
    if eqn.primitive is lax.reduce_window_max_p:
        return [_max_pool(ctx, eqn, invals[0])]
    return bind(eqn, invals)


def _no_rule(ctx: Context, eqn, invals: list) -> list:
    """A primitive without a rule: weights are read densely (the pass then keeps them whole);
    a sliced activation is an error naming the primitive, unless ``missing_rule="densify"``."""
    sliced = [v for v in invals if isinstance(v, Sliced)]
    if sliced and ctx.options.missing_rule != "densify":
        s = sliced[0]
        raise UnsupportedPrimitiveError(
            f"jaxsparse.sparsify: no rule for primitive {eqn.primitive.name!r}, which reads an "
            f"activation with removed channels ({len(s.keep)} of {s.full} kept on axis "
            f"{s.axis}). Pass missing_rule='densify' to rebuild the full activation there "
            f"(exact; layers after it lose their input slicing), or teach the primitive to "
            f"jaxsparse/compiler/channels.FLOW and interpreter.RULES.")
    if sliced and ctx.compiling:
        name = eqn.primitive.name
        ctx.densified[name] = ctx.densified.get(name, 0) + 1
    return default_rule(ctx, eqn, invals)


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


def numpy_eval(eqn, args: list) -> list | None:
    """Evaluates ``eqn`` in numpy when every input is concrete and numpy knows the op."""
    fn = channels.HOST.get(eqn.primitive)
    if fn is None or eqn.primitive.multiple_results or not all(_concrete(a) for a in args):
        return None
    kw = {k: eqn.params[k] for k in channels.HOST_PARAMS.get(eqn.primitive, ())}
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


def _axes(invals: list) -> tuple[int | None, ...]:
    return tuple(v.axis if isinstance(v, Sliced) else None for v in invals)


def _elementwise(ctx: Context, eqn, invals: list) -> list:
    """Per-channel ops keep an activation sliced; both operands sliced: union of channels."""
    sliced = [v for v in invals if isinstance(v, Sliced)]
    if not sliced or any(isinstance(v, WRef) for v in invals) or \
            channels.out_axis(eqn, _axes(invals)) is None:
        return default_rule(ctx, eqn, invals)
    axis, full, ndim = sliced[0].axis, sliced[0].full, sliced[0].data.ndim
    if any(s.full != full or s.data.ndim != ndim for s in sliced):
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
    new_axis = channels.out_axis(eqn, _axes(invals))
    if new_axis is None:
        return default_rule(ctx, eqn, invals)
    data = bind(eqn, [x.data])[0]
    if eqn.primitive is lax.reduce_sum_p:
        count = int(np.prod([x.data.shape[a] for a in axes]))
        fill = x.fill * count
    else:
        fill = x.fill
    return [Sliced(data, new_axis, x.keep, x.full, fill)]


def _max_pool(ctx: Context, eqn, x: Any) -> Any:
    """A ``reduce_window_max`` of a plain array: on ``cpu`` the maximum of strided slices
    (XLA's CPU reduce_window is slow, :mod:`~jaxsparse.compiler.pooling`), else re-bound."""
    if ctx.options is not None and ctx.options.platform == "cpu" and \
            pooling.why_not_maxima(tuple(x.shape), eqn.params) is None:
        if ctx.compiling:
            ctx.pools_as_maxima += 1
        return pooling.max_pool_as_maxima(x, eqn.params)
    return bind(eqn, [x])[0]


def _reduce_window_max(ctx: Context, eqn, invals: list) -> list:
    """Max-pooling with a window of 1 along the channel axis keeps it sliced."""
    (x,) = invals
    if channels.out_axis(eqn, _axes(invals)) is None:
        return [_max_pool(ctx, eqn, ctx.plain(x))]
    return [Sliced(_max_pool(ctx, eqn, x.data), x.axis, x.keep, x.full, x.fill)]


def _reshape(ctx: Context, eqn, invals: list) -> list:
    """Reshapes that leave a last channel axis alone keep it sliced."""
    x = invals[0]
    new_axis = channels.out_axis(eqn, _axes(invals))
    if new_axis is None:
        return default_rule(ctx, eqn, invals)
    sizes = tuple(eqn.params["new_sizes"])
    data = jnp.reshape(x.data, (*sizes[:-1], len(x.keep)))
    return [Sliced(data, new_axis, x.keep, x.full, x.fill)]


def _affine_vector(eqn, p: Pending, other: Any) -> np.ndarray | None:
    """``other`` as a float64 per-channel vector of ``p``'s channels, when the op is a
    per-channel affine step of it (a host constant, no broadcast or dtype change), else None."""
    base = p.base
    data = base.data if isinstance(base, Sliced) else base
    full = base.full if isinstance(base, Sliced) else data.shape[-1]
    shape = (*data.shape[:-1], full)
    out = eqn.outvars[0].aval
    if not _concrete(other) or tuple(out.shape) != shape or out.dtype != data.dtype:
        return None
    if np.ndim(other) == 0:
        return np.full((full,), float(other))
    vec = _channel_vector(np.asarray(other), len(shape) - 1, full, len(shape))
    return None if vec is None else vec.astype(np.float64)


def _absorb(eqn, p: Pending, other: Any, position: int) -> Pending | None:
    """``p`` after one more per-channel affine op, or None when the op is not one."""
    if p.folded:  # The layer's weights and bias already hold its first affine ops.
        return dataclasses.replace(p, step=p.step + 1) \
            if p.step < p.final - len(p.epilogue) else None
    if p.epilogue:  # After a residual add or ReLU an affine op no longer folds.
        return None
    c = _affine_vector(eqn, p, other)
    if c is None:
        return None
    s, t, prim = p.scale, p.shift, eqn.primitive
    if prim is lax.mul_p:
        s, t = s * c, t * c
    elif prim is lax.add_p:
        t = t + c
    elif prim is lax.sub_p:
        s, t = (s, t - c) if position == 0 else (-s, c - t)
    elif position == 0 and np.all(c != 0):  # div: x / c.
        s, t = s / c, t / c
    else:
        return None
    return dataclasses.replace(p, scale=s, shift=t, step=p.step + 1)


def _same_activation(p: Pending, other: Any, out) -> bool:
    """Whether ``other`` can be ``p``'s residual: an activation of the layer output's shape and
    dtype (``out``: the add's result), sliced to the same channels when the output is."""
    if isinstance(other, Pending) and other.folded:
        return False  # Its channels are not known before it runs; it is rare enough.
    base = p.base
    o = other.base if isinstance(other, Pending) else other
    if isinstance(base, Sliced):
        return isinstance(o, Sliced) and o.axis == base.axis and \
            np.array_equal(o.keep, base.keep) and o.data.dtype == base.data.dtype
    if isinstance(o, Sliced | WRef) or not hasattr(o, "shape") or not hasattr(o, "dtype"):
        return False
    return tuple(o.shape) == tuple(base.shape) == tuple(out.shape) and \
        o.dtype == base.dtype == out.dtype


def _epilogue_step(ctx: Context, eqn, invals: list) -> list | None:
    """An add of a residual or a ReLU (``max(v, 0)``) absorbed into a layer output's kernel
    epilogue (while analysing: only where its kernel fuses one, in the order add then ReLU;
    once folded: where the plan put it), else None."""
    if len(invals) != 2 or eqn.primitive not in (lax.add_p, lax.max_p):
        return None
    op = "add" if eqn.primitive is lax.add_p else "relu"
    out = eqn.outvars[0].aval
    for i in (0, 1):
        p, other = invals[i], invals[1 - i]
        if not isinstance(p, Pending):
            continue
        if p.folded:
            k = p.step - (p.final - len(p.epilogue))
            if not 0 <= k < len(p.epilogue) or p.epilogue[k] != op:
                continue
        elif not p.fusable or op in p.epilogue or "relu" in p.epilogue:
            continue
        if op == "relu":
            if not (_concrete(other) and np.ndim(other) == 0 and float(other) == 0.0):
                continue
            if not p.folded and out.dtype != (p.base.data if isinstance(p.base, Sliced)
                                              else p.base).dtype:
                continue
            return [_epilogue_next(p, op, p.residual)]
        if not p.folded and not _same_activation(p, other, out):
            continue
        return [_epilogue_next(p, op, ctx.resolve(other))]
    return None


def _epilogue_next(p: Pending, op: str, residual: Any) -> Pending:
    """``p`` one epilogue op further (tracking: ``op`` appended to it)."""
    if p.folded:
        return dataclasses.replace(p, step=p.step + 1, residual=residual)
    return dataclasses.replace(p, step=p.step + 1, residual=residual,
                               epilogue=(*p.epilogue, op))


def _affine(ctx: Context, eqn, invals: list) -> list:
    """mul/add/sub/div: one more step of a layer output's pending affine, or (add) a residual
    absorbed into its kernel epilogue, else elementwise."""
    pending = [i for i, v in enumerate(invals) if isinstance(v, Pending)]
    if len(pending) == 1 and len(invals) == 2:
        i = pending[0]
        p = invals[i]
        got = _absorb(eqn, p, invals[1 - i], i)
        if got is not None:
            return [got]
    fused = _epilogue_step(ctx, eqn, invals)
    if fused is not None:
        return fused
    if len(pending) == 1 and len(invals) == 2:
        p = invals[pending[0]]
        if ctx.compiling and not p.folded and p.step == 0:
            ctx.fold_notes.setdefault(
                p.key, f"{eqn.primitive.name} by a value that is not a per-channel constant "
                       f"(e.g. batch statistics) or changes the shape or dtype")
    invals = [ctx.resolve(v) for v in invals]
    if not any(is_special(v) for v in invals):
        return _untracked(ctx, eqn, invals)
    return _elementwise(ctx, eqn, invals)


def _max(ctx: Context, eqn, invals: list) -> list:
    """max: a ReLU absorbed into a layer output's kernel epilogue, else elementwise."""
    fused = _epilogue_step(ctx, eqn, invals)
    if fused is not None:
        return fused
    invals = [ctx.resolve(v) for v in invals]
    if not any(is_special(v) for v in invals):
        return _untracked(ctx, eqn, invals)
    return _elementwise(ctx, eqn, invals)


def _prepare(ctx: Context, eqn, invals: list) -> list:
    """Before any rule but the affine and max ones: :class:`Pending` values resolved."""
    if eqn.primitive in (*AFFINE, lax.max_p) or not any(isinstance(v, Pending) for v in invals):
        return invals
    return [ctx.resolve(v) for v in invals]


for _p in channels.ELEMENTWISE:
    RULES[_p] = _elementwise
RULES[lax.convert_element_type_p] = _convert
RULES[lax.reduce_sum_p] = _reduce
RULES[lax.reduce_max_p] = _reduce
RULES[lax.reduce_window_max_p] = _reduce_window_max
RULES[lax.reshape_p] = _reshape
for _p in AFFINE:
    RULES[_p] = _affine
RULES[lax.max_p] = _max

DOMAIN = engine.Domain(name="sparsifying rewrite", rules=RULES, tracks=is_special,
                       untracked=_untracked, no_rule=_no_rule, prepare=_prepare)
