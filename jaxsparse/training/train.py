"""``train_and_evaluate(config, workdir)``: the experiment, as one library function."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from tqdm import tqdm

from jaxsparse import data as data_lib
from jaxsparse.compiler.groups import channel_groups
from jaxsparse.models import create_model, functional
from jaxsparse.pruning.patterns import NM, parse_pattern
from jaxsparse.training import methods, optim, steps
from jaxsparse.training.bench import benchmark
from jaxsparse.training.checkpoint import Checkpointer
from jaxsparse.training.sharding import DataParallel, data_parallel, maybe_initialize_distributed
from jaxsparse.training.summary import Writer, environment, write_json
from jaxsparse.training.validate import precision_dtype, validate_config

log = logging.getLogger(__name__)
def compute_dtype(config: ml_collections.ConfigDict):
    """The computation dtype named by ``config.precision``."""
    return precision_dtype(config.precision)


def load_splits(config: ml_collections.ConfigDict) -> tuple[data_lib.Split, data_lib.Split]:
    """The train and test splits named by ``config.data``."""
    d = config.data
    kw = dict(data_dir=d.dir or None, shape=tuple(d.shape), num_classes=d.num_classes,
              num_examples=d.synthetic_examples, seed=config.seed)
    train = data_lib.load_dataset(d.name, "train", limit=d.train_limit or None, **kw)
    test = data_lib.load_dataset(d.name, "test", limit=d.test_limit or None, **kw)
    return train, test


def build_model(config: ml_collections.ConfigDict, in_channels: int):
    """``(apply_fn, variables)`` of the model named by ``config.model``."""
    m = config.model
    model = create_model(m.name, num_classes=config.data.num_classes, stem=m.stem, width=m.width,
                         in_channels=in_channels, dtype=compute_dtype(config),
                         rngs=nnx.Rngs(config.seed))
    return functional(model)


def evaluate(eval_step, variables: dict, split: data_lib.Split, batch_size: int,
             dp: DataParallel) -> dict[str, float]:
    """Accuracy and mean loss over every example of ``split``."""
    totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
    for batch in data_lib.eval_batches(split, batch_size, dp.batch):
        out = eval_step(variables, batch)
        totals = {k: totals[k] + out[k] for k in totals}
    totals = jax.device_get(totals)
    return {"accuracy": float(totals["correct"] / totals["count"]),
            "loss": float(totals["loss"] / totals["count"])}


def bench_inference(config, apply_fn, variables: dict, image_shape, dp: DataParallel) -> dict:
    """Inference images/s and latency percentiles on random inputs of the configured batch."""
    b = config.bench
    dp.check_batch_size(b.batch_size, "bench.batch_size")
    x = jax.device_put(jnp.zeros((b.batch_size, *image_shape), compute_dtype(config)), dp.batch)
    fn = jax.jit(lambda v, x: apply_fn(v, x, train=False))
    (result,) = benchmark([fn], [(variables, x)], b.batch_size, warmup=b.warmup,
                          num_batches=b.num_batches)
    return result.as_dict()


FINAL_DIR = "final_variables"


def save_final_variables(workdir: str, variables: dict) -> None:
    """Saves a finished run's inference variables (atomically) for later fine-tuning."""
    path = os.path.join(os.path.abspath(workdir), FINAL_DIR)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, variables, force=True)


def load_final_variables(workdir: str, like: dict, dp: DataParallel) -> dict:
    """Loads what :func:`save_final_variables` wrote, in the structure of ``like``.

    Raises:
        ValueError: if ``workdir`` holds no finished run.
    """
    path = os.path.join(os.path.abspath(workdir), FINAL_DIR)
    if not os.path.isdir(path):
        raise ValueError(f"init_from={workdir!r} holds no finished run ({path} is missing); point "
                         f"it at the workdir of a run that completed.")
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dp.replicated), like)
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(path, abstract)


