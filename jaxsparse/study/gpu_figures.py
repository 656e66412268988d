"""The NVIDIA GPU figures: 2:4 (cuSPARSELt) and block-sparse (Pallas Triton) against dense.

Two sections, each timed in one process with the candidates alternating, after compile and
warm-up (:func:`~jaxsparse.training.bench.benchmark` with ``reps`` back-to-back calls per
sample, so launch overhead is amortised):

* :func:`gemm_rows`: ResNet-50's GEMMs (1x1 convs as GEMMs, 3x3 convs as im2col GEMMs, the
  classifier) in bf16: ``jnp.dot`` against ``nm_dot`` on cuSPARSELt (weight compressed in the
  program, every call), the cuSPARSELt kernel alone in each of its four plans
  (``cusparselt.LAYOUTS``, weight compressed once, as ``js.sparsify`` does on a GPU) with the
  algorithm id and split-K its search chose, and block-sparse 90% with the Pallas Triton
  kernel (32x32, 64x64 and 128x128 blocks) and the Mosaic GPU kernel (64x64 and 128x128, the
  same masks); every candidate checked against its f32 reference first.
  :func:`cost_table` turns the fastest plan per shape into the ``cuda`` cost table that
  ``policy="auto"`` reads.
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
from jaxsparse.study.report import DENSE_ROWS, speedup_median
from jaxsparse.study.speed import TOLERANCE, compile_checked, relative_error
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
    Variant("block90_128", "block:128x128", 0.9, policy="sparse"),
    Variant("channel50", "channel", 0.5, grouped=True, policy="sparse"),
    Variant("channel50_nm24", "channel", 0.5, grouped=True, nm_after=True, policy="sparse"),
]}


def log(msg: str) -> None:
    """A timestamped progress line."""
    print(f"[bench_gpu {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _block_mask(k: int, n: int, b: int, density: float, rng) -> np.ndarray:
    """A random mask keeping ``density`` of the ``b x b`` blocks."""
    return np.kron(rng.random((k // b, n // b)) < density, np.ones((b, b), bool))


BLOCKS = (32, 64, 128)  # Block sizes of the GEMM sweep's block-sparse 90% Triton candidates,
MOSAIC_BLOCKS = (64, 128)  # and of its Mosaic GPU ones (the same masks).
GEMM_TOLERANCE = TOLERANCE["bfloat16"]  # Largest max |err| / max |ref| a GEMM may show.


def _gemm_candidates(x: jax.Array, w: np.ndarray, w24: np.ndarray, rng, on_gpu: bool,
                     ) -> tuple[dict[str, tuple], dict[str, np.ndarray], dict[str, str]]:
    """The sweep's candidates for one GEMM ``x @ w``: ``(name -> (jitted fn, args),
    name -> the f32 reference it must equal, name -> why a candidate was not run)``."""
    from jaxsparse.kernels.gpu.block_sparse import block_sparse_matmul_gpu
    from jaxsparse.kernels.gpu.block_sparse_mosaic import block_sparse_matmul_mosaic

    k, n = w.shape
    xf = np.asarray(x, np.float32)
    values, idx = pack_nm(w24, w24 != 0, 2, 4)
    values, idx = jnp.asarray(values, jnp.bfloat16), jnp.asarray(idx)
    ref24 = xf @ w24
    cands = {"dense": (jax.jit(lambda x, w: x @ w), (x, jnp.asarray(w, jnp.bfloat16))),
             "nm_dot": (jax.jit(lambda x, v, i: nm_dot(x, v, i, m=4)), (x, values, idx))}
    refs = {"dense": xf @ w, "nm_dot": ref24}
    skipped = {}
    if on_gpu and cusparselt.available():
        for layout in cusparselt.LAYOUTS:  # Weight compressed once, as js.sparsify does.
            blob = jax.jit(cusparselt.compress, static_argnums=1)(
                jnp.asarray(w24, jnp.bfloat16), layout)
            cands[f"cusparselt_{layout}"] = (jax.jit(functools.partial(
                cusparselt.matmul, cout=n, layout=layout)), (x, blob))
            refs[f"cusparselt_{layout}"] = ref24
    else:
        skipped["cusparselt"] = ("no NVIDIA GPU" if not on_gpu else cusparselt.status().reason)
    for b in BLOCKS:
        if k % b == 0 and n % b == 0:
            mask = _block_mask(k, n, b, 0.1, rng)
            bv, br = pack_block_ell(w, mask, b, b)
            args = (x, jnp.asarray(bv, jnp.bfloat16), jnp.asarray(br))
            ref = xf @ np.where(mask, w, 0).astype(np.float32)
            fn = functools.partial(block_sparse_matmul_gpu, interpret=not on_gpu)
            cands[f"block90_{b}"], refs[f"block90_{b}"] = (jax.jit(fn), args), ref
            if b in MOSAIC_BLOCKS:
                fn = functools.partial(block_sparse_matmul_mosaic, interpret=not on_gpu)
                cands[f"mosaic90_{b}"], refs[f"mosaic90_{b}"] = (jax.jit(fn), args), ref
        else:
            skipped[f"block90_{b}"] = f"K={k} or N={n} is not a multiple of {b}"
    return cands, refs, skipped


def _failure(e: Exception) -> str:
    """A kernel's or variant's failure as the results record it: its type and first line."""
    return f"failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def gemm_rows(batch: int, *, warmup: int, trials: int, reps: int,
              gemms: list[tuple[str, int, int, int]] | None = None) -> list[dict]:
    """Every GEMM of ``gemms`` (default :data:`GEMMS`) at ``batch`` images: each candidate
    checked against its f32 reference, then all timed alternating; times, speedups over dense
    and, for 2:4, the fastest cuSPARSELt plan with the algorithm id and split-K its search
    chose. Off a GPU the block kernels run in the Pallas interpreter and cuSPARSELt is
    skipped with the reason (a smoke run of the sweep itself).

    A candidate that fails, or whose output differs from its reference by more than
    :data:`GEMM_TOLERANCE` (its time would mean nothing), is not timed: the row's ``skipped`` says
    why, so one kernel cannot end a device run.

    Raises:
        RuntimeError: when the dense GEMM itself fails or is wrong.
    """
    on_gpu = jax.devices()[0].platform == "gpu"
    rng = np.random.default_rng(0)
    rows = []
    for name, per_image, k, n in GEMMS if gemms is None else gemms:
        m = batch * per_image
        x = jax.random.normal(jax.random.key(m + k), (m, k), jnp.bfloat16)
        w = rng.standard_normal((k, n)).astype(np.float32)
        w24 = np.where(np.asarray(js.compute_mask(w, "2:4")), w, 0).astype(np.float32)
        cands, refs, skipped = _gemm_candidates(x, w, w24, rng, on_gpu)
        errors = {}
        for c, (fn, args) in list(cands.items()):
            try:
                got = np.asarray(fn(*args), np.float32)
            except Exception as e:  # noqa: BLE001 - one kernel's failure must not end the run.
                skipped[c] = _failure(e)
            else:
                errors[c] = relative_error(got, refs[c])
                if errors[c] <= GEMM_TOLERANCE:
                    continue
                skipped[c] = (f"differs from its reference by {errors[c]:.1e} "
                              f"(> {GEMM_TOLERANCE})")
            del cands[c]
            if c == "dense":
                raise RuntimeError(f"gemm {name}: the dense GEMM {skipped[c]}.")
        timed = benchmark([f for f, _ in cands.values()], [a for _, a in cands.values()], m,
                          warmup=warmup, num_batches=trials, reps=reps)
        t = {c: r.latency_ms_p50 for c, r in zip(cands, timed, strict=True)}
        speedup = {c: t["dense"] / v for c, v in t.items() if c != "dense"}
        row = {"gemm": name, "m": m, "k": k, "n": n, "ms": t, "rel_error": errors,
               "skipped": skipped, "dense_tflops": 2.0 * m * k * n / t["dense"] / 1e9,
               "speedup": speedup}
        plans = [c for c in cands if c.startswith("cusparselt_")]
        if plans:
            best = max(plans, key=lambda c: speedup[c])
            layout = best.removeprefix("cusparselt_")
            row["plans"] = cusparselt.plans_for(m, k, n)
            row["best_2_4"] = {"layout": layout, "speedup": speedup[best],
                               **row["plans"].get(layout, {})}
        rows.append(row)
        log(f"gemm {name} (M={m}, K={k}, N={n}): " +
            ", ".join(f"{c} {v:.3f} ms" for c, v in t.items()) +
            (f"; fastest 2:4 plan {row['best_2_4']['layout']}" if plans else "") +
            "".join(f"; {c} not run: {why}" for c, why in skipped.items()))
    return rows


def cost_table(res: dict) -> dict:
    """The ``cuda`` cost table (``compiler/cost_tables/cuda.json``, read by ``policy="auto"``)
    from a results dict's GEMM section: per GEMM shape, the fastest cuSPARSELt plan's time
    over dense, the plan, and the algorithm id and split-K its search chose.

    Raises:
        ValueError: when the GEMM section has no cuSPARSELt measurement (not run on a GPU).
    """
    g = res.get("gemm", {})
    gemms = [{"kernel": "2:4", "gemm": r["gemm"], "m": r["m"], "k": r["k"], "n": r["n"],
              "ratio": 1.0 / r["best_2_4"]["speedup"],
              **{f: v for f, v in r["best_2_4"].items() if f != "speedup"}}
             for r in g.get("rows", []) if "best_2_4" in r]
    if not gemms:
        raise ValueError("the results have no cuSPARSELt GEMM measurement (the GEMM section "
                         "must run on an NVIDIA GPU with the cuSPARSELt library); no cuda cost "
                         "table written.")
    block_kernels = {}
    for b in MOSAIC_BLOCKS:  # Mosaic GPU against Triton, median over the shapes both ran.
        ratios = [r["ms"][f"mosaic90_{b}"] / r["ms"][f"block90_{b}"] for r in g.get("rows", [])
                  if f"mosaic90_{b}" in r.get("ms", {}) and f"block90_{b}" in r["ms"]]
        if ratios:
            ratio = float(np.median(ratios))
            block_kernels[f"{b}x{b}"] = {"kernel": "mosaic" if ratio < 1.0 else "triton",
                                         "mosaic_over_triton": ratio, "shapes": len(ratios)}
    env = res["environment"]
    return {"platform": "cuda", "machine": f"{env['device']} (driver {env['driver']}, "
            f"cuSPARSELt {env['cusparselt']}, {env['precision']})", "date": res["date"],
            "batch": g["batch"], "command": g["command"], **env, "entries": {},
            "gemms": gemms, "block_kernels": block_kernels}


def variant_masks(exp: Experiment, name: str, x: jax.Array) -> Any:
    """The masks of variant ``name`` of :data:`VARIANTS` for ``exp``'s random weights."""
    return VARIANTS[name].masks(exp.apply_fn, exp.variables, x)


