"""Dense vs compiled-sparse inference of one model on random weights: the speed study.

    python scripts/bench_sparse.py --model=resnet50 --image_size=224 --batch_size=16 \
        --variants=block90_32,block90_16,unstructured90,unstructured80,channel50 \
        --layer_table --out=docs/results [--baselines=onnxruntime,openvino]

A launcher for ``python -m experiments.study --config=experiments/configs/speed_resnet50.py``
(:func:`jaxsparse.study.run_speed`): it picks variants from that config's catalogue and writes
``<out>/bench_sparse_<model>_<platform>_<date>.{json,md}``, TensorBoard under ``--logdir``.
"""

import jax
from absl import app, flags

from experiments.cli import apply_host_memory, define_host_memory_flag, fail
from experiments.configs import speed_resnet50
from jaxsparse.study import run_speed

flags.DEFINE_string("model", "resnet50", "Model name (jaxsparse.models.MODELS).")
flags.DEFINE_integer("image_size", 224, "Input height and width.")
flags.DEFINE_integer("batch_size", 16, "Images per batch.")
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_list("variants", ",".join(speed_resnet50.DEFAULT),
                  f"Variants to compare with dense: {sorted(speed_resnet50.CATALOGUE)}.")
flags.DEFINE_string("backend", "auto", "js.sparsify backend for block-sparse layers.")
flags.DEFINE_list("baselines", "onnxruntime,openvino",
                  "External dense runtimes timed beside (extra 'baselines'); empty for none.")
flags.DEFINE_bool("calibrate", True, "Compile every model with calibrate=True: each layer "
                  "on the kernel measured fastest at its shape (dense layers included).")
flags.DEFINE_string("micro_batch", "auto", "js.sparsify's micro_batch for every JAX model: "
                    "'auto' (on a CPU, chunks whose activations stay in L3), 'none' or a count.")
flags.DEFINE_bool("layer_table", False, "Also report every measured layer (calibrate=True).")
flags.DEFINE_integer("warmup", 2, "Untimed batches after compilation.")
flags.DEFINE_integer("num_batches", 10, "Timed batches per variant.")
flags.DEFINE_string("out", "docs/results", "Folder for the JSON and markdown results.")
flags.DEFINE_string("logdir", "runs/bench_sparse", "Workdir: report and TensorBoard.")
define_host_memory_flag()
FLAGS = flags.FLAGS


def main(argv):
    del argv
    apply_host_memory()
    unknown = sorted(set(FLAGS.variants) - set(speed_resnet50.CATALOGUE))
    if unknown:
        fail(f"unknown variants {unknown}; valid: {sorted(speed_resnet50.CATALOGUE)}")
    c = speed_resnet50.get_config(FLAGS.variants)
    c.base.model.name = FLAGS.model
    c.base.model.stem = "imagenet" if FLAGS.image_size >= 128 else "small"
    c.base.data.shape = (FLAGS.image_size, FLAGS.image_size, 3)
    c.base.precision = FLAGS.precision
    c.bench.update(batch_size=FLAGS.batch_size, warmup=FLAGS.warmup,
                   num_batches=FLAGS.num_batches)
    c.speed.update(backend=FLAGS.backend, calibrate=FLAGS.calibrate,
                   micro_batch=FLAGS.micro_batch, layer_table=FLAGS.layer_table,
                   results_dir=FLAGS.out,
                   baselines=tuple(FLAGS.baselines))
    try:
        rep = run_speed(c, FLAGS.logdir)
    except ValueError as e:
        fail(str(e))
    if jax.process_index() == 0:
        with open(f"{FLAGS.logdir}/report.md") as f:
            print(f.read())
        print({r["variant"]: round(r["speedup"], 3) for r in rep["variants"]})


if __name__ == "__main__":
    app.run(main)
