"""Builders that assemble whole flows, each returning one ``TransformModule``."""

from .vector import nice, real_nvp

__all__ = ["nice", "real_nvp"]
