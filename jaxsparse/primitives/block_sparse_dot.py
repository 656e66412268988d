"""``block_sparse_dot``: ``x @ W`` (or a convolution) for a weight in blocked-ELL layout.

Layout: ``W`` of shape ``(K, cout)`` is tiled in ``bh x bw`` blocks. For every block column
``j`` (``cout // bw`` of them) the same static number ``maxk`` of blocks is stored:
``values (cout//bw, maxk, bh, bw)`` and ``rows (cout//bw, maxk) int32`` (each block's row-block
index). Columns with fewer stored blocks are padded with zero blocks whose row index is -1, so
the number of stored blocks (and every shape) is static; padding never receives gradient.
Unstructured sparsity is the special case of 1x1 blocks (ELL by output channel).

With ``window`` (a :class:`~jaxsparse.kernels.window.ConvWindow`), ``x`` is an NHWC image and
``W`` the ``(kh*kw*cin, cout)`` view of an HWIO kernel: the result is the convolution.

Implementations (``impl``):

* ``"xla"`` (every platform): im2col (convs), then a gather of the stored row blocks of ``x``
  and one batched GEMM over block columns;
* ``"cpu"``: the C++ kernels of :mod:`jaxsparse.kernels.cpu.sparse_conv` on the ``cpu``
  platform (implicit GEMM, no im2col), registered as that platform's lowering; other platforms
  lower the ``"xla"`` way;
* ``"pallas"``: Pallas kernels, chosen by the platform the program is lowered for: on ``cuda``
  :mod:`jaxsparse.kernels.gpu.block_sparse` (Triton backend), on ``tpu``
  :mod:`jaxsparse.kernels.tpu.block_sparse` (Mosaic, scalar prefetch); block shapes a kernel does
  not support, and other platforms, lower the ``"xla"`` way; with ``interpret=True`` the TPU
  kernel runs in the Pallas interpreter on every platform (CPU tests), as Pallas ops do.

Each platform's lowering is registered separately (``mlir.register_lowering(...,
platform=...)``), so one jaxpr carries the portable path and every accelerator kernel, and a
program traced on a CPU machine lowers for ``cuda`` or ``tpu`` with that target's kernel.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jaxsparse import deprecation
from jaxsparse.kernels.cpu import sparse_conv as cpu_sparse_conv
from jaxsparse.kernels.window import ConvWindow, im2col
from jaxsparse.primitives.rules import bilinear_jvp, rows_batcher

block_sparse_dot_p = Primitive("block_sparse_dot")
IMPLS = ("xla", "cpu", "pallas")


def pack_block_ell(w: np.ndarray, mask: np.ndarray, bh: int, bw: int,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Packs a ``(K, cout)`` weight whose ``mask`` is constant on ``bh x bw`` blocks.

    ``bh = bw = 1`` packs any (unstructured) mask.

    Returns:
        ``(values (cout//bw, maxk, bh, bw), rows (cout//bw, maxk) int32)`` with ``maxk`` the most
        blocks any column keeps (at least 1).
    """
    w, mask = np.asarray(w), np.asarray(mask, bool)
    k, cout = w.shape
    if k % bh or cout % bw:
        raise ValueError(f"block pack: ({k}, {cout}) is not tiled by {bh}x{bw} blocks.")
    kb, cb = k // bh, cout // bw
    blocks = w.reshape(kb, bh, cb, bw).transpose(2, 0, 1, 3)  # (cb, kb, bh, bw)
    bmask = mask.reshape(kb, bh, cb, bw).transpose(2, 0, 1, 3)
    keep = bmask.any(axis=(2, 3))  # (cb, kb)
    counts = keep.sum(axis=1)
    maxk = max(1, int(counts.max(initial=0)))
    # Stored blocks of each column in row order, then padding: a stable sort of ~keep.
    order = np.argsort(~keep, axis=1, kind="stable")[:, :maxk]
    valid = np.arange(maxk)[None, :] < counts[:, None]
    rows = np.where(valid, order, -1).astype(np.int32)
    cols = np.arange(cb)[:, None]
    values = np.where(bmask[cols, order], blocks[cols, order], 0)
    values = np.where(valid[:, :, None, None], values, 0).astype(w.dtype)
    return values, rows


