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
