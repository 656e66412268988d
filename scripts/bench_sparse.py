"""Dense vs compiled-sparse inference of one model, in one process, alternating.

    python scripts/bench_sparse.py --model=resnet50 --image_size=224 --batch_size=16 \
        --variants=block90_32,block90_16,unstructured90,unstructured80,channel50 \
        --layer_table --out=docs/results

For each variant: prune the (randomly initialised) model, run ``js.sparsify`` (timing the pass),
check the compiled output against the masked dense model, then time every
variant and the dense model back to back (compile and warm-up first, medians of interleaved
batches). Every variant uses ``policy="auto"`` (the measured cost table decides layer by layer)
unless its entry says otherwise. ``--layer_table`` also compiles each variant with
``calibrate=True`` and adds the measured per-layer table (dense XLA vs sparse kernel GFLOP/s).
Writes ``<out>/bench_sparse_<model>_<platform>_<date>.json`` and a markdown table, and
TensorBoard scalars under ``--logdir``.
"""

import datetime
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

import jaxsparse as js
from jaxsparse.models import create_model, functional
from jaxsparse.training.bench import benchmark
from jaxsparse.training.summary import Writer, environment, write_json

# name -> (pattern, sparsity, policy, use channel groups)
VARIANTS = {
    "channel50": ("channel", 0.5, "auto", True),
    "channel50_interior": ("channel", 0.5, "auto", False),
    "block90_16": ("block:16x16", 0.9, "auto", False),
    "block90_32": ("block:32x32", 0.9, "auto", False),
    "block90_8": ("block:8x8", 0.9, "auto", False),
    "block75_32": ("block:32x32", 0.75, "auto", False),
    "nm24": ("2:4", None, "sparse", False),
    "unstructured90": ("unstructured", 0.9, "auto", False),
    "unstructured80": ("unstructured", 0.8, "auto", False),
}

flags.DEFINE_string("model", "resnet50", "Model name.")
flags.DEFINE_integer("image_size", 224, "Input height and width.")
flags.DEFINE_integer("batch_size", 16, "Images per batch.")
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_list("variants", "channel50,block90_16,block90_32,nm24",
                  f"Variants to compare with dense: {sorted(VARIANTS)}.")
flags.DEFINE_string("backend", "auto", "js.sparsify backend for block-sparse layers.")
flags.DEFINE_bool("layer_table", False, "Also measure every sparse layer (calibrate=True).")
flags.DEFINE_integer("warmup", 2, "Untimed batches after compilation.")
flags.DEFINE_integer("num_batches", 10, "Timed batches per variant.")
flags.DEFINE_string("out", "docs/results", "Folder for the JSON and markdown results.")
flags.DEFINE_string("logdir", "runs/bench_sparse", "TensorBoard folder.")
FLAGS = flags.FLAGS


def build_variant(name, apply_fn, variables, example):
    """Prunes and compiles one variant; returns (SparseModel, masks, pass seconds, per-layer
    timing table or None)."""
    pattern, sparsity, policy, grouped = VARIANTS[name]
    if grouped:
        groups = js.channel_groups(apply_fn, variables, example)
        masks = js.prune(variables, pattern, sparsity, groups=groups,
                         include=lambda p, w: w.ndim == 4)
    else:
        masks = js.prune(variables["params"], pattern, sparsity)
    t0 = time.perf_counter()
    sp = js.sparsify(apply_fn, variables, masks, example, backend=FLAGS.backend, policy=policy)
    pass_s = time.perf_counter() - t0
    table = None
    if FLAGS.layer_table and pattern != "channel":
        table = js.sparsify(apply_fn, variables, masks, example, backend=FLAGS.backend,
                           policy="auto", calibrate=True).report.timing_markdown()
    return sp, masks, pass_s, table


def max_error(apply_fn, variables, masks, sp, x):
    """Largest |compiled - masked dense| relative to the output scale, on ``x``."""
    masked = js.apply_masks(variables, masks) if "params" in masks else \
        {**variables, "params": js.apply_masks(variables["params"], masks)}
    ref = np.asarray(apply_fn(masked, x), np.float32)
    got = np.asarray(jax.jit(sp)(sp.variables, x), np.float32)
    return float(np.abs(got - ref).max() / max(1e-12, np.abs(ref).max()))


