"""``run_study(config, workdir)``: dense and sparse, trained, compiled, measured in one run.

1. Train the dense baseline once (``<workdir>/dense``).
2. For each variant: fine-tune from the dense run with its pruning method
   (``<workdir>/<name>``), read the masks back from the pruned weights, ``js.sparsify`` it, and
   evaluate the *compiled* model's accuracy on the test set.
3. Benchmark dense and every compiled variant back to back in this process (alternating).
4. Write ``report.json``, ``report.md``, ``pareto.png`` and TensorBoard scalars and images.

Every step is resumable: finished runs (``results.json``) and finished evaluations
(``study.json``) are not redone; a killed fine-tune resumes from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import ml_collections

import jaxsparse as js
from jaxsparse.study import plot
from jaxsparse.study import report as report_lib
from jaxsparse.study import variants as variants_lib
from jaxsparse.training import experiment as experiment_lib
from jaxsparse.training import methods, train
from jaxsparse.training.bench import benchmark
from jaxsparse.training.experiment import Experiment
from jaxsparse.training.sharding import maybe_initialize_distributed
from jaxsparse.training.summary import Writer, environment, say, write_json
from jaxsparse.training.validate import check_workdir, validate_config

HPARAMS_DIR = "hparams"  # <workdir>/hparams/<variant>: the study's HParams runs.


def variants_of(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
    """The configured variants plus the ``sweep`` block's grid (one-shot, named
    ``sweep_<pattern>_<percent>``), each with a unique name.

    Raises:
        ValueError: for duplicate or reserved names, or a bad grid.
    """
    out = [ml_collections.ConfigDict(v.to_dict()) for v in config.variants]
    sw = config.sweep
    if sw.sparsities:
        out += variants_lib.sweep(sw.pattern, sw.sparsities, method="one_shot",
                                  prefix=f"sweep_{variants_lib.pattern_slug(sw.pattern)}_",
                                  where="sweep.sparsities", grouped=sw.grouped,
                                  include=sw.include)
    names = [v.name for v in out]
    if "dense" in names or len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique and not 'dense'; got {names}.")
    return out


def variant_config(config: ml_collections.ConfigDict, v: ml_collections.ConfigDict,
                   dense_dir: str) -> ml_collections.ConfigDict:
    """The experiment config that fine-tunes variant ``v`` from the dense run, by its recipe
    (:func:`jaxsparse.study.variants.recipe`): its own warm-up + cosine schedule at
    ``finetune.lr``, or the dense run's schedule replayed over its last ``epochs``
    (``lr_schedule="rewind"``); a gradual variant reaches its sparsity at the end of its
    pruning phase."""
    r = variants_lib.recipe(config, v)
    c = ml_collections.ConfigDict(config.base.to_dict())
    ft = config.finetune
    c.init_from = dense_dir
    c.train.num_steps = 0
    if r["lr_schedule"] == "rewind":
        if r["epochs"] >= config.base.train.epochs:
            raise ValueError(f"variant {v.name!r}: lr_schedule='rewind' replays the last "
                             f"{r['epochs']:g} epochs of the dense run's schedule, which has "
                             f"only {config.base.train.epochs:g}; shorten the fine-tune.")
        c.train.schedule_start_epoch = config.base.train.epochs - r["epochs"]
    else:
        c.train.epochs = r["epochs"]
        c.train.lr = ft.lr
        c.train.warmup_epochs = ft.warmup_epochs
        c.train.schedule_start_epoch = 0.0
    c.bench.enabled = False
    c.distill.alpha = r["distill_alpha"]
    c.distill.temperature = config.distill.temperature
    c.distill.teacher = dense_dir if r["distill_alpha"] > 0 else ""
    c.sparsity.update(methods.variant_block(
        v.pattern, v.sparsity, v.method, distribution=r["distribution"], grouped=v.grouped,
        include=v.include, end_fraction=r["prune_epochs"] / r["epochs"]
        if v.method == "gradual" else ft.prune_fraction))
    return c


def run_or_load(config: ml_collections.ConfigDict, workdir: str,
                experiment: Experiment | None = None) -> dict[str, Any]:
    """A finished run's results.json, or the run itself (resuming if it was interrupted) on
    ``experiment``'s data and model."""
    path = os.path.join(workdir, "results.json")
    if os.path.isfile(path):
        say(f"[study] {workdir}: finished earlier, reusing its results.")
        with open(path) as f:
            return json.load(f)
    say(f"[study] {workdir}: training.")
    return train.train_and_evaluate(config, workdir, experiment=experiment, hparams=False)


