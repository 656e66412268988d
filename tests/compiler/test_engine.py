"""The one jaxpr engine: both domains (channel groups, the rewrite) read one flow table."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxsparse as js
from jaxsparse.compiler import channels, engine, groups, interpreter

DN = ("NHWC", "HWIO", "NHWC")


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {"a": jnp.asarray(rng.standard_normal((3, 3, 4, 8)) * 0.3, jnp.float32),
            "b": jnp.asarray(rng.standard_normal((1, 1, 4, 8)) * 0.3, jnp.float32),
            "s": jnp.asarray(rng.standard_normal(8) + 2.0, jnp.float32),
            "head": jnp.asarray(rng.standard_normal((8, 3)) * 0.3, jnp.float32)}


def _conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)


def test_every_flow_primitive_has_a_rewrite_rule_and_a_groups_rule():
    assert set(channels.FLOW) <= set(interpreter.RULES)
    assert set(channels.FLOW) <= set(groups.DOMAIN.rules)
    assert set(channels.LAYERS) <= set(interpreter.RULES) & set(groups.DOMAIN.rules)


def test_groups_follow_reshape_and_calls():
    """Two convs added after a flatten (reshape), inside a jitted call, are coupled."""

    @jax.jit
    def body(p, x):
        ya = jnp.reshape(_conv(x, p["a"]) * p["s"], (-1, 8))
        yb = jnp.reshape(_conv(x, p["b"]), (-1, 8))
        return ya + yb

    fn = lambda p, x: body(p, x) @ p["head"]
    got = js.channel_groups(fn, _params(), jnp.ones((2, 5, 5, 4)))
    coupled = [g for g in got if len(g.kernels) > 1]
    assert [set(g.kernels) for g in coupled] == [{"a", "b"}]
    assert coupled[0].vectors == ("s",)


def _transposing(p, x):
    y = jax.nn.relu(_conv(x, p["a"]) + 0.5)
    y = jnp.transpose(y, (0, 3, 1, 2))  # No rule: the pass cannot keep channels sliced here.
    return jnp.mean(y, axis=(2, 3)) @ p["head"]


def test_missing_rule_is_an_error_naming_the_primitive():
    p, x = _params(), jnp.ones((2, 5, 5, 4))
    masks = js.prune(p, "channel", 0.5, include="a")
    with pytest.raises(interpreter.UnsupportedPrimitiveError, match="'transpose'.*4 of 8"):
        js.sparsify(_transposing, p, masks, x)


def test_missing_rule_densify_equals_masked_and_is_reported():
    p = _params()
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 4))
    masks = js.prune(p, "channel", 0.5, include="a")
    sp = js.sparsify(_transposing, p, masks, x, missing_rule="densify")
    ref = _transposing(js.apply_masks(p, masks), x)
    np.testing.assert_allclose(jax.jit(sp)(sp.variables, x), ref, rtol=1e-5, atol=1e-6)
    assert sp.report.densified == (("transpose", 1),)
    assert "transpose (x1)" in str(sp.report)
    assert sp.report.as_dict()["densified"] == {"transpose": 1}


def test_bad_missing_rule():
    p = _params()
    with pytest.raises(ValueError, match="missing_rule='skip'.*'error', 'densify'"):
        js.sparsify(_transposing, p, None, jnp.ones((2, 5, 5, 4)), missing_rule="skip")


def test_loops_are_not_inlined():
    """scan carries a ``jaxpr`` too, but it is a loop: the engine must not inline it."""
    def fn(p, x):
        def step(c, _):
            return c @ p["w"], None
        return lax.scan(step, x, None, length=2)[0]

    closed, _, _ = engine.trace(fn, {"w": jnp.eye(3)}, jnp.ones((1, 3)))
    scan = next(e for e in closed.jaxpr.eqns if e.primitive.name == "scan")
    assert engine.called(scan) is None
    p = {"w": jnp.asarray(np.random.default_rng(0).standard_normal((4, 4)), jnp.float32)}
    masks = js.prune(p, "2:4", include="w")
    sp = js.sparsify(fn, p, masks, jnp.ones((2, 4)), policy="sparse")
    np.testing.assert_allclose(sp(sp.variables, jnp.ones((2, 4))),
                               fn(js.apply_masks(p, masks), jnp.ones((2, 4))), rtol=1e-5)


def test_sparsify_with_pallas_interpreter():
    """interpret=True runs every block layer through the Pallas kernel in the interpreter."""
    rng = np.random.default_rng(0)
    p = {"w": jnp.asarray(rng.standard_normal((3, 3, 16, 32)) * 0.3, jnp.float32)}
    x = jnp.asarray(rng.standard_normal((2, 6, 6, 16)), jnp.float32)
    fn = lambda p, x: _conv(x, p["w"])
    masks = js.prune(p, "block:8x8", 0.75, include="w")
    sp = js.sparsify(fn, p, masks, x, policy="sparse", interpret=True)
    np.testing.assert_allclose(sp(sp.variables, x), fn(js.apply_masks(p, masks), x),
                               rtol=1e-5, atol=1e-5)
    row = sp.report.rows[0]
    assert (row.lowering, row.kernel) == ("block", "pallas-interpret")
    assert row.action == "block_sparse_dot (pallas-interpret)"
    assert "Pallas interpreter" in sp.report.kernels
    with pytest.raises(ValueError, match="needs backend='pallas', not 'xla'"):
        js.sparsify(fn, p, masks, x, backend="xla", interpret=True)


def _blocks(v, x):
    """Two residual blocks: the one value between them is the only cut inside the blocks'
    span (the first block's input waits for its add)."""
    h = x
    for w in (v["a"], v["b"]):
        h = jax.nn.relu(h @ w + h)
    return h.sum(axis=1)


def test_cuts_are_where_one_value_crosses_and_the_parts_compose_to_the_function():
    v = {"a": jnp.eye(4) * 0.5, "b": jnp.ones((4, 4))}
    x = jax.random.normal(jax.random.key(0), (3, 4))
    closed, _, _ = engine.trace(_blocks, v, x)
    n_weights = len(jax.tree.leaves(v))
    points = engine.cuts(closed, n_weights)
    eqns = closed.jaxpr.eqns
    names = [e.primitive.name for e in eqns]
    dots = [i for i, name in enumerate(names) if name == "dot_general"]
    # Inside a block (after its dot, before its add) the block's input is live too.
    assert not any(d < k <= d + 1 for d in dots for k in points)
    assert any(dots[0] < k <= dots[1] for k in points)  # Between the blocks.
    for k in points:
        head, tail = engine.split(closed, n_weights, k)
        assert len(head.jaxpr.eqns) + len(tail.jaxpr.eqns) == len(eqns)
        leaves = jax.tree.leaves(v)
        mid = jax.core.eval_jaxpr(head.jaxpr, head.consts, *leaves, x)
        assert len(mid) == 1
        got = jax.core.eval_jaxpr(tail.jaxpr, tail.consts, *leaves, *mid)[0]
        np.testing.assert_array_equal(np.asarray(got), np.asarray(_blocks(v, x)))
    inside = dots[0] + 1
    with pytest.raises(ValueError, match="not a point where one value crosses"):
        engine.split(closed, n_weights, inside)
