"""The compile report: one row per conv/dot layer, with the action taken and why."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class LayerTiming:
    """Dense vs sparse-kernel time of one layer: predicted by the cost table and, with
    ``calibrate=True``, measured at the layer's shape (ms; None when not available)."""

    predicted_ratio: float | None = None
    measured_dense_ms: float | None = None
    measured_sparse_ms: float | None = None
    sparse_flops: float | None = None  # FLOPs the measured sparse kernel runs.

    @property
    def measured_ratio(self) -> float | None:
        if self.measured_dense_ms is None or self.measured_sparse_ms is None:
            return None
        return self.measured_sparse_ms / self.measured_dense_ms


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One conv or dense layer. FLOPs are multiply-adds x 2 at the example batch; bytes are
    the stored weight (dense, or packed values + indices)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    pattern: str
    action: str
    flops_before: float
    flops_after: float
    why: str
    bytes_before: int = 0
    bytes_after: int = 0
    timing: LayerTiming | None = None


def _ratio(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


@dataclasses.dataclass(frozen=True)
class CompileReport:
    """What ``js.sparsify`` did; ``str()`` renders a markdown table.

    ``model_bytes_before``/``after`` count every array of the variables (weights, BatchNorm,
    packed values and indices, folded constants).
    """

    rows: tuple[LayerRow, ...]
    pass_seconds: float
    backend: str
    policy: str
    kernels: str = ""
    model_bytes_before: int = 0
    model_bytes_after: int = 0
    densified: tuple[tuple[str, int], ...] = ()  # (primitive, count): missing_rule="densify".

    @property
    def flops_before(self) -> float:
        return sum(r.flops_before for r in self.rows)

    @property
    def flops_after(self) -> float:
        return sum(r.flops_after for r in self.rows)

    @property
    def flops_ratio(self) -> float:
        """Conv/dot FLOPs after over before (1.0 = nothing skipped)."""
        return self.flops_after / self.flops_before if self.flops_before else 1.0

    @property
    def bytes_before(self) -> int:
        """Stored bytes of the conv/dot weights before the rewrite."""
        return sum(r.bytes_before for r in self.rows)

    @property
    def bytes_after(self) -> int:
        """Stored bytes of the conv/dot weights after it (values + indices)."""
        return sum(r.bytes_after for r in self.rows)

    def as_dict(self) -> dict[str, Any]:
        return {"pass_seconds": self.pass_seconds, "backend": self.backend,
                "policy": self.policy, "kernels": self.kernels,
                "flops_before": self.flops_before, "flops_after": self.flops_after,
                "flops_ratio": self.flops_ratio, "bytes_before": self.bytes_before,
                "bytes_after": self.bytes_after,
                "model_bytes_before": self.model_bytes_before,
                "model_bytes_after": self.model_bytes_after,
                "densified": dict(self.densified),
                "layers": [dataclasses.asdict(r) for r in self.rows]}

    def markdown(self) -> str:
        lines = ["| layer | op | shape | pattern | action | MFLOP before | MFLOP after | KiB "
                 "before | KiB after | predicted t/t_dense | measured t/t_dense | why |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            t = r.timing or LayerTiming()
            lines.append(
                f"| {r.name} | {r.kind} | {'x'.join(map(str, r.shape))} | {r.pattern} "
                f"| {r.action} | {r.flops_before / 1e6:.1f} | {r.flops_after / 1e6:.1f} "
                f"| {r.bytes_before / 1024:.0f} | {r.bytes_after / 1024:.0f} "
                f"| {_ratio(t.predicted_ratio)} | {_ratio(t.measured_ratio)} | {r.why} |")
        lines.append(f"\nconv/dot FLOPs: {self.flops_before / 1e9:.3f} -> "
                     f"{self.flops_after / 1e9:.3f} GFLOP ({self.flops_ratio:.3f}x); "
                     f"stored: weights {self.bytes_before / 2**20:.2f} -> "
                     f"{self.bytes_after / 2**20:.2f} MiB, all variables "
                     f"{self.model_bytes_before / 2**20:.2f} -> "
                     f"{self.model_bytes_after / 2**20:.2f} MiB; backend {self.backend}, "
                     f"policy {self.policy}; pass took {self.pass_seconds:.2f} s")
        if self.kernels:
            lines.append(f"kernels: {self.kernels}")
        if self.densified:
            where = ", ".join(f"{name} (x{n})" for name, n in self.densified)
            lines.append(f"activations rebuilt in full at primitives without a rule "
                         f"(missing_rule='densify'): {where}")
        return "\n".join(lines)

    def timing_markdown(self) -> str:
        """Per-layer measured times (``calibrate=True``): dense XLA vs the sparse kernel, with
        GFLOP/s (dense: the layer's FLOPs; kernel: the FLOPs it actually runs)."""
        lines = ["| layer | shape | pattern | dense ms | sparse ms | dense GFLOP/s | kernel "
                 "GFLOP/s | speedup | chosen |", "|---|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            t = r.timing
            if t is None or t.measured_ratio is None:
                continue
            lines.append(
                f"| {r.name} | {'x'.join(map(str, r.shape))} | {r.pattern} | "
                f"{t.measured_dense_ms:.2f} | {t.measured_sparse_ms:.2f} | "
                f"{r.flops_before / t.measured_dense_ms / 1e6:.1f} | "
                f"{t.sparse_flops / t.measured_sparse_ms / 1e6:.1f} | "
                f"{1 / t.measured_ratio:.2f}x | {r.action} |")
        return "\n".join(lines)

    __str__ = markdown
