"""Builders that assemble whole flows, each returning one ``TransformModule``."""

from .vector import nice, real_nvp

# images
from .image import glow, real_nvp_image

__all__ = [
    "nice",
    "real_nvp",
    # images
    "real_nvp_image",
    "glow",
]
