"""Flow transforms: Pyro ``TransformModule`` subclasses, one module per family.

Convention (Pyro's): ``_call`` maps the base side to the data side (sampling), and
``_inverse`` maps data to the base (scoring).
"""

from .autoregressive import SplineAutoregressive, spline_autoregressive
from .base import FlowTransform
from .continuous import FFJORD, ConditionalFFJORD
from .coupling import (
    AdditiveCoupling,
    AffineCoupling,
    ConditionalAdditiveCoupling,
    ConditionalAffineCoupling,
    additive_coupling,
    affine_coupling,
    conditional_additive_coupling,
    conditional_affine_coupling,
    image_additive_coupling,
    image_affine_coupling,
    image_mask,
    vector_mask,
)
from .elementwise import (
    BaseCDF,
    ChangeOfBase,
    MixtureCDF,
    base_cdf,
    change_of_base,
    mixture_cdf,
)
from .linear import (
    Invertible1x1Conv,
    InvertibleLinear,
    LocScale,
    LUWeight,
    Permutation,
    Scaling,
    invertible_1x1_conv,
    invertible_linear,
    scaling,
)
from .masks import alternating_mask, channel_mask, checkerboard_mask, half_mask
from .multiscale import ConditionalMultiScale, MultiScale
from .normalization import ActNorm, RealNVPBatchNorm, act_norm, real_nvp_batch_norm
from .preprocess import Logit, dequantize, logit
from .recompute import MemorySaving, memory_saving
from .reshape import Squeeze, depth_to_space, space_to_depth, squeeze
from .spline import (
    ConditionalSplineCoupling,
    ElementwiseSpline,
    SplineCoupling,
    conditional_spline_coupling,
    image_spline_coupling,
    rational_quadratic_spline,
    spline_coupling,
)

__all__ = [
    "FlowTransform",
    # coupling
    "AdditiveCoupling",
    "AffineCoupling",
    "additive_coupling",
    "affine_coupling",
    "ConditionalAdditiveCoupling",
    "ConditionalAffineCoupling",
    "conditional_additive_coupling",
    "conditional_affine_coupling",
    # spline coupling
    "SplineCoupling",
    "ElementwiseSpline",
    "ConditionalSplineCoupling",
    "spline_coupling",
    "conditional_spline_coupling",
    "image_spline_coupling",
    "rational_quadratic_spline",
    # autoregressive spline
    "SplineAutoregressive",
    "spline_autoregressive",
    # masks
    "alternating_mask",
    "channel_mask",
    "checkerboard_mask",
    "half_mask",
    "vector_mask",
    # linear
    "InvertibleLinear",
    "LocScale",
    "Permutation",
    "LUWeight",
    "Scaling",
    "invertible_linear",
    "scaling",
    # normalization
    "RealNVPBatchNorm",
    "real_nvp_batch_norm",
    # images
    "image_additive_coupling",
    "image_affine_coupling",
    "image_mask",
    "Invertible1x1Conv",
    "invertible_1x1_conv",
    "MultiScale",
    "ConditionalMultiScale",
    "MemorySaving",
    "memory_saving",
    "ActNorm",
    "act_norm",
    "Logit",
    "dequantize",
    "logit",
    "Squeeze",
    "depth_to_space",
    "space_to_depth",
    "squeeze",
    # elementwise 1-D flows
    "MixtureCDF",
    "BaseCDF",
    "ChangeOfBase",
    "mixture_cdf",
    "base_cdf",
    "change_of_base",
    # continuous-time flows
    "FFJORD",
    "ConditionalFFJORD",
]
