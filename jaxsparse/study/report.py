"""The study report: speed next to accuracy, dense row always first, honest about mask-only.

A variant gets a speedup figure only when (a) its compiled model's accuracy was measured and
(b) the compiler actually removed work (``flops_ratio < MASK_ONLY_RATIO``). Otherwise the row
says why there is no speedup (its ``why``: the compiler's reason, e.g. no kernel for the
pattern). A speedup is the median of the per-repetition ratios (dense and variant timed back to
back); its spread is their interquartile range, and a speedup whose spread includes 1.0x is
reported as "no measurable change".

MLPerf's lesson: a result counts only at (at least) 99% of the reference accuracy, and a pruned
model is a *changed* model, an Open-division result that is never comparable with Closed-
division (unchanged model) results. Every row says which it is and whether it keeps 99% of the
dense accuracy; the summary names the fastest sparse model that does.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxsparse import host_memory
from jaxsparse.compiler.report import CompiledLayer
from jaxsparse.markdown import table
from jaxsparse.study.variants import recipe_label

MASK_ONLY_RATIO = 0.99
ACCURACY_BAR = 0.99  # MLPerf's quality target: 99% of the reference (dense) accuracy.
# The speed baseline: the dense model compiled by js.sparsify without masks (every BatchNorm
# folded, as the sparse models get it, so folding's gain is not credited to sparsity).
DENSE_OPTIMIZED = "dense_optimized"
DENSE_ROWS = ("dense", DENSE_OPTIMIZED)


@dataclasses.dataclass(frozen=True)
class VariantRow:
    """One variant of the study (the dense baseline included)."""

    variant: str
    pattern: str
    method: str
    achieved_sparsity: float
    flops_ratio: float
    accuracy: float | None  # Of the compiled model (dense: of the dense model).
    images_per_sec: float | None
    mask_only: bool
    why: str = ""  # Why the compiled model runs (mostly) dense, when it does.
    speedup_range: tuple[float, float] | None = None  # IQR of per-repetition speedups.
    speedup_median: float | None = None  # Median of the per-repetition speedups.
    target_sparsity: float | None = None  # The sparsity asked for (None: dense).
    recipe: dict[str, Any] | None = None  # The resolved fine-tune recipe (variants.recipe).

    @property
    def division(self) -> str:
        """``"closed"`` for the unchanged dense model (as written, or with its BatchNorms
        folded, an equivalent inference transformation), ``"open"`` for any changed model."""
        return "closed" if self.variant in DENSE_ROWS else "open"

    @property
    def speed_claim(self) -> bool:
        """Whether this row may show a speedup."""
        return self.accuracy is not None and not self.mask_only and \
            self.images_per_sec is not None


def speed_baseline(rows: Sequence[VariantRow]) -> VariantRow:
    """The row speedups are stated against: the optimized dense row, else the first."""
    return next((r for r in rows if r.variant == DENSE_OPTIMIZED), rows[0])


def speedup(row: VariantRow, dense: VariantRow) -> float | None:
    """``row``'s speedup over the baseline ``dense`` (the median per-repetition ratio), or
    None when the row may not claim one."""
    if row is dense:
        return 1.0
    if not row.speed_claim or not dense.images_per_sec:
        return None
    if row.speedup_median is not None:
        return row.speedup_median
    return row.images_per_sec / dense.images_per_sec


def measurable(row: VariantRow) -> bool:
    """False when the speedup's spread includes 1.0x (a change the timing cannot resolve)."""
    lo_hi = row.speedup_range
    return lo_hi is None or not lo_hi[0] <= 1.0 <= lo_hi[1]


def _speed_text(row: VariantRow, dense: VariantRow) -> str:
    s = speedup(row, dense)
    if s is not None and row is not dense:
        spread = "" if row.speedup_range is None else \
            f" [{row.speedup_range[0]:.2f}-{row.speedup_range[1]:.2f}]"
        if not measurable(row):
            return f"no measurable change ({s:.2f}x{spread})"
        return f"{s:.2f}x{spread}"
    if s is not None:
        return f"{s:.2f}x"
    if row.accuracy is None:
        return "n/a (compiled accuracy not measured)"
    return "none (mask only)"


def speedup_spread(dense_ms: list[float], variant_ms: list[float]) -> tuple[float, float]:
    """Interquartile range of the per-repetition speedups ``dense_ms[i] / variant_ms[i]`` (the
    two were timed back to back in repetition ``i``)."""
    ratios = np.asarray(dense_ms, np.float64) / np.asarray(variant_ms, np.float64)
    return float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75))


def speedup_median(dense_ms: list[float], variant_ms: list[float]) -> float:
    """The median of the per-repetition speedups (the figure the reports state)."""
    ratios = np.asarray(dense_ms, np.float64) / np.asarray(variant_ms, np.float64)
    return float(np.median(ratios))


