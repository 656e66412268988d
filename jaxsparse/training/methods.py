"""The pruning methods of training, a registry: a config's ``sparsity`` block -> optimizer,
forward pass and logging.

Methods (:func:`names`; add one with :func:`register`):
    ``none``: dense training.
    ``one_shot``: prune once at ``begin_step`` and train on with the mask fixed (with
        ``init_from`` a dense run and ``begin_step=0`` this is NVIDIA ASP's recipe: train dense,
        prune one-shot by magnitude, fine-tune with the fixed mask).
    ``gradual``: Zhu & Gupta's cubic schedule from ``begin_step`` to ``end_step``.
    ``sr_ste``: SR-STE for N:M patterns (dense weights, straight-through masked forward).

The ``sparsity`` block's meaning lives here: its fields with pruning off (:data:`SPARSITY_OFF`),
its checks (:func:`check_block`), how a variant fills it (:func:`variant_block`), and how its
pattern, target and selection resolve (``_resolve``, :func:`one_shot_masks`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import optax

from jaxsparse.compiler import costs
from jaxsparse.pruning import schedules
from jaxsparse.pruning.distributions import DISTRIBUTIONS
from jaxsparse.pruning.masks import check_sparsity
from jaxsparse.pruning.patterns import NM, Channel, Pattern, parse_pattern
from jaxsparse.pruning.prune import apply_masks, layer_densities, measured_sparsity, prune
from jaxsparse.pruning.report import sparsity_report
from jaxsparse.pruning.srste import sr_ste, ste_params
from jaxsparse.pruning.transforms import masked_pruning


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
        out = {"sparsity/global": measured_sparsity(masks)}
        out.update({f"sparsity/{p}": 1.0 - d for p, d in layer_densities(masks).items()})
        return out

    def results(self, params: Any, opt_state: Any) -> dict[str, Any]:
        """Pattern, method, achieved sparsity and per-layer densities for results.json."""
        if self.masks is None:
            return {"sparsity": {"method": "none", "pattern": "dense", "achieved": 0.0}}
        masks = self.masks(params, opt_state)
        return {"sparsity": {"method": self.method, "pattern": self.pattern,
                             "achieved": measured_sparsity(masks),
                             "layer_density": layer_densities(masks)}}

    def texts(self, params: Any, opt_state: Any) -> dict[str, str]:
        """The per-layer sparsity table, as markdown."""
        if self.masks is None:
            return {}
        report = sparsity_report(params, self.masks(params, opt_state), self.pattern)
        return {"sparsity/report": report.markdown()}


@dataclasses.dataclass(frozen=True)
class MethodArgs:
    """What a method's builder gets: the parsed sparsity block and the run's optimizer.

    Attributes:
        config: the ``sparsity`` block.
        pattern: its parsed pattern.
        target: the sparsity to reach (None: fixed by an N:M pattern).
        include: which weights are pruned (None: the default selection).
        tx: the run's optimizer.
        num_steps: the run's training steps.
        groups: coupled channel groups (``sparsity.grouped``), or None.
    """

    config: ml_collections.ConfigDict
    pattern: Pattern
    target: float | None
    include: str | None
    tx: optax.GradientTransformation
    num_steps: int
    groups: Any = None


Builder = Callable[[MethodArgs], PruningSetup]
_BUILDERS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Registers a pruning method's builder under ``name`` (``sparsity.method=name``)."""
    def add(builder: Builder) -> Builder:
        _BUILDERS[name] = builder
        return builder
    return add


def speed_model(config: ml_collections.ConfigDict) -> Any:
    """The speed-aware distribution's model for a sparsity block (None unless
    ``distribution="speed"``): this backend's measured cost table, decided at the block's
    final sparsity."""
    if config.distribution != "speed":
        return None
    pattern, target, _ = _resolve(config)
    return costs.speed_model(jax.default_backend(), pattern, target or 0.0)


def _masked(a: MethodArgs, schedule: schedules.Schedule, method: str) -> PruningSetup:
    wrapped = masked_pruning(a.tx, a.pattern, schedule, distribution=a.config.distribution,
                             include=a.include, groups=a.groups,
                             speed_model=speed_model(a.config))
    return PruningSetup(wrapped, None, lambda p, s: s.masks, str(a.pattern), method)


@register("one_shot")
def _one_shot(a: MethodArgs) -> PruningSetup:
    return _masked(a, schedules.one_shot(a.config.begin_step, a.target), "one_shot")


@register("gradual")
def _gradual(a: MethodArgs) -> PruningSetup:
    c = a.config
    end = c.end_step if c.end_step >= 0 else int(round(c.end_fraction * a.num_steps))
    return _masked(a, schedules.gradual(0.0, a.target or 0.0, c.begin_step, end, c.frequency),
                   "gradual")


@register("sr_ste")
def _sr_ste(a: MethodArgs) -> PruningSetup:
    pattern, include = a.pattern, a.include
    return PruningSetup(sr_ste(a.tx, pattern, a.config.sr_ste_decay, include),
                        lambda p: ste_params(p, pattern, include),
                        lambda p, s: prune(p, pattern, include=include), str(pattern), "sr_ste")


