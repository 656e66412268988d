"""End-to-end tests of the runner: training, config errors, sharding, kill and resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from experiments.configs import smoke
from jaxsparse.training.train import train_and_evaluate
from tests.helpers import REPO, needs_fmnist, run_cli


@needs_fmnist
def test_smoke_training_improves_accuracy_and_writes_records(tmp_path):
    config = smoke.get_config()
    config.progress = False
    results = train_and_evaluate(config, str(tmp_path))
    assert results["accuracy"] > 0.45  # 10 classes: chance is 0.10.
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["accuracy"] == results["accuracy"]
    for key in ("device_kind", "device_count", "jax", "jaxlib", "flax", "precision",
                "train_batch_size", "images_per_sec"):
        assert key in on_disk
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path))
    tags = _tensorboard_tags(str(tmp_path))
    for tag in ("train/loss", "train/accuracy", "train/learning_rate", "train/images_per_sec",
                "eval/accuracy", "eval/loss", "bench/images_per_sec", "bench/latency_ms_p50",
                "bench/latency_ms_p99"):
        assert tag in tags, tag


def _tensorboard_tags(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logdir)
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_config_typo_is_an_error_naming_the_key(tmp_path):
    proc = run_cli(["-m", "experiments.run", "--config=experiments/configs/smoke.py",
                    f"--workdir={tmp_path}", "--config.train.epoch=3"])
    assert proc.returncode != 0
    assert "train.epoch" in proc.stderr


def test_bad_value_is_one_clear_error(tmp_path):
    proc = run_cli(["-m", "experiments.run", "--config=experiments/configs/smoke.py",
                    f"--workdir={tmp_path}", "--config.precision=float16"])
    assert proc.returncode == 2
    assert "precision='float16'" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_dataset_is_one_clear_error(tmp_path):
    proc = run_cli(["-m", "experiments.run", "--config=experiments/configs/smoke.py",
                    f"--workdir={tmp_path}", f"--config.data.dir={tmp_path}/nowhere"])
    assert proc.returncode == 2
    assert f"{tmp_path}/nowhere" in proc.stderr and "Traceback" not in proc.stderr


_FINGERPRINT = """
import json, sys, jax, numpy as np
from experiments.configs import smoke
from jaxsparse.training.train import train_and_evaluate
c = smoke.get_config(); c.progress = False; c.bench.enabled = False
c.data.name = "synthetic"; c.data.shape = (16, 16, 1); c.data.synthetic_examples = 128
c.train.batch_size = 32; c.train.num_steps = 6; c.eval.batch_size = 64
r = train_and_evaluate(c, sys.argv[1])
print("RESULT", json.dumps({"devices": jax.device_count(), "loss": r["eval"]["loss"]}))
"""


def test_one_device_and_eight_devices_agree(tmp_path):
    out = {}
    for n in (1, 8):
        env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}",
               "JAX_PLATFORMS": "cpu"}
        proc = run_cli(["-c", _FINGERPRINT, str(tmp_path / f"d{n}")], env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
        out[n] = json.loads(line.split(" ", 1)[1])
    assert out[1]["devices"] == 1 and out[8]["devices"] == 8
    assert out[8]["loss"] == pytest.approx(out[1]["loss"], rel=1e-4)


def test_kill_and_resume(tmp_path):
    workdir = tmp_path / "run"
    args = [sys.executable, "-m", "experiments.run",
            "--config=experiments/configs/synthetic_resnet50_224.py",
            f"--workdir={workdir}", "--config.mode=train", "--config.model.name=resnet_tiny",
            "--config.model.width=0.125", "--config.model.stem=small",
            "--config.data.shape=(16, 16, 1)", "--config.data.num_classes=10",
            "--config.data.synthetic_examples=256", "--config.train.batch_size=16",
            "--config.train.num_steps=400", "--config.train.checkpoint_every_steps=5",
            "--config.progress=False", "--config.bench.enabled=False",
            "--config.eval.batch_size=64"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    ckpt_dir = workdir / "checkpoints"
    deadline = time.time() + 180
    while time.time() < deadline:
        steps = [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()] if ckpt_dir.exists() else []
        steps = [s for s in steps if s >= 15]
        if steps:
            break
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (workdir / "results.json").exists(), "the run finished before it was killed"
    resumed = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    line = next(x for x in resumed.stdout.splitlines() if x.startswith("Resumed from"))
    step = int(line.split("step ")[1].split(" ")[0])
    assert 15 <= step < 400
    results = json.loads((workdir / "results.json").read_text())
    assert results["steps"] == 400
    assert max(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) == 400
