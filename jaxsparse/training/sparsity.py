"""Wires a config's ``sparsity`` block into training: optimizer, forward pass and logging.

Methods:
    ``none``: dense training.
    ``one_shot``: prune once at ``begin_step`` and train on with the mask fixed (with
        ``init_from`` a dense run and ``begin_step=0`` this is NVIDIA ASP's recipe: train dense,
        prune one-shot by magnitude, fine-tune with the fixed mask).
    ``gradual``: Zhu & Gupta's cubic schedule from ``begin_step`` to ``end_step``.
    ``sr_ste``: SR-STE for N:M patterns (dense weights, straight-through masked forward).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import ml_collections
import optax

from jaxsparse.pruning import schedules
from jaxsparse.pruning.patterns import NM, Channel, parse_pattern
from jaxsparse.pruning.prune import apply_masks, layer_densities, prune, sparsity
from jaxsparse.pruning.report import sparsity_report
from jaxsparse.pruning.srste import sr_ste, ste_params
from jaxsparse.pruning.transforms import masked_pruning
from jaxsparse.training.validate import check_sparsity_block


@dataclasses.dataclass(frozen=True)
class PruningSetup:
    """What the training loop needs from the sparsity method of a run.

    Attributes:
        tx: the optimizer, wrapped by the pruning transformation when there is one.
        forward_params: transform of the params used in the training forward pass, or None.
        masks: ``(params, opt_state) -> masks tree`` of the deployable model (None: dense).
    """

    tx: optax.GradientTransformation
    forward_params: Callable[[Any], Any] | None
    masks: Callable[[Any, Any], Any] | None
    pattern: str = "none"
    method: str = "none"

    def inference_params(self, params: Any, opt_state: Any) -> Any:
        """The params evaluated and exported: pruned weights set to zero."""
        return params if self.masks is None else apply_masks(params, self.masks(params,
                                                                               opt_state))

    def summary(self, params: Any, opt_state: Any) -> dict[str, float]:
        """``sparsity/global`` and ``sparsity/<layer>`` scalars for TensorBoard."""
        if self.masks is None:
            return {}
        masks = self.masks(params, opt_state)
        out = {"sparsity/global": sparsity(masks)}
        out.update({f"sparsity/{p}": 1.0 - d for p, d in layer_densities(masks).items()})
        return out

    def results(self, params: Any, opt_state: Any) -> dict[str, Any]:
        """Pattern, method, achieved sparsity and per-layer densities for results.json."""
        if self.masks is None:
            return {"sparsity": {"method": "none", "pattern": "dense", "achieved": 0.0}}
        masks = self.masks(params, opt_state)
        return {"sparsity": {"method": self.method, "pattern": self.pattern,
                             "achieved": sparsity(masks),
                             "layer_density": layer_densities(masks)}}

    def texts(self, params: Any, opt_state: Any) -> dict[str, str]:
        """The per-layer sparsity table, as markdown."""
        if self.masks is None:
            return {}
        report = sparsity_report(params, self.masks(params, opt_state), self.pattern)
        return {"sparsity/report": report.markdown()}


def setup(config: ml_collections.ConfigDict, params: Any, tx: optax.GradientTransformation,
          num_steps: int, groups: Any = None) -> PruningSetup:
    """The :class:`PruningSetup` for a config's ``sparsity`` block.

    ``groups`` (from :func:`jaxsparse.channel_groups`) make the channel pattern remove the same
    channels from coupled layers and their BatchNorm vectors (``sparsity.grouped``).

    Raises:
        ValueError: for a bad sparsity block (see
            :func:`~jaxsparse.training.validate.check_sparsity_block`) or groups with a pattern
            other than channel.
    """
    check_sparsity_block(config)
    if config.method == "none":
        return PruningSetup(tx, None, None)
    pattern = parse_pattern(config.pattern)
    include = config.include or None
    # N:M fixes its own sparsity; 0 (the default) means "not given", anything else is checked.
    target = None if isinstance(pattern, NM) and not config.sparsity else config.sparsity
    if groups is not None and not isinstance(pattern, Channel):
        raise ValueError(f"sparsity.grouped=True needs the channel pattern; got "
                         f"{config.pattern!r}.")
    prune(params, pattern, target, config.distribution, include, groups=groups)  # Validates.
    if config.method == "sr_ste":
        return PruningSetup(
            sr_ste(tx, pattern, config.sr_ste_decay, include),
            lambda p: ste_params(p, pattern, include),
            lambda p, s: prune(p, pattern, include=include), str(pattern), config.method)
    if config.method == "one_shot":
        schedule = schedules.one_shot(config.begin_step, target)
    else:
        end = config.end_step if config.end_step >= 0 else \
            int(round(config.end_fraction * num_steps))
        schedule = schedules.gradual(0.0, target or 0.0, config.begin_step, end,
                                     config.frequency)
    wrapped = masked_pruning(tx, pattern, schedule, distribution=config.distribution,
                             include=include, groups=groups)
    return PruningSetup(wrapped, None, lambda p, s: s.masks, str(pattern), config.method)
