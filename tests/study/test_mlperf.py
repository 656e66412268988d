"""MLPerf LoadGen: a tiny model's Offline run, its accuracy log, the labels, errors."""

import json
import os
import sys

import jax
import ml_collections
import numpy as np
import pytest

import jaxsparse as js
from experiments.configs import mlperf_smoke
from jaxsparse.study import loadgen, mlperf, mlperf_report
from jaxsparse.study.speed import random_weight_masks
from jaxsparse.training import experiment as experiment_lib
from tests.helpers import needs_fmnist, run_cli

SHORT = "shortened run (min duration 1 s), not a submission-length run"


def _config(**mlperf_fields):
    c = mlperf_smoke.get_config()
    c.study.base.data.test_limit = 192
    c.mlperf.update(dict(min_duration_s=1.0, batch_size=32, calibration_s=0.5,
                         **mlperf_fields))
    return c


@pytest.fixture(scope="module")
def tiny():
    """The smoke model with random weights on 192 Fashion-MNIST test images."""
    config = _config()
    exp = experiment_lib.build(mlperf.dense_config(config.study))
    return config, exp


def _reference_classes(exp, variables, batch=32):
    fn = jax.jit(lambda v, x: exp.apply_fn(v, x, train=False))
    out = []
    for i in range(0, len(exp.test), batch):
        x = exp.test.images[i:i + batch]
        out.append(np.argmax(np.asarray(fn(variables, x)), -1))
    return np.concatenate(out)


def _run(exp, model, config, scenario, mode, logdir):
    m = config.mlperf
    preds = mlperf.predictors(exp, model, mlperf.batch_sizes(m))
    cal = mlperf.calibrate(preds, exp.image_shape, m)
    samples = loadgen.SampleLibrary(lambda i: exp.test.images[i], len(exp.test), 1024)
    sut = loadgen.SystemUnderTest(preds, samples)
    settings = loadgen.test_settings(scenario, mode, cal, min_duration_s=1.0)
    return loadgen.run_test(sut, samples, settings, str(logdir))


@needs_fmnist
def test_offline_run_is_valid_and_its_accuracy_log_matches_the_model(tiny, tmp_path):
    config, exp = tiny
    model = mlperf.Model("dense", exp.variables)
    perf = _run(exp, model, config, "Offline", "performance", tmp_path / "perf")
    assert perf.valid is True and perf.reasons == ()
    assert perf.samples_per_sec > 0 and perf.mode == "performance"
    summary = (tmp_path / "perf" / "mlperf_log_summary.txt").read_text()
    assert "Result is : VALID" in summary
    acc = _run(exp, model, config, "Offline", "accuracy", tmp_path / "acc")
    assert acc.valid is None
    got = loadgen.accuracy_from_log(str(tmp_path / "acc"), exp.test.labels)
    want = _reference_classes(exp, exp.variables)
    np.testing.assert_array_equal(got["predictions"], want)
    assert got["count"] == len(exp.test) == 192
    # The same number the training code's evaluation gives on these samples.
    assert got["accuracy"] == pytest.approx(exp.evaluate(exp.variables, batch_size=32)
                                            ["accuracy"], abs=1e-9)


@needs_fmnist
def test_sparse_variant_answers_like_the_masked_dense_model(tiny, tmp_path):
    config, exp = tiny
    v = ml_collections.ConfigDict(dict(name="block", method="one_shot", pattern="block:8x8",
                                       sparsity=0.75, grouped=False, include="",
                                       policy="sparse"))
    x = exp.example(1)
    masks = random_weight_masks(config.study, v, exp, x)
    model = mlperf.Model("block", exp.variables, masks, "sparse")
    assert model.division == "open" and mlperf.Model("dense", None).division == "closed"
    _run(exp, model, config, "Offline", "accuracy", tmp_path)
    got = loadgen.accuracy_from_log(str(tmp_path), exp.test.labels)["predictions"]
    masked = {**exp.variables, "params": js.apply_masks(exp.variables["params"], masks)}
    np.testing.assert_array_equal(got, _reference_classes(exp, masked))


@needs_fmnist
def test_failing_sut_completes_its_samples_keeps_the_logs_and_says_so(tiny, tmp_path):
    config, exp = tiny
    preds = mlperf.predictors(exp, mlperf.Model("dense", exp.variables), [32])
    calls = []

    def broken(x):
        calls.append(len(x))
        if len(calls) == 3:
            raise RuntimeError("device on fire")
        return preds[32](x)

    samples = loadgen.SampleLibrary(lambda i: exp.test.images[i], len(exp.test), 1024)
    sut = loadgen.SystemUnderTest({32: broken}, samples)
    cal = loadgen.Calibration(offline_qps=1000.0, single_stream_latency_ns=1e6,
                              server_qps=10.0)
    settings = loadgen.test_settings("Offline", "performance", cal, min_duration_s=1.0)
    with pytest.raises(loadgen.SUTError, match="device on fire.*LoadGen's logs are in"):
        loadgen.run_test(sut, samples, settings, str(tmp_path))
    for name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt"):
        assert (tmp_path / name).stat().st_size > 0
    assert len(calls) == 3  # Nothing ran after the failure; the rest were completed empty.


