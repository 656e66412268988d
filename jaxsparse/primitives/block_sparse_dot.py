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

An optional epilogue ``relu?(y + bias + residual)`` (a folded BatchNorm's bias, a residual add,
a ReLU) is part of the primitive: the C++ CPU kernels apply it before storing the output, so
it costs no pass over memory; every other lowering applies it after the product in jnp, where
XLA fuses it as it would the separate ops.

Each platform's lowering is registered separately (``mlir.register_lowering(...,
platform=...)``), so one jaxpr carries the portable path and every accelerator kernel, and a
program traced on a CPU machine lowers for ``cuda`` or ``tpu`` with that target's kernel.
"""

from __future__ import annotations

import dataclasses
import functools

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


@dataclasses.dataclass(frozen=True)
class Epilogue:
    """Which epilogue operands follow ``(x, values, rows)`` in a ``block_sparse_dot`` call:
    ``y = relu?(x @ W + bias + residual)``.

    Attributes:
        bias: a ``(cout,)`` bias operand follows.
        residual: an operand shaped like the output follows (after the bias, if any).
        relu: the result is clamped at 0 last.
    """

    bias: bool = False
    residual: bool = False
    relu: bool = False

    def split(self, extra: tuple) -> tuple:
        """``(bias or None, residual or None)`` from the operands after ``rows``."""
        extra = list(extra)
        bias = extra.pop(0) if self.bias else None
        residual = extra.pop(0) if self.residual else None
        return bias, residual


def _finish(y: jax.Array, extra: tuple, epilogue: Epilogue | None) -> jax.Array:
    """The epilogue in jnp (every lowering but the CPU kernels', which fuse it)."""
    if epilogue is None:
        return y
    return cpu_sparse_conv.apply_epilogue(y, *epilogue.split(extra), epilogue.relu)


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
                               window: ConvWindow | None = None, *,
                               bias: jax.Array | None = None,
                               residual: jax.Array | None = None, relu: bool = False,
                               **_) -> jax.Array:
    """Pure-jnp oracle: densify ``W``, then ``x @ W`` (or the convolution), then the
    epilogue."""
    w = unpack_block_ell(values, rows, _gemm_k(x.shape, window))
    return cpu_sparse_conv.sparse_conv_reference(x, w, window, bias=bias, residual=residual,
                                                 relu=relu)


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
                     interpret: bool = False, gpu_kernel: str = "triton",
                     bias: jax.Array | None = None, residual: jax.Array | None = None,
                     relu: bool = False) -> jax.Array:
    """``x @ W`` for a blocked-ELL weight ``W`` of shape ``(K, cout)``, or a convolution, with
    an optional epilogue ``relu?(... + bias + residual)``.

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
        bias: ``(cout,)`` added to every output row, or None.
        residual: an array shaped like the result, added after the bias, or None.
        relu: clamp the result at 0 last. With ``impl="cpu"`` the kernel applies the
            epilogue before it stores the output; elsewhere it follows the product.

    Returns:
        ``(..., cout)``, or with ``window`` ``(B, OH, OW, cout)``.

    Raises:
        ValueError: for an unknown ``impl`` or ``gpu_kernel``, ``interpret`` without
            ``impl="pallas"``, ``impl="cpu"`` when the CPU kernels are not built or do not
            support the call (dtype, block shape), or a bias or residual that does not fit
            the result.
    """
    impl, interpret = check_impl(impl, interpret)
    if gpu_kernel not in GPU_KERNELS:
        raise ValueError(f"gpu_kernel={gpu_kernel!r} is not valid; use one of {GPU_KERNELS}.")
    if impl == "cpu":
        why = cpu_sparse_conv.cannot_run(x.shape, x.dtype, values.shape, window)
        if why is not None:
            raise ValueError(f"block_sparse_dot(impl='cpu'): {why}.")
    n = values.shape[0] * values.shape[-1]
    lead = x.shape[:-1] if window is None else (x.shape[0], *window.out_hw(*x.shape[1:3]))
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"block_sparse_dot: bias has shape {tuple(bias.shape)}, not ({n},).")
    if residual is not None and tuple(residual.shape) != (*lead, n):
        raise ValueError(f"block_sparse_dot: residual has shape {tuple(residual.shape)}, "
                         f"not the result's {(*lead, n)}.")
    epilogue = None
    extra = []
    if bias is not None or residual is not None or relu:
        epilogue = Epilogue(bias is not None, residual is not None, bool(relu))
        extra = [a for a in (bias, residual) if a is not None]
    params = dict(impl=impl, interpret=interpret, gpu_kernel=gpu_kernel, epilogue=epilogue)
    if window is not None:
        return block_sparse_dot_p.bind(x, values, rows, *extra, window=window, **params)
    if residual is not None:
        extra[-1] = residual.reshape(-1, n)
    y = block_sparse_dot_p.bind(x.reshape(-1, x.shape[-1]), values, rows, *extra,
                                window=None, **params)
    return y.reshape(*lead, n)


