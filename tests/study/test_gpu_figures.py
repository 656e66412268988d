"""The GPU figures' end-to-end section and results file, run on CPU at smoke size (the GPU
runs them with scripts/bench_gpu.py; tests/gpu checks the kernels on the device)."""

import pytest

from experiments.configs import smoke
from jaxsparse.compiler import costs
from jaxsparse.study import gpu_figures as figs
from jaxsparse.study.report import speedup_median
from jaxsparse.training import experiment


def test_e2e_rows_check_then_time_every_variant():
    config = smoke.get_config()
    config.data.name = "synthetic"
    exp = experiment.build(config, load_data=False)
    rows = figs.e2e_rows(exp, 4, ["nm24", "channel50", "channel50_nm24"], warmup=0, trials=2,
                         reps=2)
    assert [r["variant"] for r in rows] == ["dense", "dense_optimized", "nm24", "channel50",
                                            "channel50_nm24"]
    assert rows[1]["speedup"] == 1.0 and rows[0]["vs_written"] == 1.0  # The two baselines.
    for r in rows[1:]:
        assert r["max_rel_error"] < 1e-4, r
        assert r["images_per_sec"] > 0 and r["batch"] == 4
    for r in rows:  # Medians of the per-repetition ratios, as the studies state them.
        assert len(r["latencies_ms"]) == 2
        assert r["speedup"] == speedup_median(rows[1]["latencies_ms"], r["latencies_ms"])
        assert r["vs_written"] == speedup_median(rows[0]["latencies_ms"], r["latencies_ms"])
    assert rows[3]["flops_ratio"] < 0.5
    assert rows[4]["flops_ratio"] < rows[3]["flops_ratio"]
    assert any(a.startswith("sliced+nm_dot") for a in rows[4]["layer_actions"])
    env = {"device": "cpu", "jax": "x", "driver": "-", "cusparselt": "-",
           "precision": "float32"}
    text = figs.markdown({"environment": env, "date": "d", "e2e_b4": {
        "batch": 4, "command": "c", "rows": rows, "tag": ""}})
    assert "## ResNet50 224x224 float32 inference, batch 4" in text
    assert "| channel50_nm24 |" in text and "|---|---|---|---|---|---|---|---|" in text
    assert "speedup vs optimized dense" in text


def test_a_variant_that_fails_is_left_out_of_the_timing_with_the_reason(monkeypatch):
    config = smoke.get_config()
    config.data.name = "synthetic"
    exp = experiment.build(config, load_data=False)
    real = figs.variant_masks
    monkeypatch.setattr(figs, "variant_masks", lambda exp, name, x: 1 / 0 if name == "nm24"
                        else real(exp, name, x))
    rows = figs.e2e_rows(exp, 4, ["nm24", "channel50"], warmup=0, trials=1, reps=1)
    assert [r["variant"] for r in rows] == ["dense", "dense_optimized", "channel50", "nm24"]
    assert rows[-1]["left_out"].startswith("failed: ZeroDivisionError") and "ms" not in rows[-1]
    env = {"device": "cpu", "jax": "x", "driver": "-", "cusparselt": "-", "precision": "f32"}
    text = figs.markdown({"environment": env, "date": "d", "e2e_b4": {
        "batch": 4, "command": "c", "rows": rows, "tag": ""}})
    assert "Left out (not timed): nm24: failed: ZeroDivisionError" in text
    assert "| nm24 |" not in text


def test_gemm_sweep_checks_then_times_every_candidate_and_says_what_it_skipped():
    rows = figs.gemm_rows(1, warmup=0, trials=2, reps=1, gemms=[("smoke 1x1", 16, 128, 128),
                                                               ("smoke odd", 16, 96, 64)])
    first, odd = rows
    assert set(first["ms"]) == {"dense", "nm_dot", "block90_32", "block90_64", "block90_128",
                                "mosaic90_64", "mosaic90_128"}
    assert all(e < figs.GEMM_TOLERANCE for e in first["rel_error"].values()), first["rel_error"]
    assert first["skipped"] == {"cusparselt": "no NVIDIA GPU"} and "best_2_4" not in first
    assert odd["skipped"]["block90_128"] == "K=96 or N=64 is not a multiple of 128"
    assert set(first["speedup"]) == set(first["ms"]) - {"dense"}
    env = {"device": "cpu", "jax": "x", "driver": "-", "cusparselt": "-", "precision": "bf16"}
    res = {"environment": env, "date": "d", "gemm": {"batch": 1, "command": "c", "rows": rows}}
    text = figs.markdown(res)
    assert "| smoke 1x1 | 16 | 128 | 128 |" in text and "cuSPARSELt b_row" in text
    with pytest.raises(ValueError, match="no cuSPARSELt GEMM measurement"):
        figs.cost_table(res)


