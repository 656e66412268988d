"""The compiler pass: a jaxpr interpreter that turns masked dense functions into sparse ones."""

from jaxsparse.compiler.api import SparseModel, compile
from jaxsparse.compiler.combine import nm_on_kept_channels
from jaxsparse.compiler.packed import BlockWeight, DenseWeight, Layout, NMWeight, unpack
from jaxsparse.compiler.report import CompileReport, LayerRow

__all__ = ["BlockWeight", "CompileReport", "DenseWeight", "LayerRow", "Layout", "NMWeight",
           "SparseModel", "compile", "nm_on_kept_channels", "unpack"]
