"""MLCommons LoadGen around a JAX model: settings, the system under test, the logs read back.

LoadGen (``pip install mlcommons-loadgen``, module ``mlperf_loadgen``) generates the queries of
an MLPerf Inference scenario, times them and writes the verdict; this module is the harness:

- :func:`test_settings`: the official settings of the benchmark (``resnet50``) for a scenario,
  read from LoadGen's built-in ``mlperf.conf``; the ``short`` preset changes only the minimum
  duration and query count; the expected throughput/latency come from a pre-measurement.
- :class:`SampleLibrary`: the query sample library; ``load_samples_to_ram`` copies the
  samples LoadGen asks for into host memory before timing starts.
- :class:`SystemUnderTest`: queries go to a worker thread (``issue_queries`` never blocks);
  it batches them (the smallest compiled batch that holds them, the last one padded), keeps
  one batch in flight while the previous one's classes come back, and answers each sample
  with its class as int32. A failure completes every outstanding sample (empty responses) so
  the test ends and LoadGen writes its logs; :func:`run_test` then raises :class:`SUTError`.
- :func:`run_test` and :func:`read_detail_log`: one test, and its result from
  ``mlperf_log_detail.txt`` (structured ``:::MLLOG`` lines); :func:`accuracy_from_log`: top-1
  from ``mlperf_log_accuracy.json`` against the labels (LoadGen leaves this to the harness).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

SCENARIOS = ("Offline", "SingleStream", "Server")
MODES = ("performance", "accuracy")
PRESETS = ("official", "short")
BENCHMARK = "resnet50"  # Whose official settings (mlperf.conf) apply.
# The short preset's minimum query counts: SingleStream's early-stopping estimate needs 64
# queries, Server's 99th percentile about 662 (LoadGen's own figures).
SHORT_MIN_QUERIES = {"Offline": 1, "SingleStream": 64, "Server": 1024}
INSTALL = ("pip install mlcommons-loadgen (a jaxsparse dependency; bash scripts/setup.sh "
           "installs it)")


class SUTError(RuntimeError):
    """The system under test failed during a LoadGen test (the logs are kept)."""


def require_loadgen() -> Any:
    """The ``mlperf_loadgen`` module.

    Raises:
        ValueError: when LoadGen is not installed (with how to install it).
    """
    try:
        return importlib.import_module("mlperf_loadgen")
    except ImportError:
        raise ValueError(f"MLPerf LoadGen is not installed: {INSTALL}.") from None


def loadgen_version() -> str:
    """The installed ``mlcommons-loadgen`` version."""
    return importlib.metadata.version("mlcommons-loadgen")


def short_label(min_duration_s: float) -> str:
    """The words every row, line and tag of a shortened run carries."""
    return f"shortened run (min duration {min_duration_s:g} s), not a submission-length run"


_READ_OFFICIAL = """
import json, os, sys, tempfile
import mlperf_loadgen as lg
s = lg.TestSettings()
with tempfile.NamedTemporaryFile("w", suffix=".conf") as f:
    s.FromConfig(f.name, sys.argv[1], sys.argv[2])
print(json.dumps({n: getattr(s, n) for n in dir(s)
                  if not n.startswith("_") and n not in ("FromConfig", "scenario", "mode")}))
