"""Measures the CPU sparse kernels against XLA's dense conv and writes the cost table.

    python scripts/calibrate_costs.py --batch=8 --out=jaxsparse/compiler/cost_tables/cpu.json

``js.sparsify(policy="auto")`` reads ``jaxsparse/compiler/cost_tables/<platform>.json`` to
decide, layer by layer, whether the sparse kernel beats dense. The table ships measured on the
project's 2-core CPU; rerun this on another machine (a few minutes) to recalibrate, or pass
``calibrate=True`` to ``js.sparsify`` to time each layer of one model instead. It measures
with freed host memory reused (``--keep_freed_memory``, the experiment CLIs' default), as the
studies run.
"""

import datetime

from absl import app, flags

from experiments.cli import apply_host_memory, define_host_memory_flag
from jaxsparse.kernels.cpu import library as cpu_library
from jaxsparse.study import calibration
from jaxsparse.training.summary import environment, write_json

flags.DEFINE_list("kernels", "block:8x8,block:16x16,block:32x32,unstructured",
                  "Kernels to measure: block:BHxBW or unstructured.")
flags.DEFINE_list("densities", "0.05,0.1,0.2,0.35,0.5", "Weight densities to measure.")
flags.DEFINE_integer("batch", 8, "Images per batch for every layer shape.")
flags.DEFINE_integer("reps", 3, "Timed repetitions per measurement (alternating).")
flags.DEFINE_string("out", "jaxsparse/compiler/cost_tables/cpu.json", "Output JSON.")
define_host_memory_flag()
FLAGS = flags.FLAGS


def main(argv):
    del argv
    apply_host_memory()  # As the studies run: freed buffers reused, no page faults per call.
    st = cpu_library.status()
    if not st.available:
        raise app.UsageError(f"the CPU kernels are not available: {st.reason}")
    table = calibration.calibrate(tuple(FLAGS.kernels),
                                  tuple(float(d) for d in FLAGS.densities), FLAGS.batch,
                                  reps=FLAGS.reps)
    env = environment()
    machine = f"{env['host_cpu']} x{env['host_cpu_count']}, flags {env['host_simd']}"
    write_json(FLAGS.out, {"machine": machine, "date": datetime.date.today().isoformat(),
                           "command": "python scripts/calibrate_costs.py " + " ".join(
                               f"--{k}={v}" for k, v in (("kernels", ",".join(FLAGS.kernels)),
                                                         ("batch", FLAGS.batch))),
                           **env, **table})
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
