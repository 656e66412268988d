"""The convolution window of a sparse conv, and ``im2col`` in the GEMM view's order.

A conv with an HWIO kernel ``(kh, kw, cin, cout)`` is the GEMM ``patches @ W`` with ``W`` the
``(kh*kw*cin, cout)`` view and ``patches`` the im2col matrix in ``(kh, kw, cin)`` order (cin
fastest). Sparse primitives take a :class:`ConvWindow` so that kernels can read the shifted
windows of the NHWC input directly (implicit GEMM) instead of materialising ``patches``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax


@dataclasses.dataclass(frozen=True)
class ConvWindow:
    """Static geometry of an NHWC convolution (hashable: it is a primitive parameter).

    Attributes:
        kernel: ``(kh, kw)``.
        strides: ``(sh, sw)``.
        padding: ``((top, bottom), (left, right))``, explicit.
        dilation: ``(dh, dw)`` of the kernel (``rhs_dilation``).
    """

    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    dilation: tuple[int, int] = (1, 1)

    @classmethod
    def from_conv_params(cls, kernel: tuple[int, int], params: dict) -> ConvWindow:
        """The window of a ``conv_general_dilated`` equation's params (explicit padding)."""
        return cls(tuple(int(k) for k in kernel),
                   tuple(int(s) for s in params["window_strides"]),
                   tuple((int(lo), int(hi)) for lo, hi in params["padding"]),
                   tuple(int(d) for d in params["rhs_dilation"]))

    @property
    def is_pointwise(self) -> bool:
        """A 1x1, stride-1, unpadded conv: ``patches`` is the input itself."""
        return (self.kernel == (1, 1) and self.strides == (1, 1)
                and self.padding == ((0, 0), (0, 0)))

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        """Output height and width for an ``(h, w)`` input."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilation
        (pt, pb), (pl, pr) = self.padding
        return ((h + pt + pb - (kh - 1) * dh - 1) // sh + 1,
                (w + pl + pr - (kw - 1) * dw - 1) // sw + 1)


def im2col(x: jax.Array, window: ConvWindow) -> jax.Array:
    """``(B, OH, OW, kh*kw*C)`` patches of an NHWC input, in ``(kh, kw, C)`` order."""
    if window.is_pointwise:
        return x
    (kh, kw), (sh, sw), (dh, dw) = window.kernel, window.strides, window.dilation
    xp = lax.pad(x, jnp.zeros((), x.dtype),
                 [(0, 0, 0), (*window.padding[0], 0), (*window.padding[1], 0), (0, 0, 0)])
    oh, ow = window.out_hw(x.shape[1], x.shape[2])
    taps = [lax.slice(xp, (0, i * dh, j * dw, 0),
                      (xp.shape[0], i * dh + (oh - 1) * sh + 1, j * dw + (ow - 1) * sw + 1,
                       xp.shape[3]), (1, sh, sw, 1))
            for i in range(kh) for j in range(kw)]
    return taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
