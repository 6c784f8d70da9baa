"""Data sets: built-in toy data and loaders for user data."""

from .toy import make_moons

__all__ = ["make_moons"]

# cli: data sets by name, splits, tabular and MAF loaders
from .registry import load_splits  # noqa: E402
from .splits import Splits  # noqa: E402
from .toy import (  # noqa: E402
    TOY_DATASETS,
    make_2spirals,
    make_8gaussians,
    make_checkerboard,
    make_circles,
    make_pinwheel,
    make_rings,
)

__all__ += [
    "load_splits",
    "Splits",
    "TOY_DATASETS",
    "make_circles",
    "make_8gaussians",
    "make_checkerboard",
    "make_2spirals",
    "make_pinwheel",
    "make_rings",
]
