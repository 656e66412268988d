"""Multi-process training: 2 processes x 2 CPU devices equal 1 process x 4 devices.

The processes talk over loopback (``JAX_COORDINATOR_ADDRESS=127.0.0.1:<free port>``, gloo
collectives), exactly as ``scripts/launch_local.sh`` starts them. The global batch, the
shuffling and the mesh (4 devices on one data axis) are the same in both layouts; only the
all-reduce differs (in-process vs gloo), so results agree to float rounding: after one step
within 1e-6 relative (params and loss), after 20 steps the same accuracy within 2 points.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO

SCRIPT = """
import json, sys, jax, numpy as np
from experiments.configs import smoke
from jaxsparse.training import experiment, train

out = {}
for steps in (1, 20):
    c = smoke.get_config(); c.progress = False; c.bench.enabled = False
    c.data.name = "synthetic"; c.data.shape = (16, 16, 1); c.data.synthetic_examples = 256
    c.train.batch_size = 32; c.train.num_steps = steps; c.eval.batch_size = 64
    wd = f"{sys.argv[1]}/s{steps}"
    r = train.train_and_evaluate(c, wd)
    v = experiment.build(c, load_data=False).load_variables(wd)
    leaves = [np.asarray(x.addressable_data(0), np.float64) for x in jax.tree.leaves(v)]
    out[steps] = {"loss": r["eval"]["loss"], "accuracy": r["accuracy"],
                  "sum": float(sum(np.sum(x) for x in leaves)),
                  "sumsq": float(sum(np.sum(x * x) for x in leaves))}
if jax.process_index() == 0:
    print("RESULT", json.dumps({"processes": jax.process_count(),
                                "devices": jax.device_count(), **out}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(num_processes: int, devices_each: int, workdir) -> dict:
    port = free_port()
    procs = []
    for i in range(num_processes):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1",
               "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_each}"}
        if num_processes > 1:
            env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                       JAX_NUM_PROCESSES=str(num_processes), JAX_PROCESS_ID=str(i))
        procs.append(subprocess.Popen([sys.executable, "-c", SCRIPT, str(workdir)], cwd=REPO,
                                      env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            p.kill()
    for p, o in zip(procs, outs, strict=True):
        assert p.returncode == 0, o[-3000:]
    lines = [x for o in outs for x in o.splitlines() if x.startswith("RESULT")]
    assert len(lines) == 1, "exactly one process (0) reports"
    return json.loads(lines[0].split(" ", 1)[1])


def test_two_processes_equal_one_process(tmp_path):
    one = launch(1, 4, tmp_path / "one")
    two = launch(2, 2, tmp_path / "two")
    assert (one["processes"], one["devices"]) == (1, 4)
    assert (two["processes"], two["devices"]) == (2, 4)
    for key in ("loss", "sum", "sumsq"):
        assert two["1"][key] == pytest.approx(one["1"][key], rel=1e-6), key
    assert abs(two["20"]["accuracy"] - one["20"]["accuracy"]) <= 0.02
    assert np.isfinite(two["20"]["loss"])
