"""Checkpoints: a run's full training state, written atomically and read safely.

A checkpoint is a ``torch.save`` file holding only tensors and plain containers:

* ``format``/``version``: marks a pyro-flows checkpoint (anything else is refused);
* ``model``, ``optimizer``, ``scheduler``: their ``state_dict``\\ s;
* ``step``: optimizer steps taken; ``trainer``: early-stopping state and history;
* ``rng``: the torch CPU (and CUDA) generator states, so a resumed run draws the same
  dequantization noise and the same batches as an uninterrupted one;
* ``config``: the run's resolved options; ``data``: the preprocessing (shift, scale,
  levels) needed to score and sample in data units.

Files are written to a temporary file in the same folder and moved into place with
:func:`os.replace`, so a crash mid-write never leaves a truncated checkpoint. They are
read with ``torch.load(..., weights_only=True)``, which never runs pickled code: a
corrupt or foreign file raises :class:`CheckpointError` instead.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from typing import Any, Dict

import torch

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "capture_rng", "restore_rng", "FORMAT"]

FORMAT = "pyro-flows-checkpoint"
VERSION = 1
REQUIRED = ("model", "step", "config")


class CheckpointError(ValueError):
    """A file is missing, corrupt or not a pyro-flows checkpoint.

    >>> load_checkpoint("no-such-run/best.pt")
    Traceback (most recent call last):
    ...
    pyro_flows.train.checkpoint.CheckpointError: checkpoint no-such-run/best.pt does not exist
    """


def save_checkpoint(path: str, state: Dict[str, Any]) -> None:
    """Write ``state`` (plus the format marker) to ``path`` atomically.

    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> save_checkpoint(os.path.join(d, "c.pt"), {"model": {}, "step": 3, "config": {}})
    >>> load_checkpoint(os.path.join(d, "c.pt"))["step"]
    3
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **state}
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str, map_location="cpu") -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, without unpickling objects.

    :raises CheckpointError: if the file is missing, truncated, not a torch file, holds
        anything but tensors and plain containers, or lacks the pyro-flows marker.

    >>> import os, tempfile, torch
    >>> path = os.path.join(tempfile.mkdtemp(), "c.pt")
    >>> save_checkpoint(path, {"model": {"w": torch.ones(2)}, "step": 1, "config": {}})
    >>> load_checkpoint(path)["model"]["w"]
    tensor([1., 1.])
    """
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder; expected a checkpoint file (.pt) inside a run folder")
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path} is not a readable pyro-flows checkpoint (corrupt, truncated, or it holds objects that "
            f"are not plain tensors, which are never unpickled): {first}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a torch file but not a pyro-flows checkpoint (no '{FORMAT}' marker)"
        )
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {state.get('version')}; this pyro-flows reads {VERSION}"
        )
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path} is missing {', '.join(missing)}")
    return state


def capture_rng() -> Dict[str, Any]:
    """The torch generator states (CPU, and every CUDA device when present)."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: Dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
