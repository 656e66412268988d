"""The study's search and recipes: sweep grids, the Pareto frontier, LR rewinding and the
speed-aware sparsity allocation."""

import math

import numpy as np
import pytest

from experiments.configs import study_smoke
from jaxsparse import prune
from jaxsparse.pruning import distributions
from jaxsparse.study import report as report_lib
from jaxsparse.study import run_study, variants_of
from jaxsparse.study import variants as variants_lib
from jaxsparse.study.runner import dense_config, variant_config
from jaxsparse.training import optim
from jaxsparse.training.validate import validate_config
from tests.helpers import needs_fmnist, scalars


def test_sweep_builds_one_ordinary_variant_per_sparsity():
    grid = variants_lib.sweep("block:16x16", (0.5, 0.75, 0.9), lr_schedule="rewind",
                              distribution="speed")
    assert [v.name for v in grid] == ["block16x16_50", "block16x16_75", "block16x16_90"]
    assert [v.sparsity for v in grid] == [0.5, 0.75, 0.9]
    assert all(v.method == "gradual" and v.pattern == "block:16x16" and
               v.lr_schedule == "rewind" and v.distribution == "speed" for v in grid)
    # Every grid point is an ordinary variant: the same fields as variant() gives.
    assert set(grid[0].keys()) == set(variants_lib.variant("x", "one_shot", "2:4").keys())
    channel = variants_lib.sweep("channel", (0.3, 0.4), prefix="ch", grouped=True)
    assert [v.name for v in channel] == ["ch30", "ch40"] and all(v.grouped for v in channel)


@pytest.mark.parametrize("pattern, grid, match", [
    ("unstructured", (), "empty"),
    ("unstructured", (0.5, 1.5), "sparsity 1.5 is not in"),
    ("unstructured", (0.0,), "sparsity 0.0 is not in"),
    ("unstructured", (0.5, 0.5), "sparsities repeat"),
    ("unstructured", (0.801, 0.799), "sparsities repeat"),
    ("2:4", (0.5,), "fixes its sparsity"),
    ("block:3", (0.5,), "sweep: "),
])
def test_sweep_rejects_a_bad_grid_with_one_clear_error(pattern, grid, match):
    with pytest.raises(ValueError, match=match):
        variants_lib.sweep(pattern, grid)


def test_variant_rejects_bad_recipe_fields():
    with pytest.raises(ValueError, match="distribution='fast'"):
        variants_lib.variant("v", "gradual", "unstructured", 0.5, distribution="fast")
    with pytest.raises(ValueError, match="lr_schedule='step'"):
        variants_lib.variant("v", "gradual", "unstructured", 0.5, lr_schedule="step")
    config = study_smoke.get_config()
    half = variants_lib.variant("v", "gradual", "unstructured", 0.5, prune_epochs=0.2)
    with pytest.raises(ValueError, match="give both prune_epochs and recover_epochs"):
        variants_lib.recipe(config, half)


def test_recipe_phases_and_defaults():
    config = study_smoke.get_config()  # finetune: 0.5 epochs, prune_fraction 0.5.
    gradual = variants_lib.variant("g", "gradual", "unstructured", 0.5)
    r = variants_lib.recipe(config, gradual)
    assert (r["prune_epochs"], r["recover_epochs"], r["epochs"]) == (0.25, 0.25, 0.5)
    assert r["lr_schedule"] == "cosine" and r["distill_alpha"] == config.distill.alpha
    sized = variants_lib.variant("s", "gradual", "unstructured", 0.5, prune_epochs=0.1,
                                 recover_epochs=0.3, distill_alpha=0.0)
    c = variant_config(config, sized, "/nonexistent")
    assert c.train.epochs == pytest.approx(0.4)
    assert c.sparsity.end_fraction == pytest.approx(0.25)  # Pruning phase 0.1 of 0.4.
    assert c.distill.alpha == 0.0 and c.distill.teacher == ""
    assert "gradual 0.1+0.3 ep, cosine, uniform, no KD" == variants_lib.recipe_label(
        variants_lib.recipe(config, sized))