"""


@functools.cache
def official_settings(scenario: str, benchmark: str = BENCHMARK) -> dict[str, Any]:
    """The official ``TestSettings`` values of ``benchmark`` in ``scenario``.

    LoadGen applies its built-in ``mlperf.conf`` only on the first ``FromConfig`` call of a
    process, so each scenario's values are read in a short child process.
    """
    out = subprocess.run([sys.executable, "-c", _READ_OFFICIAL, benchmark, scenario],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@dataclasses.dataclass(frozen=True)
class Calibration:
    """What a pre-measurement tells LoadGen to expect, so honest runs come out VALID.

    Attributes:
        offline_qps: expected Offline throughput (samples/s); an underestimate by more than
            10% makes the run too short (INVALID), so it is the measured rate plus a margin.
        single_stream_latency_ns: expected SingleStream latency; an overestimate runs out of
            generated queries, so it is below the measured median.
        server_qps: Server target QPS (a fraction of the throughput at the Server batch, so
            the latency bound can hold).
    """

    offline_qps: float
    single_stream_latency_ns: float
    server_qps: float


def test_settings(scenario: str, mode: str, calibration: Calibration, *,
                  min_duration_s: float | None = None, benchmark: str = BENCHMARK) -> Any:
    """LoadGen settings: the official values, the calibration, and for a shortened run
    (``min_duration_s``) the short preset's minimum duration and query count.

    Raises:
        ValueError: for an unknown scenario or mode.
    """
    lg = require_loadgen()
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario {scenario!r} is not valid; use one of {SCENARIOS}.")
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not valid; use one of {MODES}.")
    s = lg.TestSettings()
    for name, value in official_settings(scenario, benchmark).items():
        setattr(s, name, value)
    s.scenario = getattr(lg.TestScenario, scenario)
    s.mode = lg.TestMode.PerformanceOnly if mode == "performance" else lg.TestMode.AccuracyOnly
    s.offline_expected_qps = calibration.offline_qps
    s.single_stream_expected_latency_ns = int(calibration.single_stream_latency_ns)
    s.server_target_qps = calibration.server_qps
    if min_duration_s is not None:
        s.min_duration_ms = int(min_duration_s * 1000)
        s.min_query_count = SHORT_MIN_QUERIES[scenario]
    return s


class SampleLibrary:
    """The query sample library: ``load(i)`` gives sample ``i`` as the model takes it.

    Args:
        load: sample index -> array (one image, preprocessed).
        count: number of samples (the test split's size).
        performance_count: samples LoadGen may keep loaded for a performance run.
    """

    def __init__(self, load: Callable[[int], np.ndarray], count: int,
                 performance_count: int) -> None:
        self._load, self.count = load, count
        self.performance_count = min(count, performance_count)
        self.ram: dict[int, np.ndarray] = {}

    def load_samples_to_ram(self, indices: Sequence[int]) -> None:
        for i in indices:
            self.ram[i] = self._load(i)

    def unload_samples_from_ram(self, indices: Sequence[int]) -> None:
        for i in indices:
            self.ram.pop(i, None)


Predictor = Callable[[np.ndarray], Any]  # (batch, ...) images -> (batch,) classes.


class SystemUnderTest:
    """Batches LoadGen's queries on a worker thread and answers each sample with its class.

    Args:
        predictors: compiled batch size -> predictor (a chunk of ``n`` samples runs on the
            smallest batch that holds it, padded; larger queries are split at the largest).
        samples: the library whose loaded samples the queries name.
    """

    def __init__(self, predictors: dict[int, Predictor], samples: SampleLibrary) -> None:
        if not predictors:
            raise ValueError("SystemUnderTest needs at least one compiled batch size.")
        self.sizes = sorted(predictors)
        self.predictors, self.samples = predictors, samples
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None

    def start(self) -> None:
        self._worker = threading.Thread(target=self._run, name="sut-worker", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        self._queue.put(None)
        if self._worker is not None:
            self._worker.join()

    def issue_queries(self, query_samples: Sequence[Any]) -> None:
        """LoadGen's callback: hands the samples to the worker (never blocks, never raises)."""
        self._queue.put(list(query_samples))

    def flush_queries(self) -> None:
        """LoadGen's callback at the end of a test: nothing is buffered beyond the queue."""

    def _take(self, first: list) -> list:
        """``first`` plus whatever else is waiting, up to the largest batch (Server queries
        arrive one sample at a time)."""
        pending = list(first)
        while len(pending) < self.sizes[-1]:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                break
            if more is None:
                self._queue.put(None)
                break
            pending += more
        return pending

    def _chunks(self, pending: list) -> list[list]:
        big = self.sizes[-1]
        return [pending[i:i + big] for i in range(0, len(pending), big)]

    def _launch(self, chunk: list) -> tuple[list, Any]:
        size = next(b for b in self.sizes if b >= len(chunk))
        images = np.stack([self.samples.ram[q.index] for q in chunk])
        if size > len(chunk):
            pad = np.zeros((size - len(chunk), *images.shape[1:]), images.dtype)
            images = np.concatenate([images, pad])
        return chunk, self.predictors[size](images)  # Dispatched; not waited for.

    def _complete(self, chunk: list, classes: Any) -> None:
        lg = require_loadgen()
        values = np.ascontiguousarray(np.asarray(classes)[:len(chunk)], np.int32)
        ptr, step = values.__array_interface__["data"][0], values.itemsize
        lg.QuerySamplesComplete([lg.QuerySampleResponse(q.id, ptr + k * step, step)
                                 for k, q in enumerate(chunk)])

    def _fail(self, chunks: Sequence[list]) -> None:
        lg = require_loadgen()
        for chunk in chunks:
            lg.QuerySamplesComplete([lg.QuerySampleResponse(q.id, 0, 0) for q in chunk])

    def _run(self) -> None:
        outstanding: list[tuple[list, Any]] = []  # Dispatched, not yet answered.
        while True:
            item = self._queue.get()
            if item is None:
                break
            todo = self._chunks(self._take(item))
            if self.error is not None:
                self._fail(todo)
                continue
            try:
                while todo:
                    outstanding.append(self._launch(todo[0]))
                    todo.pop(0)
                    while len(outstanding) > 1:  # One batch computes while one is answered.
                        self._complete(*outstanding[0])
                        outstanding.pop(0)
                while outstanding and self._queue.empty():  # Nothing to overlap with.
                    self._complete(*outstanding[0])
                    outstanding.pop(0)
            except BaseException as e:  # noqa: BLE001  (raised by run_test after the test)
                self.error = e
                self._fail([chunk for chunk, _ in outstanding] + todo)
                outstanding = []


@dataclasses.dataclass(frozen=True)
class TestResult:
    """One LoadGen test, as its detail log states it.

    Attributes:
        scenario, mode: what ran.
        valid: LoadGen's verdict (performance mode; accuracy mode: None).
        reasons: why it is INVALID (empty when VALID), LoadGen's words.
        samples_per_sec: Offline's samples/s, Server's completed samples/s; else None.
        latency_ns: percentile (``"50"``, ``"90"``, ``"99"``) -> latency in ns.
        query_count: queries LoadGen issued.
        logdir: where LoadGen wrote its logs.
    """

    scenario: str
    mode: str
    valid: bool | None
    reasons: tuple[str, ...]
    samples_per_sec: float | None
    latency_ns: dict[str, float]
    query_count: int | None
    logdir: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_detail_log(logdir: str) -> dict[str, Any]:
    """``key -> value`` of every ``:::MLLOG`` line of ``mlperf_log_detail.txt`` (the last
    value of a repeated key), plus ``"errors"``: the messages LoadGen flagged as errors."""
    out: dict[str, Any] = {"errors": []}
    with open(os.path.join(logdir, "mlperf_log_detail.txt")) as f:
        for line in f:
            if not line.startswith(":::MLLOG"):
                continue
            entry = json.loads(line[len(":::MLLOG"):])
            out[entry["key"]] = entry["value"]
            if entry.get("metadata", {}).get("is_error"):
                out["errors"].append(f"{entry['key']}: {entry['value']}")
    return out


def _recommendations(logdir: str) -> list[str]:
    """The bullet lines under ``Recommendations:`` in LoadGen's summary (its advice on an
    INVALID run; no structured key carries it)."""
    try:
        with open(os.path.join(logdir, "mlperf_log_summary.txt")) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    if "Recommendations:" not in lines:
        return []
    out = []
    for line in lines[lines.index("Recommendations:") + 1:]:
        if not line.startswith(" * "):
            break
        out.append(line[3:].strip())
    return out


def result_from_logs(scenario: str, mode: str, logdir: str) -> TestResult:
    """The :class:`TestResult` of a finished test from its logs."""
    d = read_detail_log(logdir)
    valid = None if mode == "accuracy" else d.get("result_validity") == "VALID"
    reasons = []
    checks = {"result_min_duration_met": "min duration not met",
              "result_min_queries_met": "min query count not met",
              "result_perf_constraints_met": "latency constraint not met",
              "early_stopping_met": "early stopping not met"}
    if valid is False:
        reasons = [why for key, why in checks.items() if d.get(key) is False]
        reasons += _recommendations(logdir)
    reasons += d["errors"]
    rate = d.get("result_samples_per_second", d.get("result_completed_samples_per_sec"))
    lat = {p: float(d[f"result_{p}.00_percentile_latency_ns"]) for p in ("50", "90", "99")
           if f"result_{p}.00_percentile_latency_ns" in d}
    return TestResult(scenario, mode, valid, tuple(reasons),
                      None if scenario == "SingleStream" or rate is None else float(rate),
                      lat, d.get("result_query_count"), logdir)


def run_test(sut: SystemUnderTest, samples: SampleLibrary, settings: Any, logdir: str, *,
             trace: bool = False) -> TestResult:
    """Runs one LoadGen test (``settings``) on ``sut`` and reads its result.

    Raises:
        SUTError: when the SUT failed; every sample was completed, LoadGen's logs are in
            ``logdir``.
    """
    lg = require_loadgen()
    os.makedirs(logdir, exist_ok=True)
    log = lg.LogSettings()
    log.log_output.outdir = logdir
    log.log_output.copy_summary_to_stdout = False
    log.enable_trace = trace
    handle_sut = lg.ConstructSUT(sut.issue_queries, sut.flush_queries)
    handle_qsl = lg.ConstructQSL(samples.count, samples.performance_count,
                                 samples.load_samples_to_ram, samples.unload_samples_from_ram)
    sut.start()
    try:
        lg.StartTestWithLogSettings(handle_sut, handle_qsl, settings, log)
    finally:
        sut.stop()
        lg.DestroyQSL(handle_qsl)
        lg.DestroySUT(handle_sut)
    if sut.error is not None:
        e = sut.error
        raise SUTError(f"the system under test failed ({type(e).__name__}: {e}); every "
                       f"outstanding sample was completed and LoadGen's logs are in "
                       f"{logdir}.") from e
    scenario = str(settings.scenario).rsplit(".", 1)[-1]
    mode = "accuracy" if settings.mode == lg.TestMode.AccuracyOnly else "performance"
    return result_from_logs(scenario, mode, logdir)


def accuracy_from_log(logdir: str, labels: np.ndarray) -> dict[str, Any]:
    """Top-1 accuracy from ``mlperf_log_accuracy.json`` (one int32 class per sample).

    Returns:
        ``{"accuracy", "count", "predictions"}``: predictions by sample index (-1: absent).

    Raises:
        ValueError: when a sample's response is not one int32 or a sample is missing.
    """
    with open(os.path.join(logdir, "mlperf_log_accuracy.json")) as f:
        entries = json.load(f)
    pred = np.full(len(labels), -1, np.int64)
    for e in entries:
        data = bytes.fromhex(e["data"])
        if len(data) != 4:
            raise ValueError(f"sample {e['qsl_idx']} in {logdir}: response of {len(data)} "
                             f"bytes, expected one int32 class.")
        pred[e["qsl_idx"]] = int(np.frombuffer(data, np.int32)[0])
    missing = int((pred < 0).sum())
    if missing:
        raise ValueError(f"{logdir}: {missing} of {len(labels)} samples have no response in "
                         f"mlperf_log_accuracy.json.")
    return {"accuracy": float((pred == labels).mean()), "count": len(labels),
            "predictions": pred}
