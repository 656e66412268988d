"""AD and batching rules shared by the sparse-weight primitives.

Both ``nm_dot`` and ``block_sparse_dot`` take ``(x, values, *fixed)``: bilinear in ``x`` and
``values``, with fixed (non-differentiable) operands after them (the integer index; ``nm_dot``
also its compressed copy of the weight); ``x`` is ``(rows, K)`` (or, for a convolution, an NHWC
image whose batch axis plays the part of the rows).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching


def bilinear_jvp(prim: Primitive) -> Callable:
    """JVP rule: ``d(x W) = dx W + x dW`` (the fixed operands get no tangent)."""

    def jvp(primals, tangents, **params):
        x, values, *fixed = primals
        tx, tv = tangents[:2]
        y = prim.bind(x, values, *fixed, **params)
        out = None
        if type(tx) is not ad.Zero:
            out = prim.bind(tx, values, *fixed, **params)
        if type(tv) is not ad.Zero:
            t = prim.bind(x, tv, *fixed, **params)
            out = t if out is None else out + t
        return y, (ad.Zero.from_primal_value(y) if out is None else out)

    return jvp


def rows_batcher(prim: Primitive, reference: Callable) -> Callable:
    """Batching rule: a batched ``x`` folds into its rows (the sparse kernel still runs); a
    batched weight falls back to ``vmap`` of the pure-jnp ``reference``."""

    def batch(args, dims, **params):
        x, values, *fixed = args
        dx = dims[0]
        if all(d is None for d in dims[1:]):
            x = jnp.moveaxis(x, dx, 0)
            b = x.shape[0]
            out = prim.bind(x.reshape(b * x.shape[1], *x.shape[2:]), values, *fixed, **params)
            return out.reshape(b, -1, *out.shape[1:]), 0
        size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
        args = [batching.bdim_at_front(a, d, size) if d is not None else
                jnp.broadcast_to(a, (size, *a.shape)) for a, d in zip(args, dims, strict=True)]
        return jax.vmap(lambda *a: reference(*a, **params))(*args), 0

    return batch
