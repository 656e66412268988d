"""The LoadGen report: one row per (model, scenario), its table, lines, summary and TensorBoard.

Rows are data (:func:`row`, :func:`build`); every sentence — a row's line, the summary, the
markdown table — is derived from them.
"""

from __future__ import annotations

import os
from typing import Any

from jaxsparse import host_memory
from jaxsparse.markdown import table
from jaxsparse.study.loadgen import short_label
from jaxsparse.study.report import ACCURACY_BAR, DENSE_OPTIMIZED, DENSE_ROWS
from jaxsparse.training.summary import Writer

THROUGHPUT_SCENARIOS = ("Offline", "Server")  # Measured in samples/s; SingleStream: latency.


def row(variant: str, division: str, scenario: str, tests: dict[str, dict[str, Any]],
        ) -> dict[str, Any]:
    """One report row from a model's tests in one scenario (``mode -> saved result``)."""
    perf, acc = tests.get("performance"), tests.get("accuracy")
    # Offline's one query lasts the whole test: its latency says nothing.
    lat = perf["latency_ns"] if perf and scenario != "Offline" else {}
    return {"variant": variant, "division": division, "scenario": scenario,
            "valid": perf["valid"] if perf else None,
            "reasons": list(perf["reasons"]) if perf else [],
            "samples_per_sec": perf["samples_per_sec"] if perf else None,
            "latency_p90_ms": lat["90"] / 1e6 if "90" in lat else None,
            "latency_p99_ms": lat["99"] / 1e6 if "99" in lat else None,
            "accuracy": acc.get("accuracy") if acc else None,
            "accuracy_errors": list(acc["reasons"]) if acc else [],
            "logdirs": {mode: t["logdir"] for mode, t in tests.items()}}


def _speedup(r: dict[str, Any], dense: dict[str, Any]) -> float | None:
    if r["scenario"] in THROUGHPUT_SCENARIOS:
        a, b = r["samples_per_sec"], dense["samples_per_sec"]
        return None if a is None or not b else a / b
    a, b = r["latency_p90_ms"], dense["latency_p90_ms"]
    return None if not a or b is None else b / a


def _baseline(rows: list[dict[str, Any]], scenario: str) -> dict[str, Any] | None:
    """The speed baseline of a scenario: the optimized dense row, else the dense one."""
    of = {d["variant"]: d for d in rows if d["scenario"] == scenario}
    return of.get(DENSE_OPTIMIZED) or of.get("dense")


def build(rows: list[dict[str, Any]], env: dict[str, Any]) -> dict[str, Any]:
    """The report: rows with ``speedup`` (vs the optimized dense model in the same scenario,
    else the dense one; SingleStream: its p90 latency over the row's), ``meets_99`` (vs the
    dense model as written) and ``run`` (the short label or ``"official"``), ``baseline``,
    ``best`` per scenario (the fastest VALID Open row within 99% of dense, if faster than
    every dense row of the scenario, the baseline and the model as written) and the summary.

    Raises:
        ValueError: if a scenario has no dense row.
    """
    short = env.get("min_duration_s")
    run = short_label(short) if short else "official settings"
    out = []
    for r in rows:
        dense = next((d for d in rows if d["variant"] == "dense" and
                      d["scenario"] == r["scenario"]), None)
        if dense is None:
            raise ValueError(f"the LoadGen report needs the dense model in {r['scenario']}.")
        meets = None if r["accuracy"] is None or dense["accuracy"] is None else \
            r["accuracy"] >= ACCURACY_BAR * dense["accuracy"]
        base = _baseline(rows, r["scenario"])
        out.append({**r, "speedup": _speedup(r, base), "baseline": base["variant"],
                    "meets_99": meets, "run": run})
    best = {}
    for scenario in dict.fromkeys(r["scenario"] for r in out):
        # Faster than every dense measurement of the scenario: where the model as written
        # measured faster than the optimized one (a noisy short run, or batch 1), a sparse
        # model must beat that too.
        bar = max([1.0] + [r["speedup"] for r in out if r["scenario"] == scenario and
                           r["variant"] in DENSE_ROWS and
                           r["speedup"] is not None])
        ok = [r for r in out if r["scenario"] == scenario and r["division"] == "open" and
              r["valid"] and r["meets_99"] and r["speedup"] is not None and r["speedup"] > bar]
        best[scenario] = max(ok, key=lambda r: r["speedup"])["variant"] if ok else None
    rep = {**env, "run": run, "rows": out, "best": best}
    rep["summary"] = summary_lines(rep)
    return rep


def metric_text(r: dict[str, Any]) -> str:
    """The scenario's figure: samples/s (Offline), p90 latency (SingleStream), both
    (Server)."""
    parts = []
    if r["scenario"] in THROUGHPUT_SCENARIOS and r["samples_per_sec"] is not None:
        parts.append(f"{r['samples_per_sec']:.1f} samples/s")
    if r["scenario"] == "SingleStream" and r["latency_p90_ms"] is not None:
        parts.append(f"p90 {r['latency_p90_ms']:.2f} ms")
    if r["scenario"] == "Server" and r["latency_p99_ms"] is not None:
        parts.append(f"p99 {r['latency_p99_ms']:.2f} ms")
    return ", ".join(parts) or "not measured"


