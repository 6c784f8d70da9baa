"""Builders that assemble whole flows, each returning one ``TransformModule``."""

from .vector import nice, real_nvp

# continuous-time flows
from .continuous import ffjord  # noqa: E402

__all__ = [
    "nice",
    "real_nvp",
    # continuous-time flows
    "ffjord",
]
