"""MNIST and CIFAR-10 from a local torchvision folder (no downloads).

``--data mnist --data-dir DIR`` reads what ``torchvision.datasets.MNIST(DIR, download=True)``
once wrote there (likewise ``cifar10``). Values stay discrete (0..255, 256 levels);
training dequantizes them. The validation split is the last ``VAL_SIZE`` images of the
official training set; the test split is the official test set.
"""

from __future__ import annotations

import numpy as np
import torch

from .splits import Splits

__all__ = ["load_torchvision", "VAL_SIZE"]

VAL_SIZE = 5000


def load_torchvision(name: str, data_dir: str, config=None) -> Splits:
    """The fixed splits of ``mnist`` or ``cifar10`` as ``(N, C, H, W)`` float tensors of
    integer values 0..255."""
    try:
        import torchvision.datasets as datasets
    except ImportError:
        raise ValueError(
            f"--data {name} reads a torchvision folder and needs torchvision: pip install torchvision "
            "(or the pyro-flows[vision] extra)"
        ) from None
    cls = {"mnist": datasets.MNIST, "cifar10": datasets.CIFAR10}[name]
    try:
        train_set = cls(data_dir, train=True, download=False)
        test_set = cls(data_dir, train=False, download=False)
    except RuntimeError as err:
        raise ValueError(f"--data {name}: no {name} data in {data_dir} ({err})") from None
    train, test = _images(train_set.data), _images(test_set.data)
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


def _images(data) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(data)).to(torch.float64)
    if x.dim() == 3:  # MNIST: (N, H, W)
        return x.unsqueeze(1)
    return x.permute(0, 3, 1, 2).contiguous()  # CIFAR-10: (N, H, W, C)
