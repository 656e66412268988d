import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsparse as js
from tests.helpers import run_cli


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    params = {"l1": {"kernel": jnp.asarray(rng.standard_normal((16, 8)), jnp.float32),
                     "bias": jnp.zeros(8)},
              "l2": {"kernel": jnp.asarray(rng.standard_normal((8, 4)), jnp.float32)}}
    x = jnp.asarray(rng.standard_normal((32, 16)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((32, 4)), jnp.float32)

    def loss(p):
        h = jax.nn.relu(x @ p["l1"]["kernel"] + p["l1"]["bias"])
        return jnp.mean((h @ p["l2"]["kernel"] - y) ** 2)

    return params, loss


def _train(tx, params, loss, steps):
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    for _ in range(steps):
        params, state = step(params, state)
    return params, state


@pytest.mark.parametrize("inner", [
    optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.05, momentum=0.9, nesterov=True)),
    optax.adamw(1e-2, weight_decay=1e-2),
], ids=["sgd_momentum_wd", "adamw"])
@pytest.mark.parametrize("pattern,sparsity", [("2:4", None), ("unstructured", 0.7),
                                              ("block:4x4", 0.5), ("channel", 0.5)])
def test_pruned_weights_stay_exactly_zero_for_100_steps(inner, pattern, sparsity):
    params, loss = _problem()
    tx = js.transforms.masked_pruning(inner, pattern, js.schedules.one_shot(3, sparsity),
                                 include="kernel")
    state = tx.init(params)
    step = jax.jit(lambda p, s: (lambda u_s: (optax.apply_updates(p, u_s[0]), u_s[1]))(
        tx.update(jax.grad(loss)(p), s, p)))
    loss0 = float(loss(params))
    for i in range(100):
        params, state = step(params, state)
        if i >= 3:
            for path in ("l1", "l2"):
                m = np.asarray(state.masks[path]["kernel"])
                assert np.all(np.asarray(params[path]["kernel"])[~m] == 0.0)
    assert state.masks["l1"]["bias"] is None
    expected = 0.5 if pattern in ("2:4", "block:4x4", "channel") else 0.7
    assert js.measured_sparsity(state.masks) == pytest.approx(expected, abs=0.05)
    assert float(loss(params)) < loss0


def test_gradual_reaches_final_sparsity_at_end():
    params, loss = _problem()
    sched = js.schedules.gradual(0.0, 0.8, 2, 20, 3)
    tx = js.transforms.masked_pruning(optax.sgd(0.01), "unstructured", sched, include="kernel")
    _, state = _train(tx, params, loss, 21)
    assert js.measured_sparsity(state.masks) == pytest.approx(0.8, abs=0.01)


def test_gradual_with_erk_and_global_distributions():
    params, loss = _problem()
    for dist in ("erk", "global"):
        tx = js.transforms.masked_pruning(optax.sgd(0.01), "unstructured",
                                     js.schedules.gradual(0.0, 0.6, 0, 10, 2),
                                     distribution=dist, include="kernel")
        _, state = _train(tx, params, loss, 11)
        assert js.measured_sparsity(state.masks) == pytest.approx(0.6, abs=0.01)


def test_jit_and_eager_agree():
    params, loss = _problem()
    tx = js.transforms.masked_pruning(optax.sgd(0.1, momentum=0.9), "2:4", js.schedules.one_shot(1),
                                 include="kernel")
    s_eager, s_jit = tx.init(params), tx.init(params)
    p_eager = p_jit = params
    update = jax.jit(tx.update)
    for _ in range(4):
        g = jax.grad(loss)(p_eager)
        u, s_eager = tx.update(g, s_eager, p_eager)
        p_eager = optax.apply_updates(p_eager, u)
        g = jax.grad(loss)(p_jit)
        u, s_jit = update(g, s_jit, p_jit)
        p_jit = optax.apply_updates(p_jit, u)
    for a, b in zip(jax.tree.leaves(p_eager), jax.tree.leaves(p_jit), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_update_without_params_is_a_clear_error():
    params, _ = _problem()
    tx = js.transforms.masked_pruning(optax.sgd(0.1), "2:4", js.schedules.one_shot(0),
                                 include="kernel")
    with pytest.raises(ValueError, match="needs params"):
        tx.update(params, tx.init(params))


_SHARDED = """
import jax, jax.numpy as jnp, numpy as np, optax
from jax.sharding import NamedSharding, PartitionSpec as P
import jaxsparse as js
mesh = jax.make_mesh((4,), ("x",))
params = {"k": jax.device_put(jnp.asarray(np.random.default_rng(0).standard_normal((16, 8)),
                                          jnp.float32), NamedSharding(mesh, P(None, "x")))}
tx = js.transforms.masked_pruning(optax.sgd(0.1, momentum=0.9), "2:4", js.schedules.one_shot(0),
                             include="k")
state = tx.init(params)
@jax.jit
def step(p, s):
    u, s = tx.update(jax.tree.map(jnp.ones_like, p), s, p)
    return optax.apply_updates(p, u), s
for _ in range(5):
    params, state = step(params, state)
k = np.asarray(params["k"])
assert np.all(k[~np.asarray(state.masks["k"])] == 0)
assert np.all((k.reshape(4, 4, 8) != 0).sum(1) <= 2)
print("SHARDED_OK", len(params["k"].sharding.device_set))
"""


def test_works_with_sharded_params():
    proc = run_cli(["-c", _SHARDED], env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4",
                                          "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SHARDED_OK 4" in proc.stdout


def test_ste_params_forward_is_sparse_and_gradient_is_dense():
    params, loss = _problem()
    sparse = js.ste_params(params, "2:4", include="kernel")
    masks = js.prune(params, "2:4", include="kernel")
    np.testing.assert_array_equal(sparse["l1"]["kernel"],
                                  js.apply_masks(params, masks)["l1"]["kernel"])
    g_ste = jax.grad(lambda p: loss(js.ste_params(p, "2:4", include="kernel")))(params)
    g_masked = jax.grad(loss)(js.apply_masks(params, masks))
    for a, b in zip(jax.tree.leaves(g_ste), jax.tree.leaves(g_masked), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)  # Straight through: dense gradient.
    assert np.any(np.asarray(g_ste["l1"]["kernel"])[~np.asarray(masks["l1"]["kernel"])] != 0)


def test_sr_ste_adds_the_sparse_refined_decay():
    params, _ = _problem()
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    tx = js.transforms.sr_ste(optax.identity(), "2:4", decay=0.5, include="kernel")
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    m = np.asarray(js.prune(params, "2:4", include="kernel")["l1"]["kernel"])
    u, w = np.asarray(updates["l1"]["kernel"]), np.asarray(params["l1"]["kernel"])
    np.testing.assert_allclose(u[~m], 0.5 * w[~m])
    assert np.all(u[m] == 0) and np.all(np.asarray(updates["l1"]["bias"]) == 0)


def test_sr_ste_needs_nm():
    with pytest.raises(ValueError, match="N:M"):
        js.transforms.sr_ste(optax.sgd(0.1), "unstructured")
