"""Optimizer: SGD with Nesterov momentum, decoupled-from-BN weight decay, warmup + cosine."""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(base_lr: float, batch_size: int, steps_per_epoch: int,
                           num_epochs: float, warmup_epochs: float) -> optax.Schedule:
    """Linear warmup to ``base_lr * batch_size / 256``, then cosine decay to zero.

    Args:
        base_lr: learning rate for a batch of 256 (scaled linearly with the batch size).
        batch_size: global batch size.
        steps_per_epoch: optimizer steps in one epoch.
        num_epochs: length of the run in epochs.
        warmup_epochs: length of the linear warmup in epochs.
    """
    peak = base_lr * batch_size / 256.0
    total = max(1, int(round(num_epochs * steps_per_epoch)))
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), total - 1)
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, end_value=0.0)


def decay_mask(params) -> object:
    """True for weights that take weight decay: kernels (ndim > 1), not biases or BN vectors."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def sgd_nesterov(schedule: optax.Schedule, momentum: float = 0.9, weight_decay: float = 5e-5,
                 nesterov: bool = True) -> optax.GradientTransformation:
    """SGD with (Nesterov) momentum and L2 weight decay on the kernels.

    Args:
        schedule: the learning-rate schedule.
        momentum: momentum coefficient.
        weight_decay: L2 coefficient added to the gradient of every kernel.
        nesterov: use Nesterov momentum.
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum={momentum} must be in [0, 1).")
    if weight_decay < 0:
        raise ValueError(f"weight_decay={weight_decay} must be >= 0.")
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=decay_mask),
        optax.sgd(schedule, momentum=momentum, nesterov=nesterov),
    )