def test_rewinding_replays_the_dense_schedule_from_the_rewind_point():
    config = study_smoke.get_config()  # Dense: 2 epochs, warm-up 0.5, lr 0.4 at batch 64.
    v = variants_lib.variant("r", "gradual", "unstructured", 0.5, lr_schedule="rewind",
                             prune_epochs=0.25, recover_epochs=0.5)
    ft = variant_config(config, v, "/nonexistent")
    validate_config(ft, check_paths=False)
    spe = 32
    n_dense, lr_dense = optim.run_schedule(dense_config(config).train, spe)
    n_ft, lr_ft = optim.run_schedule(ft.train, spe)
    assert (n_dense, n_ft) == (64, 24)  # 0.75 epochs: the last 24 of the dense run's 64.
    offset = n_dense - n_ft
    assert [float(lr_ft(t)) for t in range(n_ft)] == \
        [float(lr_dense(t + offset)) for t in range(n_ft)]
    plain = variant_config(config, variants_lib.variant("p", "gradual", "unstructured", 0.5),
                           "/nonexistent")
    _, lr_plain = optim.run_schedule(plain.train, spe)
    assert float(lr_plain(0)) == 0.0 != float(lr_ft(0))  # Its own warm-up, unlike rewinding.
    too_long = variants_lib.variant("l", "gradual", "unstructured", 0.5, lr_schedule="rewind",
                                    prune_epochs=1.0, recover_epochs=1.5)
    with pytest.raises(ValueError, match="replays the last 2.5 epochs"):
        variant_config(config, too_long, "/nonexistent")


def test_schedule_start_epoch_is_checked_up_front():
    config = study_smoke.get_config().base
    config.train.schedule_start_epoch = 2.0
    with pytest.raises(ValueError, match=r"schedule_start_epoch=2.0 must be in \[0, "):
        validate_config(config)
    config.train.schedule_start_epoch = 0.5
    config.train.num_steps = 10
    with pytest.raises(ValueError, match="unset train.num_steps"):
        validate_config(config)


def _row(name, acc, ips):
    return report_lib.VariantRow(name, "p", "m", 0.5, 0.5, acc, ips, False)


def test_pareto_frontier_on_a_hand_made_table():
    points = [(0.90, 100.0), (0.89, 300.0), (0.88, 200.0), (0.91, 50.0), (0.89, 300.0),
              (0.80, 300.0), None]
    assert report_lib.pareto_front(points) == [True, True, False, True, True, False, False]
    rep = report_lib.build_report([_row("dense", 0.9, 100.0), _row("fast", 0.895, 300.0),
                                   _row("dominated", 0.88, 200.0), _row("slow", 0.95, 90.0)],
                                  {"device_kind": "cpu", "precision": "float32",
                                   "batch_size": 8, "jax": "x"})
    assert [e["pareto"] for e in rep["rows"]] == [True, True, False, True]
    assert "Open division" in rep["summary"] and "fast (p, m)" in rep["summary"]
    assert "| dominated |" in report_lib.markdown(rep)


def test_ablation_groups_rows_of_one_pattern_and_sparsity():
    recipe = {"method": "gradual", "lr_schedule": "cosine", "distribution": "uniform",
              "prune_epochs": 0.2, "recover_epochs": 0.2, "epochs": 0.4, "distill_alpha": 0.5}
    rows = [_row("dense", 0.9, 100.0)] + [
        report_lib.VariantRow(n, "unstructured", "gradual", s, 0.3, 0.89, 200.0, False,
                              target_sparsity=s, recipe={**recipe, "lr_schedule": ls})
        for n, s, ls in (("a", 0.6, "cosine"), ("b", 0.6, "rewind"), ("c", 0.8, "cosine"))]
    rep = report_lib.build_report(rows, {"device_kind": "cpu", "precision": "float32",
                                         "batch_size": 8, "jax": "x"})
    assert [e["variant"] for e in report_lib.ablation(rep)] == ["a", "b"]
    text = report_lib.markdown(rep)
    assert "Recipe ablation" in text and "gradual 0.2+0.2 ep, rewind, uniform, KD 0.5" in text