def study_accuracy(report: dict, name: str) -> dict | None:
    """The accuracy a training study (``study_*_report.json``) measured for the pattern and
    sparsity of :data:`VARIANTS` ``name`` (``"dense"`` for the dense baselines): its most
    accurate variant of that pattern and target sparsity, with the study's model and dataset;
    None when the study has none (e.g. no channel + 2:4, or another block size)."""
    if name in DENSE_ROWS:
        pattern, sparsity = "dense", None
    else:
        v = VARIANTS[name]
        if v.nm_after:
            return None
        pattern, sparsity = v.pattern, 0.5 if v.pattern == "2:4" else v.sparsity
    rows = [r for r in report.get("rows", []) if r["pattern"] == pattern and
            (sparsity is None or r.get("target_sparsity") is not None and
             abs(r["target_sparsity"] - sparsity) < 1e-6)]
    if not rows:
        return None
    best = max(rows, key=lambda r: r["accuracy"])
    model = report.get("model", {})
    return {"accuracy": best["accuracy"], "accuracy_delta": best["accuracy_delta"],
            "meets_99": best["meets_99"], "study_variant": best["variant"],
            "source": f"{model.get('name', '?')} on {report.get('dataset', '?')}"}


def e2e_rows(exp: Experiment, batch: int, variants: list[str], *, warmup: int, trials: int,
             reps: int) -> list[dict]:
    """Dense (as written), the optimized dense model (``js.sparsify`` without masks: every
    BatchNorm folded, the speed baseline) and every variant of ``exp``'s model at ``batch``,
    checked then timed; ``speedup`` is against the optimized dense, ``vs_written`` against
    the dense model as written (medians of the per-repetition ratios, as the studies state).
    A variant that fails, or differs from the masked dense model by more than the speed
    study's tolerance for the dtype, is not timed: its row comes last with ``left_out``."""
    x = jax.random.normal(jax.random.key(0), (batch, *exp.image_shape), exp.dtype)
    dense = jax.jit(lambda v, x: exp.apply_fn(v, x))
    opt, opt_s, opt_err = compile_checked(exp, None, x, reference=dense(exp.variables, x))
    fns = [dense, jax.jit(opt)]
    args = [(exp.variables, x), (opt.variables, x)]
    rows = [{"variant": "dense"}, {"variant": "dense_optimized", "pass_s": opt_s,
                                   "max_rel_error": opt_err, "flops_ratio": 1.0}]
    tolerance = TOLERANCE[jnp.dtype(exp.dtype).name]
    left_out = []
    for name in variants:
        try:
            masks = variant_masks(exp, name, x)
            sp, pass_s, err = compile_checked(exp, masks, x, policy="sparse")
        except Exception as e:  # noqa: BLE001 - one variant's failure must not end the run.
            why = _failure(e)
            log(f"e2e batch {batch} {name}: {why}")
            left_out.append({"variant": name, "left_out": why})
            continue
        actions = collections.Counter(("sliced+" if r.sliced else "") + r.op
                                      for r in sp.report.rows)
        log(f"e2e batch {batch} {name}: pass {pass_s:.1f} s, FLOPs ratio "
            f"{sp.report.flops_ratio:.3f}, max rel. error vs masked dense {err:.1e}, "
            f"layers {dict(actions)}")
        row = {"variant": name, "pass_s": pass_s, "flops_ratio": sp.report.flops_ratio,
               "max_rel_error": err, "layer_actions": dict(actions)}
        if err > tolerance:
            left_out.append({**row, "left_out": f"differs from the masked dense model by "
                                                f"{err:.1e} (> {tolerance})"})
            continue
        fns.append(jax.jit(sp))
        args.append((sp.variables, x))
        rows.append(row)
    timed = benchmark(fns, args, batch, warmup=warmup, num_batches=trials, reps=reps)
    for row, t in zip(rows, timed, strict=True):
        row.update({"batch": batch, "ms": t.latency_ms_p50, "images_per_sec": t.images_per_sec,
                    "latencies_ms": list(t.latencies_ms),
                    "speedup": speedup_median(timed[1].latencies_ms, t.latencies_ms),
                    "vs_written": speedup_median(timed[0].latencies_ms, t.latencies_ms)})
    log(f"e2e batch {batch}: " + ", ".join(
        f"{r['variant']} {r['images_per_sec']:.0f} img/s ({r['speedup']:.2f}x)" for r in rows))
    return rows + left_out


