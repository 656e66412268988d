"""CPU kernels (C++, XLA FFI) for a conv or dense layer with a blocked-ELL sparse weight.

``W`` is the ``(kh*kw*cin, cout)`` GEMM view in blocked-ELL layout (see
:mod:`jaxsparse.primitives.block_sparse_dot`). Two kernels share one calling convention:

* ``block`` (``bw % 8 == 0`` and ``cin % bh == 0``): register-tiled implicit GEMM, vectorised
  over output channels; a kept block reads a shifted window of the NHWC input
  (``csrc/block_conv.cc``);
* ``ell`` (``bh == bw == 1``, i.e. unstructured): per tile of 32 output pixels, the tile's
  transposed input panel is built in cache and every output channel accumulates its stored
  weights vectorised over pixels (``csrc/ell_conv.cc``).

Both use AVX2+FMA when the CPU has them (scalar code otherwise) and XLA's intra-op thread pool.
:func:`sparse_conv_reference` is the pure-jnp oracle.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.kernels.cpu import library as cpu_library
from jaxsparse.kernels.window import ConvWindow, im2col


def kernel_kind(values_shape: tuple[int, ...]) -> str | None:
    """``"block"``, ``"ell"`` or None (no CPU kernel) for a blocked-ELL ``values`` shape."""
    _, _, bh, bw = values_shape
    if bh == bw == 1:
        return "ell"
    if bw % 8 == 0:
        return "block"
    return None


def unsupported(x_shape: tuple[int, ...], dtype, values_shape: tuple[int, ...],
                window: ConvWindow | None) -> str | None:
    """Why the CPU kernels cannot run this call (None: they can, when the library loads)."""
    if jnp.dtype(dtype) != jnp.float32:
        return f"dtype {jnp.dtype(dtype).name}: the CPU kernels are float32 only"
    kind = kernel_kind(values_shape)
    bh, bw = values_shape[2:]
    if kind is None:
        return f"{bh}x{bw} blocks: the CPU kernels need 1x1 blocks or blocks {bw} wide % 8"
    cin = x_shape[-1]
    if kind == "block" and cin % bh:
        return f"{cin} input channels are not a multiple of the block height {bh}"
    if window is not None and any(p < 0 for pad in window.padding for p in pad):
        return "negative padding"
    return None


def cannot_run(x_shape: tuple[int, ...], dtype, values_shape: tuple[int, ...],
               window: ConvWindow | None) -> str | None:
    """Why this call cannot run on the CPU kernels here: the library is not available, or
    :func:`unsupported`; None when it can."""
    st = cpu_library.status()
    return unsupported(x_shape, dtype, values_shape, window) if st.available else st.reason


def sparse_conv(x: jax.Array, values: jax.Array, rows: jax.Array,
                window: ConvWindow | None) -> jax.Array:
    """Runs the CPU kernel: ``conv(x, W)`` (``window`` given, NHWC) or ``x @ W`` (2-D ``x``).

    Raises:
        ValueError: when the library is not available or the call is unsupported.
    """
    why = cannot_run(x.shape, x.dtype, values.shape, window)
    if why is not None:
        raise ValueError(f"impl='cpu' cannot run this layer: {why}.")
    kind = kernel_kind(values.shape)
    n = values.shape[0] * values.shape[3]
    if window is None:
        x4 = x.reshape(x.shape[0], 1, 1, x.shape[1])
        window = ConvWindow((1, 1))
    else:
        x4 = x
    oh, ow = window.out_hw(x4.shape[1], x4.shape[2])
    out = jax.ShapeDtypeStruct((x4.shape[0], oh, ow, n), jnp.float32)
    attrs = dict(kh=window.kernel[0], kw=window.kernel[1], sh=window.strides[0],
                 sw=window.strides[1], ph=window.padding[0][0], pw=window.padding[1][0],
                 dh=window.dilation[0], dw=window.dilation[1])
    y = jax.ffi.ffi_call(f"jaxsparse_{kind}_sparse_conv_f32", out)(
        x4, values.astype(jnp.float32), rows.astype(jnp.int32),
        **{k: np.int64(v) for k, v in attrs.items()})
    return y if x.ndim == 4 else y.reshape(x.shape[0], n)


def sparse_conv_reference(x: jax.Array, dense_w: jax.Array,
                          window: ConvWindow | None) -> jax.Array:
    """Pure-jnp oracle: ``im2col(x) @ dense_w`` with ``dense_w`` the ``(K, cout)`` weight."""
    patches = x if window is None else im2col(x, window)
    y = jnp.matmul(patches.reshape(-1, patches.shape[-1]), dense_w.astype(x.dtype),
                   precision=jax.lax.Precision.HIGHEST)
    return y.reshape(*patches.shape[:-1], dense_w.shape[-1])
