"""pyro-flows: normalizing flows as Pyro transforms.

>>> import torch, pyro.distributions as dist, pyro_flows
>>> flow = pyro_flows.real_nvp(input_dim=2, num_layers=4, hidden_dims=(32, 32))
>>> d = dist.TransformedDistribution(dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1), [flow])
>>> d.log_prob(d.sample((3,))).shape
torch.Size([3])
"""

from . import infer, metrics, transforms
from .bases import BaseDistribution, base_distribution
from .builders import (
    cdf_flow,
    conditional_ffjord,
    conditional_real_nvp,
    ffjord,
    glow,
    nice,
    real_nvp,
    real_nvp_image,
    spline_flow,
)
from .dequantization import DequantizedFlow, VariationalDequantizer
from .flow import Flow
from .gmm import GaussianMixture
from .metrics import bits_per_dim
from .sampling import inverse_cdf_sample
from .transforms import (
    additive_coupling,
    affine_coupling,
    base_cdf,
    change_of_base,
    conditional_additive_coupling,
    conditional_affine_coupling,
    conditional_spline_coupling,
    invertible_linear,
    mixture_cdf,
    real_nvp_batch_norm,
    scaling,
    spline_coupling,
)

__version__ = "0.1.0"

__all__ = [
    "transforms",
    "metrics",
    "infer",
    # models and bases
    "Flow",
    "DequantizedFlow",
    "VariationalDequantizer",
    "BaseDistribution",
    "base_distribution",
    # builders
    "nice",
    "real_nvp",
    "spline_flow",
    "real_nvp_image",
    "glow",
    "cdf_flow",
    "ffjord",
    "conditional_real_nvp",
    "conditional_ffjord",
    # single layers
    "additive_coupling",
    "affine_coupling",
    "invertible_linear",
    "real_nvp_batch_norm",
    "scaling",
    "base_cdf",
    "change_of_base",
    "mixture_cdf",
    "conditional_additive_coupling",
    "conditional_affine_coupling",
    "spline_coupling",
    "conditional_spline_coupling",
    # 1-D tools and baselines
    "GaussianMixture",
    "inverse_cdf_sample",
    "bits_per_dim",
]
