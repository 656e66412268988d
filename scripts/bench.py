"""Dense inference throughput of a model at a given size, like an MLPerf Offline run.

    python scripts/bench.py --model=resnet50 --image_size=224 --batch_size=16 \
        --precision=float32 --out=docs/results/bench_dense_cpu.json

Compiles, warms up, then times ``--num_batches`` batches with ``block_until_ready`` and reports
images/s (batch over median latency) and p50/p99 latency. Writes JSON with device and versions.
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import nnx

from jaxsparse.models import create_model, functional
from jaxsparse.training.bench import benchmark
from jaxsparse.training.summary import environment, write_json

flags.DEFINE_string("model", "resnet50", "Model name (jaxsparse.models.MODELS).")
flags.DEFINE_integer("image_size", 224, "Input height and width.")
flags.DEFINE_integer("batch_size", 16, "Images per batch.")
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_integer("warmup", 3, "Untimed batches after compilation.")
flags.DEFINE_integer("num_batches", 20, "Timed batches.")
flags.DEFINE_string("out", "", "JSON file to write (optional).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    dtype = jnp.bfloat16 if FLAGS.precision == "bfloat16" else jnp.float32
    stem = "imagenet" if FLAGS.image_size >= 128 else "small"
    try:
        model = create_model(FLAGS.model, num_classes=1000, stem=stem, dtype=dtype,
                             rngs=nnx.Rngs(0))
    except ValueError as e:
        sys.exit(f"error: {e}")
    apply_fn, variables = functional(model)
    x = jnp.zeros((FLAGS.batch_size, FLAGS.image_size, FLAGS.image_size, 3), dtype)
    fn = jax.jit(lambda v, x: apply_fn(v, x))
    (r,) = benchmark([fn], [(variables, x)], FLAGS.batch_size, warmup=FLAGS.warmup,
                     num_batches=FLAGS.num_batches)
    result = {**environment(), "model": FLAGS.model, "image_size": FLAGS.image_size,
              "precision": FLAGS.precision, "command": " ".join(["python", *sys.argv]),
              **r.as_dict()}
    print(json.dumps(result, indent=2))
    if FLAGS.out:
        os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
        write_json(FLAGS.out, result)


if __name__ == "__main__":
    app.run(main)
