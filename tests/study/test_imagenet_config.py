"""The ImageNet study config runs end to end at tiny size on CPU: a generated image folder, the
pretrained fixture as the dense model (evaluated, not trained), a sparse variant."""

import os

import pytest

from experiments.configs import study_imagenet_resnet50
from jaxsparse.study import run_study
from tests.helpers import make_image_folder as make_folder

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "models", "fixtures",
                       "resnet_basic_tiny.safetensors")


def test_imagenet_study_at_tiny_size(tmp_path):
    make_folder(tmp_path / "data", classes=tuple(f"c{i}" for i in range(10)), per_class=2,
                val_per_class=1)
    c = study_imagenet_resnet50.get_config()
    b = c.base
    b.model.name, b.model.width, b.model.pretrained = "resnet_tiny", 0.125, FIXTURE
    b.data.dir, b.data.shape, b.data.num_classes = str(tmp_path / "data"), (64, 64, 3), 10
    b.precision, b.progress = "float32", False
    b.train.batch_size, b.eval.batch_size, b.bench.batch_size = 4, 5, 4
    c.finetune.epochs, c.bench.batch_size, c.bench.num_batches, c.bench.warmup = 1.0, 4, 2, 1
    c.variants = [v for v in c.variants if v.name == "channel_30"]
    rep = run_study(c, str(tmp_path / "w"))
    dense = rep["rows"][0]
    assert [r["variant"] for r in rep["rows"]] == ["dense", "dense_optimized", "channel_30"]
    assert 0.0 <= dense["accuracy"] <= 1.0
    results = (tmp_path / "w" / "dense" / "results.json").read_text()
    assert '"steps": 0' in results  # Evaluated, not trained.
    assert rep["rows"][2]["achieved_sparsity"] == pytest.approx(0.3, abs=0.05)
    # LoadGen over the image folder's val/ split: the samples LoadGen loads are the decoded,
    # centre-cropped images the study evaluated, so the accuracy logs give the same top-1.
    from experiments.configs import mlperf_smoke
    from jaxsparse.study import mlperf

    m = mlperf_smoke.get_config()
    m.study, m.run_study = c, False
    m.mlperf.update(scenarios=("Offline",), min_duration_s=1.0, batch_size=4,
                    calibration_s=0.3)
    lg = mlperf.run_mlperf(m, str(tmp_path / "w"))
    by = {r["variant"]: r for r in lg["rows"]}
    assert set(by) == {"dense", "dense_optimized", "channel_30"}
    for r in rep["rows"]:
        if r["variant"] in by:
            assert by[r["variant"]]["accuracy"] == pytest.approx(r["accuracy"], abs=1e-6)
