"""User data from tabular files: ``.npy``, ``.npz`` and ``.csv``.

Rows are points, columns are dimensions. Problems are reported with the file, the row
and what was expected: a missing or empty file, rows with a different number of
columns, non-numeric cells, and rows holding NaN or infinite values (remove or impute
them first: a flow's likelihood is undefined there).

An ``.npz`` file holds either one array (any name) or the arrays ``train``, ``val`` (or
``validation``) and ``test``, which are then used as the split as they are.
"""

from __future__ import annotations

import csv
import os
from typing import Dict

import numpy as np
import torch

from .splits import Splits, split_for_run

__all__ = ["load_array", "load_tabular_splits", "check_finite_rows", "check_discrete"]

SUFFIXES = (".npy", ".npz", ".csv")


def _check_path(path: str) -> None:
    if not path.lower().endswith(SUFFIXES):
        raise ValueError(f"data file {path}: expected a {', '.join(SUFFIXES)} file")
    if not os.path.exists(path):
        raise ValueError(f"data file {path} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"data file {path} is a folder; expected a {', '.join(SUFFIXES)} file")
    if os.path.getsize(path) == 0:
        raise ValueError(f"data file {path} is empty (0 bytes)")


def load_array(path: str) -> Dict[str, np.ndarray]:
    """The arrays in a tabular file, as ``{"data": x}`` or ``{"train": .., "val": .., "test": ..}``.

    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "x.csv")
    >>> _ = open(p, "w").write("a,b\\n1,2\\n3,4\\n")
    >>> load_array(p)["data"].tolist()
    [[1.0, 2.0], [3.0, 4.0]]
    """
    _check_path(path)
    suffix = os.path.splitext(path)[1].lower()
    try:
        if suffix == ".csv":
            arrays = {"data": _read_csv(path)}
        elif suffix == ".npy":
            arrays = {"data": np.load(path, allow_pickle=False)}
        else:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
    except ValueError as err:
        if "Object arrays" in str(err):
            raise ValueError(f"data file {path} holds Python objects; only numeric arrays are read") from None
        if "pickled" in str(err):  # no NumPy header: numpy takes the file for a pickle
            raise ValueError(
                f"data file {path} is not a {suffix} file written by NumPy (a text table? name it .csv)"
            ) from None
        if str(err).startswith(f"data file {path}"):
            raise
        raise ValueError(f"data file {path} is not a readable {suffix} file: {err}") from None
    except (OSError, EOFError) as err:
        raise ValueError(f"data file {path} is not a readable {suffix} file: {err}") from None
    if suffix == ".npz":
        arrays = _npz_parts(arrays, path)
    return {k: _as_points(v, f"{path}" + (f" [{k}]" if k != "data" else "")) for k, v in arrays.items()}


def _npz_parts(arrays: Dict[str, np.ndarray], path: str) -> Dict[str, np.ndarray]:
    if not arrays:
        raise ValueError(f"data file {path} is empty (no arrays)")
    if "validation" in arrays and "val" not in arrays:
        arrays["val"] = arrays.pop("validation")
    if {"train", "val", "test"} <= set(arrays):
        return {k: arrays[k] for k in ("train", "val", "test")}
    if len(arrays) == 1:
        return {"data": next(iter(arrays.values()))}
    raise ValueError(
        f"data file {path} holds arrays {', '.join(sorted(arrays))}; expected one array, or train, val and test"
    )


def _read_csv(path: str) -> np.ndarray:
    rows = []
    width = None
    # utf-8-sig: a byte-order mark (as spreadsheet programs write) is not part of the first cell
    with open(path, newline="", encoding="utf-8-sig") as fh:
        for line_no, row in enumerate(csv.reader(fh), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if width is None:
                width = len(row)
                # a header has a non-numeric cell; a first row with empty cells and
                # numbers is data with missing values (refused below as NaN, not dropped)
                if all(not c.strip() or _is_float(c) for c in row):
                    rows.append([float(c) if c.strip() else float("nan") for c in row])
                continue
            if len(row) != width:
                raise ValueError(
                    f"data file {path}: line {line_no} has {len(row)} columns, expected {width} (as in line 1)"
                )
            try:
                rows.append([float(c) if c.strip() else float("nan") for c in row])
            except ValueError:
                bad = next(c for c in row if c.strip() and not _is_float(c))
                raise ValueError(
                    f"data file {path}: line {line_no} has a non-numeric value {bad!r}"
                ) from None
    if not rows:
        raise ValueError(f"data file {path} is empty (no data rows)")
    return np.asarray(rows, dtype=np.float64)


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _as_points(x: np.ndarray, where: str) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise ValueError(f"data file {where}: expected a numeric array, got dtype {x.dtype}")
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"data file {where} is empty (shape {x.shape})")
    if x.ndim == 1:
        x = x[:, None]
    return x.astype(np.float64)


def check_finite_rows(x: np.ndarray, where: str) -> None:
    """Raise a ``ValueError`` naming how many rows (and the first) hold NaN or inf."""
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"data file {where}: {int(bad.sum())} of {len(x)} rows contain NaN or infinite values "
            f"(first: row {first}); remove or impute them"
        )


def load_tabular_splits(path: str, config) -> Splits:
    """Read a tabular file and split it (or use its own ``train/val/test`` arrays).

    Vector data are standardized with the training mean and standard deviation when
    ``config.standardize`` (the NLL is still reported in the file's units). With
    ``config.levels = K`` the values must be integers 0..K-1 (images as ``(N, C, H, W)``
    arrays, for example); they are dequantized in training and scored in bits/dim.
    """
    arrays = load_array(path)
    for key, x in arrays.items():
        check_finite_rows(x, path + (f" [{key}]" if key != "data" else ""))
    name = os.path.basename(path)
    if "data" in arrays:
        (train, val, test), rule = split_for_run(torch.from_numpy(arrays["data"]), config, name)
    else:
        train, val, test = (torch.from_numpy(arrays[k]) for k in ("train", "val", "test"))
        for k, part in (("val", val), ("test", test)):
            if part.shape[1:] != train.shape[1:]:
                raise ValueError(
                    f"data file {path}: {k} rows have {tuple(part.shape[1:])} columns, train rows "
                    f"{tuple(train.shape[1:])}"
                )
        rule = "fixed by the file"
    if config.levels:
        for key, part in (("train", train), ("val", val), ("test", test)):
            check_discrete(part, config.levels, f"{path} [{key}]" if "data" not in arrays else path)
        return Splits(name, train, val, test, levels=config.levels, split_rule=rule)
    shift = scale = None
    if config.standardize and train.dim() == 2:
        shift, scale = standardization(train)
    return Splits(name, train, val, test, shift=shift, scale=scale, split_rule=rule)


def check_discrete(x: torch.Tensor, levels: int, where: str) -> None:
    """Raise a ``ValueError`` unless every value is an integer in ``0..levels-1``."""
    bad = (x != x.round()) | (x < 0) | (x > levels - 1)
    if bool(bad.any()):
        value = float(x[bad][0])
        raise ValueError(
            f"data file {where}: --levels {levels} expects integer values 0..{levels - 1}, found {value:g} "
            f"({int(bad.sum())} such values)"
        )


def standardization(train: torch.Tensor):
    """Per-column mean and standard deviation of the training rows (1 for a constant
    column, which is then only centred)."""
    shift = train.mean(0)
    scale = train.std(0, unbiased=False)
    return shift, torch.where(scale > 0, scale, torch.ones_like(scale))
