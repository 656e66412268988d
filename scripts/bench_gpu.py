"""GPU benchmark: 2:4 (cuSPARSELt) and block-sparse (Pallas Triton) against dense, on an NVIDIA GPU.

    python -m jaxsparse.gpu.build          # once: the cuSPARSELt FFI library
    python scripts/bench_gpu.py --sections=gemm,e2e --batches=256,1024 --out=docs/results

Sections (each timed in one process, the candidates alternating, after compile and warm-up;
medians over trials of ``--reps`` back-to-back calls, so launch overhead is amortised):

* ``gemm``: ResNet50's GEMMs at batch 256 (1x1 convs as GEMMs, 3x3 convs as im2col GEMMs, the
  classifier), bf16: ``jnp.dot`` against ``nm_dot`` on cuSPARSELt (weight compressed in the
  program, every call), the cuSPARSELt kernel alone (weight compressed once, beforehand, as
  ``js.sparsify`` does on a GPU), and
  block-sparse 90% with the Pallas Triton kernel (32x32 and 128x128 blocks).
* ``e2e``: ResNet50 224x224 bf16 inference at each ``--batches`` size: dense, 2:4, block 90%,
  channel 50%, channel 50% + 2:4, each ``js.sparsify``-d for this GPU (``policy="sparse"``; 2:4
  weights compressed once at compile time) and checked against the masked dense model first.

Writes (and on a later run, updates section by section) ``<out>/<device>-<date>.json`` and
``.md``, with device, driver, jax and cuSPARSELt versions, precision and batch.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import re
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import jaxsparse as js
from jaxsparse.gpu import cusparselt
from jaxsparse.kernels.block_sparse_gpu import block_sparse_matmul_gpu
from jaxsparse.primitives.block_sparse_dot import pack_block_ell
from jaxsparse.primitives.nm_dot import nm_dot, pack_nm

# ResNet50 at batch 256 as GEMMs: (name, rows per image, K, N).
GEMMS = [
    ("layer1 1x1 64->256", 56 * 56, 64, 256),
    ("layer1 1x1 256->64", 56 * 56, 256, 64),
    ("layer1 3x3 64 (im2col)", 56 * 56, 576, 64),
    ("layer2 1x1 128->512", 28 * 28, 128, 512),
    ("layer2 1x1 512->128", 28 * 28, 512, 128),
    ("layer2 3x3 128 (im2col)", 28 * 28, 1152, 128),
    ("layer3 1x1 256->1024", 14 * 14, 256, 1024),
    ("layer3 1x1 1024->256", 14 * 14, 1024, 256),
    ("layer3 3x3 256 (im2col)", 14 * 14, 2304, 256),
    ("layer4 1x1 512->2048", 7 * 7, 512, 2048),
    ("layer4 1x1 2048->512", 7 * 7, 2048, 512),
    ("layer4 3x3 512 (im2col)", 7 * 7, 4608, 512),
    ("fc 2048->1024 (1000 padded)", 1, 2048, 1024),
]
# name -> (pattern, sparsity, channel groups first). Every variant compiles with
# policy="sparse", so each layer the pattern allows runs its kernel (the figures are the
# kernels'; js.sparsify's default policy="auto" keeps layers dense where they measured slower).
VARIANTS = {
    "nm24": ("2:4", None, False),
    "block90_32": ("block:32x32", 0.9, False),
    "block90_64": ("block:64x64", 0.9, False),
    "channel50": ("channel", 0.5, True),
    "channel50_nm24": ("channel", 0.5, True),
}

flags.DEFINE_list("sections", "gemm,e2e", "Which sections to run: gemm, e2e.")
flags.DEFINE_list("batches", "256,1024", "End-to-end batch sizes.")
flags.DEFINE_list("variants", list(VARIANTS), f"End-to-end variants: {list(VARIANTS)}.")
flags.DEFINE_integer("gemm_batch", 256, "Images per batch for the GEMM shapes.")
flags.DEFINE_integer("warmup", 3, "Untimed calls after compilation.")
flags.DEFINE_integer("trials", 10, "Timed trials per candidate (alternating).")
flags.DEFINE_integer("reps", 10, "Back-to-back calls per trial.")
flags.DEFINE_string("out", "docs/results", "Folder for the JSON and markdown results.")
flags.DEFINE_string("tag", "", "Suffix of this run's end-to-end sections in the results (keeps "
                    "earlier runs of the same batch size beside it).")
FLAGS = flags.FLAGS


def log(msg: str) -> None:
    print(f"[bench_gpu {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def time_alternating(fns, args) -> list[float]:
    """Median milliseconds per call of each jitted fn, alternating trials."""
    for fn, a in zip(fns, args, strict=True):
        for _ in range(1 + FLAGS.warmup):
            jax.block_until_ready(fn(*a))
    times = [[] for _ in fns]
    for _ in range(FLAGS.trials):
        for i, (fn, a) in enumerate(zip(fns, args, strict=True)):
            t0 = time.perf_counter()
            out = None
            for _ in range(FLAGS.reps):
                out = fn(*a)
            jax.block_until_ready(out)
            times[i].append((time.perf_counter() - t0) * 1e3 / FLAGS.reps)
    return [float(np.median(t)) for t in times]


def mask_blocks(k: int, n: int, b: int, density: float, rng) -> np.ndarray:
    """A random block mask keeping ``density`` of the ``b x b`` blocks."""
    keep = rng.random((k // b, n // b)) < density
    return np.kron(keep, np.ones((b, b), bool))


def gemm_section() -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for name, per_image, k, n in GEMMS:
        m = FLAGS.gemm_batch * per_image
        x = jax.random.normal(jax.random.key(m + k), (m, k), jnp.bfloat16)
        w = rng.standard_normal((k, n)).astype(np.float32)
        w24 = np.where(np.asarray(js.compute_mask(w, "2:4")), w, 0)
        values, idx = pack_nm(w24, w24 != 0, 2, 4)
        values = jnp.asarray(values, jnp.bfloat16)
        idx = jnp.asarray(idx)
        wd = jnp.asarray(w, jnp.bfloat16)
        blob = jax.jit(cusparselt.compress)(jnp.asarray(w24, jnp.bfloat16))
        cands = {"dense": (jax.jit(lambda x, w: x @ w), (x, wd)),
                 "nm_dot": (jax.jit(lambda x, v, i: nm_dot(x, v, i, m=4)), (x, values, idx)),
                 "cusparselt_kernel": (jax.jit(functools.partial(cusparselt.matmul, cout=n)),
                                       (x, blob))}
        for b in (32, 128):
            if k % b or n % b:
                continue
            bv, br = pack_block_ell(w, mask_blocks(k, n, b, 0.1, rng), b, b)
            cands[f"block90_{b}"] = (jax.jit(block_sparse_matmul_gpu),
                                     (x, jnp.asarray(bv, jnp.bfloat16), jnp.asarray(br)))
        ref = np.asarray(x.astype(jnp.float32) @ jnp.asarray(w24))
        got = np.asarray(cands["nm_dot"][0](*cands["nm_dot"][1]), np.float32)
        err = float(np.abs(got - ref).max() / max(1e-6, np.abs(ref).max()))
        ms = time_alternating([f for f, _ in cands.values()], [a for _, a in cands.values()])
        t = dict(zip(cands, ms, strict=True))
        flop = 2.0 * m * k * n
        row = {"gemm": name, "m": m, "k": k, "n": n, "ms": t, "nm24_rel_error": err,
               "dense_tflops": flop / t["dense"] / 1e9,
               "speedup": {c: t["dense"] / v for c, v in t.items() if c != "dense"}}
        rows.append(row)
        log(f"gemm {name} (M={m}, K={k}, N={n}): " + ", ".join(
            f"{c} {v:.3f} ms" for c, v in t.items()) + f"; nm24 error {err:.1e}")
    return rows


def build_variant(name, apply_fn, variables, example):
    pattern, sparsity, grouped = VARIANTS[name]
    if grouped:
        groups = js.channel_groups(apply_fn, variables, example)
        masks = js.prune(variables, pattern, sparsity, groups=groups,
                         include=lambda p, w: w.ndim == 4)
        if name.endswith("_nm24"):
            masks = js.nm_on_kept_channels(apply_fn, variables, masks, example)
    else:
        masks = js.prune(variables["params"], pattern, sparsity)
    t0 = time.perf_counter()
    sp = js.sparsify(apply_fn, variables, masks, example, policy="sparse")
    return sp, masks, time.perf_counter() - t0


def e2e_section(on_batch) -> None:
    """Times every variant at each batch size; ``on_batch(batch, rows)`` after each."""
    from flax import nnx

    from jaxsparse.models import create_model, functional

    model = create_model("resnet50", num_classes=1000, stem="imagenet", dtype=jnp.bfloat16,
                         rngs=nnx.Rngs(0))
    apply_fn, variables = functional(model)
    for batch in [int(b) for b in FLAGS.batches]:
        rows = []
        x = jax.random.normal(jax.random.key(0), (batch, 224, 224, 3), jnp.bfloat16)
        dense = jax.jit(lambda v, x: apply_fn(v, x))
        fns, args, meta = [dense], [(variables, x)], [{"variant": "dense"}]
        for name in FLAGS.variants:
            sp, masks, pass_s = build_variant(name, apply_fn, variables, x)
            masked = js.apply_masks(variables, masks) if "params" in masks else \
                {**variables, "params": js.apply_masks(variables["params"], masks)}
            ref = np.asarray(dense(masked, x), np.float32)
            got = np.asarray(jax.jit(sp)(sp.variables, x), np.float32)
            err = float(np.abs(got - ref).max() / max(1e-12, np.abs(ref).max()))
            actions = {}
            for r in sp.report.rows:
                key = re.sub(r"channel-sliced \S+ in, \S+ out \+ ", "sliced+", r.action)
                actions[key] = actions.get(key, 0) + 1
            log(f"e2e batch {batch} {name}: pass {pass_s:.1f} s, FLOPs ratio "
                f"{sp.report.flops_ratio:.3f}, max rel. error vs masked dense {err:.1e}, "
                f"layers {actions}")
            fns.append(jax.jit(sp))
            args.append((sp.variables, x))
            meta.append({"variant": name, "pass_s": pass_s, "flops_ratio":
                         sp.report.flops_ratio, "max_rel_error": err, "layer_actions": actions})
        ms = time_alternating(fns, args)
        for m_, t in zip(meta, ms, strict=True):
            m_.update({"batch": batch, "ms": t, "images_per_sec": batch / t * 1e3,
                       "speedup": ms[0] / t})
            rows.append(m_)
        log(f"e2e batch {batch}: " + ", ".join(
            f"{m_['variant']} {m_['images_per_sec']:.0f} img/s ({m_['speedup']:.2f}x)"
            for m_ in meta))
        on_batch(batch, rows)


def device_info() -> dict:
    dev = jax.devices()[0]
    driver = "unknown"
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                 "--format=csv,noheader"], capture_output=True, text=True,
                                timeout=20).stdout.strip() or driver
    except (OSError, subprocess.SubprocessError):
        pass
    import jaxlib

    return {"device": dev.device_kind, "platform": dev.platform, "driver": driver,
            "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "cusparselt": cusparselt.version(), "precision": "bfloat16"}


def markdown(res: dict) -> str:
    env = res["environment"]
    lines = [f"# {env['device']}, jax {env['jax']}, driver {env['driver']}, cuSPARSELt "
             f"{env['cusparselt']}, bf16 ({res['date']})", ""]
    if "gemm" in res:
        g = res["gemm"]
        lines += [f"## GEMMs: ResNet50 layer shapes at batch {g['batch']}", "",
                  f"Command: `{g['command']}`", "",
                  "| GEMM | M | K | N | dense ms | dense TFLOP/s | nm_dot (compress+GEMM) | "
                  "cuSPARSELt kernel | block90 32x32 | block90 128x128 |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in g["rows"]:
            s = r["speedup"]
            cell = [f"{s[c]:.2f}x" if c in s else "-" for c in
                    ("nm_dot", "cusparselt_kernel", "block90_32", "block90_128")]
            lines.append(f"| {r['gemm']} | {r['m']} | {r['k']} | {r['n']} | "
                         f"{r['ms']['dense']:.3f} | {r['dense_tflops']:.0f} | " +
                         " | ".join(cell) + " |")
        lines.append("")
    for key in sorted(k for k in res if k.startswith("e2e_b")):
        e = res[key]
        tag = f" ({e['tag']})" if e.get("tag") else ""
        lines += [f"## ResNet50 224x224 bf16 inference, batch {e['batch']}{tag}", "",
                  f"Command: `{e['command']}`", "",
                  "| variant | images/s | speedup vs dense | ms/batch | FLOPs ratio | "
                  "max rel. error | layers |", "|---|---|---|---|---|---|---|"]
        for r in e["rows"]:
            lines.append(f"| {r['variant']} | {r['images_per_sec']:.0f} | {r['speedup']:.2f}x | "
                         f"{r['ms']:.2f} | {r.get('flops_ratio', 1.0):.3f} | "
                         f"{r.get('max_rel_error', 0.0):.1e} | "
                         f"{', '.join(f'{k} x{v}' for k, v in r.get('layer_actions', {}).items())}"
                         f" |")
        lines.append("")
    return "\n".join(lines)


def main(argv):
    del argv
    bad = [s for s in FLAGS.sections if s not in ("gemm", "e2e")] + \
        [v for v in FLAGS.variants if v not in VARIANTS]
    if bad:
        sys.exit(f"error: unknown sections/variants {bad}; sections: gemm, e2e; variants: "
                 f"{list(VARIANTS)}")
    if jax.devices()[0].platform != "gpu":
        sys.exit(f"error: no GPU (jax.devices() = {jax.devices()}); this benchmark needs one.")
    if not cusparselt.available():
        sys.exit(f"error: {cusparselt.status().reason}")
    env = device_info()
    log(f"{env}")
    date = datetime.date.today().isoformat()
    stem = re.sub(r"[^a-z0-9]+", "-", env["device"].lower()).strip("-") + f"-{date}"
    os.makedirs(FLAGS.out, exist_ok=True)
    path = os.path.join(FLAGS.out, stem + ".json")
    res = json.load(open(path)) if os.path.exists(path) else {}
    res.update({"environment": env, "date": date})
    command = " ".join(["python", *sys.argv])

    def save():
        with open(path, "w") as f:
            json.dump(res, f, indent=2)
        with open(os.path.join(FLAGS.out, stem + ".md"), "w") as f:
            f.write(markdown(res) + "\n")
        log(f"wrote {path} and .md")

    if "gemm" in FLAGS.sections:
        res["gemm"] = {"batch": FLAGS.gemm_batch, "command": command, "rows": gemm_section()}
        save()
    if "e2e" in FLAGS.sections:
        def on_batch(batch, rows):
            key = f"e2e_b{batch}" + (f"_{FLAGS.tag}" if FLAGS.tag else "")
            res[key] = {"batch": batch, "command": command, "rows": rows, "tag": FLAGS.tag}
            save()

        e2e_section(on_batch)
    print(markdown(res))


if __name__ == "__main__":
    app.run(main)
