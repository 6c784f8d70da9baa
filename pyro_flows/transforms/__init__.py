"""Flow transforms: Pyro ``TransformModule``s, one module per family.

Convention (Pyro's): ``_call`` maps the base side to the data side (sampling), and
``_inverse`` maps data to the base (scoring).
"""

from .base import FlowTransform
from .coupling import AdditiveCoupling, AffineCoupling, additive_coupling, affine_coupling
from .linear import InvertibleLinear, LUWeight, Scaling, invertible_linear, scaling
from .masks import alternating_mask, channel_mask, checkerboard_mask, half_mask
from .normalization import RealNVPBatchNorm, real_nvp_batch_norm

# elementwise 1-D flows (issue 4)
from .elementwise import (  # noqa: E402
    BaseCDF,
    ChangeOfBase,
    MixtureCDF,
    base_cdf,
    change_of_base,
    mixture_cdf,
)

__all__ = [
    "FlowTransform",
    # coupling
    "AdditiveCoupling",
    "AffineCoupling",
    "additive_coupling",
    "affine_coupling",
    # masks
    "alternating_mask",
    "channel_mask",
    "checkerboard_mask",
    "half_mask",
    # linear
    "InvertibleLinear",
    "LUWeight",
    "Scaling",
    "invertible_linear",
    "scaling",
    # normalization
    "RealNVPBatchNorm",
    "real_nvp_batch_norm",
    # elementwise 1-D flows (issue 4)
    "MixtureCDF",
    "BaseCDF",
    "ChangeOfBase",
    "mixture_cdf",
    "base_cdf",
    "change_of_base",
]
