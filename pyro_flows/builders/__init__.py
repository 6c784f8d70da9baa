"""Builders that assemble whole flows, each returning one ``TransformModule``."""

from .cdf import cdf_flow
from .conditional import conditional_real_nvp
from .continuous import ffjord
from .image import glow, real_nvp_image
from .vector import nice, real_nvp

__all__ = [
    # vectors
    "nice",
    "real_nvp",
    # images
    "real_nvp_image",
    "glow",
    # 1-D
    "cdf_flow",
    # continuous-time
    "ffjord",
    # conditional
    "conditional_real_nvp",
]
