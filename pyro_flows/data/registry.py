"""Data sets by name: what ``pyro-flows fit --data NAME`` resolves to.

Built-in 2-D toy sets are generated from the seed; tabular files and the MAF-paper
folders are read from disk; image sets come from the image modules when installed.
Every loader returns explicit :class:`~pyro_flows.data.splits.Splits`.
"""

from __future__ import annotations

import hashlib
import os
from typing import Optional

import torch

from .splits import Splits, split_for_run
from .toy import TOY_DATASETS

__all__ = [
    "load_splits",
    "dataset_names",
    "is_data_file",
    "resolve_data_paths",
    "data_source",
    "check_data_source",
    "MAF_DATASETS",
    "IMAGE_DATASETS",
]

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
    if getattr(config, "levels", 0) and (key in TOY_DATASETS or key in MAF_DATASETS):
        raise ValueError(
            f"--levels {config.levels} applies to data files of discrete values 0..K-1; {key} is a "
            "built-in continuous set (drop --levels)"
        )
    if key in TOY_DATASETS:
        # Generating takes a few float64 temporaries of the final size.
        _check_memory(8 * config.num_samples * 2 * 8, f"--num-samples {config.num_samples} of {key}")
        x = TOY_DATASETS[key](config.num_samples, seed=config.seed, dtype=torch.float64)
        (train, val, test), rule = split_for_run(x, config, key)
        return Splits(key, train, val, test, split_rule=rule)
    if key in MAF_DATASETS:
        from .maf import load_maf

        return load_maf(key, _need_dir(config, key))
    if key in IMAGE_DATASETS:
        splits = _load_images(key, config)
        levels = getattr(config, "levels", 0)
        if levels and levels != splits.levels:
            raise ValueError(
                f"--levels {levels} applies to data files of discrete values 0..K-1; {key} comes with its own "
                f"{splits.levels} levels (drop --levels)"
            )
        return splits
    if is_data_file(name):
        from .tabular import load_tabular_splits

        return load_tabular_splits(name, config)
    raise ValueError(
        f"unknown data {name!r}: expected one of {', '.join(dataset_names())} or a path to a "
        f"{', '.join(TABULAR_SUFFIXES)} file"
    )


def _available_memory() -> Optional[int]:
    """Bytes of memory the system reports available (None where it cannot say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(needed: int, what: str) -> None:
    available = _available_memory()
    if available is not None and needed > available:
        raise ValueError(
            f"{what} would need about {needed / 1e9:.1f} GB of memory, but {available / 1e9:.1f} GB are "
            "available; ask for fewer points"
        )


def is_data_file(name: str) -> bool:
    """Whether ``--data name`` names a file (rather than a built-in or named data set)."""
    key = name.lower()
    if key in TOY_DATASETS or key in MAF_DATASETS or key in IMAGE_DATASETS:
        return False
    return key.endswith(TABULAR_SUFFIXES) or os.sep in name or os.path.exists(name)


def resolve_data_paths(config):
    """``config`` with ``data`` (when a file) and ``data_dir`` made absolute, so the run
    reads the same files whatever folder ``evaluate`` or ``--resume`` start from."""
    changes = {}
    if is_data_file(config.data):
        changes["data"] = os.path.abspath(os.path.expanduser(config.data))
    if config.data_dir:
        changes["data_dir"] = os.path.abspath(os.path.expanduser(config.data_dir))
    return config.replace(**changes) if changes else config


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _splits_digest(splits: Splits) -> str:
    digest = hashlib.sha256()
    for part in (splits.train, splits.val, splits.test):
        part = part.detach().to("cpu", torch.float64).contiguous()
        digest.update(repr(tuple(part.shape)).encode())
        digest.update(part.numpy().tobytes())
    return digest.hexdigest()


def data_source(config, splits: Optional[Splits] = None) -> dict:
    """What a run records about its data, to recognise it later: for a file its absolute
    path, size and SHA-256; for a set read from ``--data-dir`` the folder and a SHA-256 of
    the loaded splits (needs ``splits``); for the built-in sets (generated from the seed,
    or shipped with the package) just the name.

    >>> from pyro_flows.train import RunConfig
    >>> data_source(RunConfig(data="moons"))
    {'kind': 'built-in', 'name': 'moons'}
    """
    name = config.data
    if is_data_file(name):
        path = os.path.abspath(name)
        return {"kind": "file", "path": path, "size": os.path.getsize(path), "sha256": _file_digest(path)}
    key = name.lower()
    if key in MAF_DATASETS or key in IMAGE_DATASETS[1:]:
        source = {"kind": "folder", "name": key, "path": os.path.abspath(config.data_dir)}
        if splits is not None:
            source["sha256"] = _splits_digest(splits)
        return source
    return {"kind": "built-in", "name": key}


def check_data_source(
    saved: Optional[dict], config, splits: Optional[Splits] = None, action: str = "the run"
) -> None:
    """Raise a ``ValueError`` when the data ``config`` names now differ from ``saved``
    (:func:`data_source` of the run). Runs that recorded nothing are not checked; a
    folder set is compared only when ``splits`` are given. A data file is read where
    ``config.data`` says (the run's own path, or the new place of a file that moved,
    which ``fit --resume --data`` gives) and must hold the same bytes as when the run
    was trained."""
    if not saved or saved.get("kind") not in ("file", "folder"):
        return
    if action.startswith("fit"):
        advice = (
            f"{action} refuses to use data that differ from the run's; if the data moved, give their new "
            "place with --data (a file) or --data-dir (a folder)"
        )
    else:
        advice = (
            f"{action} refuses to use data that differ from the run's; to score other data on purpose, "
            "pass it with `pyro-flows evaluate --data`"
        )
    if saved["kind"] == "file":
        trained = saved.get("path", "")
        path = os.path.abspath(config.data) if is_data_file(config.data) else trained
        if not os.path.isfile(path):
            if path != trained:
                raise ValueError(f"data file {path} does not exist")
            raise ValueError(f"the run was trained on {path}, which no longer exists; {advice}")
        size = os.path.getsize(path)
        if size != saved.get("size") or _file_digest(path) != saved.get("sha256"):
            if path != trained:
                differs = (
                    f"it has {size} bytes, that file had {saved.get('size')}"
                    if size != saved.get("size")
                    else "their SHA-256 differ"
                )
                raise ValueError(
                    f"{path} is not the file the run was trained on, {trained} ({differs}); {advice}"
                )
            raise ValueError(
                f"{path} has changed since the run was trained on it (now {size} bytes, then "
                f"{saved.get('size')}; the SHA-256 differs): it is not the run's data; {advice}"
            )
    elif splits is not None and saved.get("sha256") and _splits_digest(splits) != saved["sha256"]:
        raise ValueError(
            f"--data {saved.get('name')} read from {saved.get('path')} differs from what the run was trained "
            f"on (the SHA-256 of the loaded splits differs); {advice}"
        )


def _need_dir(config, key: str) -> str:
    from .maf import MAF_SOURCE

    if key in MAF_DATASETS:
        hint = MAF_SOURCE.format(name=key)
    else:
        hint = f"It is the folder torchvision keeps {key} in (its root argument)."
    if not config.data_dir:
        raise ValueError(f"--data {key} reads a local folder: pass --data-dir DIR. {hint}")
    if not os.path.isdir(config.data_dir):
        raise ValueError(f"--data-dir {config.data_dir} is not a folder. {hint}")
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