def _verdict(r: dict[str, Any]) -> str:
    if r["valid"] is None:
        return "no performance run"
    return "VALID" if r["valid"] else f"INVALID ({'; '.join(r['reasons']) or 'see its log'})"


def row_text(r: dict[str, Any], min_duration_s: float | None = None) -> str:
    """A row as one line (the run label from the row, or from ``min_duration_s`` before the
    report is built)."""
    run = r.get("run") or (short_label(min_duration_s) if min_duration_s else
                           "official settings")
    acc = "" if r["accuracy"] is None else f", top-1 {r['accuracy']:.4f}"
    base = "optimized dense" if r.get("baseline") == DENSE_OPTIMIZED else "dense"
    speed = "" if r.get("speedup") is None or r["variant"] == r.get("baseline") else \
        f", {r['speedup']:.2f}x {base}"
    return (f"{r['variant']} ({r['division']} division), {r['scenario']}: {metric_text(r)}"
            f"{speed}, {_verdict(r)}{acc} — {run}")


def summary_lines(rep: dict[str, Any]) -> list[str]:
    """Per scenario: the fastest VALID Open result within 99% of dense, or why none."""
    out = []
    for scenario, name in rep["best"].items():
        if name is None:
            out.append(f"{scenario}: no VALID Open (sparse) result within "
                       f"{100 * ACCURACY_BAR:.0f}% of the dense accuracy and faster — "
                       f"{rep['run']}.")
            continue
        r = next(x for x in rep["rows"] if x["variant"] == name and x["scenario"] == scenario)
        out.append(f"{scenario}: fastest VALID Open result within "
                   f"{100 * ACCURACY_BAR:.0f}% of dense: {row_text(r)}.")
    return out


def markdown(rep: dict[str, Any]) -> str:
    """The header (device, precision, batches, versions, run), the table and the summary."""
    cells = []
    for r in rep["rows"]:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        meets = "-" if r["meets_99"] is None else ("yes" if r["meets_99"] else "no")
        speed = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        p90 = "-" if r["latency_p90_ms"] is None else f"{r['latency_p90_ms']:.2f}"
        p99 = "-" if r["latency_p99_ms"] is None else f"{r['latency_p99_ms']:.2f}"
        sps = "-" if r["samples_per_sec"] is None else f"{r['samples_per_sec']:.1f}"
        cells.append([r["variant"], r["division"], r["scenario"], sps, p90, p99, _verdict(r),
                      acc, meets, speed, r["run"]])
    header = ["variant", "division", "scenario", "samples/s", "p90 ms", "p99 ms", "LoadGen",
              "top-1 (accuracy log)", "≥99% of dense", "vs optimized dense" if any(
                  r["baseline"] == DENSE_OPTIMIZED for r in rep["rows"]) else "vs dense",
              "run"]
    weights = ("random weights, synthetic samples: no accuracy" if rep["weights"] == "random"
               else f"trained weights, {rep['dataset']} test split")
    head = (f"MLPerf LoadGen {rep['loadgen']} ({rep['benchmark']} settings, "
            f"{rep['run']}); {rep['device_kind']} x{rep['device_count']} ({rep['platform']}), "
            f"{rep['precision']}, Offline batch {rep['batch_size']}, Server batch "
            f"{rep['server_batch_size']}, SingleStream batch 1, jax {rep['jax']}; {weights}. "
            f"Division: closed only for the dense models ({', '.join(DENSE_ROWS)}: BatchNorm "
            f"folding is an equivalent rewrite); pruned models are open (MLPerf's Closed "
            f"division does not allow pruning). Speedups against {DENSE_OPTIMIZED} (the "
            f"dense model compiled by js.sparsify, BatchNorm folded) where it was measured; "
            f"the accuracy bar against the dense model as written; "
            f"{host_memory.sentence(rep.get('host_memory'))}.")
    return "\n".join([head, "", table(header, cells), "", *rep["summary"]])


def tag_prefix(rep: dict[str, Any]) -> str:
    """``mlperf`` for official settings; a shortened run says so in every tag."""
    short = rep.get("min_duration_s")
    return f"mlperf_shortened_run_min_duration_{short:g}s_not_submission_length" if short \
        else "mlperf"


def write_tensorboard(logdir: str, rep: dict[str, Any], text: str) -> None:
    """Scalars ``<prefix>/<scenario>/<variant>/<metric>`` and the report as text."""
    os.makedirs(logdir, exist_ok=True)
    writer = Writer(logdir)
    prefix = tag_prefix(rep)
    for r in rep["rows"]:
        values = {k: r[k] for k in ("samples_per_sec", "latency_p90_ms", "latency_p99_ms",
                                    "accuracy", "speedup") if r[k] is not None}
        values["valid"] = float(bool(r["valid"]))
        writer.scalars(0, {f"{prefix}/{r['scenario']}/{r['variant']}/{k}": v
                           for k, v in values.items()})
    writer.text(f"{prefix}/report", text)
    writer.close()