ENV = {"loadgen": "6", "benchmark": "resnet50", "device_kind": "cpu", "device_count": 1,
       "platform": "cpu", "precision": "float32", "batch_size": 8, "server_batch_size": 4,
       "jax": "0", "weights": "random", "dataset": "synthetic"}


def test_report_labels_divisions_short_runs_and_speedups():
    def test(sps=None, p90=None, acc=None, valid=True):
        lat = {} if p90 is None else {"90": p90 * 1e6, "99": 2 * p90 * 1e6}
        return {"performance": {"valid": valid, "reasons": [] if valid else ["min duration "
                                "not met"], "samples_per_sec": sps, "latency_ns": lat,
                                "logdir": "p"},
                "accuracy": {"accuracy": acc, "reasons": [], "logdir": "a"}}

    rows = [mlperf_report.row("dense", "closed", "Offline", test(sps=100.0, acc=0.90)),
            mlperf_report.row("dense", "closed", "SingleStream", test(p90=2.0, acc=0.90)),
            mlperf_report.row("a", "open", "Offline", test(sps=250.0, acc=0.895)),
            mlperf_report.row("a", "open", "SingleStream", test(p90=1.0, acc=0.895)),
            mlperf_report.row("b", "open", "Offline", test(sps=400.0, acc=0.80)),
            mlperf_report.row("c", "open", "Offline", test(sps=500.0, acc=0.90, valid=False)),
            mlperf_report.row("d", "open", "SingleStream", test(p90=3.0, acc=0.90))]
    rep = mlperf_report.build(rows, {"min_duration_s": 1.0})
    by = {(r["variant"], r["scenario"]): r for r in rep["rows"]}
    assert by["a", "Offline"]["speedup"] == pytest.approx(2.5)
    assert by["a", "SingleStream"]["speedup"] == pytest.approx(2.0)  # Latency halved.
    assert by["dense", "Offline"]["latency_p90_ms"] is None  # Offline: no query latency.
    assert by["b", "Offline"]["meets_99"] is False and by["a", "Offline"]["meets_99"] is True
    # b misses the accuracy bar, c is INVALID and d slower than dense: none may be the best.
    assert rep["best"] == {"Offline": "a", "SingleStream": "a"}
    assert all(r["run"] == SHORT for r in rep["rows"])
    assert all(SHORT in mlperf_report.row_text(r) for r in rep["rows"])
    assert all(SHORT in line for line in rep["summary"]) and len(rep["summary"]) == 2
    assert "INVALID (min duration not met)" in mlperf_report.row_text(by["c", "Offline"])
    assert mlperf_report.tag_prefix(rep).startswith("mlperf_shortened_run_min_duration_1s")
    official = mlperf_report.build(rows, {"min_duration_s": None})
    assert official["run"] == "official settings" and mlperf_report.tag_prefix(official) == \
        "mlperf"
    with pytest.raises(ValueError, match="needs the dense model in Offline"):
        mlperf_report.build(rows[2:], {})
    # With the optimized dense model measured, it is the speed baseline (the accuracy bar
    # stays the dense model as written): a beats dense (2.5x) but not optimized dense.
    opt = mlperf_report.row("dense_optimized", "closed", "Offline", test(sps=300.0, acc=0.90))
    strict = mlperf_report.build([*rows, opt], {"min_duration_s": 1.0})
    by = {(r["variant"], r["scenario"]): r for r in strict["rows"]}
    assert by["a", "Offline"]["speedup"] == pytest.approx(250 / 300)
    assert by["a", "Offline"]["baseline"] == "dense_optimized"
    assert by["a", "SingleStream"]["baseline"] == "dense"  # Not measured there.
    assert strict["best"]["Offline"] is None and by["b", "Offline"]["meets_99"] is False
    assert "0.83x optimized dense" in mlperf_report.row_text(by["a", "Offline"])
    assert "| vs optimized dense |" in mlperf_report.markdown({**strict, **ENV})
    # Where the model as written measured faster than the optimized one (SingleStream here:
    # 2.0 ms vs 2.5 ms), a sparse model must beat both: e (2.2 ms) beats only the optimized.
    single = [mlperf_report.row("dense_optimized", "closed", "SingleStream",
                                test(p90=2.5, acc=0.90)),
              mlperf_report.row("e", "open", "SingleStream", test(p90=2.2, acc=0.90))]
    noisy = mlperf_report.build([rows[0], rows[1], *single], {"min_duration_s": 1.0})
    by = {(r["variant"], r["scenario"]): r for r in noisy["rows"]}
    assert by["e", "SingleStream"]["speedup"] > 1 and noisy["best"]["SingleStream"] is None


