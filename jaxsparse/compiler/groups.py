"""Coupled channels: which layers must remove the same output channels.

A residual add ``x + f(x)`` couples the channels of everything that writes into the residual
stream: a channel can only be removed from it if every producer (the convolutions feeding the
add, through BatchNorm and activations) removes it. :func:`channel_groups` finds these groups by
following channels through the jaxpr of a function, with the per-channel vectors (BatchNorm
scale and bias, biases) applied to each group on the way. It is a value domain of
:mod:`~jaxsparse.compiler.engine`: values are :class:`_Chan` (an activation carrying a group's
channels) and :class:`_Leaf` (a function of weights only), and how channels flow through each
primitive comes from :data:`jaxsparse.compiler.channels.FLOW`, as for the rewrite.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from jaxsparse.compiler import channels, engine
from jaxsparse.pruning.tree_paths import named_leaves


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


@dataclasses.dataclass
class _Analysis:
    """What the walk collects: each layer's group, unions of groups, vectors per group."""

    uf: _UnionFind = dataclasses.field(default_factory=_UnionFind)
    kernels: dict[int, list[str]] = dataclasses.field(default_factory=dict)
    vectors: dict[int, list[str]] = dataclasses.field(default_factory=dict)


def _none(ctx: _Analysis, eqn, invals: list) -> list:
    return [None] * len(eqn.outvars)


def _layer(ctx: _Analysis, eqn, invals: list) -> list:
    """A conv/dot whose kernel is one leaf starts a group on its output channels."""
    w = invals[1]
    if not (isinstance(w, _Leaf) and len(w.paths) == 1):
        return _none(ctx, eqn, invals)
    gid = len(ctx.kernels)
    ctx.kernels[gid], ctx.vectors[gid] = [w.paths[0]], []
    return [_Chan(gid, eqn.outvars[0].aval.ndim - 1)]


def _flow(ctx: _Analysis, eqn, invals: list) -> list:
    """Channels through a primitive of ``channels.FLOW``: inputs carrying groups on the
    surviving axis are coupled (a residual add), weight inputs are that group's vectors.
    Weights through a host-evaluable op stay weights."""
    chans = [v for v in invals if isinstance(v, _Chan)]
    leaves = [v for v in invals if isinstance(v, _Leaf)]
    if not chans:
        if leaves and eqn.primitive in channels.HOST:
            return [_Leaf(tuple(p for v in leaves for p in v.paths))]
        return _none(ctx, eqn, invals)
    axis = channels.out_axis(eqn, tuple(v.axis if isinstance(v, _Chan) else None
                                        for v in invals))
    if axis is None:
        return _none(ctx, eqn, invals)
    gid = chans[0].group
    for c in chans[1:]:
        gid = ctx.uf.union(gid, c.group)
    gid = ctx.uf.find(gid)
    for v in leaves:
        ctx.vectors.setdefault(gid, []).extend(v.paths)
    return [_Chan(gid, axis)]


DOMAIN = engine.Domain(
    name="channel groups",
    rules={**{p: _flow for p in (*channels.FLOW, *channels.HOST)},
           **{p: _layer for p in channels.LAYERS}},
    tracks=lambda v: isinstance(v, _Chan | _Leaf),
    untracked=_none,
    no_rule=_none,  # An analysis: the value is no longer followed (the rewrite would raise).
    lift=lambda v: None,
)


def channel_groups(apply_fn: Callable[..., Any], variables: Any,
                   *example_args: Any) -> list[ChannelGroup]:
    """The coupled-channel groups of ``apply_fn(variables, *example_args)``.

    Returns:
        One :class:`ChannelGroup` per set of coupled kernels (singletons included), in the order
        the kernels are first used. Paths are those of ``variables``.
    """
    paths = [p for p, _ in named_leaves(variables)]
    closed, _, _ = engine.trace(apply_fn, variables, *example_args)
    ctx = _Analysis()
    engine.run(DOMAIN, ctx, closed.jaxpr, [None] * len(closed.consts),
               [_Leaf((p,)) for p in paths] + [None] * len(jax.tree.leaves(example_args)))
    uf, kernels, vectors = ctx.uf, ctx.kernels, ctx.vectors
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
