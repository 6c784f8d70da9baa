"""Pyro inference with flows: flow guides, NeuTra HMC and ArviZ diagnostics."""

from ..transforms.linear import LocScale, Permutation
from .diagnostics import (
    compare_moments,
    guide_samples,
    guide_to_inference_data,
    importance_log_weights,
    mcmc_to_inference_data,
    moments_table,
    psis_khat,
)
from .guides import AutoRealNVP, guide_real_nvp
from .neutra import NeuTraRun, neutra_mcmc
from .path_gradient import PathGradientTransformedDistribution

__all__ = [
    "AutoRealNVP",
    "NeuTraRun",
    "neutra_mcmc",
    "LocScale",
    "PathGradientTransformedDistribution",
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