def _fake_model(pointwise: float, spatial: float, target: float):
    return distributions.SpeedModel(
        lambda shape: pointwise if shape[:2] == (1, 1) else spatial, target, "fake")


PARAMS = {"a": {"kernel": np.random.default_rng(0).standard_normal((3, 3, 16, 32))},
          "b": {"kernel": np.random.default_rng(1).standard_normal((1, 1, 32, 64))},
          "c": {"kernel": np.random.default_rng(2).standard_normal((3, 3, 32, 32))}}


def _global_sparsity(masks) -> float:
    kept = sum(int(np.sum(np.asarray(m))) for m in (masks["a"]["kernel"],
                                                    masks["b"]["kernel"],
                                                    masks["c"]["kernel"]))
    return 1.0 - kept / sum(math.prod(p["kernel"].shape) for p in PARAMS.values())


def test_speed_allocation_keeps_non_gaining_layers_dense_and_hits_the_target():
    # The 1x1 layer's kernel never gains (max density 0): it stays dense, and the 3x3 layers
    # take the whole target.
    masks = prune(PARAMS, "unstructured", 0.7, "speed", r"kernel$",
                  speed_model=_fake_model(0.0, 0.3, 0.7))
    assert bool(np.all(masks["b"]["kernel"]))
    assert _global_sparsity(masks) == pytest.approx(0.7, abs=3 / 15872)  # Per-layer rounding.
    dens = [float(np.mean(masks[k]["kernel"])) for k in "ac"]
    assert dens[0] == pytest.approx(dens[1], abs=1e-3) and dens[0] < 0.3
    # Uniform spends sparsity on the 1x1 layer although its kernel is not faster.
    uniform = prune(PARAMS, "unstructured", 0.7, "uniform", r"kernel$")
    assert float(np.mean(uniform["b"]["kernel"])) == pytest.approx(0.3, abs=1e-3)


def test_speed_allocation_caps_each_layer_at_its_largest_gaining_density():
    shapes = [(3, 3, 16, 32), (1, 1, 32, 64), (3, 3, 32, 32)]
    alloc = distributions.speed_allocation(
        shapes, 0.5, lambda s: {(3, 3, 16, 32): 0.1, (1, 1, 32, 64): 1.0}.get(s, 0.8))
    sizes = [math.prod(s) for s in shapes]
    kept = sum((1 - a) * n for a, n in zip(alloc, sizes, strict=True))
    assert kept == pytest.approx(0.5 * sum(sizes), rel=1e-6)
    assert 1 - alloc[0] == pytest.approx(0.1)  # Capped at its gaining density.
    assert 1 - alloc[1] == pytest.approx(1 - alloc[2])  # The others share one level.
    with pytest.raises(ValueError, match="no allocation removes 0.500"):
        distributions.speed_allocation(shapes, 0.5, lambda s: 0.0)


def test_speed_distribution_is_checked():
    with pytest.raises(ValueError, match="needs a speed_model"):
        prune(PARAMS, "unstructured", 0.5, "speed", r"kernel$")
    with pytest.raises(ValueError, match="block or unstructured"):
        prune(PARAMS, "channel", 0.5, "speed", r"kernel$",
              speed_model=_fake_model(0.5, 0.5, 0.5))


