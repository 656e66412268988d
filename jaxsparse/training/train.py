"""``train_and_evaluate(config, workdir)``: the experiment, as one library function."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from jaxsparse import data as data_lib
from jaxsparse.compiler.groups import channel_groups
from jaxsparse.pruning.patterns import parse_pattern
from jaxsparse.training import experiment as experiment_lib
from jaxsparse.training import methods, optim, steps
from jaxsparse.training.bench import benchmark
from jaxsparse.training.checkpoint import Checkpointer, save_final_variables
from jaxsparse.training.experiment import Experiment
from jaxsparse.training.sharding import maybe_initialize_distributed
from jaxsparse.training.summary import Writer, environment, say, write_json
from jaxsparse.training.validate import validate_config

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """A run stopped by SIGINT or SIGTERM at a step boundary, after saving a checkpoint."""


@contextlib.contextmanager
def stop_requests() -> Iterator[dict]:
    """SIGINT/SIGTERM as a flag (``flag["signal"]``) that the training loop checks between
    steps, so no callback running inside JAX can swallow the interrupt; a second signal
    interrupts at once. Outside the main thread signals cannot be caught: the flag stays
    unset."""
    flag: dict = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["signal"] is not None:
            raise KeyboardInterrupt
        flag["signal"] = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def bench_inference(exp: Experiment, variables: dict) -> dict:
    """Inference images/s and latency percentiles on random inputs of the configured batch."""
    b = exp.config.bench
    exp.dp.check_batch_size(b.batch_size, "bench.batch_size")
    x = jax.device_put(exp.example(b.batch_size), exp.dp.batch)
    fn = jax.jit(lambda v, x: exp.apply_fn(v, x, train=False))
    (result,) = benchmark([fn], [(variables, x)], b.batch_size, warmup=b.warmup,
                          num_batches=b.num_batches)
    return result.as_dict()


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
        if methods.target_sparsity(pattern, s.sparsity) is None:  # N:M: 1 - N/M.
            hp["sparsity"] = {**hp["sparsity"], "sparsity": 1.0 - pattern.n / pattern.m}
    return hp


@dataclasses.dataclass(frozen=True)
class _Schedule:
    """The run's length, learning rate and pruning method."""

    steps_per_epoch: int
    num_steps: int
    lr: optax.Schedule
    pruning: methods.PruningSetup


def _schedule(exp: Experiment) -> _Schedule:
    c = exp.config
    spe = data_lib.steps_per_epoch(exp.train, c.train.batch_size)
    num_steps, lr = optim.run_schedule(c.train, spe)
    tx = optim.sgd_nesterov(lr, c.train.momentum, c.train.weight_decay, c.train.nesterov)
    groups = None
    if c.sparsity.grouped:
        groups = channel_groups(exp.apply_fn, exp.variables, exp.example(1))
    pruning = methods.setup(c.sparsity, exp.variables["params"], tx, num_steps, groups)
    return _Schedule(spe, num_steps, lr, pruning)


def _initial_state(exp: Experiment, sched: _Schedule, ckpt: Checkpointer,
                   workdir: str) -> tuple[steps.TrainState, int]:
    """``(state, first step)``: resumed from the latest checkpoint, else initialised from
    ``init_from`` or at random."""
    c = exp.config
    # A copy: the train step donates its state, and exp.variables is shared (the template
    # checkpoints load into).
    variables = jax.tree.map(jnp.copy, exp.variables)
    state = jax.device_put(steps.create_train_state(variables, sched.pruning.tx),
                           exp.dp.replicated)
    start = ckpt.latest_step()
    if start is not None:
        restored = ckpt.restore({"state": state._asdict(), "data_seed": 0})
        if int(restored["data_seed"]) != c.seed:
            raise ValueError(f"{workdir!r} was trained with seed={int(restored['data_seed'])}, "
                             f"not seed={c.seed}; use a new workdir or the same seed.")
        log.info("Resumed from step %d of %d (%s).", start, sched.num_steps, ckpt.directory)
        say(f"Resumed from checkpoint at step {start} of {sched.num_steps}.")
        return steps.TrainState(**restored["state"]), start
    if c.init_from:
        init = exp.load_variables(c.init_from)
        state = state._replace(params=init["params"], batch_stats=init["batch_stats"])
        say(f"Initialised from {c.init_from}.")
    return state, 0


