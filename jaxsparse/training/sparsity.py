"""Wires a config's ``sparsity`` block into training: optimizer, forward pass and logging."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import ml_collections
import optax


@dataclasses.dataclass(frozen=True)
class PruningSetup:
    """What the training loop needs from the sparsity method of a run.

    Attributes:
        tx: the optimizer, wrapped by the pruning transformation when there is one.
        forward_params: transform of the params used in the training forward pass, or None.
        inference_params: ``(params, opt_state) -> params`` used for evaluation and export.
        summary: ``(params, opt_state) -> {tag: scalar}`` logged with the training metrics.
        results: ``(params, opt_state) -> dict`` merged into ``results.json``.
        texts: ``(params, opt_state) -> {tag: markdown}`` logged once at the end.
    """

    tx: optax.GradientTransformation
    forward_params: Callable[[Any], Any] | None
    inference_params: Callable[[Any, Any], Any]
    summary: Callable[[Any, Any], dict[str, float]]
    results: Callable[[Any, Any], dict[str, Any]]
    texts: Callable[[Any, Any], dict[str, str]]


def dense(tx: optax.GradientTransformation) -> PruningSetup:
    """No sparsity: the optimizer as given, nothing extra logged."""
    return PruningSetup(tx, None, lambda p, s: p, lambda p, s: {},
                        lambda p, s: {"sparsity": {"method": "none"}}, lambda p, s: {})


def setup(config: ml_collections.ConfigDict, params: Any, tx: optax.GradientTransformation,
          num_steps: int) -> PruningSetup:
    """The :class:`PruningSetup` for a config's ``sparsity`` block."""
    if config.method == "none":
        return dense(tx)
    raise ValueError(f"sparsity.method={config.method!r} is not valid; use 'none'.")