def test_bad_configs_fail_before_anything_is_compiled(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"mlperf.scenarios=.*'Batch'.*Offline"):
        mlperf.check_config(_config(scenarios=("Batch",)), str(tmp_path))
    with pytest.raises(ValueError, match="mlperf.preset='long'"):
        mlperf.check_config(_config(preset="long"), str(tmp_path))
    c = _config(variants="dense,nope")
    c.run_study = False
    with pytest.raises(ValueError, match=r"holds no finished study.*experiments.study"):
        mlperf.check_config(c, str(tmp_path))
    (tmp_path / "report.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match=r"unknown variant\(s\) \['nope'\]"):
        mlperf.check_config(c, str(tmp_path))
    c.mlperf.variants = "block75"
    assert mlperf.check_config(c, str(tmp_path)) == ["dense", "dense_optimized", "block75"]
    monkeypatch.setitem(sys.modules, "mlperf_loadgen", None)  # As if not installed.
    with pytest.raises(ValueError, match="LoadGen is not installed: pip install "
                                         "mlcommons-loadgen"):
        mlperf.check_config(c, str(tmp_path))


def test_official_settings_are_loadgens_resnet50_values():
    off = loadgen.official_settings("Offline")
    assert off["min_duration_ms"] == 600_000 and off["min_query_count"] == 24576
    assert loadgen.official_settings("Server")["server_target_latency_ns"] == 15_000_000
    cal = loadgen.Calibration(100.0, 1e6, 10.0)
    s = loadgen.test_settings("SingleStream", "performance", cal)
    assert s.min_duration_ms == 600_000 and s.single_stream_expected_latency_ns == 1_000_000
    short = loadgen.test_settings("SingleStream", "performance", cal, min_duration_s=2.5)
    assert short.min_duration_ms == 2500 and short.min_query_count == 64


def test_cli_unknown_scenario_is_one_error_line(tmp_path):
    out = run_cli(["-m", "experiments.mlperf", "--config=experiments/configs/mlperf_smoke.py",
                   f"--workdir={tmp_path}", "--config.mlperf.scenarios=('Batch',)"])
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: mlperf.scenarios=")
    assert "Traceback" not in out.stderr
    assert not os.path.exists(tmp_path / "mlperf")


@needs_fmnist
def test_study_workdir_end_to_end(tmp_path):
    """Trains a one-variant smoke study, then measures it: the accuracy LoadGen's log gives
    each model equals the study's own evaluation of the compiled model."""
    c = _config(scenarios=("Offline",))
    c.study.variants = c.study.variants[:1]  # channel50
    rep = mlperf.run_mlperf(c, str(tmp_path))
    study = json.loads((tmp_path / "report.json").read_text())
    want = {r["variant"]: r["accuracy"] for r in study["rows"]}
    assert [r["variant"] for r in rep["rows"]] == ["dense", "dense_optimized", "channel50"]
    for r in rep["rows"]:
        # Equal counts of correct samples (the study sums them in float32).
        assert r["accuracy"] == pytest.approx(want[r["variant"]], abs=1e-6)
        assert r["valid"] is True and r["run"] == SHORT
        for mode in ("performance", "accuracy"):
            logdir = tmp_path / "mlperf" / r["variant"] / f"Offline-{mode}"
            assert (logdir / "mlperf_log_detail.txt").is_file()
    assert [r["division"] for r in rep["rows"]] == ["closed", "closed", "open"]
    assert all(r["baseline"] == "dense_optimized" for r in rep["rows"])
    text = (tmp_path / "mlperf" / "report.md").read_text()
    assert "| channel50 | open | Offline |" in text and SHORT in text
    assert json.loads((tmp_path / "mlperf" / "report.json").read_text())["loadgen"] == \
        loadgen.loadgen_version()
    # Run again: every test finished, so each is reused (nothing compiled) and the report is
    # the same.
    again = mlperf.run_mlperf(c, str(tmp_path))
    assert [(r["variant"], r["samples_per_sec"]) for r in again["rows"]] == \
        [(r["variant"], r["samples_per_sec"]) for r in rep["rows"]]