def _abstract_eval(x, values, rows, *extra, impl, interpret, window, gpu_kernel,
                   epilogue=None):
    if values.ndim != 4 or rows.shape != values.shape[:2] or \
            x.ndim != (2 if window is None else 4):
        raise ValueError(f"block_sparse_dot: need x (B, K) (or NHWC with a window), values "
                         f"(cb, maxk, bh, bw), rows (cb, maxk); got {x.shape}, "
                         f"{values.shape}, {rows.shape}.")
    k = _gemm_k(x.shape, window)
    if k % values.shape[2]:
        raise ValueError(f"block_sparse_dot: K={k} not divisible by bh={values.shape[2]}.")
    n = values.shape[0] * values.shape[3]
    shape = (x.shape[0], n) if window is None else (x.shape[0], *window.out_hw(*x.shape[1:3]), n)
    want = [] if epilogue is None else \
        [s for s, on in (((n,), epilogue.bias), (shape, epilogue.residual)) if on]
    if [tuple(e.shape) for e in extra] != want:
        raise ValueError(f"block_sparse_dot: epilogue {epilogue} needs operands shaped "
                         f"{want} after rows; got {[tuple(e.shape) for e in extra]}.")
    return jax.core.ShapedArray(shape, x.dtype)


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


def _impl(x, values, rows, *extra, impl, interpret, window, gpu_kernel="triton",
          epilogue=None):
    """The portable path (every platform without a kernel of its own), or the Pallas kernel in
    the interpreter; the epilogue follows in jnp."""
    y = _run(x, values, rows, window, "pallas-interpret" if interpret else "xla")
    return _finish(y, extra, epilogue)


def _accelerator_lowering(platform: str):
    """The ``platform`` lowering: its Pallas kernel for ``impl="pallas"`` where the block shape
    allows, else the portable path."""

    def lower(ctx, x, values, rows, *extra, impl, interpret, window, gpu_kernel,
              epilogue=None):
        kernel = None
        if impl == "pallas" and not interpret:
            kernel = pallas_kernel(platform, *ctx.avals_in[1].shape[2:], gpu_kernel,
                                   ctx.avals_in[0].dtype)[0]
        if kernel is None:
            return mlir.lower_fun(_impl, multiple_results=False)(
                ctx, x, values, rows, *extra, impl=impl, interpret=interpret, window=window,
                epilogue=epilogue)
        return mlir.lower_fun(
            lambda x, v, r, *e: _finish(_run(x, v, r, window, kernel), e, epilogue),
            multiple_results=False)(ctx, x, values, rows, *extra)

    return lower


def _cpu_lowering(ctx, x, values, rows, *extra, impl, interpret, window, gpu_kernel,
                  epilogue=None):
    """The cpu platform's lowering: the C++ kernel (with the epilogue fused) for
    ``impl="cpu"``, else the portable one."""
    fn = _impl
    if impl == "cpu":
        def fn(x, values, rows, *extra, **_):
            bias, residual = (None, None) if epilogue is None else epilogue.split(extra)
            return cpu_sparse_conv.sparse_conv(x, values, rows, window, bias=bias,
                                               residual=residual,
                                               relu=epilogue is not None and epilogue.relu)
    return mlir.lower_fun(fn, multiple_results=False)(
        ctx, x, values, rows, *extra, impl=impl, interpret=interpret, window=window,
        epilogue=epilogue)


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


def _transpose(ct, x, values, rows, *, impl, interpret, window, gpu_kernel, epilogue=None):
    # Only the product is linear: a fused epilogue differentiates through _unfused (below).
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


def _unfused(x, values, rows, *extra, epilogue, **params):
    """The product bound without its epilogue, then the epilogue in jnp: how a call with one
    is differentiated and batched (the product keeps its own AD and batching rules)."""
    y = block_sparse_dot_p.bind(x, values, rows, epilogue=None, **params)
    return _finish(y, extra, epilogue)


_product_jvp = bilinear_jvp(block_sparse_dot_p)
_product_batch = rows_batcher(block_sparse_dot_p, block_sparse_dot_reference)


def _jvp(primals, tangents, *, epilogue=None, **params):
    """The product's JVP; with an epilogue, the JVP of :func:`_unfused`."""
    if epilogue is None:
        return _product_jvp(primals, tangents, epilogue=None, **params)
    x, values, rows, *extra = primals
    tx, tv, _, *te = [ad.instantiate_zeros(t) if i != 2 else t for i, t in enumerate(tangents)]
    return jax.jvp(lambda x, v, *e: _unfused(x, v, rows, *e, epilogue=epilogue, **params),
                   (x, values, *extra), (tx, tv, *te))


def _batch(args, dims, *, epilogue=None, **params):
    """The product's batching rule; with an epilogue, ``vmap`` of :func:`_unfused`."""
    if epilogue is None:
        return _product_batch(args, dims, epilogue=None, **params)
    fn = functools.partial(_unfused, epilogue=epilogue, **params)
    return jax.vmap(fn, in_axes=tuple(dims))(*args), 0


block_sparse_dot_p.def_impl(_impl)
block_sparse_dot_p.def_abstract_eval(_abstract_eval)
ad.primitive_jvps[block_sparse_dot_p] = _jvp
ad.primitive_transposes[block_sparse_dot_p] = _transpose
batching.primitive_batchers[block_sparse_dot_p] = _batch
mlir.register_lowering(block_sparse_dot_p, mlir.lower_fun(_impl, multiple_results=False))
mlir.register_lowering(block_sparse_dot_p, _cpu_lowering, platform="cpu")
for _platform in ("cuda", "tpu"):
    mlir.register_lowering(block_sparse_dot_p, _accelerator_lowering(_platform),
                           platform=_platform)
