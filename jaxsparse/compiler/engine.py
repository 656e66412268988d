"""The compiler's one jaxpr engine: traces a function of a variables pytree and walks its
equations, dispatching each to the rule table of a value domain.

A :class:`Domain` says which values it tracks (channel groups, sliced activations, weights)
and has a rule per primitive it understands. Equations whose inputs are all untracked go to
``domain.untracked``; call-like equations (``jit``, ``custom_jvp_call``, ...) with tracked
inputs and no rule of their own are inlined, so rules reach inside them; a tracked input at a
primitive with no rule goes to ``domain.no_rule`` (the rewrite raises an error naming the
primitive; the analysis stops following the value). :func:`cuts` and :func:`split` cut a
jaxpr in two where one value crosses (micro-batching runs the head in chunks). This module is
the only one that iterates ``jaxpr.eqns``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
from jax.extend.core import ClosedJaxpr, Literal, Primitive

Rule = Callable[[Any, Any, list], list]  # rule(ctx, eqn, invals) -> outvals

_CALL_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def _call_primitives() -> frozenset[Primitive]:
    """The call-like primitives whose body is inlined (their names vary across jax versions;
    loops such as ``scan`` also carry a ``jaxpr`` but are not calls)."""
    from jax.extend.core import primitives as P

    names = ("pjit_p", "jit_p", "custom_jvp_call_p", "custom_vjp_call_p", "closed_call_p",
             "custom_vjp_call_jaxpr_p")
    return frozenset(p for p in (getattr(P, n, None) for n in names) if p is not None)


CALLS = _call_primitives()


@dataclasses.dataclass(frozen=True)
class Domain:
    """A value domain interpreted over a jaxpr.

    Attributes:
        name: for messages.
        rules: ``{primitive: rule(ctx, eqn, invals) -> outvals}`` for equations with a tracked
            input.
        tracks: whether a value belongs to the domain (else it is a plain value).
        untracked: rule for equations with no tracked input.
        no_rule: rule for a tracked input at a primitive with no rule and no body to inline.
        lift: the domain's value of a literal or a constant (the value itself, or None for an
            analysis that ignores them).
        prepare: ``(ctx, eqn, invals) -> invals`` run before a rule or ``no_rule`` (not before
            an inlined call's body): e.g. resolving values only some rules understand.
    """

    name: str
    rules: Mapping[Primitive, Rule]
    tracks: Callable[[Any], bool]
    untracked: Rule
    no_rule: Rule
    lift: Callable[[Any], Any] = lambda v: v
    prepare: Callable[[Any, Any, list], list] | None = None  # Inputs before a rule runs.


def trace(fn: Callable[..., Any], variables: Any, *args: Any) -> tuple[Any, Any, Any]:
    """``(closed jaxpr, treedef, output shapes)`` of ``fn(variables, *args)``, whose first
    invars are the leaves of ``variables`` (in ``jax.tree.leaves`` order), then ``args``'."""
    flat, treedef = jax.tree.flatten(variables)
    closed, out_shape = jax.make_jaxpr(
        lambda leaves, *a: fn(jax.tree.unflatten(treedef, leaves), *a),
        return_shape=True)(flat, *args)
    return closed, treedef, out_shape


def called(eqn) -> tuple[Any, list] | None:
    """``(jaxpr, consts)`` of a call-like equation's body, or None."""
    if eqn.primitive not in CALLS:
        return None
    closed = next((eqn.params[k] for k in _CALL_PARAMS if k in eqn.params), None)
    if closed is None:
        return None
    return getattr(closed, "jaxpr", closed), list(getattr(closed, "consts", []))


def run(domain: Domain, ctx: Any, jaxpr, consts: list, args: list) -> list:
    """Evaluates ``jaxpr`` on domain values, equation by equation."""
    env: dict = {}

    def read(v):
        return domain.lift(v.val) if isinstance(v, Literal) else env[v]

    for var, val in zip(jaxpr.constvars, consts, strict=True):
        env[var] = val
    for var, val in zip(jaxpr.invars, args, strict=True):
        env[var] = val
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        if not any(domain.tracks(v) for v in invals):
            outvals = domain.untracked(ctx, eqn, invals)
        elif eqn.primitive in domain.rules:
            if domain.prepare is not None:
                invals = domain.prepare(ctx, eqn, invals)
            outvals = domain.rules[eqn.primitive](ctx, eqn, invals)
        elif (body := called(eqn)) is not None:
            inner, inner_consts = body
            outvals = run(domain, ctx, inner, [domain.lift(c) for c in inner_consts], invals)
        else:
            if domain.prepare is not None:
                invals = domain.prepare(ctx, eqn, invals)
            outvals = domain.no_rule(ctx, eqn, invals)
        for var, val in zip(eqn.outvars, outvals, strict=True):
            env[var] = val
    return [read(v) for v in jaxpr.outvars]


def cuts(closed: Any, n_weights: int) -> list[int]:
    """The points ``k`` (0 < k < number of equations) where the top-level equations of
    ``closed`` (whose first ``n_weights`` invars are weights) split in two with one value
    passing from the first ``k`` to the rest: between two residual blocks of a network, not
    inside one (where the block's input waits for the residual add). Weights are read on
    either side and do not count."""
    jaxpr, eqns = closed.jaxpr, closed.jaxpr.eqns
    born: dict = {v: -1 for v in jaxpr.invars[n_weights:]}  # Defined before equation 0.
    last: dict = {}
    for i, eqn in enumerate(eqns):
        for v in eqn.invars:
            if not isinstance(v, Literal) and v in born:
                last[v] = i
        born.update((v, i) for v in eqn.outvars)
    for v in jaxpr.outvars:
        if not isinstance(v, Literal) and v in born:
            last[v] = len(eqns)
    live = [0] * (len(eqns) + 2)  # live[k]: values born before equation k, read at or after.
    for v, u in last.items():
        live[born[v] + 1] += 1
        live[u + 1] -= 1
    out, n = [], 0
    for k in range(len(eqns)):
        n += live[k]
        if k > 0 and n == 1:
            out.append(k)
    return out


def split(closed: Any, n_weights: int, k: int) -> tuple[Any, Any]:
    """``(head, tail)``: ``closed`` cut at point ``k`` of :func:`cuts`. ``head`` runs the
    first ``k`` equations on all of its invars and returns the one value that crosses;
    ``tail`` takes the weights and that value and runs the rest to the original outputs.

    Raises:
        ValueError: if ``k`` is not one of :func:`cuts`.
    """
    if k not in cuts(closed, n_weights):
        raise ValueError(f"{k} is not a point where one value crosses (see engine.cuts).")
    jaxpr = closed.jaxpr
    head_eqns, tail_eqns = jaxpr.eqns[:k], jaxpr.eqns[k:]
    made = set(jaxpr.invars[n_weights:]) | {v for e in head_eqns for v in e.outvars}
    read = [v for e in tail_eqns for v in e.invars] + list(jaxpr.outvars)
    (cross,) = {v for v in read if not isinstance(v, Literal) and v in made}
    weights = list(jaxpr.invars[:n_weights])

    def part(invars, outvars, eqns, names, results):
        info = jaxpr.debug_info
        if info is not None and hasattr(info, "_replace"):
            info = info._replace(arg_names=names, result_paths=results)
        else:
            info = None
        return ClosedJaxpr(jaxpr.replace(invars=invars, outvars=outvars, eqns=eqns,
                                         debug_info=info), closed.consts)

    names = tuple(getattr(jaxpr.debug_info, "arg_names", None) or
                  ("",) * len(jaxpr.invars))
    head = part(list(jaxpr.invars), [cross], head_eqns, names, ("cut",))
    results = tuple(getattr(jaxpr.debug_info, "result_paths", None) or
                    ("",) * len(jaxpr.outvars))
    tail = part(weights + [cross], list(jaxpr.outvars), tail_eqns,
                names[:n_weights] + ("cut",), results)
    return head, tail
