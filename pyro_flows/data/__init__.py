"""Data sets: built-in toy data and loaders for user data."""

from .toy import make_moons

# images
from .digits import DIGITS_LEVELS, DIGITS_SPLIT_SIZES, load_cifar10, load_digits, load_mnist

__all__ = [
    "make_moons",
    # images
    "DIGITS_LEVELS",
    "DIGITS_SPLIT_SIZES",
    "load_digits",
    "load_mnist",
    "load_cifar10",
]