def dense_reason(rows: Sequence[CompiledLayer]) -> str:
    """The compiler's most frequent reason for keeping a pruned layer dense (a compile report's
    rows), or "" when every pruned layer went sparse."""
    why = collections.Counter(r.why for r in rows
                              if r.pattern != "dense" and not r.sparse and not r.sliced)
    return why.most_common(1)[0][0] if why else ""


def pareto_front(points: Sequence[tuple[float, float] | None]) -> list[bool]:
    """Which ``(accuracy, images/s)`` points are on the Pareto frontier: no other point is at
    least as accurate and as fast and better in one of the two. Equal points are all on it;
    ``None`` (no speed claim) never is."""
    out = []
    for i, p in enumerate(points):
        out.append(p is not None and not any(
            q is not None and j != i and q[0] >= p[0] and q[1] >= p[1] and q != p
            for j, q in enumerate(points)))
    return out


def build_report(rows: list[VariantRow], env: dict[str, Any]) -> dict[str, Any]:
    """The report as JSON-ready data: one entry per row plus the run's environment. Each
    entry also carries what the table shows: ``speed_text`` and ``note`` (why a row has no
    measurable speedup).

    Raises:
        ValueError: if the first row is not the dense baseline.
    """
    if not rows or rows[0].variant != "dense":
        raise ValueError("the study report needs the dense baseline as its first row.")
    dense, base = rows[0], speed_baseline(rows)
    entries = []
    for r in rows:
        s = speedup(r, base)
        meets = None if r.accuracy is None or dense.accuracy is None else \
            r.accuracy >= ACCURACY_BAR * dense.accuracy
        entries.append({**dataclasses.asdict(r), "speedup": s, "division": r.division,
                        "measurable": s is not None and (r is base or measurable(r)),
                        "meets_99": meets,
                        "accuracy_delta": None if r.accuracy is None or dense.accuracy is None
                        else r.accuracy - dense.accuracy,
                        "images_per_sec": r.images_per_sec if s is not None else None,
                        "measured_images_per_sec": r.images_per_sec,
                        "speed_text": _speed_text(r, base),
                        "note": r.why if (r.mask_only or not measurable(r)) and r is not base
                        and r is not dense else ""})
    ref = env.get("reference_accuracy") or 0.0
    for e in entries:  # An external reference (MLPerf's ResNet-50: 76.46%), when given.
        e["meets_reference_bar"] = None if not ref or e["accuracy"] is None else \
            e["accuracy"] >= ACCURACY_BAR * ref
    front = pareto_front([None if e["accuracy"] is None or e["images_per_sec"] is None
                          else (e["accuracy"], e["images_per_sec"]) for e in entries])
    for e, on in zip(entries, front, strict=True):
        e["pareto"] = on
    return {**env, "rows": entries, "speed_baseline": base.variant,
            "summary": summary(entries), "best_per_family": best_per_family(entries)}


def _claims(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sparse rows within 99% of dense that ran measurably faster."""
    return [e for e in entries if e["variant"] not in DENSE_ROWS and e["meets_99"] and
            e["speedup"] is not None
            and e.get("measurable", True) and e["speedup"] > 1.0]


def family(pattern: str) -> str:
    """A pattern's family: ``channel``, ``block``, ``unstructured`` or ``N:M``."""
    return "N:M" if ":" in pattern and not pattern.startswith("block") else \
        pattern.split(":")[0]


def best_per_family(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any] | None]:
    """Per pattern family in the report: its fastest row within 99% of dense that ran
    measurably faster (``variant``, ``speedup``, ``accuracy``), or None."""
    out: dict[str, dict[str, Any] | None] = {family(e["pattern"]): None for e in entries
                                              if e["variant"] not in DENSE_ROWS}
    for e in _claims(entries):
        f, best = family(e["pattern"]), out.get(family(e["pattern"]))
        if best is None or e["speedup"] > best["speedup"]:
            out[f] = {"variant": e["variant"], "speedup": e["speedup"],
                      "accuracy": e["accuracy"]}
    return out


