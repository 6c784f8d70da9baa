"""MNIST and CIFAR-10 from a local torchvision folder (no downloads), split three ways.

``--data mnist --data-dir DIR`` reads what ``torchvision.datasets.MNIST(DIR, download=True)``
once wrote there (likewise ``cifar10``), through :func:`pyro_flows.data.load_mnist` and
:func:`pyro_flows.data.load_cifar10`. Values stay discrete (0..255, 256 levels); training
dequantizes them. The validation split is the last ``VAL_SIZE`` images of the official
training set; the test split is the official test set.
"""

from __future__ import annotations

import torch

from .digits import load_cifar10, load_mnist
from .splits import Splits

__all__ = ["load_torchvision", "VAL_SIZE"]

VAL_SIZE = 5000
LOADERS = {"mnist": load_mnist, "cifar10": load_cifar10}


def load_torchvision(name: str, data_dir: str, config=None) -> Splits:
    """The fixed splits of ``mnist`` or ``cifar10`` as ``(N, C, H, W)`` float tensors of
    integer values 0..255."""
    try:
        train, test = (LOADERS[name](data_dir, split) for split in ("train", "test"))
    except ImportError as err:
        raise ValueError(f"--data {name}: {err}") from None
    except RuntimeError as err:
        raise ValueError(f"--data {name}: no {name} data in {data_dir} ({err})") from None
    train, test = train.to(torch.float64), test.to(torch.float64)
    if len(train) <= VAL_SIZE:
        raise ValueError(
            f"--data {name}: {len(train)} training images are too few for a {VAL_SIZE}-image validation split"
        )
    return Splits(
        name,
        train[:-VAL_SIZE],
        train[-VAL_SIZE:],
        test,
        levels=256,
        split_rule=f"fixed (official test set; last {VAL_SIZE} training images for validation)",
    )