# The sparsity block's values when pruning is off (experiments/configs/default.py; a test keeps
# the two equal). Any other value needs a method.
SPARSITY_OFF = {"pattern": "unstructured", "sparsity": 0.0, "distribution": "uniform",
                "begin_step": 0, "end_step": -1, "end_fraction": 0.75, "frequency": 100,
                "include": "", "sr_ste_decay": 2e-4, "grouped": False}


def check_block(s: ml_collections.ConfigDict) -> None:
    """Checks a config's ``sparsity`` block (method, pattern, sparsity, schedule).

    Raises:
        ValueError: naming the first bad field, its value and what is valid.
    """
    valid = names()
    if s.method not in valid:
        raise ValueError(f"sparsity.method={s.method!r} is not valid; use one of {valid}.")
    if s.method == "none":
        for key, off in SPARSITY_OFF.items():
            if key in s and s[key] != off:
                raise ValueError(f"sparsity.{key}={s[key]!r} is set but sparsity.method='none' "
                                 f"(no pruning); set sparsity.method to one of {valid[1:]} "
                                 f"or leave sparsity.{key} at {off!r}.")
        return
    try:
        pattern = parse_pattern(s.pattern)
    except ValueError as e:
        raise ValueError(f"sparsity.{e}") from None
    check_sparsity(pattern, target_sparsity(pattern, s.sparsity), "sparsity.sparsity")
    if s.method == "sr_ste" and not isinstance(pattern, NM):
        raise ValueError(f"sparsity.method='sr_ste' needs an N:M pattern; got "
                         f"sparsity.pattern={s.pattern!r}.")
    if s.grouped and not isinstance(pattern, Channel):
        raise ValueError(f"sparsity.grouped=True needs the channel pattern; got "
                         f"sparsity.pattern={s.pattern!r}.")
    if s.distribution not in DISTRIBUTIONS:
        raise ValueError(f"sparsity.distribution={s.distribution!r} is not valid; use one of "
                         f"{DISTRIBUTIONS}.")
    if s.frequency < 1 or not 0.0 < s.end_fraction <= 1.0 or s.begin_step < 0:
        raise ValueError(f"sparsity schedule: need frequency >= 1, 0 < end_fraction <= 1 and "
                         f"begin_step >= 0; got frequency={s.frequency}, "
                         f"end_fraction={s.end_fraction}, begin_step={s.begin_step}.")


def variant_block(pattern: str, sparsity: float, method: str, *, distribution: str,
                  grouped: bool, include: str, end_fraction: float) -> dict:
    """The sparsity block's fields for one study variant's fine-tune: prune from step 0 to
    ``end_fraction`` of the run (gradual), with the variant's pattern and selection."""
    return {"method": method, "pattern": pattern, "sparsity": sparsity,
            "distribution": distribution, "grouped": grouped, "include": include,
            "begin_step": 0, "end_step": -1, "end_fraction": end_fraction}


def names() -> tuple[str, ...]:
    """The valid ``sparsity.method`` values: ``"none"`` and every registered method."""
    return ("none", *_BUILDERS)


def setup(config: ml_collections.ConfigDict, params: Any, tx: optax.GradientTransformation,
          num_steps: int, groups: Any = None) -> PruningSetup:
    """The :class:`PruningSetup` for a config's ``sparsity`` block (checked first by
    :func:`~jaxsparse.training.validate.validate_config`).

    ``groups`` (from :func:`jaxsparse.channel_groups`) make the channel pattern remove the same
    channels from coupled layers and their BatchNorm vectors (``sparsity.grouped``).

    Raises:
        ValueError: for an unknown method, a pattern or sparsity that does not fit ``params``,
            or groups with a pattern other than channel.
    """
    if config.method == "none":
        return PruningSetup(tx, None, None)
    if config.method not in _BUILDERS:
        raise ValueError(f"sparsity.method={config.method!r} is not valid; use one of "
                         f"{names()}.")
    pattern, target, include = _resolve(config)
    # Validates the pattern against the params' shapes without computing any mask.
    jax.eval_shape(lambda p: one_shot_masks(config, p, groups), params)
    return _BUILDERS[config.method](MethodArgs(config, pattern, target, include, tx, num_steps,
                                               groups))


def target_sparsity(pattern: Pattern, sparsity: float) -> float | None:
    """The sparsity a block's ``sparsity`` field asks of ``pattern``: None for N:M left at 0
    (N:M fixes its own, 1 - N/M; 0 means "not given"), else the field (checked by ``prune``)."""
    return None if isinstance(pattern, NM) and not sparsity else sparsity


def _resolve(config: ml_collections.ConfigDict) -> tuple[Pattern, float | None, str | None]:
    """``(pattern, target sparsity or None for N:M, include or None)`` of a sparsity block."""
    pattern = parse_pattern(config.pattern)
    return pattern, target_sparsity(pattern, config.sparsity), config.include or None


def one_shot_masks(config: ml_collections.ConfigDict, params: Any, groups: Any = None) -> Any:
    """The masks one-shot magnitude pruning gives ``params`` under a sparsity block (what
    ``one_shot`` applies at its step; the speed study prunes random weights with it).

    Raises:
        ValueError: for a pattern or sparsity that does not fit ``params``, or groups with a
            pattern other than channel (:func:`~jaxsparse.prune` checks both).
    """
    pattern, target, include = _resolve(config)
    return prune(params, pattern, target, config.distribution, include, groups=groups,
                 speed_model=speed_model(config))