def trained_variant(exp: Experiment, vdir: str) -> tuple[dict, Any]:
    """``(variables, masks)`` of the trained variant in ``vdir``: its masks are read back from
    the pruned weights' zeros."""
    variables = exp.load_variables(vdir)
    return variables, js.masks_from_zeros(variables["params"])


def compile_trained(exp: Experiment, vdir: str, example: jax.Array,
                    policy: str = "auto") -> js.SparseModel:
    """The trained variant in ``vdir`` compiled for ``example``'s shape (``js.sparsify`` of
    :func:`trained_variant`)."""
    variables, masks = trained_variant(exp, vdir)
    return js.sparsify(exp.apply_fn, variables, masks, example, policy=policy)


def compiled_accuracy(exp: Experiment, sp: js.SparseModel, batch_size: int) -> float:
    """Test accuracy of a compiled model (compiled for ``batch_size``), over every example."""
    return exp.evaluate(sp.variables, apply_fn=lambda v, x, train=False: sp(v, x),
                        batch_size=batch_size)["accuracy"]


def dense_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The dense baseline's config: ``config.base`` with pruning off (sparsity fields the base
    sets for its variants, such as a schedule's frequency, are theirs alone)."""
    c = ml_collections.ConfigDict(config.base.to_dict())
    c.bench.enabled = False
    c.sparsity.update({"method": "none", **methods.SPARSITY_OFF})
    return c


