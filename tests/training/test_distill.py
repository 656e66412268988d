"""Knowledge distillation in the train step: the loss formula, a = 0, and a frozen teacher."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsparse.training import steps


def linear_apply(variables, x, train):
    logits = x.reshape(x.shape[0], -1) @ variables["params"]["w"]
    return (logits, {"batch_stats": variables["batch_stats"]}) if train else logits


def setup():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((6, 2, 2, 1)), jnp.float32)
    labels = jnp.asarray([0, 1, 2, 0, 1, 2])
    student = {"params": {"w": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32)},
               "batch_stats": {}}
    teacher = {"params": {"w": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32)},
               "batch_stats": {}}
    state = steps.create_train_state(student, optax.sgd(0.1))
    return x, labels, state, teacher


def test_distillation_loss_equals_hand_computation():
    s = np.array([[1.0, 2.0, 0.5]])
    t = np.array([[0.2, 1.5, 3.0]])
    temp = 2.0
    p_t = np.exp(t / temp) / np.exp(t / temp).sum()
    p_s = np.exp(s / temp) / np.exp(s / temp).sum()
    want = temp ** 2 * np.sum(p_t * np.log(p_t / p_s))
    got = steps.distillation_loss(jnp.asarray(s), jnp.asarray(t), temp)
    np.testing.assert_allclose(got, [want], rtol=1e-6)
    assert float(steps.distillation_loss(jnp.asarray(s), jnp.asarray(s), temp)[0]) == \
        pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_step_loss_is_the_mixture(alpha):
    x, labels, state, teacher = setup()
    step = steps.make_train_step(linear_apply, optax.sgd(0.1), 3, distill_alpha=alpha,
                                 distill_temperature=3.0)
    _, metrics = jax.jit(step)(state, {"image": x, "label": labels}, teacher)
    s = linear_apply({"params": state.params, "batch_stats": {}}, x, False)
    t = linear_apply(teacher, x, False)
    ce = steps.cross_entropy(s, labels, 3)
    want = ((1 - alpha) * ce + alpha * steps.distillation_loss(s, t, 3.0)).mean()
    assert float(metrics["loss"]) == pytest.approx(float(want), rel=1e-5)


def test_alpha_zero_reproduces_plain_cross_entropy():
    x, labels, state, teacher = setup()
    batch = {"image": x, "label": labels}
    plain = steps.make_train_step(linear_apply, optax.sgd(0.1), 3)
    off = steps.make_train_step(linear_apply, optax.sgd(0.1), 3, distill_alpha=0.0)
    s1, m1 = plain(state, batch)
    s2, m2 = off(state, batch, teacher)
    assert float(m1["loss"]) == float(m2["loss"])
    np.testing.assert_array_equal(s1.params["w"], s2.params["w"])


def test_teacher_gets_no_gradient():
    x, labels, state, teacher = setup()
    step = steps.make_train_step(linear_apply, optax.sgd(0.1), 3, distill_alpha=0.7)
    grad = jax.grad(lambda tv: step(state, {"image": x, "label": labels}, tv)[1]["loss"])(
        teacher)
    assert not np.any(np.asarray(grad["params"]["w"]))
    # And the student does learn from the teacher: its update differs from plain CE's.
    plain = steps.make_train_step(linear_apply, optax.sgd(0.1), 3)
    s_plain, _ = plain(state, {"image": x, "label": labels})
    s_kd, _ = step(state, {"image": x, "label": labels}, teacher)
    assert not np.allclose(s_plain.params["w"], s_kd.params["w"])


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="distill_alpha=1.5"):
        steps.make_train_step(linear_apply, optax.sgd(0.1), 3, distill_alpha=1.5)
    with pytest.raises(ValueError, match="distill_temperature=0"):
        steps.make_train_step(linear_apply, optax.sgd(0.1), 3, distill_alpha=0.5,
                              distill_temperature=0)
    x, labels, state, _ = setup()
    step = steps.make_train_step(linear_apply, optax.sgd(0.1), 3, distill_alpha=0.5)
    with pytest.raises(ValueError, match="teacher"):
        step(state, {"image": x, "label": labels})
