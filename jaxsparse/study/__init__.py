"""The sparsity study: dense and sparse variants trained, compiled and measured in one run."""

from jaxsparse.study.runner import run_study, variants_of

__all__ = ["run_study", "variants_of"]
