"""CPU kernels (C++, XLA FFI) for a conv or dense layer with a blocked-ELL sparse weight.

``W`` is the ``(kh*kw*cin, cout)`` GEMM view in blocked-ELL layout (see
:mod:`jaxsparse.primitives.block_sparse_dot`). Two kernels share one calling convention:

* ``block`` (``bw % 8 == 0``; ``cin % bh == 0``, or for few input channels blocks spanning
  whole taps of one kernel row, see :func:`block_rows_are_runs`): register-tiled implicit
  GEMM, vectorised over output channels; a kept block reads a shifted window of the NHWC
  input (``csrc/block_conv.cc``);
* ``ell`` (``bh == bw == 1``, i.e. unstructured): per tile of 32 output pixels, the tile's
  transposed input panel is built in cache and every output channel accumulates its stored
  weights vectorised over pixels (``csrc/ell_conv.cc``).

Both use AVX2+FMA when the CPU has them (scalar code otherwise) and XLA's intra-op thread pool,
and both take an optional epilogue applied before the output is stored: ``relu?(conv(x, W) +
bias + residual)`` (a folded BatchNorm's bias, a ResNet's residual add and its ReLU, so none of
them costs a pass over memory). :func:`sparse_conv_reference` is the pure-jnp oracle.
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


def block_rows_are_runs(bh: int, cin: int, window: ConvWindow | None) -> bool:
    """Whether the block kernel reads blocks ``bh`` rows high as contiguous runs of the NHWC
    input: ``bh`` divides ``cin`` (channels of one tap), or ``bh`` covers whole adjacent taps
    of one kernel row (``bh % cin == 0``, ``kw * cin % bh == 0``, no dilation along the
    width), as blocks ``kw * 3`` high do for an RGB stem."""
    if cin % bh == 0:
        return True
    kw, dw = (1, 1) if window is None else (window.kernel[1], window.dilation[1])
    return bh % cin == 0 and (kw * cin) % bh == 0 and dw == 1


def unsupported(x_shape: tuple[int, ...], dtype, values_shape: tuple[int, ...],
                window: ConvWindow | None) -> str | None:
    """Why the CPU kernels cannot run this call (None: they can, when the library loads).
    ``window``: the conv's window, None for a dense layer."""
    if jnp.dtype(dtype) != jnp.float32:
        return f"dtype {jnp.dtype(dtype).name}: the CPU kernels are float32 only"
    kind = kernel_kind(values_shape)
    bh, bw = values_shape[2:]
    if kind is None:
        return f"{bh}x{bw} blocks: the CPU kernels need 1x1 blocks or blocks {bw} wide % 8"
    cin = x_shape[-1]
    if kind == "block" and not block_rows_are_runs(bh, cin, window):
        kw = 1 if window is None else window.kernel[1]
        return (f"block height {bh} neither divides the {cin} input channels nor spans whole "
                f"taps of one kernel row ({kw} taps x {cin} channels, no dilation)")
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
                window: ConvWindow | None, *, bias: jax.Array | None = None,
                residual: jax.Array | None = None, relu: bool = False) -> jax.Array:
    """Runs the CPU kernel: ``conv(x, W)`` (``window`` given, NHWC) or ``x @ W`` (2-D ``x``),
    then the epilogue ``relu?(... + bias + residual)`` in the kernel.

    Args:
        x: NHWC image (with ``window``) or ``(rows, K)``.
        values, rows: the blocked-ELL weight.
        window: the convolution's window; None for a dense layer.
        bias: ``(cout,)`` added to every output pixel, or None.
        residual: an array shaped like the output, added after the bias, or None.
        relu: clamp the result at 0 last.

    Raises:
        ValueError: when the library is not available, the call is unsupported, or the bias
            or residual does not fit the output.
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
    y_shape = out.shape if x.ndim == 4 else (x.shape[0], n)
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"sparse_conv: bias has shape {tuple(bias.shape)}, not ({n},).")
    if residual is not None and tuple(residual.shape) != y_shape:
        raise ValueError(f"sparse_conv: residual has shape {tuple(residual.shape)}, not the "
                         f"output's {y_shape}.")
    empty = jnp.zeros((0,), jnp.float32)  # An absent operand: the kernel skips it.
    attrs = dict(kh=window.kernel[0], kw=window.kernel[1], sh=window.strides[0],
                 sw=window.strides[1], ph=window.padding[0][0], pw=window.padding[1][0],
                 dh=window.dilation[0], dw=window.dilation[1], relu=int(relu))
    y = jax.ffi.ffi_call(f"jaxsparse_{kind}_sparse_conv_f32", out)(
        x4, values.astype(jnp.float32), rows.astype(jnp.int32),
        empty if bias is None else bias.astype(jnp.float32),
        empty if residual is None else residual.astype(jnp.float32).reshape(-1),
        **{k: np.int64(v) for k, v in attrs.items()})
    return y if x.ndim == 4 else y.reshape(x.shape[0], n)


def sparse_conv_reference(x: jax.Array, dense_w: jax.Array,
                          window: ConvWindow | None, *, bias: jax.Array | None = None,
                          residual: jax.Array | None = None, relu: bool = False) -> jax.Array:
    """Pure-jnp oracle: ``im2col(x) @ dense_w`` with ``dense_w`` the ``(K, cout)`` weight,
    then the epilogue."""
    patches = x if window is None else im2col(x, window)
    y = jnp.matmul(patches.reshape(-1, patches.shape[-1]), dense_w.astype(x.dtype),
                   precision=jax.lax.Precision.HIGHEST)
    return apply_epilogue(y.reshape(*patches.shape[:-1], dense_w.shape[-1]), bias, residual,
                          relu)


def apply_epilogue(y: jax.Array, bias: jax.Array | None = None,
                   residual: jax.Array | None = None, relu: bool = False) -> jax.Array:
    """``relu?(y + bias + residual)`` in jnp: the kernels' epilogue, in its order."""
    if bias is not None:
        y = y + bias.astype(y.dtype)
    if residual is not None:
        y = y + residual.astype(y.dtype)
    return jnp.maximum(y, 0) if relu else y
