"""The special values the sparsifying interpreter carries besides plain arrays.

:class:`Sliced` is an activation whose channel axis holds only the kept channels; the removed
ones are known constants (``fill``), exactly as in the masked model. :class:`WRef` is a weight
leaf of ``variables`` that has not been read yet, so the layer consuming it can be rewritten.
:class:`Pending` is a layer's output followed by per-channel affine ops (an inference
BatchNorm) and, where the layer's kernel fuses them, a residual add and a ReLU (its
*epilogue*), which the pass either tracks, to fold them into the layer, or has already folded.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.compiler.packed import DenseWeight, Rewritten
from jaxsparse.kernels.cpu.sparse_conv import apply_epilogue


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
        return self._widen(np.arange(self.full))

    def expand(self, keep: np.ndarray) -> Sliced:
        """The same activation restricted to a superset ``keep`` of its channels."""
        if np.array_equal(keep, self.keep):
            return self
        return Sliced(self._widen(np.asarray(keep)), self.axis, keep, self.full, self.fill)

    def _widen(self, channels: np.ndarray) -> jax.Array:
        """The activation on ``channels`` (a sorted superset of ``keep``): kept data where it
        exists, the constant fill elsewhere. Built as one static gather from ``[data, fills]``
        (XLA's CPU scatter is several times slower than a gather for this)."""
        extra = np.setdiff1d(channels, self.keep)
        if len(extra) == 0:
            return self.data
        shape = list(self.data.shape)
        shape[self.axis] = len(extra)
        vshape = [1] * self.data.ndim
        vshape[self.axis] = len(extra)
        fill = self.fill if isinstance(self.fill, np.ndarray) else jnp.asarray(self.fill)
        fills = jnp.broadcast_to(fill[extra].astype(self.data.dtype).reshape(vshape), shape)
        src = jnp.concatenate([self.data, fills], axis=self.axis)
        where = np.searchsorted(self.keep, channels)
        is_kept = np.isin(channels, self.keep)
        order = np.where(is_kept, where, len(self.keep) + np.searchsorted(extra, channels))
        return jnp.take(src, order, axis=self.axis)


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


_tokens = itertools.count()


@dataclasses.dataclass
class Pending:
    """A layer's output ``base`` (plain or :class:`Sliced` on the last axis) whose true value
    is ``relu?(base * scale + shift + residual)`` per channel, after ``step`` ops: the
    per-channel affine ones, then the ``epilogue`` ops (``"add"`` of ``residual``,
    ``"relu"``).

    Compile time, first pass (``folded=False``): the ops are tracked, not run (an epilogue only
    where the layer's kernel can fuse it: ``fusable``); when the value is needed,
    :meth:`value` applies them and the pass records the point for the layer ``key``. A layer
    whose output was needed at exactly one point (or, when it ends with an epilogue, as the
    same tracked value, ``token``, at several) is then compiled with the ops folded into its
    weights, bias and kernel epilogue (``folded=True``), and the ``final`` ops are skipped.
    With an epilogue the layer itself runs only when the value is needed: ``run(residual)``
    (once: the result is kept, so a value read at several places, as a residual block's
    output is, runs it once).
    """

    base: Any
    key: str
    scale: np.ndarray | None = None  # (channels,); None once folded.
    shift: np.ndarray | None = None
    step: int = 0
    folded: bool = False
    final: int = 0
    epilogue: tuple[str, ...] = ()
    residual: Any = None
    fusable: bool = False
    run: Callable[[Any], Any] | None = None
    token: int = dataclasses.field(default_factory=lambda: next(_tokens), init=False)
    _result: Any = dataclasses.field(default=None, init=False, repr=False)

    @property
    def point(self) -> tuple:
        """What the pass records where this tracked value is needed: ``(step, scale, shift,
        epilogue, token)``."""
        return self.step, self.scale, self.shift, self.epilogue, self.token

    @property
    def affine_steps(self) -> int:
        """While tracked: how many of the ``step`` ops are per-channel affine ones."""
        return self.step - len(self.epilogue)

    def value(self) -> Any:
        """The value as the original program has it (plain or :class:`Sliced`)."""
        if self.folded:
            if self.run is None:
                return self.base
            if self._result is None:
                self._result = self.run(self.residual)
            return self._result
        if self.step == 0:
            return self.base
        b = self.base
        if self.affine_steps and isinstance(b, Sliced):
            data = b.data * self.scale[b.keep].astype(b.data.dtype) + \
                self.shift[b.keep].astype(b.data.dtype)
            fill = b.fill * self.scale + self.shift if isinstance(b.fill, np.ndarray) else \
                jnp.asarray(b.fill) * self.scale + self.shift
            b = Sliced(data, b.axis, b.keep, b.full, fill)
        elif self.affine_steps:
            b = b * self.scale.astype(b.dtype) + self.shift.astype(b.dtype)
        return with_epilogue(b, self.residual if "add" in self.epilogue else None,
                             "relu" in self.epilogue)


def with_epilogue(v: Any, residual: Any, relu: bool) -> Any:
    """``relu?(v + residual)`` for a plain or :class:`Sliced` ``v`` (a sliced ``v`` takes a
    residual sliced to the same channels)."""
    if isinstance(v, Sliced):
        data = apply_epilogue(v.data, None, None if residual is None else residual.data, relu)
        fill = epilogue_fill(v.fill, None if residual is None else residual.fill, relu)
        return Sliced(data, v.axis, v.keep, v.full, fill)
    return apply_epilogue(v, None, residual, relu)


def epilogue_fill(fill: Any, residual_fill: Any, relu: bool) -> Any:
    """The epilogue on a sliced value's ``fill`` (the removed channels' constants), kept in
    numpy while it is a host constant."""
    if residual_fill is not None:
        fill = fill + residual_fill
    if relu:
        fill = np.maximum(fill, 0) if isinstance(fill, np.ndarray) else jnp.maximum(fill, 0)
    return fill


def plain(v: Any, on_materialize=None) -> Any:
    """A plain array for any interpreter value (densifying or reading the weight)."""
    if isinstance(v, Pending):
        raise TypeError("a Pending value must be resolved by the interpreter (ctx.plain).")
    if isinstance(v, Sliced):
        return v.densify()
    if isinstance(v, WRef):
        if on_materialize is not None:
            on_materialize(v)
        return v.dense()
    return v


def is_special(v: Any) -> bool:
    return isinstance(v, Sliced | WRef | Pending)
