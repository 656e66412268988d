"""``export_onnx(fn, variables, x)``: the ONNX graph of a JAX inference function, for the
external dense baselines (ONNX Runtime, OpenVINO).

A value domain of :mod:`~jaxsparse.compiler.engine`, like the sparsifying rewrite: the
variables are host constants, so every equation that reads only weights (BatchNorm's
``rsqrt(var + eps) * scale``, reshapes of the statistics) is folded in numpy, and only the
equations that read the input become ONNX nodes (:class:`Tensor` values). The runtimes get the
weights as initializers and do their own graph optimisation (BatchNorm folding included), as
they would for a model exported from any framework.

Layout: the jaxpr's axes are *logical* (NHWC for our ResNets); ONNX's Conv and MaxPool want
NCHW. A :class:`Tensor` carries ``perm`` (physical = ``transpose(logical, perm)``), so a conv
produces NCHW and the following element-wise ops, pools and residual adds stay in it without a
transpose; constants are transposed in numpy to the tensor's layout. A transpose node appears
only where a rule needs another layout (the first conv, the flatten before the classifier).

Written here rather than taken from ``jax2onnx`` (0.17.1): it failed on our ResNet-50 (its
``nnx.max_pool`` replacement, a 6-D MaxPool that ONNX Runtime rejects) and pins
``orbax-checkpoint<0.11.37`` and a dozen other packages. Needs the ``onnx`` package (extra
``baselines``). Float32 only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax import lax

from jaxsparse.compiler import engine

OPSET = 17
INPUT, OUTPUT = "x", "logits"


@dataclasses.dataclass(frozen=True)
class Tensor:
    """A value of the ONNX graph: ``name`` holds ``transpose(logical, perm)``."""

    name: str
    shape: tuple[int, ...]  # Logical shape (the jaxpr's).
    perm: tuple[int, ...]

    @property
    def physical_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[p] for p in self.perm)


class _Graph:
    """The nodes and initializers being built."""

    def __init__(self, helper, numpy_helper):
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list = []
        self.initializers: list = []
        self._n = 0

    def fresh(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def node(self, op: str, inputs: list[str], stem: str | None = None, **attrs: Any) -> str:
        out = self.fresh(stem or op.lower())
        self.nodes.append(self.helper.make_node(op, inputs, [out], **attrs))
        return out

    def const(self, array: np.ndarray, stem: str = "c") -> str:
        name = self.fresh(stem)
        self.initializers.append(self.numpy_helper.from_array(np.asarray(array), name))
        return name


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(perm))


def _relayout(g: _Graph, t: Tensor, perm: tuple[int, ...]) -> Tensor:
    """``t`` with physical layout ``perm`` (a Transpose node unless it already is)."""
    perm = tuple(perm)
    if t.perm == perm:
        return t
    # Physical axis i of the result is logical perm[i], i.e. old physical axis inv[perm[i]].
    inv = _inverse(t.perm)
    name = g.node("Transpose", [t.name], perm=[inv[p] for p in perm])
    return Tensor(name, t.shape, perm)


def _const_in(g: _Graph, c: Any, t: Tensor, dtype) -> str:
    """Constant ``c`` (logical, broadcastable to ``t``) as an initializer in ``t``'s layout."""
    c = np.asarray(c, dtype)
    if c.ndim == len(t.shape):
        for axis in range(c.ndim):  # A constant broadcast in the jaxpr goes in at size 1.
            if c.shape[axis] > 1 and np.all(c == c.take([0], axis)):
                c = c.take([0], axis)
        c = np.transpose(c, t.perm)
    elif c.ndim != 0:
        raise ValueError(f"ONNX export: a constant of shape {c.shape} meets an activation of "
                         f"shape {t.shape}; the jaxpr broadcasts explicitly, so this is not "
                         f"expected.")
    return g.const(c)


def _dtype(eqn) -> np.dtype:
    return np.dtype(eqn.outvars[0].aval.dtype)


def _binary(op: str) -> engine.Rule:
    def rule(g: _Graph, eqn, invals):
        a, b = invals
        dt = _dtype(eqn)
        if isinstance(a, Tensor) and isinstance(b, Tensor):
            b = _relayout(g, b, a.perm)
            return [Tensor(g.node(op, [a.name, b.name]), a.shape, a.perm)]
        t, c, t_first = (a, b, True) if isinstance(a, Tensor) else (b, a, False)
        c = np.asarray(c, dt)
        name_op = op
        if op == "Sub" and t_first:  # x - c == x + (-c) exactly; runtimes fuse Add into Conv.
            name_op, c = "Add", -c
        if op == "Max" and not np.any(c):
            return [Tensor(g.node("Relu", [t.name]), t.shape, t.perm)]
        cname = _const_in(g, c, t, dt)
        ins = [t.name, cname] if t_first else [cname, t.name]
        return [Tensor(g.node(name_op, ins), t.shape, t.perm)]
    return rule


