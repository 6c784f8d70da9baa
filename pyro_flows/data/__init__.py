"""Data sets: built-in toy data and loaders for user data."""

from .toy import make_moons

__all__ = ["make_moons"]

# 1-D data (issue 4)
from .one_d import make_bimodal  # noqa: E402

__all__ += ["make_bimodal"]
