"""Study variants: one sparse model to derive from the dense run, and grids of them.

A variant is a ``ConfigDict`` (so ``--config.variants`` flags and TensorBoard read it like the
rest of a config) made by :func:`variant`; :func:`sweep` makes one per sparsity of a pattern,
each an ordinary variant. Its recipe fields left ``None`` take the study's ``finetune`` and
``distill`` blocks; :func:`recipe` resolves them, and ``runner.variant_config`` turns the
result into the fine-tune's experiment config.

Recipes (Hoefler et al. 2021 survey the choices; all are measured in the CPU study's
ablation, ``docs/results/study_fmnist_cpu_report.md``):

- ``method``: ``one_shot`` (prune at step 0, NVIDIA ASP), ``gradual`` (Zhu & Gupta's cubic
  ramp over the pruning phase, then the recovery phase with the mask fixed) or ``sr_ste``.
- ``prune_epochs`` / ``recover_epochs``: the two phases of a gradual fine-tune, sized
  separately (their sum is the fine-tune's length).
- ``lr_schedule``: ``"cosine"`` (the fine-tune's own warm-up + cosine at ``finetune.lr``) or
  ``"rewind"`` (learning-rate rewinding, Renda et al. 2020: the dense run's schedule replayed
  over its last ``epochs``, the same budget).
- ``distribution``: ``uniform``, ``erk``, ``global`` or ``speed`` (only layers whose compiled
  kernel is predicted faster are pruned; see :mod:`jaxsparse.pruning.distributions`).
- ``distill_alpha``: distillation from the dense model (the study's ``distill`` block).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections

from jaxsparse.compiler import costs
from jaxsparse.compiler.combine import nm_on_kept_channels
from jaxsparse.compiler.groups import channel_groups
from jaxsparse.pruning.distributions import DISTRIBUTIONS
from jaxsparse.pruning.masks import check_sparsity
from jaxsparse.pruning.patterns import NM, parse_pattern
from jaxsparse.pruning.prune import prune

LR_SCHEDULES = ("cosine", "rewind")


def variant(name: str, method: str, pattern: str, sparsity: float = 0.0, *,
            grouped: bool = False, include: str = "", policy: str = "auto",
            distribution: str = "uniform", lr_schedule: str | None = None,
            prune_epochs: float | None = None, recover_epochs: float | None = None,
            distill_alpha: float | None = None) -> ml_collections.ConfigDict:
    """One study variant.

    Args:
        name: its folder and report row (unique in the study, not ``"dense"``).
        method: the pruning method (``one_shot``, ``gradual``, ``sr_ste``).
        pattern: ``"2:4"``, ``"block:16x16"``, ``"channel"``, ``"unstructured"``...
        sparsity: the fraction of weights removed (0 for N:M: fixed by the pattern).
        grouped: channel pattern: prune coupled layers (residual streams) together.
        include: regex over parameter paths ("" = the default selection).
        policy: ``js.sparsify``'s policy for the compiled model.
        distribution: how the sparsity is spread over layers.
        lr_schedule: ``"cosine"`` or ``"rewind"`` (None: ``finetune.lr_schedule``).
        prune_epochs: gradual: the pruning phase (None: from ``finetune``).
        recover_epochs: the phase after it with the mask fixed (None: from ``finetune``).
        distill_alpha: distillation weight (None: ``distill.alpha``).

    Raises:
        ValueError: for a bad pattern, sparsity, distribution or schedule, naming it.
    """
    try:
        p = parse_pattern(pattern)
    except ValueError as e:
        raise ValueError(f"variant {name!r}: {e}") from None
    check_sparsity(p, None if isinstance(p, NM) and not sparsity else sparsity,
                   f"variant {name!r} sparsity")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"variant {name!r}: distribution={distribution!r} is not valid; use "
                         f"one of {DISTRIBUTIONS}.")
    if lr_schedule is not None and lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"variant {name!r}: lr_schedule={lr_schedule!r} is not valid; use "
                         f"one of {LR_SCHEDULES}.")
    return ml_collections.ConfigDict(dict(
        name=name, method=method, pattern=pattern, sparsity=float(sparsity), grouped=grouped,
        include=include, policy=policy, distribution=distribution, lr_schedule=lr_schedule,
        prune_epochs=prune_epochs, recover_epochs=recover_epochs, distill_alpha=distill_alpha))


@dataclasses.dataclass(frozen=True)
class Variant:
    """A sparse variant of a model as the benchmarks build it: one-shot magnitude pruning of
    the model's weights (random weights in the speed benchmarks, the GPU figures and the
    accelerator compile check).

    Attributes:
        name: the variant's name in reports and on command lines.
        pattern: ``"2:4"``, ``"block:32x32"``, ``"channel"``, ``"unstructured"``...
        sparsity: the fraction removed (None for N:M: fixed by the pattern).
        grouped: channel pattern: coupled layers (residual streams) and their BatchNorm
            vectors lose the same channels (every 4-D conv kernel, unless ``include``).
        nm_after: then 2:4 on the kept channels (channel + 2:4).
        channel_multiple: keep a multiple of this many channels per layer.
        include: regex over parameter paths ("" = the pattern's default selection).
        policy: ``js.sparsify``'s policy for this variant.
        distribution: how the sparsity is spread over layers (``speed``: by the cost table of
            the platform the masks are made on).
    """

    name: str
    pattern: str
    sparsity: float | None = None
    grouped: bool = False
    nm_after: bool = False
    channel_multiple: int = 1
    include: str = ""
    policy: str = "auto"
    distribution: str = "uniform"

    @classmethod
    def from_config(cls, v: ml_collections.ConfigDict) -> Variant:
        """The :class:`Variant` of a study variant (:func:`variant`), for pruning random
        weights the way its one-shot fine-tune would start."""
        return cls(v.name, v.pattern, v.sparsity or None, grouped=v.grouped,
                   include=v.include, policy=v.policy,
                   distribution=v.get("distribution", "uniform"))

    def config(self, method: str = "one_shot") -> ml_collections.ConfigDict:
        """This variant as a study variant (:func:`variant`) pruned by ``method``."""
        if self.nm_after or self.channel_multiple != 1:
            raise ValueError(f"variant {self.name!r}: nm_after and channel_multiple have no "
                             f"study (fine-tune) equivalent yet.")
        return variant(self.name, method, self.pattern, self.sparsity or 0.0,
                       grouped=self.grouped, include=self.include, policy=self.policy,
                       distribution=self.distribution)

    def masks(self, apply_fn: Callable[..., Any], variables: Any, x: Any) -> Any:
        """The variant's masks for ``apply_fn``'s ``variables`` (traced on ``x``): for
        ``variables["params"]``, or for all of ``variables`` when grouped (BatchNorm follows
        its conv).

        Raises:
            ValueError: for a pattern or sparsity that does not fit the weights.
        """
        include = self.include or None
        if not self.grouped:
            speed = None if self.distribution != "speed" else costs.speed_model(
                jax.default_backend(), self.pattern, self.sparsity or 0.0)
            return prune(variables["params"], self.pattern, self.sparsity, self.distribution,
                         include, speed_model=speed)
        groups = channel_groups(apply_fn, variables, x[:1])
        masks = prune(variables, self.pattern, self.sparsity, groups=groups,
                      include=include or (lambda path, w: w.ndim == 4),
                      channel_multiple=self.channel_multiple)
        if self.nm_after:
            masks = nm_on_kept_channels(apply_fn, variables, masks, x)
        return masks


def pattern_slug(pattern: str) -> str:
    """A pattern as a name fragment: ``"block:16x16"`` -> ``"block16x16"``."""
    return pattern.replace(":", "")


def sweep(pattern: str, sparsities: Sequence[float], *, method: str = "gradual",
          prefix: str | None = None, where: str = "", **recipe: Any,
          ) -> list[ml_collections.ConfigDict]:
    """One :func:`variant` per sparsity of ``pattern``, named ``<prefix><percent>`` (default
    prefix ``"<pattern>_"``, e.g. ``unstructured_80``), all with the same recipe. ``where``
    names the grid in error messages (e.g. ``"sweep.sparsities"``, the config field).

    Raises:
        ValueError: for an empty grid, a sparsity outside (0, 1), repeated sparsities (or two
            that round to the same percent), or an N:M pattern (its sparsity is fixed).
    """
    at = where or f"sweep over {pattern!r}"
    try:
        p = parse_pattern(pattern)
    except ValueError as e:
        raise ValueError(f"sweep: {e}") from None
    if isinstance(p, NM):
        raise ValueError(f"sweep: pattern {pattern!r} fixes its sparsity at {1 - p.n / p.m:g}; "
                         f"a grid needs a block, channel or unstructured pattern.")
    values = [float(s) for s in sparsities]
    if not values:
        raise ValueError(f"{at}: the grid of sparsities is empty; give at least one in "
                         f"(0, 1).")
    bad = [s for s in values if not 0.0 < s < 1.0]
    if bad:
        raise ValueError(f"{at}={tuple(values)}: sparsity {bad[0]} is not in (0, 1).")
    percents = [round(100 * s) for s in values]
    if len(set(percents)) != len(percents):
        raise ValueError(f"{at}={tuple(values)}: the sparsities repeat (names use the "
                         f"percent, {percents}); give each level once.")
    prefix = f"{pattern_slug(pattern)}_" if prefix is None else prefix
    return [variant(f"{prefix}{pct}", method, pattern, s, **recipe)
            for s, pct in zip(values, percents, strict=True)]


def recipe(config: ml_collections.ConfigDict, v: ml_collections.ConfigDict) -> dict[str, Any]:
    """The variant's fine-tune recipe with the study's defaults filled in: ``method``,
    ``lr_schedule``, ``distribution``, ``prune_epochs``, ``recover_epochs``, ``epochs`` and
    ``distill_alpha``.

    Raises:
        ValueError: when only one of the two phases is given, or a phase is negative.
    """
    ft = config.finetune
    given = (v.get("prune_epochs"), v.get("recover_epochs"))
    if (given[0] is None) != (given[1] is None):
        raise ValueError(f"variant {v.name!r}: give both prune_epochs and recover_epochs (the "
                         f"fine-tune lasts their sum), or neither; got {given}.")
    if given[0] is None:
        prune = ft.prune_fraction * ft.epochs if v.method == "gradual" else 0.0
        phases = (prune, ft.epochs - prune)
    else:
        phases = (float(given[0]), float(given[1]))
    if min(phases) < 0 or sum(phases) <= 0 or (v.method == "gradual" and phases[0] <= 0):
        raise ValueError(f"variant {v.name!r}: prune_epochs={phases[0]} and recover_epochs="
                         f"{phases[1]} must be >= 0 with a positive sum (gradual: a positive "
                         f"pruning phase).")
    alpha = v.get("distill_alpha")
    return {"method": v.method, "lr_schedule": v.get("lr_schedule") or ft.lr_schedule,
            "distribution": v.get("distribution", "uniform"), "prune_epochs": phases[0],
            "recover_epochs": phases[1], "epochs": phases[0] + phases[1],
            "distill_alpha": float(config.distill.alpha if alpha is None else alpha)}


def recipe_label(r: dict[str, Any]) -> str:
    """A short label of a resolved recipe, e.g. ``gradual 0.3+0.3 ep, rewind, speed, KD 0.5``."""
    phases = f"{r['prune_epochs']:g}+{r['recover_epochs']:g} ep" if r["method"] == "gradual" \
        else f"{r['epochs']:g} ep"
    kd = f", KD {r['distill_alpha']:g}" if r["distill_alpha"] > 0 else ", no KD"
    return f"{r['method']} {phases}, {r['lr_schedule']}, {r['distribution']}{kd}"
