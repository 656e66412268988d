"""``run_mlperf(config, workdir)``: a study's models measured by MLPerf LoadGen.

For the dense model (as written, and optimized: ``js.sparsify`` without masks, every BatchNorm
folded, the speed baseline as in the study) and the chosen variants of a finished study in
``workdir`` (trained, compiled with ``js.sparsify`` as the study does), or of a speed config
(random weights, synthetic samples, no accuracy), in every listed scenario:

1. compile each model for the batches the scenarios need (Offline: ``batch_size``;
   SingleStream: 1; Server: ``server_batch_size``), data-parallel over the local devices;
2. pre-measure it, so LoadGen expects what the model can do (:class:`loadgen.Calibration`);
3. run LoadGen in performance mode and in accuracy mode (logs under
   ``<workdir>/mlperf/<variant>/<scenario>-<mode>/``; a finished test is not redone);
4. compute top-1 from each accuracy log against the labels;
5. write ``<workdir>/mlperf/report.{md,json}`` and TensorBoard (``<workdir>/mlperf``).

The division follows MLPerf's rules: ``closed`` for the dense models (folding BatchNorm is an
equivalent rewrite); every pruned model is ``open``. Speedups are stated against the optimized
dense model; the accuracy bar is the dense model as written. The ``short`` preset (seconds
instead of 600 s) labels every row, line and tag "shortened run (min duration N s), not a
submission-length run".
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import jaxsparse as js
from jaxsparse.study import loadgen
from jaxsparse.study import mlperf_report as report_lib
from jaxsparse.study.report import DENSE_OPTIMIZED, DENSE_ROWS, best_within_99
from jaxsparse.study.runner import dense_config, run_study, trained_variant, variants_of
from jaxsparse.study.speed import random_weight_masks
from jaxsparse.training import experiment as experiment_lib
from jaxsparse.training.experiment import Experiment
from jaxsparse.training.summary import environment, say, write_json
from jaxsparse.training.validate import check_workdir

SELECTIONS = ("all", "best")  # config.mlperf.variants besides a comma-separated list.
# Expected Offline QPS over the measured rate: a run faster than its expectation can end before
# the minimum duration (INVALID), so expect more; the cost is a run up to ~1.6x longer.
OFFLINE_MARGIN = 1.5
SINGLE_STREAM_MARGIN = 0.9  # Expected SingleStream latency under the measured median.


@dataclasses.dataclass(frozen=True)
class Model:
    """One model to measure: its weights and, for a sparse variant, its masks and policy."""

    name: str
    variables: Any
    masks: Any = None  # None: a dense model (unchanged, unless ``optimized``).
    policy: str = "auto"

    @property
    def optimized(self) -> bool:
        """The optimized dense model: compiled by js.sparsify without masks."""
        return self.name == DENSE_OPTIMIZED

    @property
    def division(self) -> str:
        return "closed" if self.name in DENSE_ROWS else "open"


def check_config(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """Checks the ``mlperf`` block, LoadGen and the study before anything is compiled;
    returns the variant names to measure (the two dense models first).

    Raises:
        ValueError: for a missing LoadGen, an unknown scenario, mode, preset or variant, or a
            workdir without a finished study (unless ``config.run_study``).
    """
    loadgen.require_loadgen()
    m = config.mlperf
    for what, values, valid in (("scenarios", m.scenarios, loadgen.SCENARIOS),
                                ("modes", m.modes, loadgen.MODES)):
        bad = [s for s in values if s not in valid]
        if bad or not values:
            raise ValueError(f"mlperf.{what}={tuple(values)!r} is not valid; use one or more "
                             f"of {valid}.")
    if m.preset not in loadgen.PRESETS:
        raise ValueError(f"mlperf.preset={m.preset!r} is not valid; use one of "
                         f"{loadgen.PRESETS}.")
    if m.preset == "short" and not m.min_duration_s > 0:
        raise ValueError(f"mlperf.min_duration_s={m.min_duration_s!r} must be > 0 for the "
                         f"short preset.")
    for name in ("batch_size", "server_batch_size"):
        if m[name] < 1:
            raise ValueError(f"mlperf.{name}={m[name]!r} must be >= 1.")
    check_workdir(workdir)
    known = [v.name for v in variants_of(config.study)]
    speed = config.study.mode == "speed"
    report_path = os.path.join(workdir, "report.json")
    if not speed and not config.run_study and not os.path.isfile(report_path):
        raise ValueError(f"{workdir} holds no finished study (no report.json): run "
                         f"`python -m experiments.study --config=<the study config> "
                         f"--workdir={workdir}` first, or set run_study=True.")
    dense = ["dense", DENSE_OPTIMIZED]
    if m.variants == "all":
        return [*dense, *known]
    if m.variants == "best":
        if speed:
            raise ValueError("mlperf.variants='best' needs a trained study (accuracy); a speed "
                             "config has none: name the variants or use 'all'.")
        return dense  # The best is read from the report once the study has run.
    names = [n.strip() for n in m.variants.split(",") if n.strip()]
    bad = [n for n in names if n not in [*dense, *known]]
    if bad or not names:
        raise ValueError(f"mlperf.variants={m.variants!r}: unknown variant(s) {bad}; use "
                         f"{SELECTIONS}, or names from {[*dense, *known]}.")
    return [*dense, *[n for n in names if n not in dense]]


def _best(workdir: str) -> list[str]:
    with open(os.path.join(workdir, "report.json")) as f:
        best = best_within_99(json.load(f)["rows"])
    return [] if best is None else [best["variant"]]


def _models(config: ml_collections.ConfigDict, workdir: str, names: list[str],
            exp: Experiment) -> Iterator[Model]:
    """The models to measure, one at a time (a trained variant is read when its turn comes)."""
    specs = {v.name: v for v in variants_of(config.study)}
    speed = config.study.mode == "speed"
    dense = exp.variables if speed else exp.load_variables(os.path.join(workdir, "dense"))
    yield Model("dense", dense)
    yield Model(DENSE_OPTIMIZED, dense)
    del dense
    for n in names[2:]:
        weights = (exp.variables, random_weight_masks(config.study, specs[n], exp,
                                                      exp.example(1))) if speed else \
            trained_variant(exp, os.path.join(workdir, n))
        yield Model(n, *weights, specs[n].policy)


def predictors(exp: Experiment, model: Model, sizes: list[int],
               devices: list[Any] | None = None) -> dict[int, loadgen.Predictor]:
    """Compiled predictors ``images -> int32 classes`` of ``model`` per batch size: a batch
    that splits evenly over ``devices`` (default: the local ones) is data-parallel, each
    device running the model compiled for its share; others run on one device."""
    devices = devices or jax.local_devices()
    out = {}
    for size in sorted(set(sizes)):
        n = len(devices) if size % len(devices) == 0 else 1
        fn, variables = _compiled(exp, model, size // n)
        mesh = Mesh(np.array(devices[:n]), ("data",))
        batch = NamedSharding(mesh, PartitionSpec("data"))

        def classes(v, x, fn=fn):
            return jnp.argmax(fn(v, x.astype(exp.dtype)), -1).astype(jnp.int32)

        step = jax.jit(jax.shard_map(classes, mesh=mesh, in_specs=(PartitionSpec(),
                                                                   PartitionSpec("data")),
                                     out_specs=PartitionSpec("data"), check_vma=False))
        variables = jax.device_put(variables, NamedSharding(mesh, PartitionSpec()))
        out[size] = lambda x, step=step, variables=variables, batch=batch: step(
            variables, jax.device_put(x, batch))
        jax.block_until_ready(out[size](np.zeros((size, *exp.image_shape), np.float32)))
    return out


def _compiled(exp: Experiment, model: Model, local_batch: int) -> tuple[Callable, Any]:
    """``(fn(variables, x), variables)`` of ``model`` for a per-device batch."""
    if model.masks is None and not model.optimized:
        return (lambda v, x: exp.apply_fn(v, x, train=False)), model.variables
    sp = js.sparsify(exp.apply_fn, model.variables, model.masks, exp.example(local_batch),
                     policy=model.policy)
    return sp, sp.variables


def _median_seconds(predict: loadgen.Predictor, x: np.ndarray, seconds: float) -> float:
    jax.block_until_ready(predict(x))
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        t = time.perf_counter()
        jax.block_until_ready(predict(x))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def calibrate(preds: dict[int, loadgen.Predictor], image_shape: tuple[int, ...],
              m: ml_collections.ConfigDict) -> loadgen.Calibration:
    """A quick pre-measurement (``m.calibration_s`` per batch size) of what LoadGen should
    expect: Offline QPS, SingleStream latency, Server target QPS (``m.server_load`` of the
    throughput at the Server batch)."""
    rate = {}
    for size, predict in preds.items():
        rate[size] = size / _median_seconds(predict, np.zeros((size, *image_shape),
                                                              np.float32), m.calibration_s)
    single = 1.0 / rate[1] if 1 in rate else 1.0 / rate[min(rate)]
    return loadgen.Calibration(
        offline_qps=OFFLINE_MARGIN * rate[max(rate)],
        single_stream_latency_ns=SINGLE_STREAM_MARGIN * single * 1e9,
        server_qps=m.server_load * rate.get(m.server_batch_size, rate[min(rate)]))


def batch_sizes(m: ml_collections.ConfigDict) -> list[int]:
    """The batches the listed scenarios run at."""
    need = {"Offline": m.batch_size, "SingleStream": 1, "Server": m.server_batch_size}
    return sorted({need[s] for s in m.scenarios})


def short_seconds(m: ml_collections.ConfigDict) -> float | None:
    """The short preset's minimum duration (None: official settings)."""
    return float(m.min_duration_s) if m.preset == "short" else None