def unpack_block_ell(values: jax.Array, rows: jax.Array, k: int) -> jax.Array:
    """The dense ``(K, cout)`` weight of a blocked-ELL pair (padding blocks add zeros)."""
    cb, maxk, bh, bw = values.shape
    onehot = (rows[:, :, None] == jnp.arange(k // bh)[None, None, :]).astype(values.dtype)
    dense = jnp.einsum("jmr,jmhw->rhjw", onehot, values, precision=jax.lax.Precision.HIGHEST)
    return dense.reshape(k, cb * bw)


def _gemm_k(x_shape: tuple[int, ...], window: ConvWindow | None) -> int:
    """The reduction size K of the GEMM view."""
    return x_shape[-1] * (1 if window is None else window.kernel[0] * window.kernel[1])


def block_sparse_dot_reference(x: jax.Array, values: jax.Array, rows: jax.Array,
                               window: ConvWindow | None = None, **_) -> jax.Array:
    """Pure-jnp oracle: densify ``W``, then ``x @ W`` (or the convolution)."""
    w = unpack_block_ell(values, rows, _gemm_k(x.shape, window))
    return cpu_sparse_conv.sparse_conv_reference(x, w, window)


def block_sparse_dot_xla(x: jax.Array, values: jax.Array, rows: jax.Array) -> jax.Array:
    """Gathers the stored row blocks of a 2-D ``x`` and runs one batched GEMM per column."""
    b, k = x.shape
    cb, maxk, bh, bw = values.shape
    xb = x.reshape(b, k // bh, bh)
    xg = jnp.take(xb, jnp.maximum(rows, 0).reshape(-1), axis=1).reshape(b, cb, maxk * bh)
    y = jnp.einsum("bjk,jkw->bjw", xg, values.reshape(cb, maxk * bh, bw).astype(x.dtype),
                   preferred_element_type=jnp.float32 if x.dtype == jnp.float32 else None)
    return y.reshape(b, cb * bw).astype(x.dtype)


def check_impl(impl: str, interpret: bool, stacklevel: int = 4, name: str = "impl",
               ) -> tuple[str, bool]:
    """``(impl, interpret)`` checked, with the 0.1 spelling ``"pallas_interpret"`` mapped;
    ``name`` is the argument's name in messages (``js.sparsify`` calls it ``backend``).

    Raises:
        ValueError: for an unknown ``impl``, or ``interpret`` without ``impl="pallas"``.
    """
    if impl == "pallas_interpret":
        deprecation.warn(f"{name}='pallas_interpret'", f"{name}='pallas', interpret=True",
                         stacklevel=stacklevel)  # Points at the user's call.
        impl, interpret = "pallas", True
    if impl not in IMPLS:
        raise ValueError(f"{name}={impl!r} is not valid; use one of {IMPLS}.")
    if interpret and impl != "pallas":
        raise ValueError(f"interpret=True runs a Pallas kernel: it needs {name}='pallas', "
                         f"not {impl!r}.")
    return impl, bool(interpret)


GPU_KERNELS = ("triton", "mosaic")  # The Pallas kernels on cuda (see pallas_kernel).


def block_sparse_dot(x: jax.Array, values: jax.Array, rows: jax.Array, *,
                     window: ConvWindow | None = None, impl: str = "xla",
                     interpret: bool = False, gpu_kernel: str = "triton") -> jax.Array:
    """``x @ W`` for a blocked-ELL weight ``W`` of shape ``(K, cout)``, or a convolution.

    Args:
        x: ``(..., K)`` activations, or with ``window`` an NHWC image ``(B, H, W, cin)`` with
            ``K = kh * kw * cin``.
        values: ``(cout//bw, maxk, bh, bw)`` stored blocks.
        rows: ``(cout//bw, maxk)`` int32 row-block index of each stored block (-1: padding).
        window: the convolution's window; None for a dense layer.
        impl: ``"xla"``, ``"cpu"`` (C++ kernels on the cpu platform) or ``"pallas"`` (the
            target platform's Pallas kernel). ``"pallas_interpret"`` (0.1) still works, with a
            ``DeprecationWarning``: it is ``impl="pallas", interpret=True``.
        interpret: with ``impl="pallas"``, run the Pallas kernel in the Pallas interpreter
            (any platform; tests).
        gpu_kernel: with ``impl="pallas"`` lowered for ``cuda``: ``"triton"`` (the Pallas
            Triton kernel) or ``"mosaic"`` (the Mosaic GPU kernel, Hopper; blocks of 64 or
            128, bf16/f16, else Triton).

    Returns:
        ``(..., cout)``, or with ``window`` ``(B, OH, OW, cout)``.

    Raises:
        ValueError: for an unknown ``impl`` or ``gpu_kernel``, ``interpret`` without
            ``impl="pallas"``, or ``impl="cpu"`` when the CPU kernels are not built or do not
            support the call (dtype, block shape).
    """
    impl, interpret = check_impl(impl, interpret)
    if gpu_kernel not in GPU_KERNELS:
        raise ValueError(f"gpu_kernel={gpu_kernel!r} is not valid; use one of {GPU_KERNELS}.")
    if impl == "cpu":
        why = cpu_sparse_conv.cannot_run(x.shape, x.dtype, values.shape, window)
        if why is not None:
            raise ValueError(f"block_sparse_dot(impl='cpu'): {why}.")
    if window is not None:
        return block_sparse_dot_p.bind(x, values, rows, impl=impl, interpret=interpret,
                                       window=window, gpu_kernel=gpu_kernel)
    lead = x.shape[:-1]
    y = block_sparse_dot_p.bind(x.reshape(-1, x.shape[-1]), values, rows, impl=impl,
                                interpret=interpret, window=None, gpu_kernel=gpu_kernel)
    return y.reshape(*lead, values.shape[0] * values.shape[-1])


def _abstract_eval(x, values, rows, *, impl, interpret, window, gpu_kernel):
    if values.ndim != 4 or rows.shape != values.shape[:2] or \
            x.ndim != (2 if window is None else 4):
        raise ValueError(f"block_sparse_dot: need x (B, K) (or NHWC with a window), values "
                         f"(cb, maxk, bh, bw), rows (cb, maxk); got {x.shape}, "
                         f"{values.shape}, {rows.shape}.")
    k = _gemm_k(x.shape, window)
    if k % values.shape[2]:
        raise ValueError(f"block_sparse_dot: K={k} not divisible by bh={values.shape[2]}.")
    n = values.shape[0] * values.shape[3]
    if window is None:
        return jax.core.ShapedArray((x.shape[0], n), x.dtype)
    return jax.core.ShapedArray((x.shape[0], *window.out_hw(*x.shape[1:3]), n), x.dtype)


def pallas_kernel(platform: str, bh: int, bw: int, gpu_kernel: str = "triton", dtype=None,
                  ) -> tuple[str | None, str]:
    """``(kernel name or None, why)``: the Pallas kernel ``impl="pallas"`` runs for
    ``bh x bw`` blocks (in ``dtype``, when known) when lowered for ``platform``, or why it
    lowers the portable way. On ``cuda``, ``gpu_kernel="mosaic"`` takes the Mosaic GPU kernel
    where it runs the blocks and dtype, else the Triton one."""
    if platform == "cuda":
        from jaxsparse.kernels.gpu import block_sparse as gpu_block
        from jaxsparse.kernels.gpu import block_sparse_mosaic as mosaic_block

        if gpu_kernel == "mosaic":
            why = mosaic_block.unsupported(bh, bw, jnp.bfloat16 if dtype is None else dtype)
            if why is None:
                return "pallas-mosaic-gpu", "Pallas Mosaic GPU kernel"
        why = gpu_block.unsupported(bh, bw)
        return (None, why) if why else ("pallas-triton", "Pallas Triton kernel")
    if platform == "tpu":
        from jaxsparse.kernels.tpu import block_sparse as tpu_block

        why = tpu_block.unsupported(bh, bw)
        return (None, why) if why else ("pallas-mosaic", "Pallas Mosaic TPU kernel")
    return None, f"no Pallas block-sparse kernel for platform {platform!r}"


def _gemm(x2d, values, rows, kernel):
    if kernel == "pallas-triton":
        from jaxsparse.kernels.gpu.block_sparse import block_sparse_matmul_gpu

        return block_sparse_matmul_gpu(x2d, values, rows)
    if kernel == "pallas-mosaic-gpu":
        from jaxsparse.kernels.gpu.block_sparse_mosaic import block_sparse_matmul_mosaic

        return block_sparse_matmul_mosaic(x2d, values, rows)
    if kernel in ("pallas-mosaic", "pallas-interpret"):
        from jaxsparse.kernels.tpu.block_sparse import block_sparse_matmul

        return block_sparse_matmul(x2d, values, rows, interpret=kernel == "pallas-interpret")
    return block_sparse_dot_xla(x2d, values, rows)


def _run(x, values, rows, window, kernel):
    values = jnp.where((rows >= 0)[:, :, None, None], values, 0)  # Padding never contributes.
    if window is None:
        return _gemm(x, values, rows, kernel)
    patches = im2col(x, window)
    y = _gemm(patches.reshape(-1, patches.shape[-1]), values, rows, kernel)
    return y.reshape(*patches.shape[:-1], y.shape[-1])


def _impl(x, values, rows, *, impl, interpret, window, gpu_kernel="triton"):
    """The portable path (every platform without a kernel of its own), or the Pallas kernel in
    the interpreter."""
    return _run(x, values, rows, window, "pallas-interpret" if interpret else "xla")


def _accelerator_lowering(platform: str):
    """The ``platform`` lowering: its Pallas kernel for ``impl="pallas"`` where the block shape
    allows, else the portable path."""

    def lower(ctx, x, values, rows, *, impl, interpret, window, gpu_kernel):
        kernel = None
        if impl == "pallas" and not interpret:
            kernel = pallas_kernel(platform, *ctx.avals_in[1].shape[2:], gpu_kernel,
                                   ctx.avals_in[0].dtype)[0]
        if kernel is None:
            return mlir.lower_fun(_impl, multiple_results=False)(
                ctx, x, values, rows, impl=impl, interpret=interpret, window=window)
        return mlir.lower_fun(lambda x, v, r: _run(x, v, r, window, kernel),
                              multiple_results=False)(ctx, x, values, rows)

    return lower


def _cpu_lowering(ctx, x, values, rows, *, impl, interpret, window, gpu_kernel):
    """The cpu platform's lowering: the C++ kernel for ``impl="cpu"``, else the portable one."""
    fn = _impl
    if impl == "cpu":
        def fn(x, values, rows, **_):
            return cpu_sparse_conv.sparse_conv(x, values, rows, window)
    return mlir.lower_fun(fn, multiple_results=False)(ctx, x, values, rows, impl=impl,
                                                      interpret=interpret, window=window)


def _ct_x_gemm(ct, values, rows, k):
    """Cotangent of a 2-D ``x``: ``ct @ W.T`` over the stored blocks only."""
    cb, maxk, bh, bw = values.shape
    ctb = ct.reshape(ct.shape[0], cb, bw)
    contrib = jnp.einsum("bjw,jmhw->bjmh", ctb, values.astype(ct.dtype),
                         precision=jax.lax.Precision.HIGHEST)
    contrib = jnp.where((rows >= 0)[None, :, :, None], contrib, 0)
    out = jnp.zeros((ct.shape[0], k // bh, bh), ct.dtype)
    out = out.at[:, jnp.maximum(rows, 0).reshape(-1)].add(
        contrib.reshape(ct.shape[0], cb * maxk, bh))
    return out.reshape(ct.shape[0], k)


def _ct_values_gemm(x2d, ct, values_aval, rows):
    """Cotangent of the stored blocks: ``x.T @ ct`` restricted to them (padding stays 0)."""
    cb, maxk, bh, bw = values_aval.shape
    b, k = x2d.shape
    xg = jnp.take(x2d.reshape(b, k // bh, bh), jnp.maximum(rows, 0).reshape(-1),
                  axis=1).reshape(b, cb, maxk, bh)
    dv = jnp.einsum("bjmh,bjw->jmhw", xg, ct.reshape(b, cb, bw),
                    precision=jax.lax.Precision.HIGHEST)
    dv = jnp.where((rows >= 0)[:, :, None, None], dv, 0)
    return dv.astype(values_aval.dtype)


def _transpose(ct, x, values, rows, *, impl, interpret, window, gpu_kernel):
    if type(ct) is ad.Zero:
        return [None, None, None]
    ct2 = ct.reshape(-1, ct.shape[-1])
    if ad.is_undefined_primal(x):
        shape = x.aval.shape
        ct_p = _ct_x_gemm(ct2, values, rows, _gemm_k(shape, window))
        if window is None:
            return [ct_p, None, None]
        oh, ow = window.out_hw(*shape[1:3])
        (ct_x,) = jax.linear_transpose(lambda a: im2col(a, window),
                                       jax.ShapeDtypeStruct(shape, ct.dtype))(
            ct_p.reshape(shape[0], oh, ow, -1))
        return [ct_x, None, None]
    patches = x if window is None else im2col(x, window)
    dv = _ct_values_gemm(patches.reshape(-1, patches.shape[-1]), ct2, values.aval, rows)
    return [None, dv, None]


block_sparse_dot_p.def_impl(_impl)
block_sparse_dot_p.def_abstract_eval(_abstract_eval)
ad.primitive_jvps[block_sparse_dot_p] = bilinear_jvp(block_sparse_dot_p)
ad.primitive_transposes[block_sparse_dot_p] = _transpose
batching.primitive_batchers[block_sparse_dot_p] = rows_batcher(
    block_sparse_dot_p, block_sparse_dot_reference)
mlir.register_lowering(block_sparse_dot_p, mlir.lower_fun(_impl, multiple_results=False))
mlir.register_lowering(block_sparse_dot_p, _cpu_lowering, platform="cpu")
for _platform in ("cuda", "tpu"):
    mlir.register_lowering(block_sparse_dot_p, _accelerator_lowering(_platform),
                           platform=_platform)
