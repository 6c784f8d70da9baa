"""Data sets: built-in toy data and loaders for user data."""

from .toy import make_moons

__all__ = ["make_moons"]
