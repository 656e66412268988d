"""Coupled channels: which layers must remove the same output channels.

A residual add ``x + f(x)`` couples the channels of everything that writes into the residual
stream: a channel can only be removed from it if every producer (the convolutions feeding the
add, through BatchNorm and activations) removes it. :func:`channel_groups` finds these groups by
following channels through the jaxpr of a function, with the per-channel vectors (BatchNorm
scale and bias, biases) applied to each group on the way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from jax import lax
from jax.extend.core import Literal

from jaxsparse.compiler.interpreter import ELEMENTWISE
from jaxsparse.pruning.tree_paths import named_leaves

_CALL_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")
_LAYOUT = (lax.convert_element_type_p, lax.reshape_p, lax.broadcast_in_dim_p)


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
    """Kernels whose output channels are coupled, and the per-channel vectors applied to them.

    Attributes:
        kernels: paths of the conv/dense kernels writing these channels (output axis -1).
        vectors: paths of ``(C,)`` leaves applied channel-wise to them (BatchNorm scale, bias...).
    """

    kernels: tuple[str, ...]
    vectors: tuple[str, ...]


class _UnionFind:
    def __init__(self):
        self.parent: dict[int, int] = {}

    def find(self, a: int) -> int:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        self.parent[max(ra, rb)] = min(ra, rb)
        return min(ra, rb)


@dataclasses.dataclass(frozen=True)
class _Chan:
    group: int
    axis: int


@dataclasses.dataclass(frozen=True)
class _Leaf:
    """A value computed from leaves only (a weight, or a vector like ``scale * rsqrt(var)``)."""

    paths: tuple[str, ...]


def channel_groups(apply_fn: Callable[..., Any], variables: Any,
                   *example_args: Any) -> list[ChannelGroup]:
    """The coupled-channel groups of ``apply_fn(variables, *example_args)``.

    Returns:
        One :class:`ChannelGroup` per set of coupled kernels (singletons included), in the order
        the kernels are first used. Paths are those of ``variables``.
    """
    flat, treedef = jax.tree.flatten(variables)
    paths = [p for p, _ in named_leaves(variables)]
    closed = jax.make_jaxpr(lambda leaves, *a: apply_fn(jax.tree.unflatten(treedef, leaves), *a))(
        flat, *example_args)
    uf = _UnionFind()
    kernels: dict[int, list[str]] = {}
    vectors: dict[int, list[str]] = {}

    def walk(jaxpr, args):
        env = dict(zip(jaxpr.invars, args, strict=True))
        for c in jaxpr.constvars:
            env[c] = None
        for eqn in jaxpr.eqns:
            ins = [None if isinstance(v, Literal) else env.get(v) for v in eqn.invars]
            outs = [None] * len(eqn.outvars)
            sub = next((eqn.params[k] for k in _CALL_PARAMS if k in eqn.params), None)
            if sub is not None:
                outs = walk(getattr(sub, "jaxpr", sub), ins)
            elif eqn.primitive in (lax.conv_general_dilated_p, lax.dot_general_p) and \
                    isinstance(ins[1], _Leaf) and len(ins[1].paths) == 1:
                gid = len(kernels)
                kernels[gid], vectors[gid] = [ins[1].paths[0]], []
                outs = [_Chan(gid, eqn.outvars[0].aval.ndim - 1)]
            elif eqn.primitive in _LAYOUT and isinstance(ins[0], _Leaf):
                outs = [ins[0]]
            elif eqn.primitive in ELEMENTWISE or eqn.primitive is lax.convert_element_type_p:
                chans = [v for v in ins if isinstance(v, _Chan)]
                if chans and all(c.axis == chans[0].axis for c in chans):
                    gid = chans[0].group
                    for c in chans[1:]:
                        gid = uf.union(gid, c.group)
                    for v in ins:
                        if isinstance(v, _Leaf):
                            vectors.setdefault(uf.find(gid), []).extend(v.paths)
                    outs = [_Chan(uf.find(gid), chans[0].axis)]
                elif not chans and any(isinstance(v, _Leaf) for v in ins):
                    outs = [_Leaf(tuple(p for v in ins if isinstance(v, _Leaf)
                                        for p in v.paths))]
            elif eqn.primitive in (lax.reduce_sum_p, lax.reduce_max_p) and \
                    isinstance(ins[0], _Chan) and ins[0].axis not in eqn.params["axes"]:
                axis = ins[0].axis - sum(a < ins[0].axis for a in eqn.params["axes"])
                outs = [_Chan(ins[0].group, axis)]
            elif eqn.primitive is lax.reduce_window_max_p and isinstance(ins[0], _Chan):
                outs = [ins[0]]
            for var, val in zip(eqn.outvars, outs, strict=True):
                env[var] = val
        return [None if isinstance(v, Literal) else env.get(v) for v in jaxpr.outvars]

    walk(closed.jaxpr, [_Leaf((p,)) for p in paths] + [None] * len(jax.tree.leaves(example_args)))
    merged: dict[int, tuple[list[str], list[str]]] = {}
    for gid in sorted(kernels):
        root = uf.find(gid)
        ks, vs = merged.setdefault(root, ([], []))
        ks.extend(k for k in kernels[gid] if k not in ks)
        vs.extend(v for v in vectors.get(gid, []) if v not in vs)
    for gid, vs_extra in vectors.items():
        if uf.find(gid) in merged:
            vs = merged[uf.find(gid)][1]
            vs.extend(v for v in vs_extra if v not in vs)
    return [ChannelGroup(tuple(ks), tuple(vs)) for ks, vs in merged.values()]
