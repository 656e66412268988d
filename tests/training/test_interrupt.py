"""Ctrl-C (SIGINT) and SIGTERM stop a run at a step boundary: a checkpoint, one line, exit
status 130, no traceback; the same command resumes."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, needs_fmnist


def _start(workdir):
    args = [sys.executable, "-m", "experiments.run", "--config=experiments/configs/smoke.py",
            f"--workdir={workdir}", "--config.train.epochs=40", "--config.progress=False",
            "--config.bench.enabled=False", "--config.train.eval_every_epochs=100"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@needs_fmnist
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_says_one_line_exits_130_and_resumes(tmp_path, sig):
    workdir = tmp_path / "run"
    proc = _start(workdir)
    deadline = time.time() + 240
    while not (workdir / "checkpoints").is_dir() or not any(
            p.name.isdigit() for p in (workdir / "checkpoints").iterdir()):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    lines = [line for line in out.splitlines() if line.startswith("Interrupted")]
    assert len(lines) == 1, out
    name = signal.Signals(sig).name
    assert lines[0].startswith(f"Interrupted ({name}): saved a checkpoint at step ")
    step = int(lines[0].split("at step ")[1].split(";")[0])
    assert (workdir / "checkpoints" / str(step)).is_dir()
    # The same command resumes from that step.
    again = _start(workdir)
    deadline = time.time() + 240
    seen = ""
    while "Resumed from checkpoint" not in seen:
        line = again.stdout.readline()
        assert line and time.time() < deadline, seen
        seen += line
    again.send_signal(signal.SIGINT)
    again.communicate(timeout=120)
    assert f"Resumed from checkpoint at step {step} of " in seen