def _teacher(exp: Experiment) -> dict | None:
    """The distillation teacher's variables, or None without distillation."""
    d = exp.config.distill
    if d.alpha <= 0:
        return None
    say(f"Distilling from {d.teacher} (alpha {d.alpha}, T {d.temperature}).")
    return exp.load_variables(d.teacher)


def _fit(exp: Experiment, sched: _Schedule, state: steps.TrainState, start: int,
         teacher: dict | None, ckpt: Checkpointer, writer: Writer) -> tuple[steps.TrainState,
                                                                           float]:
    """The training loop from step ``start``: logs, evaluates every ``eval_every_epochs``,
    checkpoints (also on Ctrl-C). Returns the final state and the last training images/s."""
    c, dp, pruning, spe = exp.config, exp.dp, sched.pruning, sched.steps_per_epoch
    train_step = jax.jit(
        steps.make_train_step(exp.apply_fn, pruning.tx, c.data.num_classes,
                              label_smoothing=c.train.label_smoothing, compute_dtype=exp.dtype,
                              forward_params=pruning.forward_params,
                              distill_alpha=c.distill.alpha,
                              distill_temperature=c.distill.temperature),
        in_shardings=(dp.replicated, dp.batch, dp.replicated),
        out_shardings=(dp.replicated, dp.replicated), donate_argnums=0)
    eval_step = exp.eval_step()

    def save(st, force=False):
        ckpt.save(int(st.step), {"state": st._asdict(), "data_seed": c.seed}, force=force)

    batches = data_lib.train_batches(exp.train, c.train.batch_size, c.seed, start,
                                     sched.num_steps, dp.batch, augment=c.data.augment)
    window, t_window, train_ips = [], time.perf_counter(), 0.0
    bar = tqdm(total=sched.num_steps, initial=start, desc="train", unit="step",
               dynamic_ncols=True, disable=not c.progress or jax.process_index() != 0)
    signals = contextlib.ExitStack()
    try:
        stop = signals.enter_context(stop_requests())
        for step, batch in zip(range(start, sched.num_steps), batches, strict=True):
            state, metrics = train_step(state, batch, teacher)
            window.append(metrics)
            done = step + 1
            if done % c.train.log_every_steps == 0 or done == sched.num_steps:
                host = jax.device_get(window)
                train_ips = len(window) * c.train.batch_size / (time.perf_counter() - t_window)
                m = {k: float(np.mean([h[k] for h in host])) for k in host[0]}
                writer.scalars(done, {"train/loss": m["loss"], "train/accuracy": m["accuracy"],
                                      "train/learning_rate": float(sched.lr(done - 1)),
                                      "train/images_per_sec": train_ips})
                writer.scalars(done, pruning.summary(state.params, state.opt_state))
                bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['accuracy']:.3f}",
                                img_s=f"{train_ips:.0f}")
                window, t_window = [], time.perf_counter()
            bar.update(1)
            if done % spe == 0 and (done // spe) % c.train.eval_every_epochs == 0 \
                    and done != sched.num_steps:
                metrics = exp.evaluate(_inference_variables(pruning, state),
                                       eval_step=eval_step)
                writer.scalars(done, {f"eval/{k}": v for k, v in metrics.items()})
                say(f"epoch {done // spe}: eval accuracy {metrics['accuracy']:.4f}", bar)
            if done % c.train.checkpoint_every_steps == 0 or done == sched.num_steps:
                save(state)
            if stop["signal"] is not None and done != sched.num_steps:
                name = signal.Signals(stop["signal"]).name
                if done % c.train.checkpoint_every_steps:  # Else saved just above.
                    save(state, force=True)
                ckpt.wait()
                say(f"Interrupted ({name}): saved a checkpoint at step {done}; rerun the same "
                    f"command to resume.", bar)
                raise Interrupted(f"{name} at step {done}")
    except KeyboardInterrupt:  # A second signal, or one outside the loop's checks.
        try:  # The state may be mid-step (its buffers donated): then keep the last checkpoint.
            save(state, force=True)
            ckpt.wait()
            where = f"saved a checkpoint at step {int(state.step)}"
        except Exception:  # noqa: BLE001
            where = f"kept the last checkpoint (step {ckpt.latest_step()})"
        say(f"Interrupted: {where}; rerun the same command to resume.", bar)
        raise Interrupted(f"interrupted ({where})") from None
    finally:
        signals.close()
        bar.close()
    ckpt.wait()
    return state, train_ips


def _inference_variables(pruning: methods.PruningSetup, state: steps.TrainState) -> dict:
    """The variables evaluated and exported: pruned weights set to zero."""
    return {"params": pruning.inference_params(state.params, state.opt_state),
            "batch_stats": state.batch_stats}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       experiment: Experiment | None = None,
                       hparams: bool = True) -> dict[str, Any]:
    """Trains, evaluates and benchmarks the configured model; resumable from ``workdir``.

    Writes TensorBoard events, checkpoints, the final variables and ``results.json`` under
    ``workdir``.

    Args:
        config: an experiment config (see ``experiments/configs/default.py``).
        workdir: the run's folder; rerunning with the same folder resumes.
        experiment: an already built experiment of the same data and model (the study passes
            its own, so the data is read once); None: built from ``config``.
        hparams: record this run as a row of TensorBoard's HParams view (a study passes False:
            its own rows, one per study model, compare the variants).

    Returns:
        The contents of ``results.json``.

    Raises:
        ValueError: for a bad config (:func:`~jaxsparse.training.validate.validate_config`,
            before any data is read) or a workdir that holds another run.
    """
    validate_config(config, workdir)
    maybe_initialize_distributed()
    os.makedirs(workdir, exist_ok=True)
    exp = experiment.with_config(config) if experiment is not None else \
        experiment_lib.build(config)
    sched = _schedule(exp)
    ckpt = Checkpointer(workdir, keep=config.train.keep_checkpoints)
    state, start = _initial_state(exp, sched, ckpt, workdir)
    teacher = _teacher(exp)
    writer = Writer(workdir)
    writer.text("config", "```\n" + config.to_yaml() + "\n```")
    t_train = time.perf_counter()
    state, train_ips = _fit(exp, sched, state, start, teacher, ckpt, writer)
    train_wall_s = time.perf_counter() - t_train

    pruning, num_steps = sched.pruning, sched.num_steps
    final_vars = _inference_variables(pruning, state)
    eval_metrics = exp.evaluate(final_vars)
    writer.scalars(num_steps, {f"eval/{k}": v for k, v in eval_metrics.items()})
    results: dict[str, Any] = {
        **environment(), "precision": config.precision, "model": config.model.to_dict(),
        "dataset": config.data.name, "train_batch_size": config.train.batch_size,
        "steps": num_steps, "epochs": num_steps / sched.steps_per_epoch,
        "schedule_start_epoch": float(config.train.schedule_start_epoch),
        "train_images_per_sec": train_ips, "train_wall_s": train_wall_s, "eval": eval_metrics,
        "accuracy": eval_metrics["accuracy"], **pruning.results(state.params, state.opt_state),
    }
    if config.bench.enabled:
        bench = bench_inference(exp, final_vars)
        writer.scalars(num_steps, {f"bench/{k}": bench[k] for k in
                                   ("images_per_sec", "latency_ms_p50", "latency_ms_p99")})
        results["bench"] = bench
        results["images_per_sec"] = bench["images_per_sec"]
    for tag, text in pruning.texts(state.params, state.opt_state).items():
        writer.text(tag, text, num_steps)
    metrics = {"hparam/accuracy": eval_metrics["accuracy"]}
    if "images_per_sec" in results:  # Only a measured throughput (never a 0.0 placeholder).
        metrics["hparam/images_per_sec"] = results["images_per_sec"]
    if hparams:
        writer.hparams(run_hparams(config), metrics)
    writer.close()
    ckpt.close()
    save_final_variables(workdir, final_vars)
    write_json(os.path.join(workdir, "results.json"), results)
    return results


def run_bench(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Benchmark-only mode: inference images/s of the configured model (random weights)."""
    os.makedirs(workdir, exist_ok=True)
    exp = experiment_lib.build(config, load_data=False)
    variables = jax.device_put(exp.variables, exp.dp.replicated)
    bench = bench_inference(exp, variables)
    writer = Writer(workdir)
    writer.scalars(0, {f"bench/{k}": bench[k] for k in
                       ("images_per_sec", "latency_ms_p50", "latency_ms_p99")})
    writer.close()
    results = {**environment(), "precision": config.precision, "model": config.model.to_dict(),
               "image_shape": list(config.data.shape), "bench": bench,
               "images_per_sec": bench["images_per_sec"]}
    write_json(os.path.join(workdir, "results.json"), results)
    return results
