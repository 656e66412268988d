"""The two kinds of special value the sparsifying interpreter carries besides plain arrays.

:class:`Sliced` is an activation whose channel axis holds only the kept channels; the removed
ones are known constants (``fill``), exactly as in the masked model. :class:`WRef` is a weight
leaf of ``variables`` that has not been read yet, so the layer consuming it can be rewritten.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.compiler.packed import DenseWeight, Rewritten


@dataclasses.dataclass
class Sliced:
    """An activation restricted to ``keep`` channels along ``axis`` (of ``full`` channels).

    ``fill`` is a ``(full,)`` vector: the (spatially constant) value of every channel in the
    masked model; only its removed entries are used.
    """

    data: jax.Array
    axis: int
    keep: np.ndarray
    full: int
    fill: jax.Array

    @property
    def removed(self) -> np.ndarray:
        return np.setdiff1d(np.arange(self.full), self.keep)

    def densify(self) -> jax.Array:
        """The full activation, removed channels set to their constant."""
        shape = [1] * self.data.ndim
        shape[self.axis] = self.full
        full_shape = list(self.data.shape)
        full_shape[self.axis] = self.full
        base = jnp.broadcast_to(jnp.asarray(self.fill, self.data.dtype).reshape(shape),
                                full_shape)
        index = (slice(None),) * self.axis + (self.keep,)
        return base.at[index].set(self.data)

    def expand(self, keep: np.ndarray) -> Sliced:
        """The same activation restricted to a superset ``keep`` of its channels."""
        if np.array_equal(keep, self.keep):
            return self
        pos = np.searchsorted(keep, self.keep)
        shape = list(self.data.shape)
        shape[self.axis] = len(keep)
        vshape = [1] * self.data.ndim
        vshape[self.axis] = len(keep)
        base = jnp.broadcast_to(jnp.asarray(self.fill[keep], self.data.dtype).reshape(vshape),
                                shape)
        index = (slice(None),) * self.axis + (pos,)
        return Sliced(base.at[index].set(self.data), self.axis, keep, self.full, self.fill)


@dataclasses.dataclass
class WRef:
    """A weight leaf, read lazily. ``value`` is the stored leaf (a dense array or a rewritten
    weight), ``mask`` its bool mask (None: unmasked), ``dtype`` the dtype the program casts it
    to before use (None: as stored)."""

    path: str
    value: Any
    mask: np.ndarray | None
    dtype: Any = None

    def dense(self) -> jax.Array:
        """The weight as the original program sees it (full shape, masked)."""
        v = self.value
        if isinstance(v, DenseWeight) and v.layout.in_keep is None and v.layout.out_keep is None:
            v = v.kernel
        if isinstance(v, Rewritten):
            v = v.layout.scatter(v.dense_kept())
        return v if self.dtype is None else v.astype(self.dtype)


def plain(v: Any, on_materialize=None) -> Any:
    """A plain array for any interpreter value (densifying or reading the weight)."""
    if isinstance(v, Sliced):
        return v.densify()
    if isinstance(v, WRef):
        if on_materialize is not None:
            on_materialize(v)
        return v.dense()
    return v


def is_special(v: Any) -> bool:
    return isinstance(v, Sliced | WRef)
