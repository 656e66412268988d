"""``run_speed(config, workdir)``: the study's speed half on random weights, without training.

A study config with ``mode="speed"`` runs this instead of :func:`~jaxsparse.study.run_study`.
For each variant: prune the randomly initialised model by magnitude (its pattern, sparsity and
grouping, as one-shot pruning would), ``js.sparsify`` it (timing the pass; with
``speed.calibrate`` every layer is timed at its shape and runs on the kernel measured fastest,
the dense layers of the optimized dense model included), check the compiled model against the
masked dense model on a random batch, and with ``speed.layer_table`` report every measured
layer (``calibrate=True``); then time dense and every variant back to
back (compile and warm-up first, interleaved batches, medians). Random weights have no
accuracy: the report says so and gives each variant's largest relative error against the
masked model instead; accuracy comes from a trained study (``mode="train"``).

With ``speed.baselines`` (extra ``baselines``) the same dense weights, exported to ONNX, run in
ONNX Runtime and OpenVINO alternating with the JAX models (:mod:`~jaxsparse.study.baselines`);
every row also gets its speedup over the fastest dense runtime of the run. Every JAX model is
compiled with ``js.sparsify(micro_batch=speed.micro_batch)`` (``"auto"``: on a CPU the batch
runs in chunks whose activations stay in L3); each external runtime is timed on the whole batch
and also in chunks of every micro-batch a JAX model used, so the fastest dense runtime has the
same option.

Writes ``report.json``, ``report.md`` and TensorBoard scalars to ``workdir``; with
``speed.results_dir`` also ``bench_sparse_<model>_<platform>_<date>.{json,md}`` there.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np

import jaxsparse as js
from jaxsparse import host_memory
from jaxsparse.compiler.api import BACKENDS
from jaxsparse.compiler.onnx_export import export_onnx
from jaxsparse.markdown import table
from jaxsparse.study import baselines as baselines_lib
from jaxsparse.study.report import speedup_median, speedup_spread
from jaxsparse.study.runner import dense_config, variant_config, variants_of
from jaxsparse.study.variants import Variant
from jaxsparse.training import experiment as experiment_lib
from jaxsparse.training.bench import benchmark
from jaxsparse.training.experiment import Experiment
from jaxsparse.training.sharding import maybe_initialize_distributed
from jaxsparse.training.summary import Writer, environment, say, write_json
from jaxsparse.training.validate import check_workdir, validate_config

# Largest relative error (to the output's scale) a compiled model may show against the masked
# dense model, by precision; above it the row is marked as a mismatch.
TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2}


def relative_error(got: Any, ref: Any) -> float:
    """Largest ``|got - ref|`` over ``ref``'s largest magnitude.

    Raises:
        ValueError: if the shapes differ (e.g. an external runtime's output).
    """
    got, ref = np.asarray(got, np.float32), np.asarray(ref, np.float32)
    if got.shape != ref.shape:
        raise ValueError(f"an output of shape {got.shape} is compared with the reference's "
                         f"{ref.shape}.")
    return float(np.abs(got - ref).max() / max(1e-12, np.abs(ref).max()))


def max_rel_error(exp: Experiment, masks: Any, sp: js.SparseModel, x: jax.Array,
                  reference: jax.Array | None = None) -> float:
    """Largest ``|compiled - masked dense|`` over the masked output's largest magnitude
    (``masks`` for ``exp.variables`` or for its params; None: the dense model). ``reference``
    is the masked dense model's output on ``x`` when the caller has it already."""
    if reference is None:
        if masks is None:
            masked = exp.variables
        elif "params" in masks:
            masked = js.apply_masks(exp.variables, masks)
        else:
            masked = {**exp.variables, "params": js.apply_masks(exp.variables["params"], masks)}
        reference = jax.jit(exp.apply_fn)(masked, x)
    return relative_error(jax.jit(sp)(sp.variables, x), reference)


def compile_checked(exp: Experiment, masks: Any, x: jax.Array, *,
                    reference: jax.Array | None = None, **sparsify_kwargs: Any,
                    ) -> tuple[js.SparseModel, float, float]:
    """``(sparse model, seconds the pass took, its max relative error)``: ``js.sparsify`` of
    ``exp``'s model under ``masks``, checked against the masked dense model on ``x``
    (``reference``: that model's output, when the caller has it)."""
    t0 = time.perf_counter()
    sp = js.sparsify(exp.apply_fn, exp.variables, masks, x, **sparsify_kwargs)
    pass_s = time.perf_counter() - t0
    return sp, pass_s, max_rel_error(exp, masks, sp, x, reference)


def random_weight_masks(config: ml_collections.ConfigDict, v: ml_collections.ConfigDict,
                        exp: Experiment, x: jax.Array) -> Any:
    """The masks of study variant ``v`` on ``exp``'s initial (random) weights: one-shot
    magnitude pruning with its pattern, sparsity, grouping and distribution
    (:meth:`~jaxsparse.study.variants.Variant.masks`, traced on ``x``).

    Raises:
        ValueError: for a variant whose fine-tune config is not valid, or a pattern that does
            not fit the weights.
    """
    variant_config(config, v, "")  # The same checks as the trained study.
    return Variant.from_config(v).masks(exp.apply_fn, exp.variables, x)


def _measured_layers(report: js.CompileReport) -> str:
    """The per-layer timing table of a calibrated compile ("" when no layer was measured:
    only kernels with a calibration, the CPU ones)."""
    if any(r.timing and r.timing.measured_ratio is not None for r in report.rows):
        return report.timing_markdown()
    return ""


def micro_batch_of(config: ml_collections.ConfigDict) -> int | str | None:
    """``js.sparsify``'s ``micro_batch`` from ``config.speed.micro_batch`` (``"auto"``,
    ``"none"`` or a positive count; absent: ``"auto"``).

    Raises:
        ValueError: for any other value.
    """
    text = str(config.speed.get("micro_batch", "auto")).strip().lower()
    if text in ("auto", "none"):
        return None if text == "none" else "auto"
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise ValueError(f"speed.micro_batch={config.speed.get('micro_batch')!r} is not valid; use "
                     f"'auto', 'none' or a positive number of examples dividing the batch.")


def _compile_variant(config: ml_collections.ConfigDict, v: ml_collections.ConfigDict,
                     exp: Experiment, x: jax.Array, calibrate: bool) -> tuple[Any, dict]:
    """Prunes and compiles one variant (``calibrate``: ``js.sparsify(calibrate=True)``):
    ``(SparseModel, its report row)``."""
    masks = random_weight_masks(config, v, exp, x)
    micro = micro_batch_of(config)
    sp, pass_s, err = compile_checked(exp, masks, x, backend=config.speed.backend,
                                      policy=v.policy, calibrate=calibrate, micro_batch=micro)
    layers = ""
    if config.speed.layer_table:
        report = sp.report if calibrate and v.policy == "auto" else js.sparsify(
            exp.apply_fn, exp.variables, masks, x, backend=config.speed.backend,
            policy="auto", calibrate=True, micro_batch=micro).report
        layers = _measured_layers(report)
    ok = err <= TOLERANCE[config.base.precision]
    say(f"[speed] {v.name}: pass {pass_s:.2f} s, FLOPs ratio {sp.report.flops_ratio:.3f}, "
        f"max rel. error {err:.2e}{'' if ok else ' (MISMATCH with the masked model)'}; "
        f"micro-batch: {sp.report.micro_batch_note}.")
    return sp, {"variant": v.name, "pattern": v.pattern,
                "sparsity": js.measured_sparsity(masks),
                "policy": v.policy, "pass_seconds": pass_s,
                "flops_ratio": sp.report.flops_ratio, "max_rel_error": err, "verified": ok,
                "report": sp.report.as_dict(), "layer_table": layers}


def _err(row: dict[str, Any]) -> str:
    return f"{row['max_rel_error']:.1e}" + ("" if row["verified"] else " MISMATCH")


def _runtime_name(b: dict[str, Any], batch: int) -> str:
    """``"openvino dense"``, or ``"openvino dense, 2 at a time"`` for a chunked run."""
    mb = b.get("micro_batch", batch)
    return f"{b['runtime']} dense" + (f", {mb} at a time" if mb != batch else "")


def _baseline_cells(b: dict[str, Any], batch: int) -> list[str]:
    name = _runtime_name(b, batch) + (f" ({b['version']})" if b["version"] else "")
    mb = str(b.get("micro_batch", batch))
    if b.get("images_per_sec") is None:
        return [name, "-", "-", "-", "1.000", "-", mb, b["why"], "-", "-", "-", "-", "-", "-"]
    return [name, "-", "-", "-", "1.000", "-", mb, f"{b['images_per_sec']:.2f}",
            f"{b['speedup']:.2f}x", f"{b['speedup_vs_written']:.2f}x",
            f"{b['vs_fastest_dense']:.2f}x", f"{b['latency_ms_p50']:.1f}", "-", _err(b)]


def _markdown(rep: dict[str, Any]) -> str:
    dense, opt, bs = rep["dense"], rep["dense_optimized"], rep["batch_size"]

    def micro(r):
        return str(r["report"].get("micro_batch") or bs)
    cells = [["dense (as written)", "-", "-", "-", "1.000", f"{dense['weights_mib']:.1f}",
              str(bs), f"{dense['images_per_sec']:.2f}", f"{dense['speedup']:.2f}x", "1.00x",
              f"{dense['vs_fastest_dense']:.2f}x", f"{dense['latency_ms_p50']:.1f}", "-", "-"],
             ["dense (optimized: BatchNorm folded)", "-", "-", "-", "1.000",
              f"{opt['weights_mib']:.1f}", micro(opt), f"{opt['images_per_sec']:.2f}", "1.00x",
              f"{opt['speedup_vs_written']:.2f}x", f"{opt['vs_fastest_dense']:.2f}x",
              f"{opt['latency_ms_p50']:.1f}", f"{opt['pass_seconds']:.2f}", _err(opt)]]
    cells += [_baseline_cells(b, bs) for b in rep["baselines"]]
    for r in rep["variants"]:
        lo, hi = r["speedup_range"]
        cells.append([r["variant"], r["pattern"], f"{r['sparsity']:.3f}", r["policy"],
                      f"{r['flops_ratio']:.3f}", f"{r['report']['bytes_after'] / 2**20:.1f}",
                      micro(r), f"{r['images_per_sec']:.2f}",
                      f"{r['speedup']:.2f}x [{lo:.2f}-{hi:.2f}]",
                      f"{r['speedup_vs_written']:.2f}x", f"{r['vs_fastest_dense']:.2f}x",
                      f"{r['latency_ms_p50']:.1f}", f"{r['pass_seconds']:.2f}", _err(r)])
    header = ["variant", "pattern", "sparsity", "policy", "FLOPs ratio", "weights MiB",
              "micro-batch", "images/s", "speedup vs optimized dense [IQR]", "vs dense as written",
              "vs fastest dense runtime", "p50 ms", "pass s", "max rel. error"]
    fastest = rep["fastest_dense"]
    threads = {b["threads"] for b in rep["baselines"] if b.get("images_per_sec") is not None}
    lines = [f"{rep['model']['name']} {rep['image_shape'][0]}px, batch {rep['batch_size']}, "
             f"{rep['precision']}, {rep['device_kind']} x{rep['device_count']}, jax "
             f"{rep['jax']} ({rep['date']}). Random weights pruned by magnitude: no accuracy "
             f"(see a trained study); every compiled model is checked against the masked dense "
             f"model (max rel. error). Speedups: median of per-repetition ratios to the "
             f"optimized dense model (the same weights compiled by js.sparsify without masks, "
             f"every BatchNorm folded, as every sparse model is"
             + ("; every model compiled with calibrate=True: each layer on the kernel measured "
                "fastest at its shape, XLA's conv or the C++ kernel, at full density for a dense "
                "layer" if rep.get("calibrate") else "") + "), to the dense model as "
             f"written, and to the fastest dense runtime of this run ({fastest}). External "
             f"runtimes run the same weights exported to ONNX (checked against the JAX model), "
             f"in the same process, alternating with the JAX models"
             + (f", {threads.pop()} threads" if len(threads) == 1 else "")
             + "; micro-batch: the examples each run of a model's layers takes (js.sparsify's "
               "micro_batch: a batch split so each layer's activations stay in cache); every "
               "external runtime is timed on the whole batch and in chunks of each micro-batch "
               "a JAX model used, so the fastest dense runtime has the same option"
             + f"; {host_memory.sentence(rep.get('host_memory'))}.",
             "", f"Command: `{rep['command']}`"
             + "".join(f" with `{k}={v}`" for k, v in rep.get("process_env", {}).items()),
             "", table(header, cells)]
    if opt.get("layer_table"):
        lines += ["", "### dense (optimized): per layer, measured (calibrate=True)", "",
                  opt["layer_table"]]
    for r in rep["variants"]:
        if r["layer_table"]:
            lines += ["", f"### {r['variant']}: per layer, measured (calibrate=True)", "",
                      r["layer_table"]]
    return "\n".join(lines)


def _baselines(names: tuple[str, ...], exp: Experiment, x: jax.Array, workdir: str,
               chunk: int | None = None) -> list[baselines_lib.Baseline]:
    """The external runtimes ``names``, ready to time on ``x`` (float32 only); with ``chunk``,
    each runs the batch ``chunk`` examples at a time (exported at that batch), as a
    micro-batched JAX model does."""
    if not names:
        return []
    if exp.dtype != jax.numpy.float32:
        return [baselines_lib.Baseline(n, baselines_lib.version(n), None,
                                       "not run: the ONNX export is float32 only")
                for n in names]
    part = x if chunk is None else x[:chunk]
    say(f"[speed] exporting the dense model to ONNX for {', '.join(names)}"
        + (f" at batch {chunk}, to run {chunk} examples at a time." if chunk else "."))
    os.makedirs(workdir, exist_ok=True)
    out = baselines_lib.prepare(names, lambda: export_onnx(
        lambda v, a: exp.apply_fn(v, a), exp.variables, part),
        save_to=os.path.join(workdir, f"dense{'' if chunk is None else f'_{chunk}'}.onnx"))
    if chunk is None:
        return out
    return [b if b.run is None else dataclasses.replace(b, run=_in_chunks(b.run, chunk))
            for b in out]


def _in_chunks(run: Any, chunk: int) -> Any:
    return lambda a: np.concatenate([run(a[i:i + chunk]) for i in range(0, len(a), chunk)])


def _write(rep: dict[str, Any], text: str, folder: str, stem: str) -> None:
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, stem + ".json"), rep)
    with open(os.path.join(folder, stem + ".md"), "w") as f:
        f.write(text + "\n")


