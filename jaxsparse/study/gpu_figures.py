"""The NVIDIA GPU figures: 2:4 (cuSPARSELt) and block-sparse (Pallas Triton) against dense.

Two sections, each timed in one process with the candidates alternating, after compile and
warm-up (:func:`~jaxsparse.training.bench.benchmark` with ``reps`` back-to-back calls per
sample, so launch overhead is amortised):

* :func:`gemm_rows`: ResNet-50's GEMMs (1x1 convs as GEMMs, 3x3 convs as im2col GEMMs, the
  classifier) in bf16: ``jnp.dot`` against ``nm_dot`` on cuSPARSELt (weight compressed in the
  program, every call), the cuSPARSELt kernel alone (weight compressed once, as
  ``js.sparsify`` does on a GPU), and block-sparse 90% with the Pallas Triton kernel (32x32 and
  128x128 blocks).
* :func:`e2e_rows`: a model's inference at one batch size: dense and every variant of
  :data:`VARIANTS`, each ``js.sparsify``-d for this GPU with ``policy="sparse"`` (so the figures
  are the kernels') and checked against the masked dense model first.

``scripts/bench_gpu.py`` runs them and writes ``<out>/<device>-<date>.{json,md}``.
"""

from __future__ import annotations

import collections
import functools
import subprocess
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxsparse as js
from jaxsparse.kernels.gpu import cusparselt
from jaxsparse.markdown import table
from jaxsparse.primitives.block_sparse_dot import pack_block_ell
from jaxsparse.primitives.nm_dot import nm_dot, pack_nm
from jaxsparse.study.report import speedup_median
from jaxsparse.study.speed import compile_checked
from jaxsparse.study.variants import Variant
from jaxsparse.training.bench import benchmark
from jaxsparse.training.experiment import Experiment


def _resnet50_gemms() -> list[tuple[str, int, int, int]]:
    """ResNet-50's GEMMs: ``(name, rows per image, K, N)``; per stage (output size, width) the
    1x1 expand, the 1x1 reduce and the 3x3 as an im2col GEMM, then the classifier."""
    out = []
    for i, (hw, c) in enumerate([(56, 64), (28, 128), (14, 256), (7, 512)], start=1):
        out += [(f"layer{i} 1x1 {c}->{4 * c}", hw * hw, c, 4 * c),
                (f"layer{i} 1x1 {4 * c}->{c}", hw * hw, 4 * c, c),
                (f"layer{i} 3x3 {c} (im2col)", hw * hw, 9 * c, c)]
    return out + [("fc 2048->1024 (1000 padded)", 1, 2048, 1024)]


GEMMS = _resnet50_gemms()
# name -> (pattern, sparsity, coupled channel groups first, then 2:4 on the kept channels).
VARIANTS = {v.name: v for v in [
    Variant("nm24", "2:4", policy="sparse"),
    Variant("block90_32", "block:32x32", 0.9, policy="sparse"),
    Variant("block90_64", "block:64x64", 0.9, policy="sparse"),
    Variant("channel50", "channel", 0.5, grouped=True, policy="sparse"),
    Variant("channel50_nm24", "channel", 0.5, grouped=True, nm_after=True, policy="sparse"),
]}