def run_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as TensorBoard HParams, with the pattern and sparsity actually used: ``dense``
    and 0 when pruning is off (the fields then hold defaults), ``1 - N/M`` for N:M (whose
    ``sparsity`` field is 0, "not given")."""
    hp = config.to_dict()
    s = config.sparsity
    if s.method == "none":
        hp["sparsity"] = {**hp["sparsity"], "pattern": "dense", "sparsity": 0.0}
    else:
        pattern = parse_pattern(s.pattern)
        if isinstance(pattern, NM) and not s.sparsity:
            hp["sparsity"] = {**hp["sparsity"], "sparsity": 1.0 - pattern.n / pattern.m}
    return hp


def say(message: str, bar: tqdm | None = None) -> None:
    """Prints a progress line once per run (process 0), above the progress bar if any."""
    if jax.process_index() != 0:
        return
    if bar is not None:
        bar.write(message)
    else:
        print(message, flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains, evaluates and benchmarks the configured model; resumable from ``workdir``.

    Writes TensorBoard events, checkpoints and ``results.json`` under ``workdir``.

    Args:
        config: an experiment config (see ``experiments/configs/default.py``).
        workdir: the run's folder; rerunning with the same folder resumes.

    Returns:
        The contents of ``results.json``.

    Raises:
        ValueError: for a bad config (:func:`~jaxsparse.training.validate.validate_config`,
            before any data is read) or a workdir that holds another run.
    """
    validate_config(config, workdir)
    maybe_initialize_distributed()
    os.makedirs(workdir, exist_ok=True)
    dp = data_parallel()
    dp.check_batch_size(config.train.batch_size, "train.batch_size")
    dp.check_batch_size(config.eval.batch_size, "eval.batch_size")
    dtype = compute_dtype(config)
    train_split, test_split = load_splits(config)
    apply_fn, variables = build_model(config, train_split.images.shape[-1])
    spe = data_lib.steps_per_epoch(train_split, config.train.batch_size)
    num_steps = config.train.num_steps or int(round(config.train.epochs * spe))
    lr = optim.learning_rate_schedule(config.train.lr, config.train.batch_size, spe,
                                      num_steps / spe, config.train.warmup_epochs)
    base_tx = optim.sgd_nesterov(lr, config.train.momentum, config.train.weight_decay,
                                 config.train.nesterov)
    groups = None
    if config.sparsity.grouped:
        example = jnp.zeros((1, *train_split.images.shape[1:]), dtype)
        groups = channel_groups(apply_fn, variables, example)
    pruning = methods.setup(config.sparsity, variables["params"], base_tx, num_steps,
                                 groups)
    state = jax.device_put(steps.create_train_state(variables, pruning.tx), dp.replicated)

    ckpt = Checkpointer(workdir, keep=config.train.keep_checkpoints)
    start = ckpt.latest_step()
    if start is not None:
        restored = ckpt.restore({"state": state._asdict(), "data_seed": 0})
        if int(restored["data_seed"]) != config.seed:
            raise ValueError(f"{workdir!r} was trained with seed={int(restored['data_seed'])}, "
                             f"not seed={config.seed}; use a new workdir or the same seed.")
        state = steps.TrainState(**restored["state"])
        log.info("Resumed from step %d of %d (%s).", start, num_steps, ckpt.directory)
        say(f"Resumed from checkpoint at step {start} of {num_steps}.")
    elif config.init_from:
        init = load_final_variables(config.init_from, {"params": state.params,
                                                       "batch_stats": state.batch_stats}, dp)
        state = state._replace(params=init["params"], batch_stats=init["batch_stats"])
        say(f"Initialised from {config.init_from}.")
    start = start or 0
    teacher = None
    if config.distill.alpha > 0:
        if not config.distill.teacher:
            raise ValueError(f"distill.alpha={config.distill.alpha} needs distill.teacher: the "
                             f"workdir of a finished run of the same model.")
        teacher = load_final_variables(config.distill.teacher, {
            "params": state.params, "batch_stats": state.batch_stats}, dp)
        say(f"Distilling from {config.distill.teacher} (alpha {config.distill.alpha}, "
            f"T {config.distill.temperature}).")

    writer = Writer(workdir)
    writer.text("config", "```\n" + config.to_yaml() + "\n```")
    train_step = jax.jit(
        steps.make_train_step(apply_fn, pruning.tx, config.data.num_classes,
                              label_smoothing=config.train.label_smoothing, compute_dtype=dtype,
                              forward_params=pruning.forward_params,
                              distill_alpha=config.distill.alpha,
                              distill_temperature=config.distill.temperature),
        in_shardings=(dp.replicated, dp.batch, dp.replicated),
        out_shardings=(dp.replicated, dp.replicated), donate_argnums=0)
    eval_step = jax.jit(steps.make_eval_step(apply_fn, config.data.num_classes, dtype))

    def eval_variables(st):
        return {"params": pruning.inference_params(st.params, st.opt_state),
                "batch_stats": st.batch_stats}

    def save(st, force=False):
        ckpt.save(int(st.step), {"state": st._asdict(), "data_seed": config.seed}, force=force)

    batches = data_lib.train_batches(train_split, config.train.batch_size, config.seed, start,
                                     num_steps, dp.batch, augment=config.data.augment)
    window, t_window, train_ips = [], time.perf_counter(), 0.0
    eval_metrics: dict[str, float] = {}
    bar = tqdm(total=num_steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
               disable=not config.progress or jax.process_index() != 0)
    t_train = time.perf_counter()
    try:
        for step, batch in zip(range(start, num_steps), batches, strict=True):
            state, metrics = train_step(state, batch, teacher)
            window.append(metrics)
            done = step + 1
            if done % config.train.log_every_steps == 0 or done == num_steps:
                host = jax.device_get(window)
                elapsed = time.perf_counter() - t_window
                train_ips = len(window) * config.train.batch_size / elapsed
                m = {k: float(np.mean([h[k] for h in host])) for k in host[0]}
                writer.scalars(done, {"train/loss": m["loss"], "train/accuracy": m["accuracy"],
                                      "train/learning_rate": float(lr(done - 1)),
                                      "train/images_per_sec": train_ips})
                writer.scalars(done, pruning.summary(state.params, state.opt_state))
                bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['accuracy']:.3f}",
                                img_s=f"{train_ips:.0f}")
                window, t_window = [], time.perf_counter()
            bar.update(1)
            if done % spe == 0 and (done // spe) % config.train.eval_every_epochs == 0 \
                    and done != num_steps:
                eval_metrics = evaluate(eval_step, eval_variables(state), test_split,
                                        config.eval.batch_size, dp)
                writer.scalars(done, {f"eval/{k}": v for k, v in eval_metrics.items()})
                say(f"epoch {done // spe}: eval accuracy {eval_metrics['accuracy']:.4f}", bar)
            if done % config.train.checkpoint_every_steps == 0 or done == num_steps:
                save(state)
    except KeyboardInterrupt:
        say(f"Interrupted: saving a checkpoint at step {int(state.step)}; rerun the same "
            f"command to resume.", bar)
        save(state, force=True)
        ckpt.wait()
        raise
    finally:
        bar.close()
    train_wall_s = time.perf_counter() - t_train
    ckpt.wait()

    final_vars = eval_variables(state)
    eval_metrics = evaluate(eval_step, final_vars, test_split, config.eval.batch_size, dp)
    writer.scalars(num_steps, {f"eval/{k}": v for k, v in eval_metrics.items()})
    results: dict[str, Any] = {
        **environment(), "precision": config.precision, "model": config.model.to_dict(),
        "dataset": config.data.name, "train_batch_size": config.train.batch_size,
        "steps": num_steps, "epochs": num_steps / spe, "train_images_per_sec": train_ips,
        "train_wall_s": train_wall_s, "eval": eval_metrics, "accuracy": eval_metrics["accuracy"],
        **pruning.results(state.params, state.opt_state),
    }
    if config.bench.enabled:
        bench = bench_inference(config, apply_fn, final_vars, train_split.images.shape[1:], dp)
        writer.scalars(num_steps, {f"bench/{k}": bench[k] for k in
                                   ("images_per_sec", "latency_ms_p50", "latency_ms_p99")})
        results["bench"] = bench
        results["images_per_sec"] = bench["images_per_sec"]
    for tag, text in pruning.texts(state.params, state.opt_state).items():
        writer.text(tag, text, num_steps)
    metrics = {"hparam/accuracy": eval_metrics["accuracy"]}
    if "images_per_sec" in results:  # Only a measured throughput (never a 0.0 placeholder).
        metrics["hparam/images_per_sec"] = results["images_per_sec"]
    writer.hparams(run_hparams(config), metrics)
    writer.close()
    ckpt.close()
    save_final_variables(workdir, final_vars)
    write_json(os.path.join(workdir, "results.json"), results)
    return results


def run_bench(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Benchmark-only mode: inference images/s of the configured model (random weights)."""
    os.makedirs(workdir, exist_ok=True)
    dp = data_parallel()
    apply_fn, variables = build_model(config, config.data.shape[-1])
    variables = jax.device_put(variables, dp.replicated)
    bench = bench_inference(config, apply_fn, variables, tuple(config.data.shape), dp)
    writer = Writer(workdir)
    writer.scalars(0, {f"bench/{k}": bench[k] for k in
                       ("images_per_sec", "latency_ms_p50", "latency_ms_p99")})
    writer.close()
    results = {**environment(), "precision": config.precision, "model": config.model.to_dict(),
               "image_shape": list(config.data.shape), "bench": bench,
               "images_per_sec": bench["images_per_sec"]}
    write_json(os.path.join(workdir, "results.json"), results)
    return results
