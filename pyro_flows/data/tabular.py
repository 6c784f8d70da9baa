"""User data from tabular files: ``.npy``, ``.npz`` and ``.csv``.

Rows are points, columns are dimensions. Problems are reported with the file, the row
(for a CSV file its line; for a bad value also the column) and what was expected: a missing or empty file, rows with a different number of
columns, non-numeric cells, and rows holding NaN or infinite values (remove or impute
them first: a flow's likelihood is undefined there).

An ``.npz`` file holds either one array (any name) or the arrays ``train``, ``val`` (or
``validation``) and ``test``, which are then used as the split as they are.
"""

from __future__ import annotations

import csv
import os
import warnings
from typing import Dict, Optional

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
    return _parse_csv(path)[0]


def _parse_csv(path: str, keep_text: bool = False):
    """The data rows of a CSV file as ``(values, lines, header, texts)``: a float64 array,
    the line of the file each row starts on, the header's cells (None without one) and,
    with ``keep_text``, each row's cells as written (else None)."""
    rows, lines, texts = [], [], [] if keep_text else None
    header = None
    width = first_line = None
    # utf-8-sig: a byte-order mark (as spreadsheet programs write) is not part of the first cell
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        next_start = 1
        for row in reader:
            # the line this record starts on (a quoted cell may span several lines)
            start, next_start = next_start, reader.line_num + 1
            if not row or all(not c.strip() for c in row):
                continue
            if width is None:
                width, first_line = len(row), start
                # a header has a non-numeric cell; a first row with empty cells and
                # numbers is data with missing values (refused below as NaN, not dropped)
                if not all(not c.strip() or _is_float(c) for c in row):
                    header = [c.strip() for c in row]
                    numbers = [i for i, c in enumerate(header) if _is_float(c)]
                    if numbers:  # a row of data with a missing value ("NA") or a typo?
                        word = next(c for c in header if c and not _is_float(c))
                        warnings.warn(
                            f"data file {path}: line {start} was read as a header (its cell {word!r} is not a "
                            f"number), but its columns {', '.join(map(str, numbers))} (0-based) hold numbers; "
                            "if it is a row of data, fix that cell (an empty cell is a missing value)",
                            UserWarning,
                            stacklevel=2,
                        )
                    continue
            elif len(row) != width:
                raise ValueError(
                    f"data file {path}: line {start} has {len(row)} columns, expected {width} "
                    f"(as in line {first_line})"
                )
            try:
                rows.append([float(c) if c.strip() else float("nan") for c in row])
            except ValueError:
                bad = next(c for c in row if c.strip() and not _is_float(c))
                raise ValueError(f"data file {path}: line {start} has a non-numeric value {bad!r}") from None
            lines.append(start)
            if keep_text:
                texts.append(row)
    if not rows:
        raise ValueError(f"data file {path} is empty (no data rows)")
    return np.asarray(rows, dtype=np.float64), lines, header, texts


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _as_points(x: np.ndarray, where: str) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise ValueError(f"data file {where}: expected a numeric array, got dtype {x.dtype}")
    if x.ndim == 0:
        raise ValueError(
            f"data file {where} holds a single number (an array of shape ()), not points; save the data "
            "as an array of rows, one point per row"
        )
    if x.size == 0:  # no rows, or rows without columns
        raise ValueError(f"data file {where} is empty (shape {x.shape})")
    if x.ndim == 1:
        x = x[:, None]
    return x.astype(np.float64)


def check_finite_rows(x: np.ndarray, where: str, csv_path: Optional[str] = None) -> None:
    """Raise a ``ValueError`` naming how many rows hold NaN or inf, the first such row
    (0-based) and its columns; for the CSV file ``csv_path`` also the line and the cells
    as written there (an empty cell is read as NaN)."""
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if not bad.any():
        return
    first = int(np.flatnonzero(bad)[0])
    columns = np.flatnonzero(~np.isfinite(x[first].reshape(-1))).tolist()
    if csv_path is not None:
        place = _csv_cells(csv_path, first, columns)
    else:
        values = x[first].reshape(-1)[columns[:10]]
        if x.ndim > 2:
            names = [str(tuple(int(i) for i in np.unravel_index(j, x.shape[1:]))) for j in columns[:10]]
            label = "position" if len(columns) == 1 else "positions"
        else:
            names, label = [str(j) for j in columns[:10]], "column" if len(columns) == 1 else "columns"
        place = (
            f"{label} {', '.join(names)}{_more(columns)} (0-based) "
            + ("holds " if len(columns) == 1 else "hold ")
            + ", ".join(str(v) for v in values)
        )
    raise ValueError(
        f"data file {where}: {int(bad.sum())} of {len(x)} rows contain NaN or infinite values "
        f"(first: row {first}): {place}; remove or impute them"
    )


def _more(items: list) -> str:
    return f" and {len(items) - 10} more" if len(items) > 10 else ""


def _csv_cells(path: str, row: int, columns: list) -> str:
    """Where data row ``row`` of a CSV file is, and what its cells ``columns`` hold there."""
    _, lines, header, texts = _parse_csv(path, keep_text=True)
    cells = [texts[row][j].strip() for j in columns[:10]]
    names = f"; {', '.join(repr(header[j]) for j in columns[:10])}" if header else ""
    if len(columns) == 1:
        label, held = "column", (f"holds {cells[0]!r}" if cells[0] else "is empty")
    else:
        label, held = "columns", "hold " + ", ".join(repr(c) for c in cells)
    shown = ", ".join(str(j) for j in columns[:10]) + _more(columns)
    return f"line {lines[row]}, {label} {shown} (0-based{names}) {held}"


def load_tabular_splits(path: str, config) -> Splits:
    """Read a tabular file and split it (or use its own ``train/val/test`` arrays).

    Vector data are standardized with the training mean and standard deviation when
    ``config.standardize`` (the NLL is still reported in the file's units). With
    ``config.levels = K`` the values must be integers 0..K-1 (images as ``(N, C, H, W)``
    arrays, for example); they are dequantized in training and scored in bits/dim.
    """
    arrays = load_array(path)
    for key, x in arrays.items():
        csv_path = path if path.lower().endswith(".csv") else None
        check_finite_rows(x, path + (f" [{key}]" if key != "data" else ""), csv_path)
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
