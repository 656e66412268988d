"""The compile report: one row per conv/dot layer: its lowering, kernel, slicing and why."""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxsparse.markdown import shape, table


@dataclasses.dataclass(frozen=True)
class LayerTiming:
    """Dense vs sparse-kernel time of one layer: predicted by the cost table and, with
    ``calibrate=True``, measured at the layer's shape (ms; None when not available)."""

    predicted_ratio: float | None = None
    measured_dense_ms: float | None = None
    measured_sparse_ms: float | None = None
    sparse_flops: float | None = None  # FLOPs the measured sparse kernel runs.
    dense_flops: float | None = None  # FLOPs of the dense layer measured (after slicing).

    @property
    def measured_ratio(self) -> float | None:
        if self.measured_dense_ms is None or self.measured_sparse_ms is None:
            return None
        return self.measured_sparse_ms / self.measured_dense_ms


LOWERINGS = ("unchanged", "dense", "nm", "block")
PRIMITIVES = {"nm": "nm_dot", "block": "block_sparse_dot"}


@dataclasses.dataclass(frozen=True)
class CompiledLayer:
    """One conv or dense layer of a compile report. FLOPs are multiply-adds x 2 of one run
    of the layer (on the example batch, or on one chunk of a micro-batched model: ``runs``
    times per call); bytes are the stored weight (dense, or packed values + indices).

    Attributes:
        lowering: ``"unchanged"`` (the original op runs), ``"dense"`` (a dense conv/dot on
            the rewritten weight), ``"nm"`` (``nm_dot``) or ``"block"``
            (``block_sparse_dot``; unstructured layers are 1x1 blocks).
        kernel: the kernel a sparse lowering runs (``"cusparselt"``, ``"portable"``,
            ``"cpu block"``, ``"cpu ell"``, ``"xla"``, a Pallas kernel); "" for dense ones.
        in_channels, out_channels: ``(kept, total)`` when the layer is channel-sliced.
        supported: False when the pass cannot rewrite this layer (``why`` says why).
        affine_folded: the per-channel affine ops after the layer (an inference BatchNorm)
            folded into its weights and bias (0: none).
        fold_note: why per-channel ops after it were not folded ("" when folded or none).
        epilogue: the ops after those that its kernel applies before storing the output
            (``"add"``: a residual, ``"relu"``), so they cost no pass over memory.
        why: the reason for the lowering.
        runs: how many times one call of the model runs the layer (the chunks of the part
            of a micro-batched model it is in; 1: on the whole batch).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    pattern: str
    lowering: str
    flops_before: float
    flops_after: float
    why: str
    bytes_before: int = 0
    bytes_after: int = 0
    timing: LayerTiming | None = None
    kernel: str = ""
    in_channels: tuple[int, int] | None = None
    out_channels: tuple[int, int] | None = None
    supported: bool = True
    affine_folded: int = 0  # Per-channel affine ops after it (a BatchNorm) folded into it.
    fold_note: str = ""  # Why the ops after it were not folded, when there were some.
    epilogue: tuple[str, ...] = ()  # Residual add / ReLU fused into its kernel.
    runs: int = 1  # Times a call runs it: a micro-batched layer, once per chunk.

    @property
    def sparse(self) -> bool:
        """Whether a sparse kernel runs this layer."""
        return self.lowering in PRIMITIVES

    @property
    def sliced(self) -> bool:
        return self.in_channels is not None or self.out_channels is not None

    @property
    def op(self) -> str:
        """What runs the layer: ``"dense"`` or ``"<primitive> (<kernel>)"``."""
        return f"{PRIMITIVES[self.lowering]} ({self.kernel})" if self.sparse else "dense"

    @property
    def action(self) -> str:
        """The row's sentence, derived from the fields (never parsed back)."""
        if self.lowering == "unchanged":
            return "dense (unchanged)" if self.supported else "dense (unsupported)"
        op = self.op
        if self.affine_folded == 1:
            op += " + bias folded"
        elif self.affine_folded:
            op += f" + BatchNorm folded ({self.affine_folded} ops)"
        if self.epilogue:
            names = {"add": "residual add", "relu": "ReLU"}
            op += " + " + " + ".join(names[e] for e in self.epilogue) + " in the kernel"
        if not self.sliced:
            return op
        (ki, ti), (ko, to) = self.in_channels or (self.shape[-2],) * 2, \
            self.out_channels or (self.shape[-1],) * 2
        return f"channel-sliced {ki}/{ti} in, {ko}/{to} out + {op}"

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "action": self.action}


def _gflops(flops: float, ms: float) -> str:
    return f"{flops / ms / 1e6:.1f}"


