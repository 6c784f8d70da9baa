"""Pyro inference with flows: flow guides, NeuTra HMC, amortized posteriors and ArviZ
diagnostics."""

from ..transforms.linear import LocScale, Permutation
from .averaging import ParameterAverage
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
from .posterior import ConditionalPosterior, fit_posterior
from .spline_guide import AutoSplineFlow, guide_spline_flow

__all__ = [
    "AutoRealNVP",
    "AutoSplineFlow",
    "ParameterAverage",
    "ConditionalPosterior",
    "fit_posterior",
    "NeuTraRun",
    "neutra_mcmc",
    "LocScale",
    "PathGradientTransformedDistribution",
    "Permutation",
    "guide_real_nvp",
    "guide_spline_flow",
    "compare_moments",
    "guide_samples",
    "guide_to_inference_data",
    "importance_log_weights",
    "mcmc_to_inference_data",
    "moments_table",
    "psis_khat",
]
