"""How a channel axis flows through each jaxpr primitive: the one table both domains read.

The compiler's two jaxpr domains (:mod:`~jaxsparse.compiler.groups`, which kernels' output
channels are coupled, and :mod:`~jaxsparse.compiler.interpreter`, the sparsifying rewrite) ask
the same question of every primitive: given the channel axis of each input, which axis of the
output still holds those channels (or none)? :data:`FLOW` answers it, so teaching a new
primitive to the pass starts here (then its rewrite rule in ``interpreter.RULES``; a test checks
that every primitive of :data:`FLOW` has one).

:data:`HOST` lists the primitives evaluated in numpy when every input is a host constant (a
function of the weights only, such as ``scale * rsqrt(var + eps)``): the rewrite folds them at
compile time and the groups analysis follows weight paths through them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from jax import lax
from jax.extend.core import Primitive

# The two layer primitives: the pass rewrites them; they consume channels and make new ones.
LAYERS = (lax.conv_general_dilated_p, lax.dot_general_p)


def _bdim(a, shape, broadcast_dimensions, **_):
    expanded = np.reshape(a, [a.shape[broadcast_dimensions.index(d)] if d in broadcast_dimensions
                              else 1 for d in range(len(shape))])
    return np.broadcast_to(expanded, shape)


# Elementwise primitives, with their numpy twin (None: not folded on the host).
ELEMENTWISE: dict[Primitive, Callable | None] = {
    lax.add_p: np.add, lax.sub_p: np.subtract, lax.mul_p: np.multiply, lax.div_p: np.divide,
    lax.max_p: np.maximum, lax.min_p: np.minimum, lax.neg_p: np.negative, lax.exp_p: np.exp,
    lax.log_p: np.log, lax.tanh_p: np.tanh, lax.sqrt_p: np.sqrt, lax.abs_p: np.abs,
    lax.sign_p: np.sign, lax.log1p_p: np.log1p, lax.expm1_p: np.expm1, lax.square_p: np.square,
    lax.pow_p: np.power, lax.rsqrt_p: lambda a: 1.0 / np.sqrt(a),
    lax.logistic_p: lambda a: 1.0 / (1.0 + np.exp(-a)),
    lax.integer_pow_p: lambda a, y: np.power(a, y), lax.erf_p: None,
}

# Host (numpy) evaluation: elementwise ops and the layout ops constants pass through.
HOST: dict[Primitive, Callable] = {
    **{p: f for p, f in ELEMENTWISE.items() if f is not None},
    lax.convert_element_type_p: lambda a, new_dtype, **_: np.asarray(a).astype(new_dtype),
    lax.reshape_p: lambda a, new_sizes, dimensions, **_: (
        np.reshape(a, new_sizes) if dimensions is None else None),
    lax.broadcast_in_dim_p: _bdim,
}
HOST_PARAMS: dict[Primitive, tuple[str, ...]] = {
    lax.convert_element_type_p: ("new_dtype",), lax.integer_pow_p: ("y",),
    lax.reshape_p: ("new_sizes", "dimensions"),
    lax.broadcast_in_dim_p: ("shape", "broadcast_dimensions")}

Flow = Callable[[Any, tuple[int | None, ...]], int | None]


def _same_axis(eqn, axes: tuple[int | None, ...]) -> int | None:
    """Elementwise: the channel axis survives when every channel input has it at one place."""
    got = {a for a in axes if a is not None}
    return got.pop() if len(got) == 1 else None


def _reduce(eqn, axes: tuple[int | None, ...]) -> int | None:
    """Reductions over other axes keep the channel axis (renumbered)."""
    (axis,) = axes
    reduced = tuple(eqn.params["axes"])
    if axis is None or axis in reduced:
        return None
    return axis - sum(a < axis for a in reduced)


def _window_max(eqn, axes: tuple[int | None, ...]) -> int | None:
    """Max pooling with a window of one channel keeps the channel axis."""
    (axis,) = axes
    p = eqn.params
    if axis is None or p["window_dimensions"][axis] != 1 or \
            tuple(p["padding"][axis]) != (0, 0) or p["window_strides"][axis] != 1:
        return None
    return axis


def _reshape(eqn, axes: tuple[int | None, ...]) -> int | None:
    """Reshapes (flatten, unflatten) that leave a last channel axis whole keep it last."""
    axis = axes[0]
    shape = eqn.invars[0].aval.shape
    sizes = tuple(eqn.params["new_sizes"])
    if len(axes) != 1 or axis is None or axis != len(shape) - 1 or \
            eqn.params.get("dimensions") is not None or sizes[-1] != shape[axis]:
        return None
    return len(sizes) - 1


FLOW: dict[Primitive, Flow] = {
    **{p: _same_axis for p in ELEMENTWISE},
    lax.convert_element_type_p: _same_axis,
    lax.reduce_sum_p: _reduce,
    lax.reduce_max_p: _reduce,
    lax.reduce_window_max_p: _window_max,
    lax.reshape_p: _reshape,
}


def out_axis(eqn, axes: tuple[int | None, ...]) -> int | None:
    """The output's channel axis for inputs whose channel axes are ``axes`` (None: the input
    carries no channels), or None when the channels do not survive ``eqn`` (or it has no
    entry in :data:`FLOW`)."""
    flow = FLOW.get(eqn.primitive)
    return None if flow is None else flow(eqn, axes)