def predicted_seconds(last: tuple[int, float] | None, batch: int) -> float | None:
    """Seconds the end-to-end section at ``batch`` is predicted to take from the last batch
    size run (``(batch, seconds)``; None: nothing to predict from): half of it is taken as
    fixed (pruning, the pass, compiling), the other half as scaling with the batch."""
    if last is None:
        return None
    b0, s0 = last
    return s0 / 2 + s0 / 2 * batch / b0


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


def _gemm_table(rows: list[dict]) -> str:
    """The GEMM section's table: speedups over dense per candidate ("-": not run)."""
    layouts = [f"cusparselt_{layout}" for layout in cusparselt.LAYOUTS]
    if any("cusparselt_kernel" in r["speedup"] for r in rows):  # Results of 2026-11-26.
        layouts = ["cusparselt_kernel"]
    cols = ["nm_dot", *layouts, *(f"block90_{b}" for b in BLOCKS),
            *(f"mosaic90_{b}" for b in MOSAIC_BLOCKS)]

    def best(r: dict) -> str:
        b = r.get("best_2_4")
        if b is None:
            return "-"
        return f"{b['layout']} (alg {b.get('alg_id', '?')}, split-K {b.get('split_k', '?')})"

    cells = [[r["gemm"], r["m"], r["k"], r["n"], f"{r['ms']['dense']:.3f}",
              f"{r['dense_tflops']:.0f}",
              *[f"{r['speedup'][c]:.2f}x" if c in r["speedup"] else "-" for c in cols],
              best(r)] for r in rows]
    names = {"nm_dot": "nm_dot (compress+GEMM)", "cusparselt_kernel": "cuSPARSELt kernel",
             **{f"cusparselt_{lo}": f"cuSPARSELt {lo}" for lo in cusparselt.LAYOUTS},
             **{f"block90_{b}": f"block90 {b}x{b} Triton" for b in BLOCKS},
             **{f"mosaic90_{b}": f"block90 {b}x{b} Mosaic GPU" for b in MOSAIC_BLOCKS}}
    return table(["GEMM", "M", "K", "N", "dense ms", "dense TFLOP/s",
                  *[names[c] for c in cols], "fastest 2:4 plan"], cells)


