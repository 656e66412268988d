"""The sparsity study: dense and sparse variants trained, compiled and measured in one run
(:func:`run_study`), or compiled and timed on random weights (:func:`run_speed`)."""

from jaxsparse.study.runner import run_study, variants_of
from jaxsparse.study.speed import run_speed

__all__ = ["run_speed", "run_study", "variants_of"]
