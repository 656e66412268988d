"""Running a convolution or dense layer as a GEMM on a rewritten weight.

A conv with an HWIO kernel becomes ``patches @ W`` with ``patches`` the im2col matrix in
``(kh, kw, cin)`` order (cin fastest, matching the GEMM view the patterns are defined on); a
1x1 stride-1 unpadded conv needs no im2col at all, and block-sparse weights skip it altogether
(the primitive takes the conv window).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxsparse.compiler.packed import BlockWeight, DenseWeight, NMWeight, Rewritten
from jaxsparse.kernels.cpu.sparse_conv import apply_epilogue
from jaxsparse.kernels.window import ConvWindow, im2col
from jaxsparse.primitives.block_sparse_dot import block_sparse_dot
from jaxsparse.primitives.nm_dot import nm_dot

NHWC = (0, 3, 1, 2)
HWIO = (3, 2, 0, 1)


def conv_supported(params: dict) -> str | None:
    """Why a ``conv_general_dilated`` cannot run as our GEMM, or None when it can."""
    dn = params["dimension_numbers"]
    if tuple(dn.lhs_spec) != NHWC or tuple(dn.out_spec) != NHWC:
        return f"activation layout {dn.lhs_spec}/{dn.out_spec} is not NHWC"
    if tuple(dn.rhs_spec) != HWIO:
        return f"kernel layout rhs_spec={dn.rhs_spec} is not HWIO (kh, kw, cin, cout)"
    if params["feature_group_count"] != 1 or params["batch_group_count"] != 1:
        return "grouped convolution"
    if any(d != 1 for d in params["lhs_dilation"]):
        return "input (transposed) dilation"
    return None


def gemm(x2d: jax.Array, weight: Rewritten, impl: str, interpret: bool = False,
         **epilogue: Any) -> jax.Array:
    """``x2d @ W`` for a rewritten weight (dense, N:M-packed or blocked-ELL); ``impl`` and
    ``interpret`` go to :func:`~jaxsparse.primitives.block_sparse_dot`, and so does the
    ``epilogue`` (``bias``, ``residual``, ``relu``), which other weights apply after."""
    if isinstance(weight, BlockWeight):
        return block_sparse_dot(x2d, weight.values.astype(x2d.dtype), weight.rows, impl=impl,
                                interpret=interpret, gpu_kernel=weight.gpu_kernel, **epilogue)
    if isinstance(weight, NMWeight):
        y = nm_dot(x2d, weight.values.astype(x2d.dtype), weight.indices, m=weight.m,
                   blob=weight.blob, layout=weight.cusparselt_layout)
    else:
        k = weight.kernel
        y = jnp.matmul(x2d, k.reshape(-1, k.shape[-1]).astype(x2d.dtype))
    return apply_epilogue(y, **epilogue)


def conv(x: jax.Array, weight: Rewritten, params: dict, impl: str,
         interpret: bool = False, **epilogue: Any) -> jax.Array:
    """An NHWC conv with a rewritten HWIO weight; dense weights use XLA's own conv, blocked-ELL
    weights the windowed ``block_sparse_dot`` (implicit GEMM where the kernel has one, with
    the ``epilogue``: ``bias``, ``residual``, ``relu``; other weights apply it after)."""
    if isinstance(weight, DenseWeight):
        return apply_epilogue(lax.conv_general_dilated(
            x, weight.kernel.astype(x.dtype), params["window_strides"], params["padding"],
            params["lhs_dilation"], params["rhs_dilation"], params["dimension_numbers"],
            precision=params["precision"],
            preferred_element_type=params["preferred_element_type"]), **epilogue)
    window = ConvWindow.from_conv_params(weight.layout.shape[:2], params)
    if isinstance(weight, BlockWeight):
        return block_sparse_dot(x, weight.values.astype(x.dtype), weight.rows, window=window,
                                impl=impl, interpret=interpret, gpu_kernel=weight.gpu_kernel,
                                **epilogue)
    patches = im2col(x, window)
    b, oh, ow, k = patches.shape
    y = gemm(patches.reshape(b * oh * ow, k), weight, impl, interpret)
    return apply_epilogue(y.reshape(b, oh, ow, -1), **epilogue)


def gemm_flops(rows: int, k: int, n: int) -> float:
    """Multiply-add FLOPs of a ``(rows, k) @ (k, n)`` product."""
    return 2.0 * rows * k * n
