"""Builders that assemble whole flows, each returning one ``TransformModule``."""

from .cdf import CDFFlow, cdf_flow
from .conditional import ConditionalVectorFlow, conditional_real_nvp
from .continuous import conditional_ffjord, ffjord
from .image import glow, real_nvp_image
from .vector import VectorFlow, nice, real_nvp, spline_flow

__all__ = [
    # vectors
    "nice",
    "real_nvp",
    "spline_flow",
    "VectorFlow",
    # images
    "real_nvp_image",
    "glow",
    # 1-D
    "cdf_flow",
    "CDFFlow",
    # continuous-time
    "ffjord",
    "conditional_ffjord",
    # conditional
    "conditional_real_nvp",
    "ConditionalVectorFlow",
]