def _ratio(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


@dataclasses.dataclass(frozen=True)
class CompileReport:
    """What ``js.sparsify`` did; ``str()`` renders a markdown table.

    ``model_bytes_before``/``after`` count every array of the variables (weights, BatchNorm,
    packed values and indices, folded constants).
    """

    rows: tuple[CompiledLayer, ...]
    pass_seconds: float
    backend: str
    policy: str
    kernels: str = ""
    model_bytes_before: int = 0
    model_bytes_after: int = 0
    densified: tuple[tuple[str, int], ...] = ()  # (primitive, count): missing_rule="densify".
    pools_as_maxima: int = 0  # Max pools run as the maximum of strided slices (cpu).
    batch: int = 0  # The example inputs' batch (0: not known).
    micro_batch: int = 0  # Examples per run of the micro-batched layers (rows with runs > 1).
    micro_batch_note: str = ""  # Why that many (compiler/microbatch.choose).

    def _total(self, field: str) -> float:
        return sum(getattr(r, field) * (r.runs if field.startswith("flops") else 1)
                   for r in self.rows)

    @property
    def flops_before(self) -> float:
        """Conv/dot FLOPs of the masked dense model."""
        return self._total("flops_before")

    @property
    def flops_after(self) -> float:
        """Conv/dot FLOPs the compiled model runs."""
        return self._total("flops_after")

    @property
    def flops_ratio(self) -> float:
        """Conv/dot FLOPs after over before (1.0 = nothing skipped)."""
        return self.flops_after / self.flops_before if self.flops_before else 1.0

    @property
    def bytes_before(self) -> int:
        """Stored bytes of the conv/dot weights before the rewrite."""
        return int(self._total("bytes_before"))

    @property
    def bytes_after(self) -> int:
        """Stored bytes of the conv/dot weights after it (values + indices)."""
        return int(self._total("bytes_after"))

    def as_dict(self) -> dict[str, Any]:
        return {"pass_seconds": self.pass_seconds, "backend": self.backend,
                "policy": self.policy, "kernels": self.kernels,
                "flops_before": self.flops_before, "flops_after": self.flops_after,
                "flops_ratio": self.flops_ratio, "bytes_before": self.bytes_before,
                "bytes_after": self.bytes_after,
                "model_bytes_before": self.model_bytes_before,
                "model_bytes_after": self.model_bytes_after,
                "densified": dict(self.densified),
                "pools_as_maxima": self.pools_as_maxima, "batch": self.batch,
                "micro_batch": self.micro_batch, "micro_batch_note": self.micro_batch_note,
                "layers": [r.as_dict() for r in self.rows]}

    def markdown(self) -> str:
        header = ["layer", "op", "shape", "pattern", "action", "MFLOP before", "MFLOP after",
                  "KiB before", "KiB after", "predicted t/t_dense", "measured t/t_dense", "why"]
        # A fold note goes with the layer's reason.
        cells = []
        for r in self.rows:
            t = r.timing or LayerTiming()
            cells.append([r.name, r.kind, shape(r.shape), r.pattern, r.action,
                          f"{r.flops_before / 1e6:.1f}", f"{r.flops_after / 1e6:.1f}",
                          f"{r.bytes_before / 1024:.0f}", f"{r.bytes_after / 1024:.0f}",
                          _ratio(t.predicted_ratio), _ratio(t.measured_ratio),
                          r.why + (f"; not folded: {r.fold_note}" if r.fold_note else "")])
        lines = [table(header, cells)]
        folded = [r for r in self.rows if r.affine_folded]
        kept = [r for r in self.rows if r.fold_note]
        if folded or kept:
            note = f"; not folded: {len(kept)} ({kept[0].name}: {kept[0].fold_note})" if kept \
                else ""
            lines.append(f"\nper-channel affines (BatchNorm, bias) folded into {len(folded)} of "
                         f"{len(self.rows)} layers{note}")
        lines.append(f"\nconv/dot FLOPs: {self.flops_before / 1e9:.3f} -> "
                     f"{self.flops_after / 1e9:.3f} GFLOP ({self.flops_ratio:.3f}x); "
                     f"stored: weights {self.bytes_before / 2**20:.2f} -> "
                     f"{self.bytes_after / 2**20:.2f} MiB, all variables "
                     f"{self.model_bytes_before / 2**20:.2f} -> "
                     f"{self.model_bytes_after / 2**20:.2f} MiB; backend {self.backend}, "
                     f"policy {self.policy}; pass took {self.pass_seconds:.2f} s")
        if self.kernels:
            lines.append(f"kernels: {self.kernels}")
        if self.micro_batch_note:
            chunked = sum(r.runs > 1 for r in self.rows)
            lines.append(f"micro-batch: {self.micro_batch_note}" + (
                f" ({chunked} of the {len(self.rows)} layers above run "
                f"{self.batch // self.micro_batch} times a call, on {self.micro_batch} "
                f"examples)" if chunked else ""))
        if self.pools_as_maxima:
            lines.append(f"max pools as the maximum of strided slices (XLA's CPU reduce_window "
                         f"is slower): {self.pools_as_maxima}")
        if self.densified:
            where = ", ".join(f"{name} (x{n})" for name, n in self.densified)
            lines.append(f"activations rebuilt in full at primitives without a rule "
                         f"(missing_rule='densify'): {where}")
        return "\n".join(lines)

    def timing_markdown(self) -> str:
        """Per-layer measured times (``calibrate=True``) of one run of each layer on its
        examples (a chunk where micro-batched): dense XLA vs the sparse kernel, with GFLOP/s
        (dense: the FLOPs of the dense layer timed, after channel slicing; kernel: the FLOPs
        it actually runs)."""
        header = ["layer", "shape", "pattern", "examples", "dense ms", "sparse ms",
                  "dense GFLOP/s", "kernel GFLOP/s", "speedup", "chosen"]
        cells = [[r.name, shape(r.shape), r.pattern,
                  str(self.batch // r.runs) if self.batch else "",
                  f"{r.timing.measured_dense_ms:.2f}",
                  f"{r.timing.measured_sparse_ms:.2f}",
                  f"{_gflops(r.timing.dense_flops or r.flops_before, r.timing.measured_dense_ms)}",
                  f"{r.timing.sparse_flops / r.timing.measured_sparse_ms / 1e6:.1f}",
                  f"{1 / r.timing.measured_ratio:.2f}x", r.action]
                 for r in self.rows
                 if r.timing is not None and r.timing.measured_ratio is not None]
        return table(header, cells)

    __str__ = markdown
