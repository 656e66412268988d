"""Short real runs (smoke size) of every sparsity method through the runner."""

import json

import pytest

from experiments.configs import smoke
from jaxsparse.training.train import train_and_evaluate
from tests.helpers import needs_fmnist


def _config(**sparsity):
    c = smoke.get_config()
    c.progress = False
    c.bench.enabled = False
    c.train.num_steps = 32
    for k, v in sparsity.items():
        setattr(c.sparsity, k, v)
    return c


def _scalar_tags(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logdir)
    acc.Reload()
    return set(acc.Tags()["scalars"]), set(acc.Tags().get("tensors", []))


@needs_fmnist
@pytest.mark.parametrize("method,pattern,sparsity,expected", [
    ("one_shot", "2:4", 0.0, 0.5),
    ("gradual", "unstructured", 0.8, 0.8),
    ("sr_ste", "2:4", 0.0, 0.5),
    ("one_shot", "channel", 0.5, 0.5),
])
def test_method_runs_and_records_sparsity(tmp_path, method, pattern, sparsity, expected):
    c = _config(method=method, pattern=pattern, sparsity=sparsity, begin_step=8, end_step=24,
                frequency=4)
    results = train_and_evaluate(c, str(tmp_path))
    on_disk = json.loads((tmp_path / "results.json").read_text())
    sp = on_disk["sparsity"]
    assert sp["method"] == method and sp["pattern"] == pattern
    assert sp["achieved"] == pytest.approx(expected, abs=0.01)
    assert "layer1/0/conv1/kernel" in sp["layer_density"]
    assert 0.0 < results["accuracy"] <= 1.0  # Learning is checked by the dense/ASP runs.
    scalars, _ = _scalar_tags(str(tmp_path))
    assert "sparsity/global" in scalars and "sparsity/layer1/0/conv1/kernel" in scalars


@needs_fmnist
def test_asp_recipe_fine_tunes_a_dense_run(tmp_path):
    dense = train_and_evaluate(_config(), str(tmp_path / "dense"))
    c = _config(method="one_shot", pattern="2:4", begin_step=0)
    c.init_from = str(tmp_path / "dense")
    c.train.num_steps = 16
    sparse = train_and_evaluate(c, str(tmp_path / "nm24"))
    assert sparse["sparsity"]["achieved"] == 0.5
    assert sparse["accuracy"] > 0.5 * dense["accuracy"]


@pytest.mark.parametrize("sparsity,match", [
    ({"method": "sr_ste", "pattern": "unstructured", "sparsity": 0.5}, "needs an N:M pattern"),
    ({"method": "magic"}, "sparsity.method='magic'"),
    ({"method": "one_shot", "pattern": "2:4", "sparsity": 0.9}, "contradicts pattern 2:4"),
    ({"method": "one_shot", "pattern": "unstructured", "sparsity": 0.5, "include": "nothing"},
     "matches no parameter"),
])
def test_bad_sparsity_config(tmp_path, sparsity, match):
    c = _config(**sparsity)
    c.data.name = "synthetic"
    c.data.shape = (8, 8, 1)
    with pytest.raises(ValueError, match=match):
        train_and_evaluate(c, str(tmp_path))


def test_init_from_needs_a_finished_run(tmp_path):
    c = _config()
    c.data.name = "synthetic"
    c.data.shape = (8, 8, 1)
    c.init_from = str(tmp_path / "nothing")
    with pytest.raises(ValueError, match="holds no finished run"):
        train_and_evaluate(c, str(tmp_path / "run"))
