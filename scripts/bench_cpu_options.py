"""Does a process-level option make XLA's CPU inference of ResNet-50 faster: an XLA CPU option
that routes convs/dots to a library (oneDNN, XNNPACK, YNNPACK), or a memory-allocator setting
(XLA allocates every large buffer afresh, so its pages fault in on every call)? Times the
dense model (as written) under each option set, one child process per run (the environment
is read once per process), rounds alternating between the sets; medians.

    python scripts/bench_cpu_options.py [--rounds=3] [--batch=16] [--image_size=224] \
        [--out=docs/results]

Writes ``<out>/bench_cpu_options_cpu_<date>.{json,md}``. An option set that XLA rejects, or
whose library is not installed, is reported as such, not skipped.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jaxsparse import host_memory  # noqa: E402
from jaxsparse.markdown import table  # noqa: E402
from jaxsparse.training.summary import environment, write_json  # noqa: E402

JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"  # Debian package libjemalloc2.
# Environment of each option set: jaxlib 0.10's XLA CPU options that hand convolutions/dots to
# a library, and allocator settings (glibc's transparent huge pages for malloc, jemalloc).
OPTION_SETS = {
    "default": {},
    "oneDNN thunks": {"XLA_FLAGS": "--xla_cpu_use_onednn=true "
                      "--xla_cpu_experimental_onednn_fusion_type=individual_convolution,"
                      "individual_dot"},
    "oneDNN custom calls": {"XLA_FLAGS": "--xla_cpu_experimental_onednn_custom_call=true"},
    "XNNPACK fusions": {"XLA_FLAGS": "--xla_cpu_experimental_xnn_fusion_type="
                        "individual_convolution,individual_dot"},
    "XNNPACK graph (greedy)": {"XLA_FLAGS": "--xla_cpu_experimental_xnn_graph_fusion_mode="
                               "XNN_GRAPH_FUSION_MODE_GREEDY"},
    "YNNPACK fusions": {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="
                        "individual_convolution,individual_dot"},
    "glibc malloc huge pages": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
    # jaxsparse.host_memory.keep_freed_memory's settings, as tunables.
    "glibc malloc keeps freed memory": {"GLIBC_TUNABLES": host_memory.TUNABLES},
    "jemalloc": {"LD_PRELOAD": JEMALLOC},
}

CHILD = """
import json, sys, time
import jax, numpy as np
from flax import nnx
from jaxsparse.models import functional
from jaxsparse.models.resnet import create_model
batch, size, n = (int(a) for a in sys.argv[1:4])
f, v = functional(create_model("resnet50", num_classes=1000, stem="imagenet",
                               rngs=nnx.Rngs(0)))
x = jax.random.normal(jax.random.key(0), (batch, size, size, 3))
g = jax.jit(lambda v, x: f(v, x))
y = np.asarray(g(v, x))
g(v, x).block_until_ready()
ts = []
for _ in range(n):
    t0 = time.perf_counter()
    g(v, x).block_until_ready()
    ts.append(time.perf_counter() - t0)
print(json.dumps({"seconds": ts, "checksum": float(np.abs(y).sum())}))
"""


def run_child(options: dict, batch: int, size: int, n: int) -> dict:
    if options.get("LD_PRELOAD") and not os.path.isfile(options["LD_PRELOAD"]):
        return {"error": f"not installed ({options['LD_PRELOAD']})"}
    env = {**os.environ, "XLA_FLAGS": "", **options}
    out = subprocess.run([sys.executable, "-c", CHILD, str(batch), str(size), str(n)],
                         env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if out.returncode != 0:
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        return {"error": lines[-1] if lines else f"exit status {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--batches", type=int, default=3, help="timed batches per child")
    p.add_argument("--sets", default=",".join(OPTION_SETS),
                   help=f"comma-separated option sets, 'default' always included: "
                        f"{list(OPTION_SETS)}")
    p.add_argument("--out", default="docs/results")
    a = p.parse_args()
    if a.rounds < 1 or a.batch < 1 or a.batches < 1:
        p.error("--rounds, --batch and --batches must be >= 1")
    chosen = ["default", *[n for n in a.sets.split(",") if n and n != "default"]]
    unknown = [n for n in chosen if n not in OPTION_SETS]
    if unknown:
        p.error(f"unknown option sets {unknown}; valid: {list(OPTION_SETS)}")
    sets = {n: OPTION_SETS[n] for n in chosen}
    times = {name: [] for name in sets}
    errors, sums = {}, {}
    for r in range(a.rounds):
        for name, options in sets.items():
            if name in errors:
                continue
            res = run_child(options, a.batch, a.image_size, a.batches)
            if "error" in res:
                errors[name] = res["error"]
                print(f"round {r + 1}: {name}: rejected ({res['error']})", flush=True)
                continue
            times[name] += res["seconds"]
            sums[name] = res["checksum"]
            print(f"round {r + 1}: {name}: {a.batch / np.median(res['seconds']):.2f} img/s",
                  flush=True)
    base = np.median(times["default"])
    rows = []
    for name, options in sets.items():
        if name in errors:
            rows.append({"options": name, "environment": options, "error": errors[name]})
            continue
        med = float(np.median(times[name]))
        rows.append({"options": name, "environment": options, "images_per_sec": a.batch / med,
                     "vs_default": float(base / med), "samples": len(times[name]),
                     "checksum_rel_diff": abs(sums[name] - sums["default"]) /
                     abs(sums["default"])})
    date = datetime.date.today().isoformat()
    rep = {**environment(), "date": date, "batch_size": a.batch, "image_size": a.image_size,
           "precision": "float32", "model": "resnet50 (dense, as written)",
           "command": " ".join(["python", *sys.argv]), "rows": rows}
    cells = [[r["options"], " ".join(f"`{k}={v}`" for k, v in r["environment"].items())
              or "-",
              r.get("error") or f"{r['images_per_sec']:.2f}",
              "-" if "error" in r else f"{r['vs_default']:.2f}x",
              "-" if "error" in r else f"{r['checksum_rel_diff']:.1e}"] for r in rows]
    text = "\n".join([
        f"ResNet-50 {a.image_size}px dense (as written), batch {a.batch}, f32, "
        f"{rep['host_cpu']} x{rep['host_cpu_count']}, jax {rep['jax']} ({date}). One child "
        f"process per run, {a.rounds} rounds alternating between the option sets, "
        f"{a.batches} timed batches per run after compile and one warm-up; medians.", "",
        f"Command: `{rep['command']}`", "",
        table(["option set", "environment", "images/s", "vs default",
               "output checksum rel. diff"], cells)])
    os.makedirs(a.out, exist_ok=True)
    stem = os.path.join(a.out, f"bench_cpu_options_cpu_{date}")
    write_json(stem + ".json", rep)
    with open(stem + ".md", "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
