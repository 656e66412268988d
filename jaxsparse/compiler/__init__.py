"""The compiler pass: a jaxpr interpreter that turns masked dense functions into sparse ones."""

from jaxsparse.compiler.api import SparseModel, sparsify
from jaxsparse.compiler.combine import nm_on_kept_channels
from jaxsparse.compiler.groups import ChannelGroup, channel_groups
from jaxsparse.compiler.interpreter import UnsupportedPrimitiveError
from jaxsparse.compiler.packed import BlockWeight, DenseWeight, Layout, NMWeight, unpack
from jaxsparse.compiler.report import CompiledLayer, CompileReport
from jaxsparse.deprecation import renamed

__all__ = ["BlockWeight", "ChannelGroup", "CompileReport", "CompiledLayer", "DenseWeight",
           "Layout", "NMWeight", "SparseModel", "UnsupportedPrimitiveError", "channel_groups",
           "nm_on_kept_channels", "sparsify", "unpack"]

__getattr__ = renamed(__name__, {"LayerRow": ("CompiledLayer", lambda: CompiledLayer)})
