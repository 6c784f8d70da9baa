"""The tabular benchmarks of the MAF paper (Papamakarios et al., 2017): POWER, GAS,
HEPMASS, MINIBOONE and BSDS300, read from a local folder.

The loader expects the arrays *after* the MAF preprocessing (the paper's feature
selection, noise and normalization, as written by its ``load_data`` step), one folder
per set with one file per split::

    DIR/power/{train,val,test}.npy          (validation.npy is also accepted)
    DIR/gas/...   DIR/hepmass/...   DIR/miniboone/...   DIR/BSDS300/...

or a single ``DIR/<name>.npz`` holding ``train``, ``val`` and ``test``. Names are
matched case-insensitively. The splits are the paper's, used as they are, and each row
must have the set's dimension (POWER 6, GAS 8, HEPMASS 21, MINIBOONE 43, BSDS300 63).
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch

from .splits import Splits
from .tabular import check_finite_rows, load_array

__all__ = ["load_maf", "MAF_DIMENSIONS", "MAF_SOURCE"]

#: where the MAF-paper data come from and the layout this loader expects (``{name}``: the set)
MAF_SOURCE = (
    "The MAF-paper sets (Papamakarios et al., 2017, 'Masked Autoregressive Flow for Density "
    "Estimation') are published at https://zenodo.org/record/1161203; this loader reads them after "
    "the paper's preprocessing (its load_data step), saved as DIR/{name}/train.npy, val.npy and "
    "test.npy, or as DIR/{name}.npz holding train, val and test (see pyro_flows.data.maf)"
)

#: the dimension of each set after the MAF preprocessing
MAF_DIMENSIONS = {"power": 6, "gas": 8, "hepmass": 21, "miniboone": 43, "bsds300": 63}


def _find(folder: str, name: str) -> Optional[str]:
    """An entry of ``folder`` named ``name`` ignoring case, or None."""
    for entry in os.listdir(folder):
        if entry.lower() == name.lower():
            return os.path.join(folder, entry)
    return None


def load_maf(name: str, data_dir: str) -> Splits:
    """The fixed train/validation/test splits of one MAF-paper set from ``data_dir``.

    >>> import os, tempfile, numpy as np
    >>> d = tempfile.mkdtemp(); os.makedirs(os.path.join(d, "power"))
    >>> for s, n in (("train", 8), ("val", 2), ("test", 3)):
    ...     np.save(os.path.join(d, "power", s + ".npy"), np.zeros((n, 6)))
    >>> load_maf("power", d).sizes()
    {'train': 8, 'val': 2, 'test': 3}
    """
    key = name.lower()
    if key not in MAF_DIMENSIONS:
        raise ValueError(f"unknown MAF data set {name!r}; expected one of {', '.join(MAF_DIMENSIONS)}")
    parts = {}
    folder = _find(data_dir, key)
    archive = _find(data_dir, key + ".npz")
    if folder is not None and os.path.isdir(folder):
        for split in ("train", "val", "test"):
            path = _find(folder, split + ".npy") or (
                _find(folder, "validation.npy") if split == "val" else None
            )
            if path is None:
                raise ValueError(
                    f"{key}: {folder} has no {split}.npy (expected train.npy, val.npy, test.npy)"
                )
            parts[split] = load_array(path)["data"]
            check_finite_rows(parts[split], path)
    elif archive is not None:
        arrays = load_array(archive)
        if "data" in arrays:
            raise ValueError(f"{key}: {archive} must hold train, val and test arrays")
        parts = arrays
        for split, x in parts.items():
            check_finite_rows(x, f"{archive} [{split}]")
    else:
        raise ValueError(
            f"{key}: found neither {os.path.join(data_dir, key)}/{{train,val,test}}.npy nor "
            f"{os.path.join(data_dir, key)}.npz. " + MAF_SOURCE.format(name=key)
        )
    dim = MAF_DIMENSIONS[key]
    for split, x in parts.items():
        if x.ndim != 2 or x.shape[1] != dim:
            raise ValueError(
                f"{key} {split}: expected rows of {dim} columns, got an array of shape {x.shape}"
            )
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in parts.items()}
    return Splits(key, t["train"], t["val"], t["test"], split_rule="fixed (MAF paper)")
