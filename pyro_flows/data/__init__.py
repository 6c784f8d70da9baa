"""Data sets: built-in toy data and loaders for user data."""

from .digits import DIGITS_LEVELS, DIGITS_SPLIT_SIZES, load_cifar10, load_digits, load_mnist
from .one_d import make_bimodal
from .toy import make_moons

__all__ = [
    "make_moons",
    # 1-D
    "make_bimodal",
    # images
    "DIGITS_LEVELS",
    "DIGITS_SPLIT_SIZES",
    "load_digits",
    "load_mnist",
    "load_cifar10",
]

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
