"""The compile report: one row per conv/dot layer, with the action taken and why."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One conv or dense layer. FLOPs are multiply-adds x 2 at the example batch."""

    name: str
    kind: str
    shape: tuple[int, ...]
    pattern: str
    action: str
    flops_before: float
    flops_after: float
    why: str


@dataclasses.dataclass(frozen=True)
class CompileReport:
    """What ``js.compile`` did; ``str()`` renders a markdown table."""

    rows: tuple[LayerRow, ...]
    pass_seconds: float
    backend: str
    policy: str

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

    def as_dict(self) -> dict[str, Any]:
        return {"pass_seconds": self.pass_seconds, "backend": self.backend,
                "policy": self.policy, "flops_before": self.flops_before,
                "flops_after": self.flops_after, "flops_ratio": self.flops_ratio,
                "layers": [dataclasses.asdict(r) for r in self.rows]}

    def markdown(self) -> str:
        lines = ["| layer | op | shape | pattern | action | MFLOP before | MFLOP after | why |",
                 "|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r.name} | {r.kind} | {'x'.join(map(str, r.shape))} | {r.pattern} "
                         f"| {r.action} | {r.flops_before / 1e6:.1f} | {r.flops_after / 1e6:.1f} "
                         f"| {r.why} |")
        lines.append(f"\nconv/dot FLOPs: {self.flops_before / 1e9:.3f} -> "
                     f"{self.flops_after / 1e9:.3f} GFLOP ({self.flops_ratio:.3f}x); backend "
                     f"{self.backend}, policy {self.policy}; pass took {self.pass_seconds:.2f} s")
        return "\n".join(lines)

    __str__ = markdown
