"""pyro-flows: normalizing flows as Pyro transforms.

>>> import torch, pyro.distributions as dist, pyro_flows
>>> flow = pyro_flows.real_nvp(input_dim=2, num_layers=4, hidden_dims=(32, 32))
>>> d = dist.TransformedDistribution(dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1), [flow])
>>> d.log_prob(d.sample((3,))).shape
torch.Size([3])
"""

from . import transforms
from .bases import BaseDistribution, base_distribution
from .builders import nice, real_nvp
from .flow import Flow
from .transforms import (
    additive_coupling,
    affine_coupling,
    invertible_linear,
    real_nvp_batch_norm,
    scaling,
)

# infer area: conditional flows and inference
from . import infer  # noqa: E402
from .builders import conditional_real_nvp  # noqa: E402
from .transforms import conditional_additive_coupling, conditional_affine_coupling  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "transforms",
    "Flow",
    "BaseDistribution",
    "base_distribution",
    "nice",
    "real_nvp",
    "additive_coupling",
    "affine_coupling",
    "invertible_linear",
    "real_nvp_batch_norm",
    "scaling",
    # infer area
    "infer",
    "conditional_real_nvp",
    "conditional_additive_coupling",
    "conditional_affine_coupling",
]
