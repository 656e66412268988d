"""Containers for rewritten weights in ``sp.variables``, and ``unpack`` back to dense.

Each container is a pytree node: its arrays are leaves (so it can be jitted, sharded,
differentiated and checkpointed with orbax), its layout is static aux data.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.primitives.block_sparse_dot import unpack_block_ell
from jaxsparse.primitives.nm_dot import unpack_nm
from jaxsparse.pruning.patterns import Block, Unstructured


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a rewritten weight sits inside the original one.

    ``shape`` is the original weight shape ``(..., cin, cout)``; ``in_keep``/``out_keep`` are
    the kept input/output channel indices (None: all kept); ``kept_shape`` is the shape of the
    kept weight ``(..., cin', cout')``.
    """

    shape: tuple[int, ...]
    in_keep: tuple[int, ...] | None
    out_keep: tuple[int, ...] | None

    @property
    def kept_shape(self) -> tuple[int, ...]:
        cin = len(self.in_keep) if self.in_keep is not None else self.shape[-2]
        cout = len(self.out_keep) if self.out_keep is not None else self.shape[-1]
        return (*self.shape[:-2], cin, cout)

    def channels(self) -> tuple[np.ndarray, np.ndarray]:
        """The kept ``(input, output)`` channel indices, every channel where none was removed."""
        cin = np.arange(self.shape[-2]) if self.in_keep is None else np.asarray(self.in_keep)
        cout = np.arange(self.shape[-1]) if self.out_keep is None else np.asarray(self.out_keep)
        return cin, cout

    def scatter(self, kept: jax.Array) -> jax.Array:
        """The full-shape weight with ``kept`` at the kept channels and zeros elsewhere."""
        cin, cout = self.channels()
        return jnp.zeros(self.shape, kept.dtype).at[..., cin[:, None], cout[None, :]].set(kept)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DenseWeight:
    """A dense (possibly channel-sliced) weight."""

    kernel: jax.Array
    layout: Layout = dataclasses.field(metadata=dict(static=True))

    def dense_kept(self) -> jax.Array:
        return self.kernel


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NMWeight:
    """An N:M-packed weight (see :mod:`jaxsparse.primitives.nm_dot`).

    ``blob``, when set, is cuSPARSELt's compressed copy of the weight in the layer's compute
    dtype, made once by ``js.sparsify`` on an NVIDIA GPU so that inference does not compress on
    every call. It is an inference copy: ``values`` stays the weight of record (gradients,
    ``unpack``, other platforms); after changing ``values``, compile again.
    ``cusparselt_layout`` is the cuSPARSELt plan (``cusparselt.LAYOUTS``) the CUDA lowering
    runs, and ``blob`` was compressed for: the one the cuda cost table measured fastest at this
    layer's GEMM shape.
    """

    values: jax.Array
    indices: jax.Array
    m: int = dataclasses.field(metadata=dict(static=True))
    layout: Layout = dataclasses.field(metadata=dict(static=True))
    blob: jax.Array | None = None
    cusparselt_layout: str = dataclasses.field(default="a_col", metadata=dict(static=True))

    def dense_kept(self) -> jax.Array:
        ks = self.layout.kept_shape
        k = int(np.prod(ks[:-1]))
        return unpack_nm(self.values, self.indices, k, self.m).reshape(ks)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BlockWeight:
    """A blocked-ELL weight (see :mod:`jaxsparse.primitives.block_sparse_dot`).

    ``gpu_kernel`` is the Pallas kernel it runs on ``cuda`` (``"triton"`` or ``"mosaic"``): the
    one the cuda cost table measured faster for its block size.
    """

    values: jax.Array
    rows: jax.Array
    layout: Layout = dataclasses.field(metadata=dict(static=True))
    gpu_kernel: str = dataclasses.field(default="triton", metadata=dict(static=True))

    def dense_kept(self) -> jax.Array:
        ks = self.layout.kept_shape
        k = int(np.prod(ks[:-1]))
        return unpack_block_ell(self.values, self.rows, k).reshape(ks)


Rewritten = DenseWeight | NMWeight | BlockWeight


def nbytes(tree: Any) -> int:
    """Bytes stored by every array of a pytree (packed weights: values + indices)."""
    return int(sum(np.asarray(a).nbytes for a in jax.tree.leaves(tree)))


def block_shape(pattern: Block | Unstructured) -> tuple[int, int]:
    """The blocked-ELL block ``(bh, bw)`` a block or unstructured pattern packs into."""
    return (1, 1) if isinstance(pattern, Unstructured) else (pattern.bh, pattern.bw)


def is_rewritten(x: Any) -> bool:
    """True for the weight containers a compiled model stores (dense, N:M or blocked-ELL)."""
    return isinstance(x, DenseWeight | NMWeight | BlockWeight)


def unpack(variables: Any) -> Any:
    """Turns every packed or sliced weight of ``sp.variables`` back into a dense full-shape one.

    N:M and block weights come back exactly as the masked weights. Channel-sliced weights come
    back with zeros at removed channels; weights that read a removed input channel are zero
    there too (the compiled model folded that channel's constant value into a bias, see
    ``sp.variables["folded"]``). A layer whose BatchNorm was folded comes back with its output
    columns scaled by it (``js.sparsify(..., fold_batchnorm=False)`` keeps the weights).
    """
    tree = variables.get("model", variables) if isinstance(variables, dict) else variables
    return jax.tree.map(lambda x: x.layout.scatter(x.dense_kept()) if is_rewritten(x) else x,
                        tree, is_leaf=is_rewritten)
