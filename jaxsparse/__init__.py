"""jaxsparse: structured sparsity for JAX.

    import jaxsparse as js
    masks = js.prune(params, "2:4")
    params = js.apply_masks(params, masks)
"""

from jaxsparse.compiler import SparseModel, compile, nm_on_kept_channels, unpack
from jaxsparse.compiler.groups import ChannelGroup, channel_groups
from jaxsparse.pruning import (
    NM,
    Block,
    Channel,
    Pattern,
    SkippedLayerWarning,
    SparsityReport,
    Unstructured,
    apply_masks,
    compute_mask,
    default_include,
    layer_densities,
    masks_from_zeros,
    parse_pattern,
    prune,
    schedules,
    scores,
    sparsity,
    sparsity_report,
    ste_params,
)
from jaxsparse.pruning import transforms as optax

__version__ = "0.1.0"

__all__ = [
    "NM",
    "Block",
    "Channel",
    "ChannelGroup",
    "Pattern",
    "SkippedLayerWarning",
    "SparseModel",
    "SparsityReport",
    "Unstructured",
    "apply_masks",
    "channel_groups",
    "compile",
    "compute_mask",
    "default_include",
    "layer_densities",
    "masks_from_zeros",
    "nm_on_kept_channels",
    "optax",
    "parse_pattern",
    "prune",
    "schedules",
    "scores",
    "sparsity",
    "sparsity_report",
    "ste_params",
    "unpack",
]