def run_speed(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs the speed study (see the module docstring); returns the report data.

    Raises:
        ValueError: for a bad study config or workdir, before anything is compiled.
    """
    maybe_initialize_distributed()
    check_workdir(workdir)
    variants = variants_of(config)
    base_cfg = dense_config(config)
    dense_dir = os.path.join(workdir, "dense")  # Named in the variants' configs, never read.
    validate_config(base_cfg, check_paths=False)
    for v in variants:
        validate_config(variant_config(config, v, dense_dir), check_paths=False)
    if config.speed.backend not in BACKENDS:
        raise ValueError(f"speed.backend={config.speed.backend!r} is not valid; use one of "
                         f"{BACKENDS}.")
    runtimes = baselines_lib.check_runtimes(config.speed.get("baselines", ()))
    calibrate = bool(config.speed.get("calibrate", False))
    bs = config.bench.batch_size
    micro = micro_batch_of(config)
    if isinstance(micro, int) and bs % micro:
        raise ValueError(f"speed.micro_batch={micro} does not divide bench.batch_size={bs}.")
    exp = experiment_lib.build(base_cfg, load_data=False)
    x = jax.random.normal(jax.random.key(base_cfg.seed), (bs, *exp.image_shape), exp.dtype)
    fns, args, rows = [jax.jit(lambda v, x: exp.apply_fn(v, x))], [(exp.variables, x)], []
    say("[speed] dense_optimized: the dense model compiled without masks (BatchNorm folded"
        + ("; each layer on the dense kernel measured fastest at its shape" if calibrate
           else "") + "), the speed baseline.")
    x_np, ref = np.asarray(x), fns[0](*args[0])  # The dense output: computed once.
    opt, opt_s, opt_err = compile_checked(exp, None, x, reference=ref,
                                          backend=config.speed.backend, calibrate=calibrate,
                                          micro_batch=micro)
    say(f"[speed] dense_optimized: micro-batch: {opt.report.micro_batch_note}.")
    fns.append(jax.jit(opt))
    args.append((opt.variables, x))
    var_fns, var_args = [], []
    for i, v in enumerate(variants):
        say(f"[speed] variant {i + 1}/{len(variants)}: {v.name} ({v.pattern}, policy "
            f"{v.policy}): pruning random weights and compiling.")
        sp, row = _compile_variant(config, v, exp, x, calibrate)
        var_fns.append(jax.jit(sp))
        var_args.append((sp.variables, x))
        rows.append(row)
    # The external runtimes on the whole batch and in chunks of every micro-batch a JAX model
    # ran: the fastest dense runtime gets the same option.
    used = {r["report"]["micro_batch"] for r in rows} | {opt.report.micro_batch}
    chunks = sorted(used - {bs})
    externals = [(None, b) for b in _baselines(runtimes, exp, x, workdir)] + [
        (c, b) for c in chunks for b in _baselines(runtimes, exp, x, workdir, chunk=c)]
    ext_rows = []
    for chunk, b in externals:
        row = {"runtime": b.runtime, "version": b.version, "why": b.why, "threads": b.threads,
               "micro_batch": chunk or bs}
        if b.run is not None:
            err = relative_error(b.run(x_np), ref)
            row.update(max_rel_error=err, verified=err <= TOLERANCE[base_cfg.precision])
            say(f"[speed] {b.runtime} {b.version}"
                + (f", {chunk} examples at a time" if chunk else "")
                + f": max rel. error {err:.2e} against the JAX model"
                + ("." if row["verified"] else " (MISMATCH)."))
            fns.append(b.run)
            args.append((x_np,))
        elif chunk is None:
            say(f"[speed] {b.runtime}: {b.why}.")
        else:
            continue  # Not installed: said once, for the whole batch.
        ext_rows.append(row)
    n_ext = sum("max_rel_error" in r for r in ext_rows)
    fns += var_fns
    args += var_args
    say(f"[speed] timing {len(fns)} models back to back, batch {bs}.")
    timings = benchmark(fns, args, bs, warmup=config.bench.warmup,
                        num_batches=config.bench.num_batches)
    dense, opt_t = timings[0], timings[1]
    ext_t, var_t = timings[2:2 + n_ext], timings[2 + n_ext:]
    timed_ext = [r for r in ext_rows if "max_rel_error" in r]
    dense_runs = [("dense (as written)", dense), ("dense (optimized)", opt_t)] + [
        (_runtime_name(r, bs), t) for r, t in zip(timed_ext, ext_t, strict=True)
        if r["verified"]]
    fastest_name, fastest = max(dense_runs, key=lambda nt: nt[1].images_per_sec)

    def ratios(t):
        return {"speedup": speedup_median(opt_t.latencies_ms, t.latencies_ms),
                "speedup_vs_written": speedup_median(dense.latencies_ms, t.latencies_ms),
                "vs_fastest_dense": speedup_median(fastest.latencies_ms, t.latencies_ms)}
    for row, t in zip(timed_ext, ext_t, strict=True):
        row.update(t.as_dict(), **ratios(t))
    for row, t in zip(rows, var_t, strict=True):
        row.update(t.as_dict(), **ratios(t),
                   speedup_range=speedup_spread(opt_t.latencies_ms, t.latencies_ms))
    weights = opt.report.bytes_before
    rep = {**environment(), "mode": "speed", "title": config.title,
           "model": base_cfg.model.to_dict(), "image_shape": list(exp.image_shape),
           "precision": base_cfg.precision, "batch_size": bs,
           "date": datetime.date.today().isoformat(), "command": " ".join(["python",
                                                                            *sys.argv]),
           "dense": {**dense.as_dict(), **ratios(dense), "weights_mib": weights / 2**20},
           "dense_optimized": {**opt_t.as_dict(), **ratios(opt_t),
                               "weights_mib": weights / 2**20,
                               "pass_seconds": opt_s, "max_rel_error": opt_err,
                               "verified": opt_err <= TOLERANCE[base_cfg.precision],
                               "report": opt.report.as_dict(),
                               "layer_table": _measured_layers(opt.report)
                               if config.speed.layer_table else ""},
           "calibrate": calibrate,
           "baselines": ext_rows, "fastest_dense": fastest_name,
           "variants": rows}
    text = _markdown(rep)
    if jax.process_index() == 0:
        _write(rep, text, workdir, "report")
        if config.speed.results_dir:
            stem = f"bench_sparse_{base_cfg.model.name}_{rep['platform']}_{rep['date']}"
            _write(rep, text, config.speed.results_dir, stem)
    writer = Writer(workdir)
    writer.scalars(0, {"speed/dense/images_per_sec": dense.images_per_sec,
                       "speed/dense_optimized/images_per_sec": opt_t.images_per_sec})
    for r in timed_ext:
        tag = r["runtime"] + ("" if r["micro_batch"] == bs else f"_{r['micro_batch']}_at_a_time")
        writer.scalars(0, {f"speed/{tag}/images_per_sec": r["images_per_sec"]})
    for r in rows:
        writer.scalars(0, {f"speed/{r['variant']}/{k}": r[k] for k in
                           ("images_per_sec", "speedup", "flops_ratio", "pass_seconds")})
    writer.text("speed/report", text)
    writer.close()
    return rep
