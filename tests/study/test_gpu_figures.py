"""The GPU figures' end-to-end section and results file, run on CPU at smoke size (the GPU
runs them with scripts/bench_gpu.py; tests/gpu checks the kernels on the device)."""

from experiments.configs import smoke
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
