"""Image data sets: scikit-learn's 8x8 digits (built in) and MNIST / CIFAR-10 from a
local torchvision-format folder (optional).

Loaders return the *discrete* pixel levels as float tensors of shape ``(N, C, H, W)``;
dequantize them in training with :func:`pyro_flows.transforms.dequantize` and report
bits/dim with :func:`pyro_flows.metrics.bits_per_dim` and the loader's number of levels.
"""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np
import torch

__all__ = ["load_digits", "load_mnist", "load_cifar10", "DIGITS_LEVELS", "DIGITS_SPLIT_SIZES"]

#: grey levels of sklearn's digits: integers 0..16
DIGITS_LEVELS = 17
#: sizes of the fixed train / validation / test split of the 1,797 digits (70/10/20 %)
DIGITS_SPLIT_SIZES = {"train": 1257, "validation": 180, "test": 360}
_SPLITS = ("train", "validation", "test")


def load_digits(split: str = "train", dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The 1,797 8x8 handwritten digits of :func:`sklearn.datasets.load_digits` with a fixed
    train / validation / test split (1,257 / 180 / 360 images).

    The split is a permutation drawn once from ``numpy.random.RandomState(0)``, the same on
    every machine and call. Values are the original 17 grey levels ``0, 1, ..., 16``
    (:data:`DIGITS_LEVELS`), not rescaled: dequantize with ``num_levels=17``.

    :param str split: ``"train"``, ``"validation"``, ``"test"`` or ``"all"`` (unshuffled).
    :param dtype: float dtype of the result (default: torch's default dtype).
    :returns: tensor of shape ``(N, 1, 8, 8)``.

    >>> x = load_digits("test")
    >>> x.shape, float(x.min()), float(x.max())
    (torch.Size([360, 1, 8, 8]), 0.0, 16.0)
    """
    if split not in _SPLITS + ("all",):
        raise ValueError(f"unknown split {split!r}; expected one of {_SPLITS + ('all',)}")
    images = _sklearn_images()
    if split != "all":
        order = np.random.RandomState(0).permutation(len(images))
        start = 0
        for name in _SPLITS:
            stop = start + DIGITS_SPLIT_SIZES[name]
            if name == split:
                images = images[order[start:stop]]
                break
            start = stop
    return torch.tensor(images, dtype=dtype or torch.get_default_dtype()).unsqueeze(1)  # a copy


def load_digit_labels(split: str = "train") -> torch.Tensor:
    """The class (0-9) of each image of :func:`load_digits` with the same ``split``, in
    the same order; a ``torch.long`` tensor of shape ``(N,)``.

    >>> labels = load_digit_labels("test")
    >>> labels.shape, labels.dtype, sorted(labels.unique().tolist()) == list(range(10))
    (torch.Size([360]), torch.int64, True)
    """
    from sklearn.datasets import load_digits as sklearn_digits

    if split not in _SPLITS + ("all",):
        raise ValueError(f"unknown split {split!r}; expected one of {_SPLITS + ('all',)}")
    labels = sklearn_digits().target
    if split != "all":
        order = np.random.RandomState(0).permutation(len(labels))
        start = sum(DIGITS_SPLIT_SIZES[name] for name in _SPLITS[: _SPLITS.index(split)])
        labels = labels[order[start : start + DIGITS_SPLIT_SIZES[split]]]
    return torch.tensor(labels, dtype=torch.long)


@functools.lru_cache(maxsize=1)
def _sklearn_images() -> np.ndarray:
    """The (1797, 8, 8) float64 levels, parsed once per process (indexing copies them)."""
    from sklearn.datasets import load_digits as sklearn_digits

    images = sklearn_digits().images
    images.setflags(write=False)
    return images


def _torchvision_datasets():
    try:
        import torchvision.datasets as datasets
    except ImportError as error:
        raise ImportError(
            "reading MNIST / CIFAR-10 needs torchvision (an optional extra: pip install "
            "'pyro-flows[vision]'); the built-in digits (pyro_flows.data.load_digits) do not"
        ) from error
    return datasets


def _check_split(split):
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")


def load_mnist(root: str, split: str = "train") -> torch.Tensor:
    """MNIST from a local torchvision-format folder (``root/MNIST/raw``); never downloads.

    :returns: float tensor ``(N, 1, 28, 28)`` of the 256 grey levels ``0..255``.

    For example ``load_mnist("/data/torchvision", "test")`` has shape ``(10000, 1, 28, 28)``.
    MNIST has no validation split of its own:

    >>> load_mnist("/data/torchvision", "validation")
    Traceback (most recent call last):
    ...
    ValueError: unknown split 'validation'; expected 'train' or 'test'
    """
    _check_split(split)
    data = _torchvision_datasets().MNIST(root, train=split == "train", download=False)
    return data.data.unsqueeze(1).to(torch.get_default_dtype())


def load_cifar10(root: str, split: str = "train") -> torch.Tensor:
    """CIFAR-10 from a local torchvision-format folder (``root/cifar-10-batches-py``);
    never downloads.

    :returns: float tensor ``(N, 3, 32, 32)`` of the 256 levels ``0..255``.

    For example ``load_cifar10("/data/torchvision", "test")`` has shape
    ``(10000, 3, 32, 32)``. The split is checked before anything is read:

    >>> load_cifar10("/data/torchvision", "val")
    Traceback (most recent call last):
    ...
    ValueError: unknown split 'val'; expected 'train' or 'test'
    """
    _check_split(split)
    data = _torchvision_datasets().CIFAR10(root, train=split == "train", download=False)
    return torch.as_tensor(data.data).permute(0, 3, 1, 2).to(torch.get_default_dtype())
