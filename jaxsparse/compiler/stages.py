"""A compiled model as stages: a traced function cut where one value crosses, the first
part run in chunks of its batch and the rest on the whole batch.

Micro-batching (:mod:`~jaxsparse.compiler.microbatch`) keeps the large early activations of a
network in cache, but in its later layers chunks cost the weights' reuse and the kernels'
tiles. :func:`layers_before` lists the residual-block ends where a model can be cut
(:func:`~jaxsparse.compiler.engine.cuts`) and :func:`best_cut` picks one from the layers'
times measured at both sizes; a :class:`Stage` is one part of the compiled model, and a
:class:`Carry` the channel-sliced value one stage hands the next.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxsparse.compiler import engine
from jaxsparse.compiler.interpreter import Context, eval_jaxpr
from jaxsparse.compiler.microbatch import MicroBatch, walk
from jaxsparse.compiler.values import Sliced


def _block_ends(points: list[int]) -> list[int]:
    """The last point of every run of consecutive cuts (a block's add and its ReLU have a cut
    between them; the later one keeps the ReLU with the block's last layer)."""
    return [k for k in points if k + 1 not in points]


def layers_before(closed: Any, n_weights: int, batch: int) -> tuple[list[int], list[int]]:
    """``(points, layers)``: the block ends of ``closed`` where a split can go back to the
    whole batch (:func:`~jaxsparse.compiler.engine.cuts`, the last of consecutive ones; the
    head's rows proved independent, its output batched on axis 0), and how many conv/dot
    layers run before each."""
    points, counts = [], []
    for k in _block_ends(engine.cuts(closed, n_weights)):
        head = walk(engine.split(closed, n_weights, k)[0], n_weights, batch)
        if head.why is None:
            points.append(k)
            counts.append(head.layers)
    return points, counts


def best_cut(points: list[int], layers: list[int], whole_ms: list[float],
             chunk_ms: list[float], chunks: int) -> int | None:
    """The point (of :func:`layers_before`) that splits a model fastest by its layers' measured
    times: the layers before it on ``chunks`` chunks (``chunk_ms``: one chunk's time of each
    layer), the rest on the whole batch (``whole_ms``). None unless it is predicted faster
    than the whole batch (a model worth timing beside the two others: single layers timed
    alone differ from a model's run by more than the gaps between the three)."""
    n = len(whole_ms)
    if len(chunk_ms) != n or not points:
        return None

    def predicted(m: int) -> float:
        return chunks * sum(chunk_ms[:m]) + sum(whole_ms[m:])

    inside = [(predicted(m), k) for k, m in zip(points, layers, strict=True) if 0 < m < n]
    if not inside:
        return None
    t, k = min(inside)
    return k if t < predicted(0) else None


@dataclasses.dataclass(frozen=True, eq=False)
class Carry:
    """A channel-sliced value passed from one stage of a model to the next: only its kept
    channels cross, and the next stage takes them as the same :class:`Sliced` value."""

    axis: int
    keep: np.ndarray
    full: int
    fill: np.ndarray

    def wrap(self, data: Any) -> Sliced:
        return Sliced(data, self.axis, self.keep, self.full, self.fill)

    def shape(self, aval: Any) -> jax.ShapeDtypeStruct:
        """The crossing data's shape and dtype, of the full value's ``aval``."""
        shape = list(aval.shape)
        shape[self.axis] = len(self.keep)
        return jax.ShapeDtypeStruct(tuple(shape), aval.dtype)


@dataclasses.dataclass(frozen=True)
class Stage:
    """A part of a compiled model: ``jaxpr`` (the rewritten function's trace, weights first)
    run in chunks of ``micro``, its layers' plan keys numbered from ``counter``; ``carry_in``
    the sliced value it takes from the stage before (None: plain inputs), ``carry_out``
    whether it hands the next stage its output's kept channels only."""

    jaxpr: Any
    micro: MicroBatch
    counter: int = 0
    carry_in: Carry | None = None
    carry_out: bool = False

    def evaluate(self, ctx: Context, vals: list, args: list,
                 on_carry: Callable[[Carry], None] | None = None) -> list:
        """The stage's outputs on ``args`` (plain; or the kept channels of a sliced output,
        compiling with ``on_carry`` (told its :class:`Carry`) or running a ``carry_out``
        stage)."""
        ins = [self.carry_in.wrap(args[0])] if self.carry_in is not None else list(args)
        outs = eval_jaxpr(ctx, self.jaxpr.jaxpr, list(self.jaxpr.consts), vals + ins)
        if on_carry is not None or self.carry_out:
            v = ctx.resolve(outs[0])
            if isinstance(v, Sliced) and (self.carry_out or isinstance(v.fill, np.ndarray)):
                if on_carry is not None:
                    on_carry(Carry(v.axis, np.asarray(v.keep), v.full, v.fill))
                return [v.data]
            outs = [v]
        return [ctx.plain(o) for o in outs]
