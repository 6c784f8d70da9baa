"""Flow transforms: Pyro ``TransformModule``s, one module per family.

Convention (Pyro's): ``_call`` maps the base side to the data side (sampling), and
``_inverse`` maps data to the base (scoring).
"""

from .base import FlowTransform
from .coupling import AdditiveCoupling, AffineCoupling, additive_coupling, affine_coupling
from .linear import InvertibleLinear, LUWeight, Scaling, invertible_linear, scaling
from .masks import alternating_mask, channel_mask, checkerboard_mask, half_mask
from .normalization import RealNVPBatchNorm, real_nvp_batch_norm

# infer area: conditional couplings
from .coupling import (  # noqa: E402
    ConditionalAdditiveCoupling,
    ConditionalAffineCoupling,
    conditional_additive_coupling,
    conditional_affine_coupling,
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
    # infer area: conditional couplings
    "ConditionalAdditiveCoupling",
    "ConditionalAffineCoupling",
    "conditional_additive_coupling",
    "conditional_affine_coupling",
]
