"""keep_freed_memory: XLA's CPU buffers stop faulting in afresh, and every record says so."""

import json
import os
import subprocess
import sys

import jax
import pytest

from jaxsparse import host_memory
from jaxsparse.training.summary import environment

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# One 1x1 conv whose 16x56x56x256 f32 output (51 MB, 12,544 pages) is far above glibc's mmap
# threshold: the median of the page faults per call over 30 calls after warm-up, with and
# without keep_freed_memory. The median, because the kept heap may still grow on a few calls
# (freed buffers fragment while the next call's are allocated, more often on a busy machine)
# before it settles; with glibc's defaults every call faults.
CHILD = """
import json, resource, statistics, sys
from jaxsparse import host_memory
state = host_memory.keep_freed_memory() if sys.argv[1] == "keep" else host_memory.state()
import jax
x = jax.numpy.ones((16, 56, 56, 64))
w = jax.numpy.ones((1, 1, 64, 256))
f = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
for _ in range(5):
    f(x, w).block_until_ready()
faults = []
for _ in range(30):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x, w).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"faults": statistics.median(faults), "state": state.as_dict()}))
"""
PAGES = 16 * 56 * 56 * 256 * 4 // 4096


def _child(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "GLIBC_TUNABLES": ""}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_keep_freed_memory_stops_the_page_faults_of_every_call():
    default, kept = _child("default"), _child("keep")
    assert default["state"]["keep_freed_memory"] is False
    assert default["faults"] > 0.5 * PAGES  # The output's pages fault in on a call...
    assert kept["state"]["keep_freed_memory"] is True
    assert "M_ARENA_MAX=1" in kept["state"]["detail"]
    assert kept["faults"] < 0.01 * PAGES  # ...but not on most once freed memory is reused.


def test_keep_freed_memory_after_jax_started_is_one_clear_error():
    jax.devices()  # This process's client (and its threads) exist.
    if host_memory.state().kept:
        pytest.skip("kept already in this process")
    with pytest.raises(RuntimeError, match="before JAX's first computation"):
        host_memory.keep_freed_memory()
    assert host_memory.state().kept is False


def test_records_and_reports_say_what_was_in_effect():
    rec = environment()["host_memory"]
    assert rec == host_memory.state().as_dict()
    assert host_memory.sentence(None) == "host memory: not recorded"
    assert host_memory.sentence({"keep_freed_memory": True, "detail": "glibc 2.36 mallopt x"}) \
        == "host memory: freed buffers reused (glibc 2.36 mallopt x)"
    assert host_memory.sentence(rec).startswith("host memory: not requested")
