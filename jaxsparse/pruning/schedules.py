"""When to prune and how much: schedules are plain, jittable functions of the step.

A :class:`Schedule` gives the target sparsity at a step (``schedule(step)``) and whether masks
are recomputed at that step (``schedule.should_update(step)``). For an N:M pattern only the
first update matters: its sparsity is fixed by the pattern.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A sparsity schedule. ``sparsity_fn`` and ``update_fn`` map a step to a scalar."""

    sparsity_fn: Callable[[jax.Array], jax.Array]
    update_fn: Callable[[jax.Array], jax.Array]
    description: str

    def __call__(self, step) -> jax.Array:
        """Target sparsity at ``step``."""
        return self.sparsity_fn(jnp.asarray(step))

    def should_update(self, step) -> jax.Array:
        """Whether masks are recomputed at ``step`` (a bool scalar)."""
        return self.update_fn(jnp.asarray(step))

    def __str__(self) -> str:
        return self.description


def _check_unit(name: str, value) -> float:
    if value is None:
        return value
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name}={value} is not valid; use a sparsity in [0, 1).")
    return float(value)


def one_shot(step: int = 0, sparsity: float | None = None) -> Schedule:
    """Prune once at ``step`` to ``sparsity`` and keep the mask fixed afterwards.

    ``sparsity=None`` is for N:M patterns (and is filled in by :func:`masked_pruning` from
    its own ``sparsity`` argument otherwise).
    """
    if step < 0:
        raise ValueError(f"step={step} must be >= 0.")
    s = _check_unit("sparsity", sparsity)
    target = 0.0 if s is None else s
    return Schedule(lambda t: jnp.where(t >= step, target, 0.0).astype(jnp.float32),
                    lambda t: t == step, f"one_shot(step={step}, sparsity={sparsity})")


def constant(sparsity: float, frequency: int | None = None) -> Schedule:
    """``sparsity`` from step 0; masks recomputed every ``frequency`` steps (None: only at 0)."""
    s = _check_unit("sparsity", sparsity)
    if frequency is not None and frequency < 1:
        raise ValueError(f"frequency={frequency} must be a positive number of steps or None.")
    update = (lambda t: t == 0) if frequency is None else (lambda t: t % frequency == 0)
    return Schedule(lambda t: jnp.full((), s, jnp.float32), update,
                    f"constant(sparsity={sparsity}, frequency={frequency})")


def gradual(initial: float, final: float, begin: int, end: int, frequency: int,
            power: float = 3.0) -> Schedule:
    """Zhu & Gupta (2017): ``s_t = final + (initial - final) * (1 - (t - begin)/(end - begin))^p``.

    Masks are recomputed every ``frequency`` steps from ``begin`` and at ``end``, where the
    sparsity reaches ``final``; before ``begin`` the sparsity is 0, after ``end`` it stays
    ``final`` with the mask fixed.
    """
    initial, final = _check_unit("initial", initial), _check_unit("final", final)
    if not 0 <= begin < end:
        raise ValueError(f"begin={begin}, end={end}: need 0 <= begin < end.")
    if frequency < 1:
        raise ValueError(f"frequency={frequency} must be a positive number of steps.")

    def sparsity_fn(t):
        frac = jnp.clip((t - begin) / (end - begin), 0.0, 1.0)
        s = final + (initial - final) * (1.0 - frac) ** power
        return jnp.where(t < begin, 0.0, s).astype(jnp.float32)

    def update_fn(t):
        return ((t >= begin) & (t <= end) & ((t - begin) % frequency == 0)) | (t == end)

    return Schedule(sparsity_fn, update_fn,
                    f"gradual({initial}->{final}, steps {begin}..{end} every {frequency}, "
                    f"power={power})")