def _accuracy(study: dict | None) -> str:
    if not study:
        return "-"
    bar = "meets 99%" if study["meets_99"] else "below 99%"
    return f"{100 * study['accuracy']:.2f}% ({100 * study['accuracy_delta']:+.2f}, {bar})"


def markdown(res: dict) -> str:
    """The results file's markdown: one table per section run."""
    env = res["environment"]
    lines = [f"# {env['device']}, jax {env['jax']}, driver {env['driver']}, cuSPARSELt "
             f"{env['cusparselt']}, {env['precision']} ({res['date']})", ""]
    if "gemm" in res:
        g = res["gemm"]
        lines += [f"## GEMMs: ResNet50 layer shapes at batch {g['batch']}", "",
                  f"Command: `{g['command']}`", "", _gemm_table(g["rows"]), ""]
        left_out = [f"- {r['gemm']}, {c}: {why}" for r in g["rows"]
                    for c, why in r.get("skipped", {}).items()
                    if why.startswith(("failed", "differs"))]
        if left_out:
            lines += ["Left out (not timed):", "", *left_out, ""]
    for key in sorted(k for k in res if k.startswith("e2e_b")):
        e = res[key]
        tag = f" ({e['tag']})" if e.get("tag") else ""
        if "skipped" in e:
            lines += [f"## ResNet50 224x224 {env['precision']} inference, batch "
                      f"{e['batch']}{tag}", "", f"Not run: {e['skipped']}.", ""]
            continue
        timed = [r for r in e["rows"] if "left_out" not in r]
        cells = [[r["variant"], f"{r['images_per_sec']:.0f}", f"{r['speedup']:.2f}x",
                  f"{r['vs_written']:.2f}x" if "vs_written" in r else "-",
                  f"{r['ms']:.2f}", f"{r.get('flops_ratio', 1.0):.3f}",
                  f"{r.get('max_rel_error', 0.0):.1e}", _accuracy(r.get("study")),
                  ", ".join(f"{k} x{v}" for k, v in r.get("layer_actions", {}).items())]
                 for r in timed]
        lines += [f"## ResNet50 224x224 {env['precision']} inference, batch {e['batch']}{tag}",
                  "", f"Command: `{e['command']}`", "",
                  table(["variant", "images/s", "speedup vs optimized dense",
                         "vs dense as written", "ms/batch", "FLOPs ratio", "max rel. error",
                         "study accuracy (same pattern)", "layers"], cells), ""]
        lines += [f"Left out (not timed): {r['variant']}: {r['left_out']}." for r in e["rows"]
                  if "left_out" in r]
        sources = sorted({r["study"]["source"] for r in timed if r.get("study")})
        if sources:
            lines += [f"Study accuracy: the training study's most accurate variant of the same "
                      f"pattern and sparsity ({', '.join(sources)}; these speed rows use random "
                      f"weights); \"-\": the study has no such variant.", ""]
    return "\n".join(lines)