def main(argv):
    del argv
    unknown = [v for v in FLAGS.variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"error: unknown variants {unknown}; valid: {sorted(VARIANTS)}")
    dtype = jnp.bfloat16 if FLAGS.precision == "bfloat16" else jnp.float32
    stem = "imagenet" if FLAGS.image_size >= 128 else "small"
    model = create_model(FLAGS.model, num_classes=1000, stem=stem, dtype=dtype,
                         rngs=nnx.Rngs(0))
    apply_fn, variables = functional(model)
    x = jax.random.normal(jax.random.key(0), (FLAGS.batch_size, FLAGS.image_size,
                                              FLAGS.image_size, 3), dtype)
    fns, args, rows = [jax.jit(lambda v, x: apply_fn(v, x))], [(variables, x)], []
    for name in FLAGS.variants:
        sp, masks, pass_s, layer_table = build_variant(name, apply_fn, variables, x)
        err = max_error(apply_fn, variables, masks, sp, x)
        print(f"{name}: pass {pass_s:.2f} s, FLOPs ratio {sp.report.flops_ratio:.3f}, "
              f"max rel. error {err:.2e}", flush=True)
        fns.append(jax.jit(sp))
        args.append((sp.variables, x))
        rows.append({"variant": name, "pattern": VARIANTS[name][0],
                     "sparsity": VARIANTS[name][1], "policy": VARIANTS[name][2],
                     "pass_seconds": pass_s, "flops_ratio": sp.report.flops_ratio,
                     "max_rel_error": err, "report": sp.report.as_dict(),
                     "layer_table": layer_table})
    results = benchmark(fns, args, FLAGS.batch_size, warmup=FLAGS.warmup,
                        num_batches=FLAGS.num_batches)
    dense = results[0].as_dict()
    for row, r in zip(rows, results[1:], strict=True):
        row.update(r.as_dict())
        row["speedup"] = row["images_per_sec"] / dense["images_per_sec"]
    date = datetime.date.today().isoformat()
    platform = jax.devices()[0].platform
    out = {**environment(), "model": FLAGS.model, "image_size": FLAGS.image_size,
           "batch_size": FLAGS.batch_size, "precision": FLAGS.precision, "date": date,
           "command": " ".join(["python", *sys.argv]), "dense": dense, "variants": rows}
    lines = [f"{FLAGS.model} {FLAGS.image_size}px, batch {FLAGS.batch_size}, "
             f"{FLAGS.precision}, {out['device_kind']} x{out['device_count']}, "
             f"jax {jax.__version__} ({date})", "",
             f"Command: `{out['command']}`", "",
             "| variant | pattern | FLOPs ratio | weights MiB | images/s | speedup vs dense "
             "| p50 ms | pass s |", "|---|---|---|---|---|---|---|---|",
             f"| dense | - | 1.000 | {rows[0]['report']['bytes_before'] / 2**20:.1f} | "
             f"{dense['images_per_sec']:.2f} | 1.00x | {dense['latency_ms_p50']:.1f} | - |"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['pattern']} | {r['flops_ratio']:.3f} | "
                     f"{r['report']['bytes_after'] / 2**20:.1f} | "
                     f"{r['images_per_sec']:.2f} | {r['speedup']:.2f}x | "
                     f"{r['latency_ms_p50']:.1f} | {r['pass_seconds']:.2f} |")
    for r in rows:
        if r["layer_table"]:
            lines += ["", f"### {r['variant']}: per layer, measured (calibrate=True)", "",
                      r["layer_table"]]
    table = "\n".join(lines)
    print(table)
    stem_name = f"bench_sparse_{FLAGS.model}_{platform}_{date}"
    os.makedirs(FLAGS.out, exist_ok=True)
    write_json(os.path.join(FLAGS.out, stem_name + ".json"), out)
    with open(os.path.join(FLAGS.out, stem_name + ".md"), "w") as f:
        f.write(table + "\n")
    writer = Writer(FLAGS.logdir)
    writer.scalars(0, {"bench/dense/images_per_sec": dense["images_per_sec"]})
    for r in rows:
        writer.scalars(0, {f"bench/{r['variant']}/images_per_sec": r["images_per_sec"],
                           f"bench/{r['variant']}/speedup": r["speedup"],
                           f"bench/{r['variant']}/flops_ratio": r["flops_ratio"],
                           f"bench/{r['variant']}/pass_seconds": r["pass_seconds"]})
    writer.text("bench/table", table)
    writer.close()
    print(json.dumps({r["variant"]: round(r["speedup"], 3) for r in rows}))


if __name__ == "__main__":
    app.run(main)