def log(msg: str) -> None:
    """A timestamped progress line."""
    print(f"[bench_gpu {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _block_mask(k: int, n: int, b: int, density: float, rng) -> np.ndarray:
    """A random mask keeping ``density`` of the ``b x b`` blocks."""
    return np.kron(rng.random((k // b, n // b)) < density, np.ones((b, b), bool))


def gemm_rows(batch: int, *, warmup: int, trials: int, reps: int) -> list[dict]:
    """Every GEMM of :data:`GEMMS` at ``batch`` images: times and speedups over dense."""
    from jaxsparse.kernels.gpu.block_sparse import block_sparse_matmul_gpu

    rng = np.random.default_rng(0)
    rows = []
    for name, per_image, k, n in GEMMS:
        m = batch * per_image
        x = jax.random.normal(jax.random.key(m + k), (m, k), jnp.bfloat16)
        w = rng.standard_normal((k, n)).astype(np.float32)
        w24 = np.where(np.asarray(js.compute_mask(w, "2:4")), w, 0)
        values, idx = pack_nm(w24, w24 != 0, 2, 4)
        values, idx = jnp.asarray(values, jnp.bfloat16), jnp.asarray(idx)
        blob = jax.jit(cusparselt.compress)(jnp.asarray(w24, jnp.bfloat16))
        cands = {"dense": (jax.jit(lambda x, w: x @ w), (x, jnp.asarray(w, jnp.bfloat16))),
                 "nm_dot": (jax.jit(lambda x, v, i: nm_dot(x, v, i, m=4)), (x, values, idx)),
                 "cusparselt_kernel": (jax.jit(functools.partial(cusparselt.matmul, cout=n)),
                                       (x, blob))}
        for b in (32, 128):
            if k % b == 0 and n % b == 0:
                bv, br = pack_block_ell(w, _block_mask(k, n, b, 0.1, rng), b, b)
                cands[f"block90_{b}"] = (jax.jit(block_sparse_matmul_gpu),
                                         (x, jnp.asarray(bv, jnp.bfloat16), jnp.asarray(br)))
        ref = np.asarray(x.astype(jnp.float32) @ jnp.asarray(w24))
        got = np.asarray(cands["nm_dot"][0](*cands["nm_dot"][1]), np.float32)
        err = float(np.abs(got - ref).max() / max(1e-6, np.abs(ref).max()))
        timed = benchmark([f for f, _ in cands.values()], [a for _, a in cands.values()], m,
                          warmup=warmup, num_batches=trials, reps=reps)
        t = {c: r.latency_ms_p50 for c, r in zip(cands, timed, strict=True)}
        rows.append({"gemm": name, "m": m, "k": k, "n": n, "ms": t, "nm24_rel_error": err,
                     "dense_tflops": 2.0 * m * k * n / t["dense"] / 1e9,
                     "speedup": {c: t["dense"] / v for c, v in t.items() if c != "dense"}})
        log(f"gemm {name} (M={m}, K={k}, N={n}): " +
            ", ".join(f"{c} {v:.3f} ms" for c, v in t.items()) + f"; nm24 error {err:.1e}")
    return rows


def variant_masks(exp: Experiment, name: str, x: jax.Array) -> Any:
    """The masks of variant ``name`` of :data:`VARIANTS` for ``exp``'s random weights."""
    return VARIANTS[name].masks(exp.apply_fn, exp.variables, x)


def e2e_rows(exp: Experiment, batch: int, variants: list[str], *, warmup: int, trials: int,
             reps: int) -> list[dict]:
    """Dense (as written), the optimized dense model (``js.sparsify`` without masks: every
    BatchNorm folded, the speed baseline) and every variant of ``exp``'s model at ``batch``,
    checked then timed; ``speedup`` is against the optimized dense, ``vs_written`` against
    the dense model as written (medians of the per-repetition ratios, as the studies state)."""
    x = jax.random.normal(jax.random.key(0), (batch, *exp.image_shape), exp.dtype)
    opt, opt_s, opt_err = compile_checked(exp, None, x)
    fns = [jax.jit(lambda v, x: exp.apply_fn(v, x)), jax.jit(opt)]
    args = [(exp.variables, x), (opt.variables, x)]
    rows = [{"variant": "dense"}, {"variant": "dense_optimized", "pass_s": opt_s,
                                   "max_rel_error": opt_err, "flops_ratio": 1.0}]
    for name in variants:
        masks = variant_masks(exp, name, x)
        sp, pass_s, err = compile_checked(exp, masks, x, policy="sparse")
        actions = collections.Counter(("sliced+" if r.sliced else "") + r.op
                                      for r in sp.report.rows)
        log(f"e2e batch {batch} {name}: pass {pass_s:.1f} s, FLOPs ratio "
            f"{sp.report.flops_ratio:.3f}, max rel. error vs masked dense {err:.1e}, "
            f"layers {dict(actions)}")
        fns.append(jax.jit(sp))
        args.append((sp.variables, x))
        rows.append({"variant": name, "pass_s": pass_s, "flops_ratio": sp.report.flops_ratio,
                     "max_rel_error": err, "layer_actions": dict(actions)})
    timed = benchmark(fns, args, batch, warmup=warmup, num_batches=trials, reps=reps)
    for row, t in zip(rows, timed, strict=True):
        row.update({"batch": batch, "ms": t.latency_ms_p50, "images_per_sec": t.images_per_sec,
                    "latencies_ms": list(t.latencies_ms),
                    "speedup": speedup_median(timed[1].latencies_ms, t.latencies_ms),
                    "vs_written": speedup_median(timed[0].latencies_ms, t.latencies_ms)})
    log(f"e2e batch {batch}: " + ", ".join(
        f"{r['variant']} {r['images_per_sec']:.0f} img/s ({r['speedup']:.2f}x)" for r in rows))
    return rows


def device_info(precision: str) -> dict[str, str]:
    """The GPU, its driver and the versions that decide a measurement."""
    import jaxlib

    driver = "unknown"
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                 "--format=csv,noheader"], capture_output=True, text=True,
                                timeout=20).stdout.strip() or driver
    except (OSError, subprocess.SubprocessError):
        pass
    dev = jax.devices()[0]
    return {"device": dev.device_kind, "platform": dev.platform, "driver": driver,
            "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "cusparselt": cusparselt.version(), "precision": precision}


def markdown(res: dict) -> str:
    """The results file's markdown: one table per section run."""
    env = res["environment"]
    lines = [f"# {env['device']}, jax {env['jax']}, driver {env['driver']}, cuSPARSELt "
             f"{env['cusparselt']}, {env['precision']} ({res['date']})", ""]
    if "gemm" in res:
        g = res["gemm"]
        cells = [[r["gemm"], r["m"], r["k"], r["n"], f"{r['ms']['dense']:.3f}",
                  f"{r['dense_tflops']:.0f}",
                  *[f"{r['speedup'][c]:.2f}x" if c in r["speedup"] else "-" for c in
                    ("nm_dot", "cusparselt_kernel", "block90_32", "block90_128")]]
                 for r in g["rows"]]
        lines += [f"## GEMMs: ResNet50 layer shapes at batch {g['batch']}", "",
                  f"Command: `{g['command']}`", "",
                  table(["GEMM", "M", "K", "N", "dense ms", "dense TFLOP/s",
                         "nm_dot (compress+GEMM)", "cuSPARSELt kernel", "block90 32x32",
                         "block90 128x128"], cells), ""]
    for key in sorted(k for k in res if k.startswith("e2e_b")):
        e = res[key]
        tag = f" ({e['tag']})" if e.get("tag") else ""
        cells = [[r["variant"], f"{r['images_per_sec']:.0f}", f"{r['speedup']:.2f}x",
                  f"{r['vs_written']:.2f}x" if "vs_written" in r else "-",
                  f"{r['ms']:.2f}", f"{r.get('flops_ratio', 1.0):.3f}",
                  f"{r.get('max_rel_error', 0.0):.1e}",
                  ", ".join(f"{k} x{v}" for k, v in r.get("layer_actions", {}).items())]
                 for r in e["rows"]]
        lines += [f"## ResNet50 224x224 {env['precision']} inference, batch {e['batch']}{tag}",
                  "", f"Command: `{e['command']}`", "",
                  table(["variant", "images/s", "speedup vs optimized dense",
                         "vs dense as written", "ms/batch", "FLOPs ratio", "max rel. error",
                         "layers"], cells), ""]
    return "\n".join(lines)