def _key(m: ml_collections.ConfigDict) -> dict[str, Any]:
    """What a saved test result must have run with to be reused."""
    return {"preset": m.preset, "min_duration_s": short_seconds(m), "batch_size": m.batch_size,
            "server_batch_size": m.server_batch_size}


def _saved(logdir: str, m: ml_collections.ConfigDict) -> dict[str, Any] | None:
    path = os.path.join(logdir, "result.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    return saved if saved["key"] == _key(m) else None


def _test(make_sut: Callable[[], loadgen.SystemUnderTest], samples: loadgen.SampleLibrary,
          labels: Any, scenario: str, mode: str, cal: loadgen.Calibration, logdir: str,
          m: ml_collections.ConfigDict) -> dict[str, Any]:
    """One LoadGen test, or its saved result when it finished earlier with these settings
    (then no system under test is made: the model was not compiled)."""
    saved = _saved(logdir, m)
    if saved is not None:
        return saved
    res = loadgen.run_test(make_sut(), samples, loadgen.test_settings(
        scenario, mode, cal, min_duration_s=short_seconds(m)), logdir, trace=m.trace).as_dict()
    if mode == "accuracy" and labels is not None:
        acc = loadgen.accuracy_from_log(logdir, labels)
        res["accuracy"], res["accuracy_count"] = acc["accuracy"], acc["count"]
    out = {"key": _key(m), **res}
    write_json(os.path.join(logdir, "result.json"), out)
    return out


def run_mlperf(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) the LoadGen measurements of a study; returns the report data.

    Raises:
        ValueError: for a bad config or workdir, before anything is compiled.
        loadgen.SUTError: when the system under test fails (LoadGen's logs are kept).
    """
    names = check_config(config, workdir)
    m = config.mlperf
    speed = config.study.mode == "speed"
    if not speed and not os.path.isfile(os.path.join(workdir, "report.json")):
        say(f"[mlperf] no finished study in {workdir}: running it first.")
        run_study(config.study, workdir)
    if m.variants == "best":
        best = _best(workdir)
        names += best
        if not best:
            say("[mlperf] the study has no sparse model within 99% of dense that ran "
                "measurably faster: measuring the dense model only.")
    base = dense_config(config.study)
    exp = experiment_lib.build(base, load_data=not speed)
    if speed:
        rng = np.random.default_rng(base.seed)
        images = rng.standard_normal((m.synthetic_samples, *exp.image_shape), np.float32)
        labels, load = None, lambda i: images[i]
        count = m.synthetic_samples
    else:
        labels, count = np.asarray(exp.test.labels), len(exp.test)
        load = exp.test.load if hasattr(exp.test, "load") else (lambda i: exp.test.images[i])
    outdir = os.path.join(workdir, "mlperf")
    short = short_seconds(m)
    modes = [md for md in m.modes if not (md == "accuracy" and speed)]
    rows = []
    for model in _models(config, workdir, names, exp):
        logdirs = {(sc, md): os.path.join(outdir, model.name, f"{sc}-{md}")
                   for sc in m.scenarios for md in modes}
        if all(_saved(d, m) is not None for d in logdirs.values()):
            say(f"[mlperf] {model.name}: every test finished earlier; reusing the results.")
            preds, cal = {}, None
        else:
            say(f"[mlperf] {model.name}: compiling for batch {batch_sizes(m)}.")
            preds = predictors(exp, model, batch_sizes(m))
            cal = calibrate(preds, exp.image_shape, m)
            expect = {"Offline": f"{cal.offline_qps:.0f} samples/s Offline",
                      "SingleStream": f"{cal.single_stream_latency_ns / 1e6:.2f} ms "
                                      f"SingleStream",
                      "Server": f"a Server target of {cal.server_qps:.0f} QPS"}
            say(f"[mlperf] {model.name}: calibrated, expecting "
                f"{', '.join(expect[sc] for sc in m.scenarios)}.")
        for scenario in m.scenarios:
            tests = {}
            for mode in modes:
                samples = loadgen.SampleLibrary(load, count, loadgen.official_settings(
                    scenario)["performance_sample_count_override"])
                sizes = {b: preds[b] for b in preds if scenario != "SingleStream" or b == 1}
                if scenario == "Server":
                    sizes = {b: p for b, p in sizes.items() if b <= m.server_batch_size}
                tests[mode] = _test(functools.partial(loadgen.SystemUnderTest, sizes, samples),
                                    samples, labels, scenario, mode, cal,
                                    logdirs[scenario, mode], m)
            rows.append(report_lib.row(model.name, model.division, scenario, tests))
            say(f"[mlperf] {report_lib.row_text(rows[-1], short)}")
    env = {**environment(), "precision": base.precision, "batch_size": m.batch_size,
           "server_batch_size": m.server_batch_size, "loadgen": loadgen.loadgen_version(),
           "benchmark": loadgen.BENCHMARK, "preset": m.preset,
           "min_duration_s": short,
           "model": base.model.to_dict(), "dataset": "synthetic" if speed else base.data.name,
           "weights": "random" if speed else "trained", "title": config.title}
    rep = report_lib.build(rows, env)
    write_json(os.path.join(outdir, "report.json"), rep)
    text = report_lib.markdown(rep)
    with open(os.path.join(outdir, "report.md"), "w") as f:
        f.write(f"# {config.title}\n\n{text}\n")
    report_lib.write_tensorboard(outdir, rep, text)
    return rep
