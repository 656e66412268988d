"""Pruning: patterns, masks, distributions, scores, schedules and optax transformations."""

from jaxsparse.pruning import schedules, scores, transforms
from jaxsparse.pruning.masks import compute_mask
from jaxsparse.pruning.patterns import NM, Block, Channel, Pattern, Unstructured, parse_pattern
from jaxsparse.pruning.prune import (
    apply_masks,
    layer_densities,
    masks_from_zeros,
    measured_sparsity,
    prune,
)
from jaxsparse.pruning.report import SparsityReport, sparsity_report
from jaxsparse.pruning.selection import SkippedLayerWarning, default_include
from jaxsparse.pruning.srste import sr_ste, ste_params
from jaxsparse.pruning.transforms import masked_pruning

__all__ = [
    "NM",
    "Block",
    "Channel",
    "Pattern",
    "SkippedLayerWarning",
    "SparsityReport",
    "Unstructured",
    "apply_masks",
    "compute_mask",
    "default_include",
    "layer_densities",
    "masked_pruning",
    "masks_from_zeros",
    "measured_sparsity",
    "parse_pattern",
    "prune",
    "schedules",
    "scores",
    "sparsity_report",
    "sr_ste",
    "ste_params",
    "transforms",
]
