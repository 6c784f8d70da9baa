"""Pyro inference with flows: flow guides and ArviZ diagnostics."""

from .diagnostics import (
    compare_moments,
    guide_samples,
    guide_to_inference_data,
    importance_log_weights,
    mcmc_to_inference_data,
    moments_table,
    psis_khat,
)
from .guides import AutoRealNVP, LocScale, Permutation, guide_real_nvp

__all__ = [
    "AutoRealNVP",
    "LocScale",
    "Permutation",
    "guide_real_nvp",
    "compare_moments",
    "guide_samples",
    "guide_to_inference_data",
    "importance_log_weights",
    "mcmc_to_inference_data",
    "moments_table",
    "psis_khat",
]