def _unary(op: str) -> engine.Rule:
    def rule(g: _Graph, eqn, invals):
        (t,) = invals
        return [Tensor(g.node(op, [t.name]), t.shape, t.perm)]
    return rule


def _rsqrt(g: _Graph, eqn, invals):
    (t,) = invals
    return [Tensor(g.node("Reciprocal", [g.node("Sqrt", [t.name])]), t.shape, t.perm)]


def _conv(g: _Graph, eqn, invals):
    lhs, rhs = invals
    p = eqn.params
    if not isinstance(lhs, Tensor) or isinstance(rhs, Tensor):
        raise ValueError("ONNX export: a convolution needs the activation as its first operand "
                         "and a constant (weight) kernel.")
    if any(d != 1 for d in p["lhs_dilation"]) or p["batch_group_count"] != 1:
        raise ValueError("ONNX export: transposed (lhs-dilated) or batch-grouped convolutions "
                         "are not supported.")
    dn = p["dimension_numbers"]
    x = _relayout(g, lhs, tuple(dn.lhs_spec))
    w = np.transpose(np.asarray(rhs, np.float32), tuple(dn.rhs_spec))  # (O, I, *window)
    pads = [lo for lo, _ in p["padding"]] + [hi for _, hi in p["padding"]]
    out = g.node("Conv", [x.name, g.const(w, "w")], kernel_shape=list(w.shape[2:]),
                 strides=list(p["window_strides"]), pads=pads,
                 dilations=list(p["rhs_dilation"]), group=p["feature_group_count"])
    return [Tensor(out, tuple(eqn.outvars[0].aval.shape), tuple(dn.out_spec))]


def _dot(g: _Graph, eqn, invals):
    lhs, rhs = invals
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    if (not isinstance(lhs, Tensor) or isinstance(rhs, Tensor) or lb or rb
            or len(lhs.shape) != 2 or np.ndim(rhs) != 2):
        raise ValueError("ONNX export: dot_general is supported as activation (2-D) x constant "
                         "(2-D) weight without batch dimensions.")
    x = _relayout(g, lhs, (1, 0) if tuple(lc) == (0,) else (0, 1))
    w = np.asarray(rhs, np.float32)
    w = w if tuple(rc) == (0,) else w.T
    out = g.node("MatMul", [x.name, g.const(w, "w")])
    return [Tensor(out, tuple(eqn.outvars[0].aval.shape), (0, 1))]


def _reshape(g: _Graph, eqn, invals):
    t = _relayout(g, invals[0], tuple(range(len(invals[0].shape))))
    shape = tuple(eqn.outvars[0].aval.shape)
    out = g.node("Reshape", [t.name, g.const(np.asarray(shape, np.int64), "shape")])
    return [Tensor(out, shape, tuple(range(len(shape))))]


def _transpose(g: _Graph, eqn, invals):
    (t,) = invals
    pinv = _inverse(tuple(eqn.params["permutation"]))
    # No node: physical axis i (old logical t.perm[i]) is new logical pinv[t.perm[i]].
    return [Tensor(t.name, tuple(eqn.outvars[0].aval.shape), tuple(pinv[a] for a in t.perm))]


def _reduce(op: str) -> engine.Rule:
    def rule(g: _Graph, eqn, invals):
        (t,) = invals
        axes = set(eqn.params["axes"])
        phys = [i for i, a in enumerate(t.perm) if a in axes]
        kept = [a for a in t.perm if a not in axes]  # Logical axes left, in physical order.
        rank = {a: r for r, a in enumerate(sorted(kept))}
        if op == "ReduceSum":
            out = g.node(op, [t.name, g.const(np.asarray(phys, np.int64), "axes")], keepdims=0)
        else:
            out = g.node(op, [t.name], axes=phys, keepdims=0)
        return [Tensor(out, tuple(eqn.outvars[0].aval.shape), tuple(rank[a] for a in kept))]
    return rule


def _max_pool(g: _Graph, eqn, invals):
    (t,) = invals
    p = eqn.params
    win, strides, pad = p["window_dimensions"], p["window_strides"], p["padding"]
    if any(d != 1 for d in p["base_dilation"]):
        raise ValueError("ONNX export: reduce_window_max with base dilation is not supported.")
    trivial = [a for a in range(len(win)) if win[a] == 1 and strides[a] == 1
               and tuple(pad[a]) == (0, 0)]
    if len(trivial) < 2:
        raise ValueError(f"ONNX export: reduce_window_max over window {win} pools the batch or "
                         f"channel axis; MaxPool needs two untouched (N, C) axes.")
    if set(t.perm[:2]) <= set(trivial):
        x = t
    else:
        spatial = [a for a in range(len(win)) if a not in trivial[:2]]
        x = _relayout(g, t, (*trivial[:2], *spatial))
    sp = x.perm[2:]
    out = g.node("MaxPool", [x.name], kernel_shape=[win[a] for a in sp],
                 strides=[strides[a] for a in sp],
                 pads=[pad[a][0] for a in sp] + [pad[a][1] for a in sp],
                 dilations=[p["window_dilation"][a] for a in sp])
    return [Tensor(out, tuple(eqn.outvars[0].aval.shape), x.perm)]