def test_a_failing_or_wrong_candidate_is_left_out_with_the_reason(monkeypatch):
    real = figs._gemm_candidates

    def broken(*args):
        cands, refs, skipped = real(*args)
        cands["block90_32"] = (lambda *a: 1 / 0, ())
        refs["block90_64"] = -refs["block90_64"]  # Its output no longer matches.
        return cands, refs, skipped

    monkeypatch.setattr(figs, "_gemm_candidates", broken)
    (row,) = figs.gemm_rows(1, warmup=0, trials=1, reps=1, gemms=[("smoke", 16, 128, 128)])
    assert row["skipped"]["block90_32"].startswith("failed: ZeroDivisionError")
    assert row["skipped"]["block90_64"].startswith("differs from its reference by")
    assert "block90_32" not in row["ms"] and "block90_64" not in row["ms"]
    assert "block90_128" in row["ms"]
    env = {"device": "d", "jax": "x", "driver": "-", "cusparselt": "-", "precision": "bf16"}
    text = figs.markdown({"environment": env, "date": "d", "gemm": {
        "batch": 1, "command": "c", "rows": [row]}})
    assert "Left out (not timed):\n\n- smoke, block90_32: failed: ZeroDivisionError" in text


def test_cost_table_keeps_the_fastest_plan_per_shape_and_auto_reads_it():
    row = {"gemm": "layer3 3x3", "m": 50176, "k": 2304, "n": 256, "best_2_4": {
        "layout": "b_row", "speedup": 1.25, "alg_id": 3, "split_k": 1}}
    env = {"device": "NVIDIA H200", "jax": "0.11", "driver": "580", "cusparselt": "0.8.1",
           "precision": "bfloat16"}
    blocks = {"gemm": "blocks", "k": 512, "n": 512, "ms": {
        "block90_64": 2.0, "mosaic90_64": 1.0, "block90_128": 1.0, "mosaic90_128": 1.5}}
    data = figs.cost_table({"environment": env, "date": "d", "gemm": {
        "batch": 256, "command": "c", "rows": [row, blocks]}})
    assert data["block_kernels"] == {
        "64x64": {"kernel": "mosaic", "mosaic_over_triton": 0.5, "shapes": 1},
        "128x128": {"kernel": "triton", "mosaic_over_triton": 1.5, "shapes": 1}}
    assert data["platform"] == "cuda" and data["batch"] == 256
    assert data["gemms"] == [{"kernel": "2:4", "gemm": "layer3 3x3", "m": 50176, "k": 2304,
                              "n": 256, "ratio": 0.8, "layout": "b_row", "alg_id": 3,
                              "split_k": 1}]
    table = costs.CostTable("cuda", data["machine"], data["entries"], tuple(data["gemms"]))
    assert table.gemm("2:4", 2304, 256) == (data["gemms"][0], True)
    assert table.gemm("2:4", 4608, 256) == (data["gemms"][0], False)  # Within a factor of 2.
    assert table.gemm("2:4", 9216, 256) is None and table.gemm("2:4", 256, 64) is None


def test_the_first_h200_results_file_still_renders():
    import json
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "results",
                        "nvidia-h200-2026-11-26.json")
    text = figs.markdown(json.load(open(path)))
    assert "cuSPARSELt kernel" in text and "## GEMMs" in text


def test_a_batch_size_past_the_budget_is_predicted_and_reported_as_skipped():
    assert figs.predicted_seconds(None, 256) is None
    assert figs.predicted_seconds((256, 100.0), 1024) == 250.0  # Half fixed, half x4.
    env = {"device": "d", "jax": "x", "driver": "-", "cusparselt": "-", "precision": "bf16"}
    text = figs.markdown({"environment": env, "date": "d", "e2e_b1024": {
        "batch": 1024, "command": "c", "tag": "", "skipped": "skipped: predicted 250 s"}})
    assert "## ResNet50 224x224 bf16 inference, batch 1024\n\nNot run: skipped: predicted " \
        "250 s." in text


def test_study_accuracy_goes_beside_the_rows_of_the_same_pattern():
    import json
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "results",
                        "study_fmnist_cpu_report.json")
    report = json.load(open(path))
    nm = figs.study_accuracy(report, "nm24")
    assert nm["study_variant"] == "nm24" and nm["source"] == "resnet18 on fashion_mnist"
    assert figs.study_accuracy(report, "channel50")["study_variant"] == "channel_50"
    assert figs.study_accuracy(report, "dense")["accuracy_delta"] == 0.0
    assert figs.study_accuracy(report, "block90_128") is None  # Not studied at that size.
    assert figs.study_accuracy(report, "channel50_nm24") is None
    env = {"device": "d", "jax": "x", "driver": "-", "cusparselt": "-", "precision": "bf16"}
    row = {"variant": "nm24", "images_per_sec": 1.0, "speedup": 1.0, "ms": 1.0, "study": nm}
    text = figs.markdown({"environment": env, "date": "d", "e2e_b8": {
        "batch": 8, "command": "c", "tag": "", "rows": [row]}})
    assert f"| {100 * nm['accuracy']:.2f}% ({100 * nm['accuracy_delta']:+.2f}, meets 99%) |" \
        in text and "resnet18 on fashion_mnist" in text
