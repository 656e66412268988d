"""The study end to end at smoke size, its resumption, and the report's honesty rules."""

import json
import os

import pytest

from experiments.configs import study_smoke
from jaxsparse.study import baselines, run_speed, run_study, variants_of
from jaxsparse.study import report as report_lib
from tests.helpers import hparams_plugin_data, needs_fmnist
from tests.helpers import scalars as _scalars


@needs_fmnist
def test_smoke_study_end_to_end_and_resume(tmp_path, capsys):
    config = study_smoke.get_config()
    rep = run_study(config, str(tmp_path))
    names = [r["variant"] for r in rep["rows"]]
    assert names == ["dense", "dense_optimized", "channel50", "block75"]
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(rep["rows"]))
    for row in on_disk["rows"][2:]:
        study = json.loads((tmp_path / row["variant"] / "study.json").read_text())
        assert row["accuracy"] == study["compiled_accuracy"]
        results = json.loads((tmp_path / row["variant"] / "results.json").read_text())
        assert row["achieved_sparsity"] == results["sparsity"]["achieved"]
        lo, hi = row["speedup_range"]  # The median per-repetition ratio, inside their IQR.
        assert row["speedup"] == row["speedup_median"] and lo <= row["speedup"] <= hi
    dense = json.loads((tmp_path / "dense" / "results.json").read_text())
    assert on_disk["rows"][0]["accuracy"] == dense["accuracy"]
    # The speed baseline: the dense model with its BatchNorms folded (as the variants are),
    # exactly as accurate; speedups are stated against it.
    opt = on_disk["rows"][1]
    assert on_disk["speed_baseline"] == "dense_optimized" and opt["division"] == "closed"
    assert opt["speedup"] == 1.0 and opt["accuracy"] == pytest.approx(on_disk["rows"][0][
        "accuracy"], abs=2e-3)
    assert "to the optimized dense model" in (tmp_path / "report.md").read_text()
    channel = on_disk["rows"][2]
    assert channel["flops_ratio"] < 0.5 and not channel["mask_only"]
    # The compiled model is as accurate as the masked one (the pass is exact).
    masked = json.loads((tmp_path / "channel50" / "results.json").read_text())["accuracy"]
    assert channel["accuracy"] == pytest.approx(masked, abs=2e-3)
    table = (tmp_path / "report.md").read_text()
    assert "| dense |" in table and "| channel50 |" in table
    assert (tmp_path / "pareto.png").stat().st_size > 1000
    for name in names:  # One HParams run per study row.
        hp = _scalars(tmp_path / "hparams" / name, "hparam/compiled_accuracy")
        assert hp[0] == pytest.approx(next(r["accuracy"] for r in rep["rows"]
                                           if r["variant"] == name))
    # TensorBoard's HParams view: one experiment summary (its columns) in the whole study,
    # declaring the recipe hparams and the study's metrics; one session per row.
    from tensorboard.plugins.hparams import metadata as hp_meta

    plugin = hparams_plugin_data(tmp_path)
    declared = [run for run, tags in plugin.items() if hp_meta.EXPERIMENT_TAG in tags]
    assert declared == ["."], declared
    sessions = sorted(run for run, tags in plugin.items()
                      if hp_meta.SESSION_START_INFO_TAG in tags)
    assert sessions == sorted(f"hparams/{n}" for n in names), sessions  # No training runs.
    experiment = hp_meta.parse_experiment_plugin_data(plugin["."][hp_meta.EXPERIMENT_TAG])
    columns = {h.name for h in experiment.hparam_infos}
    assert {"variant", "pattern", "sparsity", "method", "lr_schedule", "distribution",
            "prune_epochs", "recover_epochs", "division", "bench_batch_size"} <= columns
    assert {m.name.tag for m in experiment.metric_infos} == {
        "hparam/compiled_accuracy", "hparam/accuracy_delta", "hparam/meets_99",
        "hparam/speedup", "hparam/images_per_sec", "hparam/flops_ratio"}
    for name in names:
        start = hp_meta.parse_session_start_info_plugin_data(
            plugin[f"hparams/{name}"][hp_meta.SESSION_START_INFO_TAG])
        assert start.hparams["variant"].string_value == name
        assert start.hparams["bench_batch_size"].number_value == config.bench.batch_size
    # Every row in one line per metric (row index as the step), not one point per run.
    series = _scalars(tmp_path, "study/compiled_accuracy")
    assert sorted(series) == list(range(len(names)))
    assert series[1] == pytest.approx(rep["rows"][1]["accuracy"])
    # The gradual variant (distilled from dense) reaches its sparsity exactly at its end step,
    # half-way through its 16-step fine-tune, and keeps it.
    block = _scalars(tmp_path / "block75", "sparsity/global")
    results = json.loads((tmp_path / "block75" / "results.json").read_text())
    target = results["sparsity"]["achieved"]
    assert target == pytest.approx(0.75, abs=0.02)
    assert block[8] < target - 0.01, block  # After steps 0..7.
    assert all(block[s] == pytest.approx(target, abs=1e-6) for s in range(9, 17)), block
    out = capsys.readouterr().out
    assert "variant 2/2: block75 (gradual block:8x8)" in out and "min elapsed" in out
    assert "block75: compiled accuracy" in out
    # Resume: nothing is trained or evaluated again.
    capsys.readouterr()
    run_study(config, str(tmp_path))
    out = capsys.readouterr().out
    assert "training" not in out and "evaluating" not in out
    assert out.count("finished earlier") == 3


