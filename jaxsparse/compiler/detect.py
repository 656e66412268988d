"""Recognising the sparsity pattern of a mask, so ``js.sparsify`` needs masks only."""

from __future__ import annotations

import numpy as np

from jaxsparse.pruning.patterns import NM, Block, Pattern, Unstructured

NM_GROUP_SIZES = (4, 8, 16)
BLOCK_SIZES = ((128, 128), (64, 64), (32, 32), (16, 16), (8, 8), (32, 8), (8, 32), (16, 8),
               (8, 16), (4, 4))


def removed_outputs(mask: np.ndarray) -> np.ndarray | None:
    """Indices of kept output channels when some filter is entirely masked, else None."""
    alive = mask.reshape(-1, mask.shape[-1]).any(axis=0)
    return None if alive.all() else np.flatnonzero(alive)


def sub_pattern(mask: np.ndarray) -> Pattern | None:
    """The most structured pattern a ``(..., cin, cout)`` mask satisfies (None: all kept)."""
    if mask.all():
        return None
    cin = mask.shape[-2]
    for m in NM_GROUP_SIZES:
        if cin % m == 0:
            g = mask.reshape(*mask.shape[:-2], cin // m, m, mask.shape[-1]).sum(axis=-2)
            n = int(g.max())
            if n * 2 <= m and n == int(g.min()) and n >= 1:  # Exactly N in every group.
                return NM(n, m)
    k = mask.size // mask.shape[-1]
    gemm = mask.reshape(k, mask.shape[-1])
    for bh, bw in BLOCK_SIZES:
        if k % bh or gemm.shape[1] % bw:
            continue
        b = gemm.reshape(k // bh, bh, gemm.shape[1] // bw, bw)
        if np.all(b.all(axis=(1, 3)) | ~b.any(axis=(1, 3))):
            return Block(bh, bw)
    return Unstructured()


def block_views(pattern: Block) -> list[Block]:
    """``pattern`` and every smaller block of :data:`BLOCK_SIZES` that tiles it, largest
    first: a mask constant on ``bh x bw`` blocks is also constant on each of these, so a kernel
    may run whichever it supports best."""
    smaller = [Block(bh, bw) for bh, bw in BLOCK_SIZES
               if pattern.bh % bh == 0 and pattern.bw % bw == 0 and (bh, bw) !=
               (pattern.bh, pattern.bw)]
    return [pattern, *smaller]
