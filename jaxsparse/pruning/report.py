"""Per-layer sparsity report: name, shape, pattern, density and MACs kept."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxsparse.markdown import shape, table
from jaxsparse.pruning.prune import named_masks
from jaxsparse.pruning.tree_paths import named_leaves


@dataclasses.dataclass(frozen=True)
class LayerSparsity:
    """One weight of a sparsity report. Its density is also the fraction of its multiply-adds
    left (in a GEMM or convolution each weight costs one MAC per output position)."""

    name: str
    shape: tuple[int, ...]
    pattern: str
    density: float


@dataclasses.dataclass(frozen=True)
class SparsityReport:
    """The table returned by :func:`sparsity_report`; ``str()`` renders it as markdown."""

    rows: tuple[LayerSparsity, ...]
    global_sparsity: float

    def as_dict(self) -> dict[str, Any]:
        return {"global_sparsity": self.global_sparsity,
                "layers": [dataclasses.asdict(r) for r in self.rows]}

    def markdown(self) -> str:
        lines = [table(["layer", "shape", "pattern", "density (= FLOPs kept)"],
                       [[r.name, shape(r.shape), r.pattern, f"{r.density:.3f}"]
                        for r in self.rows])]
        lines.append(f"\nglobal sparsity over the listed weights: {self.global_sparsity:.4f}")
        return "\n".join(lines)

    __str__ = markdown


def sparsity_report(params: Any, masks: Any, pattern: str | None = None) -> SparsityReport:
    """One row per weight of ``params`` with ndim >= 2: its pattern and density.

    Args:
        params: the parameters.
        masks: their masks tree (``None`` leaves are dense).
        pattern: the pattern's name to print for masked layers (``"masked"`` when omitted).
    """
    mask_of = dict(named_masks(masks))
    rows, kept, total = [], 0, 0
    for name, w in named_leaves(params):
        if getattr(w, "ndim", 0) < 2:
            continue
        m = mask_of.get(name)
        if m is None:
            density, pat = float(np.mean(np.asarray(w) != 0)), "dense"
        else:
            density, pat = float(np.mean(np.asarray(m))), pattern or "masked"
        rows.append(LayerSparsity(name, tuple(w.shape), pat, density))
        kept += density * w.size
        total += w.size
    return SparsityReport(tuple(rows), 1.0 - kept / total if total else 0.0)
