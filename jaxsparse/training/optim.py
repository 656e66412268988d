"""Optimizer: SGD with Nesterov momentum, decoupled-from-BN weight decay, warmup + cosine."""

from __future__ import annotations

import jax
import ml_collections
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


def run_schedule(train: ml_collections.ConfigDict, steps_per_epoch: int,
                 ) -> tuple[int, optax.Schedule]:
    """``(steps, learning rate)`` of a run from its ``train`` block.

    The learning rate is :func:`learning_rate_schedule` over ``train.epochs``. With
    ``train.schedule_start_epoch > 0`` the run replays that schedule from there (learning-rate
    rewinding, Renda et al. 2020): it lasts ``epochs - schedule_start_epoch`` epochs and its
    step ``t`` has the learning rate of step ``t + start`` of the full schedule, so a fine-tune
    with the dense run's ``train`` fields and ``schedule_start_epoch = E - e`` retrains for
    ``e`` epochs with the last ``e`` epochs of the dense run's schedule.

    Raises:
        ValueError: for a start outside ``[0, epochs)`` or a start with ``num_steps``.
    """
    start_epoch = float(train.get("schedule_start_epoch", 0.0))
    if start_epoch and train.num_steps:
        raise ValueError(f"train.schedule_start_epoch={start_epoch} needs the run's length in "
                         f"train.epochs; unset train.num_steps={train.num_steps}.")
    if not 0.0 <= start_epoch < max(train.epochs, 1e-9) and start_epoch:
        raise ValueError(f"train.schedule_start_epoch={start_epoch} must be in [0, "
                         f"train.epochs={train.epochs}).")
    total = train.num_steps or int(round(train.epochs * steps_per_epoch))
    full = learning_rate_schedule(train.lr, train.batch_size, steps_per_epoch,
                                  total / steps_per_epoch, train.warmup_epochs)
    offset = int(round(start_epoch * steps_per_epoch))
    if not offset:
        return total, full
    return max(1, total - offset), lambda step: full(step + offset)


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