def _convert(g: _Graph, eqn, invals):
    (t,) = invals
    dt = _dtype(eqn)
    if dt != np.float32:
        raise ValueError(f"ONNX export: a conversion to {dt} (the export is float32 only).")
    return [t]


RULES: dict[Any, engine.Rule] = {
    lax.conv_general_dilated_p: _conv, lax.dot_general_p: _dot,
    lax.add_p: _binary("Add"), lax.sub_p: _binary("Sub"), lax.mul_p: _binary("Mul"),
    lax.div_p: _binary("Div"), lax.max_p: _binary("Max"), lax.min_p: _binary("Min"),
    lax.rsqrt_p: _rsqrt, lax.sqrt_p: _unary("Sqrt"), lax.exp_p: _unary("Exp"),
    lax.tanh_p: _unary("Tanh"), lax.logistic_p: _unary("Sigmoid"), lax.neg_p: _unary("Neg"),
    lax.reshape_p: _reshape, lax.squeeze_p: _reshape, lax.transpose_p: _transpose,
    lax.reduce_sum_p: _reduce("ReduceSum"), lax.reduce_max_p: _reduce("ReduceMax"),
    lax.reduce_window_max_p: _max_pool, lax.convert_element_type_p: _convert,
}


def _fold(g: _Graph, eqn, invals):
    """An equation of constants only: evaluated in numpy, at export time."""
    out = eqn.primitive.bind(*invals, **eqn.params)
    outs = out if eqn.primitive.multiple_results else [out]
    return [np.asarray(o) for o in outs]


def _no_rule(g: _Graph, eqn, invals):
    raise ValueError(f"ONNX export: no rule for primitive {eqn.primitive.name!r} on the "
                     f"activation; supported: {sorted(p.name for p in RULES)}.")


DOMAIN = engine.Domain(name="onnx", rules=RULES, tracks=lambda v: isinstance(v, Tensor),
                       untracked=_fold, no_rule=_no_rule, lift=np.asarray)


def export_onnx(fn: Callable[..., jax.Array], variables: Any, x: jax.Array):
    """The ONNX model of ``fn(variables, x)`` with ``variables`` baked in as initializers.

    Args:
        fn: a pure inference function ``fn(variables, x) -> logits`` (e.g. a study's
            ``apply_fn``).
        variables: its weights (a pytree of float32 arrays).
        x: an example input (float32); its shape, batch included, is the graph's.

    Returns:
        An ``onnx.ModelProto`` (opset 17) with input ``"x"`` and output ``"logits"``, checked by
        ``onnx.checker``.

    Raises:
        ValueError: if ``onnx`` is not installed, the input is not float32, or ``fn`` applies
            a primitive to the activation that has no ONNX rule here (named).
    """
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError as e:
        raise ValueError("ONNX export needs the 'onnx' package: pip install "
                         "'jaxsparse[baselines]'.") from e
    if np.dtype(x.dtype) != np.float32:
        raise ValueError(f"ONNX export is float32 only; the input is {x.dtype}.")
    closed, _, out_shape = engine.trace(fn, variables, x)
    if not hasattr(out_shape, "shape"):
        raise ValueError("ONNX export: fn must return one array (the logits).")
    g = _Graph(helper, numpy_helper)
    leaves = [np.asarray(v) for v in jax.tree.leaves(variables)]
    x_in = Tensor(INPUT, tuple(x.shape), tuple(range(x.ndim)))
    consts = [np.asarray(c) for c in closed.consts]
    (y,) = engine.run(DOMAIN, g, closed.jaxpr, consts, [*leaves, x_in])
    if not isinstance(y, Tensor):
        raise ValueError("ONNX export: the output does not depend on the input.")
    y = _relayout(g, y, tuple(range(len(y.shape))))
    g.nodes.append(helper.make_node("Identity", [y.name], [OUTPUT]))
    graph = helper.make_graph(
        g.nodes, "jaxsparse", [helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT,
                                                             list(x.shape))],
        [helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, list(y.shape))],
        initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="jaxsparse")
    model.ir_version = min(model.ir_version, 9)  # Readable by older runtimes too.
    onnx.checker.check_model(model)
    return model
