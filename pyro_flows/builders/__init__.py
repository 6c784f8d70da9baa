"""Builders that assemble whole flows, each returning one ``TransformModule``."""

from .vector import nice, real_nvp

__all__ = ["nice", "real_nvp"]

# 1-D CDF flows (issue 4)
from .cdf import cdf_flow  # noqa: E402

__all__ += ["cdf_flow"]
