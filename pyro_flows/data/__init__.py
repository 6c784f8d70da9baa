"""Data sets: built-in toy data and loaders for user data."""

from .digits import (
    DIGITS_LEVELS,
    DIGITS_SPLIT_SIZES,
    load_cifar10,
    load_digit_labels,
    load_digits,
    load_mnist,
)
from .maf import MAF_DIMENSIONS, load_maf
from .one_d import make_bimodal
from .registry import load_splits
from .splits import Splits, split_for_run, split_fractions
from .tabular import load_array, load_tabular_splits
from .toy import (
    TOY_DATASETS,
    make_2spirals,
    make_8gaussians,
    make_checkerboard,
    make_circles,
    make_moons,
    make_pinwheel,
    make_rings,
)

__all__ = [
    # 2-D toy sets
    "make_moons",
    "make_circles",
    "make_8gaussians",
    "make_checkerboard",
    "make_2spirals",
    "make_pinwheel",
    "make_rings",
    "TOY_DATASETS",
    # 1-D
    "make_bimodal",
    # images
    "DIGITS_LEVELS",
    "DIGITS_SPLIT_SIZES",
    "load_digits",
    "load_digit_labels",
    "load_mnist",
    "load_cifar10",
    # data sets by name, splits, tabular files and the MAF-paper sets
    "load_splits",
    "Splits",
    "split_fractions",
    "split_for_run",
    "load_array",
    "load_tabular_splits",
    "load_maf",
    "MAF_DIMENSIONS",
]