def test_speed_model_from_the_cpu_cost_table():
    from jaxsparse.compiler import costs

    table = costs.load_table("cpu")
    m = costs.speed_model("cpu", "unstructured", 0.6)
    spatial, pointwise = m.max_density((3, 3, 16, 16)), m.max_density((1, 1, 16, 32))
    # The model stops just below the first measured density whose unstructured 3x3 ratio
    # reaches MAX_RATIO (the scan goes up from the lowest density), and it never extrapolates
    # beyond the highest measured density (0.5).
    measured = (0.05, 0.1, 0.2, 0.35, 0.5)
    first = next(d for d in measured
                 if table.ratio("unstructured", "spatial", d)[0] >= costs.MAX_RATIO)
    below = max(d for d in measured if d < first)
    assert table.ratio("unstructured", "spatial", spatial)[0] < costs.MAX_RATIO
    assert below <= spatial < first
    assert 0.0 < spatial <= pointwise <= 0.5
    with pytest.raises(ValueError, match="block or unstructured"):
        costs.speed_model("cpu", "2:4", 0.5)
    with pytest.raises(ValueError, match="no measured cost table|needs a measured cost table"):
        costs.speed_model("nosuchplatform", "unstructured", 0.5)


def test_study_config_sweep_block_uses_the_helper():
    config = study_smoke.get_config()
    config.sweep.sparsities = (0.5, 1.5)
    with pytest.raises(ValueError, match=r"^sweep.sparsities=\(0.5, 1.5\): sparsity 1.5 is not"):
        variants_of(config)


@needs_fmnist
def test_rewound_variant_logs_the_dense_learning_rates(tmp_path):
    """End to end: a rewound fine-tune's logged learning rate at each step is the dense run's
    at the same point of its schedule."""
    config = study_smoke.get_config()
    config.variants = [variants_lib.variant("rewound", "one_shot", "unstructured", 0.5,
                                            lr_schedule="rewind")]
    rep = run_study(config, str(tmp_path))
    assert rep["rows"][2]["recipe"]["lr_schedule"] == "rewind"
    dense = scalars(tmp_path / "dense", "train/learning_rate")
    ft = scalars(tmp_path / "rewound", "train/learning_rate")
    offset = max(dense) - max(ft)
    assert len(ft) == 16 and offset == 48
    assert all(ft[s] == pytest.approx(dense[s + offset], rel=1e-6) for s in ft)


def test_best_per_family_names_each_familys_fastest_within_99():
    rows = [_row("dense", 0.9, 100.0)] + [
        report_lib.VariantRow(n, p, "gradual", 0.5, 0.3, acc, ips, False)
        for n, p, acc, ips in (("c40", "channel", 0.895, 200.0), ("c50", "channel", 0.893, 260.0),
                               ("c60", "channel", 0.85, 400.0), ("u80", "unstructured", 0.85,
                                                                  150.0),
                               ("b75", "block:16x16", 0.899, 210.0))]
    rep = report_lib.build_report(rows, {"device_kind": "cpu", "precision": "float32",
                                         "batch_size": 8, "jax": "x"})
    best = rep["best_per_family"]
    assert best["channel"]["variant"] == "c50" and best["block"]["variant"] == "b75"
    assert best["unstructured"] is None  # Not within 99% of dense.
    assert "per family: channel: c50 2.60x at 0.8930; unstructured: none; block: b75 2.10x" \
        in report_lib.markdown(rep)


def test_reference_bar_is_checked_when_given():
    rep = report_lib.build_report([_row("dense", 0.761, 100.0), _row("s", 0.757, 200.0),
                                   _row("t", 0.750, 300.0)],
                                  {"device_kind": "cpu", "precision": "float32", "batch_size": 8,
                                   "jax": "x", "reference_accuracy": 0.7646,
                                   "reference_name": "MLPerf ResNet-50 reference"})
    assert [e["meets_reference_bar"] for e in rep["rows"]] == [True, True, False]
    assert ("MLPerf ResNet-50 reference: 76.46% top-1, its 99% bar 75.695%; rows at or above "
            "the bar: dense, s.") in report_lib.markdown(rep)