def run_study(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) the whole study; returns the report data.

    Raises:
        ValueError: for a bad study config or workdir, before any data is read (every
            variant's experiment config is validated first).
    """
    maybe_initialize_distributed()  # Before anything can touch a JAX backend.
    check_workdir(workdir)
    all_variants = variants_of(config)
    base = dense_config(config)
    dense_dir = os.path.join(workdir, "dense")
    validate_config(base, prefix="base.")
    for v in all_variants:
        validate_config(variant_config(config, v, dense_dir), check_paths=False)
    os.makedirs(workdir, exist_ok=True)
    t_start = time.perf_counter()
    exp = experiment_lib.build(base)
    apply_fn = exp.apply_fn
    dense_res = run_or_load(base, dense_dir, exp)
    bs = config.bench.batch_size
    example = exp.example(bs)
    dense_vars = exp.load_variables(dense_dir)
    rows = [report_lib.VariantRow("dense", "dense", "none", 0.0, 1.0, dense_res["accuracy"],
                                  None, False)]
    fns, args = [jax.jit(lambda v, x: apply_fn(v, x))], [(dense_vars, example)]
    say(f"[study] dense: test accuracy {dense_res['accuracy']:.4f}.")
    opt, opt_acc = optimized_dense(exp, dense_vars, example, dense_dir, bs)
    say(f"[study] dense_optimized (the dense model compiled, BatchNorm folded: the speed "
        f"baseline): accuracy {opt_acc:.4f}.")
    rows.append(report_lib.VariantRow(report_lib.DENSE_OPTIMIZED, "dense", "none", 0.0, 1.0,
                                      opt_acc, None, False))
    fns.append(jax.jit(opt))
    args.append((opt.variables, example))
    t_variants = time.perf_counter()
    for i, v in enumerate(all_variants):
        elapsed = time.perf_counter() - t_start
        per_variant = (time.perf_counter() - t_variants) / max(i, 1)
        eta = "" if i == 0 else \
            f", about {per_variant * (len(all_variants) - i) / 60:.0f} min of variants left"
        say(f"[study] variant {i + 1}/{len(all_variants)}: {v.name} ({v.method} "
                  f"{v.pattern}); {elapsed / 60:.1f} min elapsed{eta}.")
        vdir = os.path.join(workdir, v.name)
        res = run_or_load(variant_config(config, v, dense_dir), vdir, exp)
        sp = compile_trained(exp, vdir, example, v.policy)
        cached = os.path.join(vdir, "study.json")
        if os.path.isfile(cached):
            with open(cached) as f:
                acc = json.load(f)["compiled_accuracy"]
        else:
            say(f"[study] {v.name}: evaluating the compiled model.")
            acc = compiled_accuracy(exp, sp, bs)
            write_json(cached, {"compiled_accuracy": acc, "masked_accuracy": res["accuracy"],
                                "compile_report": sp.report.as_dict()})
        say(f"[study] {v.name}: compiled accuracy {acc:.4f} (masked "
                  f"{res['accuracy']:.4f}), FLOPs ratio {sp.report.flops_ratio:.3f}.")
        ratio = sp.report.flops_ratio
        rows.append(report_lib.VariantRow(
            v.name, v.pattern, v.method, res["sparsity"]["achieved"], ratio, acc, None,
            ratio >= report_lib.MASK_ONLY_RATIO, report_lib.dense_reason(sp.report.rows),
            target_sparsity=target_sparsity(v), recipe=variants_lib.recipe(config, v)))
        fns.append(jax.jit(sp))
        args.append((sp.variables, example))
    say(f"[study] benchmarking {len(fns)} models back to back, batch {bs}.")
    timings = benchmark(fns, args, bs, warmup=config.bench.warmup,
                        num_batches=config.bench.num_batches)
    base_ms = timings[BASELINE].latencies_ms  # The optimized dense model's.
    rows = [dataclasses.replace(
        r, images_per_sec=t.images_per_sec,
        speedup_range=None if i == BASELINE else report_lib.speedup_spread(base_ms,
                                                                           t.latencies_ms),
        speedup_median=None if i == BASELINE else report_lib.speedup_median(base_ms,
                                                                            t.latencies_ms))
        for i, (r, t) in enumerate(zip(rows, timings, strict=True))]
    env = {**environment(), "precision": base.precision, "batch_size": bs,
           "title": config.title, "model": base.model.to_dict(), "dataset": base.data.name,
           "finetune": config.finetune.to_dict(), "distill": config.distill.to_dict(),
           "note": config.note,
           "reference_accuracy": float(config.get("reference_accuracy", 0.0)),
           "reference_name": config.get("reference_name", ""),
           "latency_ms_p50": {r.variant: t.latency_ms_p50 for r, t in zip(rows, timings,
                                                                           strict=True)}}
    rep = report_lib.build_report(rows, env)
    write_json(os.path.join(workdir, "report.json"), rep)
    table = report_lib.markdown(rep)
    with open(os.path.join(workdir, "report.md"), "w") as f:
        note = f"{config.note}\n\n" if config.note else ""
        f.write(f"# {config.title}\n\n{note}{table}\n")
    image = plot.pareto_plot(rep, os.path.join(workdir, "pareto.png"))
    write_tensorboard(config, workdir, rep, [None, None, *all_variants], image)
    return rep


BASELINE = 1  # Row index of the speed baseline (dense_optimized) in run_study's rows.


def optimized_dense(exp: Experiment, variables: dict, example: jax.Array, dense_dir: str,
                    batch_size: int) -> tuple[js.SparseModel, float]:
    """The dense model compiled by ``js.sparsify`` without masks (every BatchNorm folded), and
    its test accuracy (cached in ``<dense_dir>/study.json``)."""
    opt = js.sparsify(exp.apply_fn, variables, None, example)
    cached = os.path.join(dense_dir, "study.json")
    if os.path.isfile(cached):
        with open(cached) as f:
            saved = json.load(f)
        if "optimized_accuracy" in saved:
            return opt, saved["optimized_accuracy"]
    acc = compiled_accuracy(exp, opt, batch_size)
    write_json(cached, {"optimized_accuracy": acc, "compile_report": opt.report.as_dict()})
    return opt, acc


METRICS = ("compiled_accuracy", "accuracy_delta", "meets_99", "speedup", "images_per_sec",
           "flops_ratio")  # The HParams metric columns, as hparam/<name>.


def write_tensorboard(config: ml_collections.ConfigDict, workdir: str, rep: dict[str, Any],
                      specs: list[ml_collections.ConfigDict | None], image: Any) -> None:
    """The study in TensorBoard: in the workdir's own run the Pareto image, the report text and
    ``study/<metric>`` with the row index as the step (so every row shows in one line, row 0
    dense; the report's text lists the order); one HParams session per row under
    ``hparams/<variant>`` with the columns declared once in the workdir (hparams and
    :data:`METRICS`)."""
    values = []
    for e in rep["rows"]:
        values.append({"compiled_accuracy": e["accuracy"], "accuracy_delta":
                       e["accuracy_delta"], "meets_99": None if e["meets_99"] is None else
                       float(e["meets_99"]), "speedup": e["speedup"], "images_per_sec":
                       e["images_per_sec"], "flops_ratio": e["flops_ratio"]})
    writer = Writer(workdir)
    writer.image("study/pareto", image)
    writer.text("study/report", report_lib.markdown(rep))
    writer.text("study/rows", "\n".join(f"{i}: {e['variant']}"
                                        for i, e in enumerate(rep["rows"])))
    for i, v in enumerate(values):
        writer.scalars(i, {f"study/{k}": x for k, x in v.items() if x is not None})
    rows = [study_hparams(config, s, optimized=e["variant"] == report_lib.DENSE_OPTIMIZED)
            for s, e in zip(specs, rep["rows"], strict=True)]
    writer.hparams_experiment(rows[0], [f"hparam/{m}" for m in METRICS])
    writer.close()
    for entry, hp, v in zip(rep["rows"], rows, values, strict=True):
        w = Writer(os.path.join(workdir, HPARAMS_DIR, entry["variant"]))
        w.hparams(hp, {f"hparam/{k}": x for k, x in v.items() if x is not None},
                  declare=False)
        w.close()


def target_sparsity(v: ml_collections.ConfigDict) -> float:
    """The sparsity a variant asks for (``1 - N/M`` for an N:M pattern left at 0)."""
    pattern = js.parse_pattern(v.pattern)
    if isinstance(pattern, js.NM) and not v.sparsity:
        return 1.0 - pattern.n / pattern.m
    return float(v.sparsity)


def study_hparams(config: ml_collections.ConfigDict, v: ml_collections.ConfigDict | None,
                  optimized: bool = False) -> dict[str, Any]:
    """The HParams of one study row: the variant as run, recipe included (dense, as written or
    ``optimized``: no pruning, no fine-tune, no distillation)."""
    if v is None:
        name = report_lib.DENSE_OPTIMIZED if optimized else "dense"
        return {"variant": name, "method": "none", "pattern": "dense", "sparsity": 0.0,
                "division": "closed", "finetune_epochs": 0.0, "prune_epochs": 0.0,
                "recover_epochs": 0.0, "lr_schedule": "none", "distribution": "none",
                "finetune_lr": 0.0, "distill_alpha": 0.0, "distill_temperature": 0.0,
                "bench_batch_size": int(config.bench.batch_size)}
    r = variants_lib.recipe(config, v)
    return {"variant": v.name, "method": v.method, "pattern": v.pattern,
            "bench_batch_size": int(config.bench.batch_size),
            "sparsity": target_sparsity(v), "division": "open",
            "finetune_epochs": float(r["epochs"]), "prune_epochs": float(r["prune_epochs"]),
            "recover_epochs": float(r["recover_epochs"]), "lr_schedule": r["lr_schedule"],
            "distribution": r["distribution"],
            "finetune_lr": float(config.finetune.lr) if r["lr_schedule"] == "cosine" else
            float(config.base.train.lr),
            "distill_alpha": r["distill_alpha"],
            "distill_temperature": float(config.distill.temperature)}
