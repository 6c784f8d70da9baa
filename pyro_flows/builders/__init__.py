"""Builders that assemble whole flows, each returning one ``TransformModule``."""

from .vector import nice, real_nvp

# infer area: conditional flows
from .conditional import conditional_real_nvp  # noqa: E402

__all__ = [
    "nice",
    "real_nvp",
    # infer area
    "conditional_real_nvp",
]
