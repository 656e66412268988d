"""The study report: speed next to accuracy, dense row always first, honest about mask-only.

A variant gets a speedup figure only when (a) its compiled model's accuracy was measured and
(b) the compiler actually removed work (``flops_ratio < MASK_ONLY_RATIO``). Otherwise the row
says why there is no speedup.
"""

from __future__ import annotations

import dataclasses
from typing import Any

MASK_ONLY_RATIO = 0.99


@dataclasses.dataclass(frozen=True)
class Row:
    """One variant of the study (the dense baseline included)."""

    variant: str
    pattern: str
    method: str
    achieved_sparsity: float
    flops_ratio: float
    accuracy: float | None  # Of the compiled model (dense: of the dense model).
    images_per_sec: float | None
    mask_only: bool

    @property
    def speed_claim(self) -> bool:
        """Whether this row may show a speedup."""
        return self.accuracy is not None and not self.mask_only and \
            self.images_per_sec is not None


def speedup(row: Row, dense: Row) -> float | None:
    """``row``'s images/s over dense, or None when the row may not claim one."""
    if row is dense:
        return 1.0
    if not row.speed_claim or not dense.images_per_sec:
        return None
    return row.images_per_sec / dense.images_per_sec


def _speed_cell(row: Row, dense: Row) -> str:
    s = speedup(row, dense)
    if s is not None:
        return f"{s:.2f}x"
    if row.accuracy is None:
        return "n/a (compiled accuracy not measured)"
    return "none (mask only)"


def build_report(rows: list[Row], env: dict[str, Any]) -> dict[str, Any]:
    """The report as JSON-ready data: one entry per row plus the run's environment.

    Raises:
        ValueError: if the first row is not the dense baseline.
    """
    if not rows or rows[0].variant != "dense":
        raise ValueError("the study report needs the dense baseline as its first row.")
    dense = rows[0]
    entries = []
    for r in rows:
        s = speedup(r, dense)
        entries.append({**dataclasses.asdict(r), "speedup": s,
                        "accuracy_delta": None if r.accuracy is None or dense.accuracy is None
                        else r.accuracy - dense.accuracy,
                        "images_per_sec": r.images_per_sec if s is not None else None,
                        "measured_images_per_sec": r.images_per_sec})
    return {**env, "rows": entries}


def markdown(report: dict[str, Any]) -> str:
    """The report table (every speed figure beside its accuracy)."""
    rows = [Row(**{k: e[k] for k in (f.name for f in dataclasses.fields(Row))
                   if k != "images_per_sec"}, images_per_sec=e["measured_images_per_sec"])
            for e in report["rows"]]
    dense = rows[0]
    head = ("| variant | pattern | sparsity | FLOPs ratio | accuracy | Δ acc vs dense | images/s "
            "| speedup vs dense | device | precision | batch | jax |")
    lines = [head, "|" + "---|" * 12]
    for r, e in zip(rows, report["rows"], strict=True):
        acc = "not measured" if r.accuracy is None else f"{r.accuracy:.4f}"
        delta = "-" if e["accuracy_delta"] is None else f"{100 * e['accuracy_delta']:+.2f} pt"
        ips = f"{e['images_per_sec']:.1f}" if e["images_per_sec"] is not None else "-"
        label = r.variant + (" (mask only)" if r.mask_only else "")
        lines.append(f"| {label} | {r.pattern} | {r.achieved_sparsity:.3f} | "
                     f"{r.flops_ratio:.3f} | {acc} | {delta} | {ips} | {_speed_cell(r, dense)} "
                     f"| {report['device_kind']} | {report['precision']} | "
                     f"{report['batch_size']} | {report['jax']} |")
    return "\n".join(lines)
