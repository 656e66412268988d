"""Pure train and eval steps over ``apply_fn(variables, x, train)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

ParamsTransform = Callable[[Any], Any]


class TrainState(NamedTuple):
    """Everything a training run carries from step to step (and checkpoints)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def create_train_state(variables: dict, tx: optax.GradientTransformation) -> TrainState:
    """Initial state from a variables pytree ``{"params", "batch_stats"}``."""
    params = variables["params"]
    return TrainState(jnp.zeros((), jnp.int32), params, variables.get("batch_stats", {}),
                      tx.init(params))


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int,
                  label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy with optional label smoothing."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array,
                      temperature: float) -> jax.Array:
    """Per-example ``T^2 KL(softmax(teacher / T) || softmax(student / T))`` (Hinton et al.).

    The ``T^2`` factor keeps the gradient scale independent of the temperature.
    """
    t = jnp.asarray(temperature, jnp.float32)
    log_p_teacher = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t)
    log_p_student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t)
    return t * t * optax.losses.kl_divergence_with_log_targets(log_p_student, log_p_teacher)


def make_train_step(apply_fn: Callable, tx: optax.GradientTransformation, num_classes: int, *,
                    label_smoothing: float = 0.0, compute_dtype=jnp.float32,
                    forward_params: ParamsTransform | None = None,
                    distill_alpha: float = 0.0, distill_temperature: float = 4.0) -> Callable:
    """Builds ``train_step(state, batch, teacher=None) -> (state, metrics)``.

    Args:
        apply_fn: ``apply_fn(variables, x, train=True) -> (logits, new_variables)``.
        tx: the optimizer (possibly wrapped by a pruning transformation).
        num_classes: number of classes of the labels.
        label_smoothing: label smoothing coefficient in [0, 1).
        compute_dtype: dtype the images are cast to (bf16 for mixed precision).
        forward_params: optional transform applied to the params in the forward pass only
            (e.g. SR-STE's straight-through N:M masking).
        distill_alpha: weight ``a`` of knowledge distillation: the loss is
            ``(1 - a) CE + a T^2 KL(teacher_T || student_T)``. With ``a > 0`` the step takes
            the teacher's variables (same ``apply_fn``, inference mode) as its third argument;
            the teacher's logits are computed in the same step under ``stop_gradient``.
        distill_temperature: the distillation temperature ``T``.
    """
    if not 0.0 <= distill_alpha <= 1.0:
        raise ValueError(f"distill_alpha={distill_alpha} must be in [0, 1].")
    if distill_temperature <= 0:
        raise ValueError(f"distill_temperature={distill_temperature} must be > 0.")

    def train_step(state: TrainState, batch: dict, teacher: Any = None,
                   ) -> tuple[TrainState, dict]:
        images = batch["image"].astype(compute_dtype)
        if distill_alpha > 0 and teacher is None:
            raise ValueError("distill_alpha > 0 needs the teacher's variables.")
        teacher_logits = None if distill_alpha == 0 else jax.lax.stop_gradient(
            apply_fn(teacher, images, train=False))

        def loss_fn(params):
            p = forward_params(params) if forward_params is not None else params
            logits, new_vars = apply_fn({"params": p, "batch_stats": state.batch_stats}, images,
                                        train=True)
            loss = cross_entropy(logits, batch["label"], num_classes, label_smoothing)
            if teacher_logits is not None:
                loss = (1.0 - distill_alpha) * loss + distill_alpha * distillation_loss(
                    logits, teacher_logits, distill_temperature)
            return loss.mean(), (logits, new_vars["batch_stats"])

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss,
                   "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}
        return TrainState(state.step + 1, params, batch_stats, opt_state), metrics

    return train_step


def make_eval_step(apply_fn: Callable, num_classes: int, compute_dtype=jnp.float32) -> Callable:
    """Builds ``eval_step(variables, batch) -> sums`` of loss, correct and count (mask-aware)."""

    def eval_step(variables: dict, batch: dict) -> dict:
        logits = apply_fn(variables, batch["image"].astype(compute_dtype), train=False)
        mask = batch.get("mask", jnp.ones(batch["label"].shape, jnp.float32))
        loss = cross_entropy(logits, batch["label"], num_classes)
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        return {"loss": jnp.sum(loss * mask), "correct": jnp.sum(correct * mask),
                "count": jnp.sum(mask)}

    return eval_step
