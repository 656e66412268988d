"""``nm_dot``: ``x @ W`` for an N:M-sparse weight stored packed.

Packed layout (the one sparse tensor cores use): the weight ``W`` of shape ``(K, cout)`` keeps N
values in every group of M consecutive rows. ``values`` has shape ``(K // M * N, cout)`` (the
kept values of each group, in row order) and ``indices`` the same shape, ``int8``, holding each
value's position inside its group (0..M-1; 2 bits of information for 2:4).

The primitive has an abstract eval, a batching rule, JVP and transpose rules (gradients reach
``values``; ``indices`` are fixed), a pure-jnp reference (:func:`nm_dot_reference`) and two
lowerings:

* every platform: densify the packed weight and run one XLA GEMM (correct, not faster);
* ``cuda``, for 2:4 in bf16/f16 when the cuSPARSELt FFI library is built
  (:mod:`jaxsparse.kernels.gpu.cusparselt`): densify, compress into cuSPARSELt's layout, and run its
  sparse tensor-core GEMM (in the plan ``layout`` names, one of ``cusparselt.LAYOUTS``).
  :func:`cuda_kernel` says which one a call gets, and why.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jaxsparse.primitives.rules import bilinear_jvp, rows_batcher

nm_dot_p = Primitive("nm_dot")


def pack_nm(w: np.ndarray, mask: np.ndarray, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Packs a ``(K, cout)`` weight whose ``mask`` keeps at most ``n`` of every ``m`` rows.

    Groups that keep fewer than ``n`` store explicit zeros in the remaining slots.

    Returns:
        ``(values (K//m*n, cout), indices int8 same shape)``.

    Raises:
        ValueError: if ``K % m`` or a group keeps more than ``n``.
    """
    w, mask = np.asarray(w), np.asarray(mask, bool)
    k, cout = w.shape
    if k % m:
        raise ValueError(f"nm pack: K={k} is not divisible by M={m}.")
    g = mask.reshape(k // m, m, cout)
    if g.sum(axis=1).max(initial=0) > n:
        raise ValueError(f"nm pack: a group keeps {g.sum(axis=1).max()} > N={n} weights.")
    # Kept positions first (stable: in row order), then padding slots taken from dropped rows.
    order = np.argsort(~g, axis=1, kind="stable")[:, :n, :]
    wg = np.where(g, w.reshape(k // m, m, cout), 0)
    values = np.take_along_axis(wg, order, axis=1).reshape(k // m * n, cout)
    return values.astype(w.dtype), order.reshape(k // m * n, cout).astype(np.int8)


def unpack_nm(values: jax.Array, indices: jax.Array, k: int, m: int) -> jax.Array:
    """The dense ``(K, cout)`` weight of a packed N:M pair."""
    r, cout = values.shape
    n = r * m // k
    v = values.reshape(k // m, n, cout)
    onehot = indices.reshape(k // m, n, 1, cout).astype(jnp.int32) == \
        jnp.arange(m, dtype=jnp.int32)[None, None, :, None]
    dense = jnp.sum(jnp.where(onehot, v[:, :, None, :], jnp.zeros((), values.dtype)), axis=1)
    return dense.reshape(k, cout)


def nm_dot_reference(x: jax.Array, values: jax.Array, indices: jax.Array, blob=None, *,
                     m: int, layout: str = "a_col") -> jax.Array:
    """Pure-jnp oracle: densify, then ``x @ W`` (``blob``, a compressed copy, and ``layout``,
    its cuSPARSELt plan, are ignored)."""
    w = unpack_nm(values, indices, x.shape[-1], m)
    return jnp.matmul(x, w.astype(x.dtype), precision=jax.lax.Precision.HIGHEST)


NO_BLOB = np.zeros((0,), np.uint8)


def nm_dot(x: jax.Array, values: jax.Array, indices: jax.Array, *, m: int,
           blob: jax.Array | None = None, layout: str = "a_col") -> jax.Array:
    """``x @ W`` for a packed N:M weight ``W`` of shape ``(x.shape[-1], cout)``.

    Args:
        x: ``(..., K)`` activations.
        values: ``(K // m * n, cout)`` kept values.
        indices: ``(K // m * n, cout)`` int8 positions inside each group of ``m``.
        m: group size M.
        blob: optional cuSPARSELt-compressed copy of ``W`` in ``x.dtype``
            (:func:`jaxsparse.kernels.gpu.cusparselt.compress`, made once by ``js.sparsify`` on
            a GPU):
            the CUDA lowering then runs the sparse GEMM alone instead of compressing on every
            call. It must hold the same weight as ``values`` (other lowerings, and gradients,
            read ``values``).
        layout: the cuSPARSELt plan (one of ``cusparselt.LAYOUTS``) the CUDA lowering runs,
            and ``blob`` was compressed for.

    Returns:
        ``(..., cout)``.
    """
    from jaxsparse.kernels.gpu.cusparselt import LAYOUTS

    if layout not in LAYOUTS:
        raise ValueError(f"nm_dot: layout={layout!r} is not valid; valid: {list(LAYOUTS)}.")
    lead = x.shape[:-1]
    blob = NO_BLOB if blob is None else blob
    y = nm_dot_p.bind(x.reshape(-1, x.shape[-1]), values, indices, blob, m=m, layout=layout)
    return y.reshape(*lead, values.shape[-1])


def _abstract_eval(x, values, indices, blob, *, m, layout):
    k = x.shape[-1]
    if x.ndim != 2 or values.ndim != 2 or indices.shape != values.shape:
        raise ValueError(f"nm_dot: need x (B, K) and values/indices (R, cout) of one shape; got "
                         f"{x.shape}, {values.shape}, {indices.shape}.")
    if k % m or (values.shape[0] * m) % k:
        raise ValueError(f"nm_dot: K={k} and {values.shape[0]} packed rows do not fit M={m}.")
    return jax.core.ShapedArray((x.shape[0], values.shape[1]), x.dtype)


def _impl(x, values, indices, blob, *, m, layout):
    return nm_dot_reference(x, values, indices, m=m)


def cuda_kernel(k: int, n: int, m: int, cout: int, dtype) -> tuple[str | None, str]:
    """``("cusparselt", why)`` when ``nm_dot`` of an ``n:m`` ``(k, cout)`` weight in ``dtype``
    lowers to cuSPARSELt on ``cuda``, else ``(None, why not)``."""
    from jaxsparse.kernels.gpu import cusparselt

    if (n, m) != (2, 4):
        return None, f"{n}:{m} (cuSPARSELt runs 2:4 only)"
    st = cusparselt.status()
    if not st.available:
        return None, st.reason
    why = cusparselt.unsupported(k, cout, dtype)
    return (None, why) if why else ("cusparselt", "cuSPARSELt 2:4 sparse tensor cores")


def _cuda_lowering(ctx, x, values, indices, blob, *, m, layout):
    """cuSPARSELt where :func:`cuda_kernel` allows it (the given compressed ``blob``, else
    compressing in the program), else the portable lowering."""
    k = ctx.avals_in[0].shape[-1]
    r, cout = ctx.avals_in[1].shape
    kernel, _ = cuda_kernel(k, r * m // k, m, cout, ctx.avals_in[0].dtype)
    if kernel is None:
        return mlir.lower_fun(_impl, multiple_results=False)(ctx, x, values, indices, blob, m=m,
                                                             layout=layout)
    from jaxsparse.kernels.gpu import cusparselt

    def run(x, values, indices, blob):
        if blob.shape[0]:
            return cusparselt.matmul(x, blob, cout, layout)
        return cusparselt.nm_matmul(x, unpack_nm(values, indices, k, m), layout)

    return mlir.lower_fun(run, multiple_results=False)(ctx, x, values, indices, blob)


def _transpose(ct, x, values, indices, blob, *, m, layout):
    if type(ct) is ad.Zero:
        return [None, None, None, None]
    if ad.is_undefined_primal(x):
        k = x.aval.shape[-1]
        w = unpack_nm(values, indices, k, m).astype(ct.dtype)
        return [jnp.matmul(ct, w.T, precision=jax.lax.Precision.HIGHEST), None, None, None]
    k = x.shape[-1]
    r, cout = values.aval.shape
    n = r * m // k
    dw = jnp.matmul(x.T, ct, precision=jax.lax.Precision.HIGHEST).reshape(k // m, m, cout)
    dv = jnp.take_along_axis(dw, indices.reshape(k // m, n, cout).astype(jnp.int32), axis=1)
    return [None, dv.reshape(r, cout).astype(values.aval.dtype), None, None]


nm_dot_p.def_impl(_impl)
nm_dot_p.def_abstract_eval(_abstract_eval)
ad.primitive_jvps[nm_dot_p] = bilinear_jvp(nm_dot_p)
ad.primitive_transposes[nm_dot_p] = _transpose
batching.primitive_batchers[nm_dot_p] = rows_batcher(nm_dot_p, nm_dot_reference)
mlir.register_lowering(nm_dot_p, mlir.lower_fun(_impl, multiple_results=False))
mlir.register_lowering(nm_dot_p, _cuda_lowering, platform="cuda")