@needs_fmnist
def test_killed_variant_is_resumed_and_finished_ones_reused(tmp_path, capsys):
    config = study_smoke.get_config()
    config.variants = config.variants[:1]
    run_study(config, str(tmp_path))
    os.remove(tmp_path / "channel50" / "results.json")  # As if killed before finishing.
    os.remove(tmp_path / "channel50" / "study.json")
    capsys.readouterr()
    run_study(config, str(tmp_path))
    out = capsys.readouterr().out
    assert "dense: finished earlier" in out
    assert "channel50: training" in out and "Resumed from checkpoint" in out


def test_speed_study_on_random_weights(tmp_path, capsys):
    """mode="speed": no training; every variant checked against the masked model and timed."""
    config = study_smoke.get_config()
    config.mode = "speed"
    config.base.data.name = "synthetic"  # No data is read: only its shape is used.
    config.speed.layer_table = True
    config.speed.results_dir = str(tmp_path / "results")
    rep = run_speed(config, str(tmp_path / "w"))
    assert [r["variant"] for r in rep["variants"]] == ["channel50", "block75"]
    for r in rep["variants"]:
        assert r["verified"] and r["max_rel_error"] < 1e-4, r
        # The stated speedup is the median of the per-repetition ratios: inside their IQR.
        lo, hi = r["speedup_range"]
        assert lo <= r["speedup"] <= hi, r
    assert rep["variants"][0]["flops_ratio"] < 0.5
    assert rep["variants"][0]["sparsity"] == pytest.approx(0.5, abs=0.05)
    opt = rep["dense_optimized"]  # The speed baseline: the dense model, BatchNorm folded.
    assert opt["verified"] and opt["max_rel_error"] < 1e-4
    assert any(r["affine_folded"] for r in opt["report"]["layers"])
    table = (tmp_path / "w" / "report.md").read_text()
    assert "| dense (as written) |" in table and "| block75 |" in table and "no accuracy" in table
    assert "| dense (optimized: BatchNorm folded) |" in table
    assert "### block75: per layer, measured (calibrate=True)" in table
    # speed.calibrate (the default): the optimized dense model's layers were measured too.
    assert rep["calibrate"] and "### dense (optimized): per layer, measured" in table
    assert all(r["timing"]["measured_dense_ms"] for r in opt["report"]["layers"]
               if r["lowering"] == "block")
    # The external dense runtimes: timed and checked where installed, else said so.
    assert [b["runtime"] for b in rep["baselines"]] == ["onnxruntime", "openvino"]
    for b in rep["baselines"]:
        if baselines.version(b["runtime"]) is None:
            assert b["why"].startswith("not installed") and b["why"] in table
        else:
            assert b["verified"] and b["max_rel_error"] < 1e-4, b
            assert f"| {b['runtime']} dense ({b['version']}) |" in table
    fastest = {"dense (as written)": rep["dense"], "dense (optimized)": opt,
               **{f"{b['runtime']} dense": b for b in rep["baselines"]}}[rep["fastest_dense"]]
    assert fastest["vs_fastest_dense"] == pytest.approx(1.0)
    assert "vs fastest dense runtime" in table
    stamped = list((tmp_path / "results").glob("bench_sparse_*_cpu_*.md"))
    assert len(stamped) == 1 and stamped[0].read_text() == table
    assert _scalars(tmp_path / "w", "speed/block75/speedup")[0] == pytest.approx(
        rep["variants"][1]["speedup"], rel=1e-5)
    assert "[speed] variant 2/2: block75" in capsys.readouterr().out


def _row(name, acc, ips, mask_only=False):
    return report_lib.VariantRow(name, "p", "m", 0.5, 0.5 if not mask_only else 1.0, acc, ips,
                          mask_only)


ENV = {"device_kind": "cpu", "precision": "float32", "batch_size": 8, "jax": "0"}


def test_report_refuses_speedup_without_compiled_accuracy():
    rep = report_lib.build_report([_row("dense", 0.9, 100.0), _row("a", None, 300.0),
                                   _row("b", 0.8, 100.0, mask_only=True),
                                   _row("c", 0.85, 200.0)], ENV)
    by = {r["variant"]: r for r in rep["rows"]}
    assert by["a"]["speedup"] is None and by["a"]["images_per_sec"] is None
    assert by["b"]["speedup"] is None
    assert by["c"]["speedup"] == 2.0 and by["c"]["accuracy_delta"] == pytest.approx(-0.05)
    table = report_lib.markdown(rep)
    assert "n/a (compiled accuracy not measured)" in table and "3.00x" not in table
    assert "b (mask only)" in table and "none (mask only)" in table
    assert "| c | open | p |" in table and "2.00x" in table
    assert "| dense | closed |" in table


