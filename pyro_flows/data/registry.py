"""Data sets by name: what ``pyro-flows fit --data NAME`` resolves to.

Built-in 2-D toy sets are generated from the seed; tabular files and the MAF-paper
folders are read from disk; image sets come from the image modules when installed.
Every loader returns explicit :class:`~pyro_flows.data.splits.Splits`.
"""

from __future__ import annotations

import os

import torch

from .splits import Splits, split_for_run
from .toy import TOY_DATASETS

__all__ = ["load_splits", "dataset_names", "MAF_DATASETS", "IMAGE_DATASETS"]

#: the MAF-paper sets (Papamakarios et al., 2017), read by :mod:`pyro_flows.data.maf`
MAF_DATASETS = ("power", "gas", "hepmass", "miniboone", "bsds300")
#: image sets, discrete values; ``digits`` is built in, the others need ``--data-dir``
IMAGE_DATASETS = ("digits", "mnist", "cifar10")
TABULAR_SUFFIXES = (".npy", ".npz", ".csv")


def dataset_names() -> tuple:
    return tuple(TOY_DATASETS) + IMAGE_DATASETS + MAF_DATASETS


def load_splits(config) -> Splits:
    """The :class:`Splits` a run configuration names (``config.data`` and friends).

    >>> from pyro_flows.train import RunConfig
    >>> load_splits(RunConfig(data="rings", num_samples=100)).sizes()
    {'train': 80, 'val': 10, 'test': 10}
    """
    name = config.data
    key = name.lower()
    if key in TOY_DATASETS:
        x = TOY_DATASETS[key](config.num_samples, seed=config.seed, dtype=torch.float64)
        (train, val, test), rule = split_for_run(x, config, key)
        return Splits(key, train, val, test, split_rule=rule)
    if key in MAF_DATASETS:
        from .maf import load_maf

        return load_maf(key, _need_dir(config, key))
    if key in IMAGE_DATASETS:
        return _load_images(key, config)
    if name.lower().endswith(TABULAR_SUFFIXES) or os.sep in name or os.path.exists(name):
        from .tabular import load_tabular_splits

        return load_tabular_splits(name, config)
    raise ValueError(
        f"unknown data {name!r}: expected one of {', '.join(dataset_names())} or a path to a "
        f"{', '.join(TABULAR_SUFFIXES)} file"
    )


def _need_dir(config, key: str) -> str:
    if not config.data_dir:
        raise ValueError(f"--data {key} reads a local folder: pass --data-dir DIR")
    if not os.path.isdir(config.data_dir):
        raise ValueError(f"--data-dir {config.data_dir} is not a folder")
    return config.data_dir


def _load_images(key: str, config) -> Splits:
    if key == "digits":
        from .digits import DIGITS_LEVELS, load_digits

        parts = {s: load_digits(s, dtype=torch.float64) for s in ("train", "validation", "test")}
        return Splits(
            "digits",
            parts["train"],
            parts["validation"],
            parts["test"],
            levels=DIGITS_LEVELS,
            split_rule="fixed (pyro_flows.data.load_digits)",
        )
    from .vision import load_torchvision

    return load_torchvision(key, _need_dir(config, key), config)