def best_within_99(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The report entry of the fastest sparse model within 99% of dense that ran measurably
    faster, or None."""
    ok = _claims(entries)
    return max(ok, key=lambda e: e["speedup"]) if ok else None


def summary(entries: list[dict[str, Any]]) -> str:
    """One line: the fastest changed (sparse) model that keeps 99% of the dense accuracy."""
    best = best_within_99(entries)
    bar = f"{100 * ACCURACY_BAR:.0f}% of the dense accuracy"
    if best is None:
        return (f"No sparse model both kept {bar} and ran measurably faster; every sparse row "
                f"is an Open-division (changed-model) result.")
    target = "" if best.get("target_sparsity") is None else \
        f", sparsity {best['target_sparsity']:g}"
    than = "the optimized dense model (BatchNorm folded)" if any(
        e["variant"] == DENSE_OPTIMIZED for e in entries) else "the dense model"
    return (f"Fastest sparse model within {bar}: {best['variant']} ({best['pattern']}, "
            f"{best['method']}{target}), {best['speedup']:.2f}x {than} at accuracy "
            f"{best['accuracy']:.4f} (dense {entries[0]['accuracy']:.4f}). Open division: it "
            f"is a sparse (changed) model, an Open-division result, not comparable with "
            f"Closed-division (unchanged model) figures.")


def ablation(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows that share a pattern and target sparsity with another row but differ in
    recipe, grouped (each group's rows in report order): the recipe ablation."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for e in report["rows"][1:]:
        if e.get("recipe") is not None:
            groups.setdefault((e["pattern"], e.get("target_sparsity")), []).append(e)
    return [e for g in groups.values() if len(g) > 1 for e in g]


def ablation_markdown(report: dict[str, Any]) -> str:
    """The recipe ablation as a table (empty when no two rows share pattern and sparsity)."""
    rows = ablation(report)
    if not rows:
        return ""
    dense = report["rows"][0]["accuracy"]
    cells = [[e["pattern"], f"{e['target_sparsity']:g}", e["variant"],
              recipe_label(e["recipe"]), "-" if e["accuracy"] is None else
              f"{e['accuracy']:.4f}", "-" if e["accuracy"] is None else
              f"{100 * (e['accuracy'] - dense):+.2f} pt", e["speed_text"]] for e in rows]
    return table(["pattern", "sparsity", "variant", "recipe (fine-tune)", "accuracy",
                  "Δ acc vs dense", f"speedup vs {report.get('speed_baseline', 'dense')}"],
                 cells)


def markdown(report: dict[str, Any]) -> str:
    """The report table (every speed figure beside its accuracy), from :func:`build_report`'s
    data."""
    cells = []
    for e in report["rows"]:
        acc = "not measured" if e["accuracy"] is None else f"{e['accuracy']:.4f}"
        delta = "-" if e["accuracy_delta"] is None else f"{100 * e['accuracy_delta']:+.2f} pt"
        ips = f"{e['images_per_sec']:.1f}" if e["images_per_sec"] is not None else "-"
        label = e["variant"] + (" (mask only)" if e["mask_only"] else "")
        meets = {True: "yes", False: "no", None: "-"}[e.get("meets_99")]
        recipe = "-" if e.get("recipe") is None else recipe_label(e["recipe"])
        cells.append([label, e["division"], e["pattern"], f"{e['achieved_sparsity']:.3f}",
                      f"{e['flops_ratio']:.3f}", acc, delta, meets, ips, e["speed_text"],
                      "yes" if e.get("pareto") else "", recipe, e["note"]])
    header = ["variant", "division", "pattern", "sparsity", "FLOPs ratio", "accuracy",
              "Δ acc vs dense", "≥99% of dense", "images/s", "speedup vs dense", "Pareto",
              "recipe", "why"]
    base = report.get("speed_baseline", "dense")
    against = ("the optimized dense model (dense_optimized: the same weights compiled by "
               "js.sparsify without masks, every BatchNorm folded, as every sparse model is)"
               if base == DENSE_OPTIMIZED else "dense")
    header[header.index("speedup vs dense")] = f"speedup vs {base}"
    lines = [f"{report['device_kind']}, {report['precision']}, batch {report['batch_size']}, "
             f"jax {report['jax']}. Speedup: median of per-repetition ratios to {against} "
             f"(timed back to back), [interquartile range]; "
             f"{host_memory.sentence(report.get('host_memory'))}.", "", table(header, cells)]
    if report.get("summary"):
        lines += ["", report["summary"]]
    if report.get("reference_accuracy"):
        ref, name = report["reference_accuracy"], report.get("reference_name", "the reference")
        ok = [e["variant"] for e in report["rows"] if e.get("meets_reference_bar")]
        lines += ["", f"{name}: {100 * ref:.2f}% top-1, its 99% bar {100 * ACCURACY_BAR * ref:.3f}"
                  f"%; rows at or above the bar: {', '.join(ok) or 'none'}."]
    if report.get("best_per_family"):
        lines += ["", "Fastest within 99% of dense, per family: " + "; ".join(
            f"{f}: none" if b is None else
            f"{f}: {b['variant']} {b['speedup']:.2f}x at {b['accuracy']:.4f}"
            for f, b in report["best_per_family"].items()) + "."]
    abl = ablation_markdown(report)
    if abl:
        lines += ["", "Recipe ablation (same dense model, seed and data order; each row's "
                  "fine-tune budget is in its recipe):", "", abl]
    return "\n".join(lines)