def test_report_labels_division_and_the_99_percent_bar():
    rep = report_lib.build_report([_row("dense", 0.90, 100.0), _row("slow_ok", 0.895, 150.0),
                                   _row("fast_ok", 0.8911, 300.0), _row("fast_bad", 0.85, 400.0),
                                   _row("masked", 0.9, 100.0, mask_only=True)], ENV)
    by = {r["variant"]: r for r in rep["rows"]}
    assert by["dense"]["division"] == "closed" and by["dense"]["meets_99"]
    assert all(by[n]["division"] == "open" for n in ("slow_ok", "fast_ok", "fast_bad"))
    assert by["fast_ok"]["meets_99"] and not by["fast_bad"]["meets_99"]
    assert rep["summary"].startswith("Fastest sparse model within 99% of the dense accuracy: "
                                     "fast_ok (p, m), 3.00x")
    assert "sparse model" in rep["summary"] and "Open-division" in rep["summary"]
    table = report_lib.markdown(rep)
    lines = table.splitlines()  # The summary line, then the per-family line.
    assert lines[-3] == rep["summary"]
    assert lines[-1] == "Fastest within 99% of dense, per family: p: fast_ok 3.00x at 0.8911."
    assert "| fast_bad | open | p | 0.500 | 0.500 | 0.8500 | -5.00 pt | no |" in table
    none = report_lib.build_report([_row("dense", 0.9, 100.0), _row("bad", 0.5, 900.0)], ENV)
    assert none["summary"].startswith("No sparse model both kept 99%")


def test_report_needs_dense_first():
    with pytest.raises(ValueError, match="dense baseline"):
        report_lib.build_report([_row("a", 0.9, 1.0)], ENV)


def test_sweep_adds_named_variants_and_rejects_duplicates():
    config = study_smoke.get_config()
    config.sweep.sparsities = (0.5, 0.9)
    names = [v.name for v in variants_of(config)]
    assert names[-2:] == ["sweep_block8x8_50", "sweep_block8x8_90"]
    config.variants = [config.variants[0], config.variants[0]]
    with pytest.raises(ValueError, match="unique"):
        variants_of(config)


def test_study_cli_rejects_a_typo(tmp_path):
    from tests.helpers import run_cli

    proc = run_cli(["-m", "experiments.study", "--config=experiments/configs/study_smoke.py",
                    f"--workdir={tmp_path}", "--config.finetune_epoch=1"])
    assert proc.returncode != 0 and "finetune_epoch" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_speedup_spread_is_the_iqr_of_per_repetition_ratios():
    dense_ms = [10.0, 20.0, 30.0, 40.0, 50.0]
    variant_ms = [5.0, 5.0, 10.0, 5.0, 50.0]  # Ratios 2, 4, 3, 8, 1.
    lo, hi = report_lib.speedup_spread(dense_ms, variant_ms)
    assert (lo, hi) == (2.0, 4.0)  # numpy's linear percentiles of [1, 2, 3, 4, 8].
    assert lo <= 3.0 <= hi  # The median ratio lies in it; the mean (3.6) need not.
    assert report_lib.speedup_median(dense_ms, variant_ms) == 3.0


def test_speed_study_micro_batched_times_the_runtimes_in_the_same_chunks(tmp_path):
    """speed.micro_batch: every JAX model runs the batch in chunks, and each installed external
    runtime is timed both on the whole batch and in those chunks."""
    config = study_smoke.get_config()
    config.mode = "speed"
    config.base.data.name = "synthetic"
    config.speed.calibrate = False
    config.speed.micro_batch = "16"
    config.variants = config.variants[1:]
    config.bench.update(num_batches=3, warmup=1)
    rep = run_speed(config, str(tmp_path / "w"))
    assert rep["dense_optimized"]["report"]["micro_batch"] == 16
    assert all(r["report"]["micro_batch"] == 16 and r["verified"] for r in rep["variants"])
    table = (tmp_path / "w" / "report.md").read_text()
    assert "| micro-batch |" in table and "16 of 64 examples at a time" in \
        rep["variants"][0]["report"]["micro_batch_note"]
    for name in ("onnxruntime", "openvino"):
        rows = [b for b in rep["baselines"] if b["runtime"] == name]
        if baselines.version(name) is None:
            assert len(rows) == 1 and rows[0]["why"].startswith("not installed")
            continue
        assert [b["micro_batch"] for b in rows] == [64, 16]
        assert all(b["verified"] for b in rows)
        assert f"| {name} dense, 16 at a time ({rows[1]['version']}) |" in table


@pytest.mark.parametrize("value", ["3", "two", "0"])
def test_speed_study_rejects_a_bad_micro_batch_before_compiling(tmp_path, value):
    config = study_smoke.get_config()
    config.mode = "speed"
    config.base.data.name = "synthetic"
    config.speed.micro_batch = value
    with pytest.raises(ValueError, match="speed.micro_batch"):
        run_speed(config, str(tmp_path / "w"))
