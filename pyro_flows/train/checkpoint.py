"""Checkpoints: a run's full training state, written atomically and read safely.

A checkpoint is a ``torch.save`` file holding only tensors and plain containers:

* ``format``/``version``: marks a pyro-flows checkpoint (anything else is refused);
* ``model``, ``optimizer``, ``scheduler``: their ``state_dict``\\ s;
* ``step``: optimizer steps taken; ``trainer``: early-stopping state and history;
* ``rng``: the torch CPU (and CUDA) generator states, so a resumed run draws the same
  dequantization noise and the same batches as an uninterrupted one; a run of several
  processes (each with its own stream) adds ``ranks``, every process's states by rank;
* ``ema`` (runs with ``--ema``): the moving average of the weights (``decay``,
  ``num_updates``, ``shadow``: one tensor per trainable parameter); ``best.pt`` then
  holds the averaged weights as ``model``;
* ``config``: the run's resolved options; ``data``: the preprocessing (shift, scale,
  levels) needed to score and sample in data units.

Files are written to a temporary file in the same folder and moved into place with
:func:`os.replace`, so a crash mid-write never leaves a truncated checkpoint. They are
read with ``torch.load(..., weights_only=True)``, which never runs pickled code: a
corrupt or foreign file raises :class:`CheckpointError` instead. Before loading, every
member of the file is checked against the CRC-32 that ``torch.save`` stored for it (torch
itself does not check them), so a flipped bit is an error, not silently wrong weights;
model weights must be finite. :func:`check_run_state` validates the whole structure a
run's checkpoint must have, so a hand-edited or foreign file that carries the marker
gets an error naming the key, not a ``KeyError`` deep in the code.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any, Dict

import torch

from .rundir import atomic_write

__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "check_run_state",
    "capture_rng",
    "restore_rng",
    "FORMAT",
]

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
    atomic_write(path, lambda fh: torch.save(payload, fh), binary=True, suffix=".pt")


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
    _check_crcs(path)
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
    _check_model(state["model"], path)
    if not _is_int(state["step"]) or state["step"] < 0:
        raise CheckpointError(f"{path}: 'step' must be a non-negative integer, got {state['step']!r}")
    if not isinstance(state["config"], dict):
        raise CheckpointError(
            f"{path}: 'config' must be a table of options, got {type(state['config']).__name__}"
        )
    return state


def _check_crcs(path: str) -> None:
    """Compare every member of the zip file ``torch.save`` wrote with its stored CRC-32."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        return  # not a zip file at all: torch.load says so below
    if bad is not None:
        raise CheckpointError(
            f"{path} is corrupt: its member {bad} does not match the checksum stored when it was written "
            "(the file was damaged on disk or in transfer); use another checkpoint of the run (best.pt or "
            "checkpoint.pt) or train again"
        )


def _check_model(model, path: str) -> None:
    if not isinstance(model, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()
    ):
        raise CheckpointError(f"{path}: 'model' must map parameter names to tensors")
    bad = [k for k, v in model.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"{path} holds non-finite model weights (NaN or inf in {', '.join(bad[:3])}"
            + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            + "); use another checkpoint of the run or train again"
        )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: the early-stopping state of a checkpoint (``trainer``): the fields of ``loop.LoopState``
TRAINER_FIELDS = {
    "step": _is_int,
    "best_val_nll": _is_number,
    "best_step": _is_int,
    "bad_evals": _is_int,
    "stopped_early": lambda v: isinstance(v, bool),
    "total_steps": _is_int,
    "history": lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v),
    "running_loss": lambda v: v is None or _is_number(v),
    "seconds": _is_number,
}
#: trainer fields that checkpoints written before them lack (the loop's default then applies)
OPTIONAL_TRAINER_FIELDS = {"running_loss", "seconds"}


def check_run_state(state: Dict[str, Any], path: str, resume: bool = False) -> None:
    """Raise :class:`CheckpointError` unless ``state`` (from :func:`load_checkpoint`)
    has what a run checkpoint needs: the preprocessing ``data`` (to score and sample)
    and, with ``resume``, the ``optimizer``, ``scheduler``, ``trainer`` and ``rng`` states.

    >>> check_run_state({"model": {}, "step": 0, "config": {}}, "c.pt")
    Traceback (most recent call last):
    ...
    pyro_flows.train.checkpoint.CheckpointError: c.pt is not a complete run checkpoint: 'data' is missing
    """

    def fail(what: str):
        raise CheckpointError(f"{path} is not a complete run checkpoint: {what}")

    def need(key: str, kind: type):
        if key not in state:
            fail(f"'{key}' is missing")
        if not isinstance(state[key], kind):
            fail(f"'{key}' must be a {kind.__name__}, got {type(state[key]).__name__}")
        return state[key]

    data = need("data", dict)
    shape = data.get("event_shape")
    if not isinstance(shape, list) or not shape or not all(_is_int(s) and s > 0 for s in shape):
        fail(f"data.event_shape must be a list of positive sizes, got {shape!r}")
    if not _is_int(data.get("levels")) or data["levels"] < 0:
        fail(f"data.levels must be a non-negative integer, got {data.get('levels')!r}")
    for key in ("shift", "scale"):
        if data.get(key) is not None and not isinstance(data[key], torch.Tensor):
            fail(f"data.{key} must be a tensor or None, got {type(data[key]).__name__}")
        if isinstance(data.get(key), torch.Tensor) and not bool(torch.isfinite(data[key]).all()):
            fail(f"data.{key} is not finite")
    if data.get("source") is not None and not isinstance(data["source"], dict):
        fail(f"data.source must be a table, got {type(data['source']).__name__}")
    if not resume:
        return
    optimizer = need("optimizer", dict)
    if not isinstance(optimizer.get("state"), dict) or not isinstance(optimizer.get("param_groups"), list):
        fail("'optimizer' must hold the optimizer's 'state' and 'param_groups'")
    need("scheduler", dict)
    trainer = need("trainer", dict)
    unknown = sorted(set(trainer) - set(TRAINER_FIELDS))
    if unknown:
        fail(f"trainer has unknown entries {', '.join(unknown)}")
    for key, check in TRAINER_FIELDS.items():
        if key not in trainer:
            if key in OPTIONAL_TRAINER_FIELDS:
                continue
            fail(f"trainer.{key} is missing")
        if not check(trainer[key]):
            fail(f"trainer.{key} has a value of the wrong type: {trainer[key]!r}")
    if trainer["step"] != state["step"]:
        fail(f"trainer.step {trainer['step']} differs from step {state['step']}")
    if "ema" in state:
        ema = need("ema", dict)
        shadow = ema.get("shadow")
        if not _is_int(ema.get("num_updates")) or ema["num_updates"] < 0:
            fail(f"ema.num_updates must be a non-negative integer, got {ema.get('num_updates')!r}")
        if not isinstance(shadow, list) or not all(isinstance(t, torch.Tensor) for t in shadow):
            fail("ema.shadow must be a list of tensors (the averaged weights)")
        if not all(bool(torch.isfinite(t).all()) for t in shadow):
            fail("ema.shadow holds non-finite averaged weights")
    rng = need("rng", dict)
    if not _are_generator_states(rng):
        fail("rng must hold the generator states as byte tensors ('torch', and 'cuda' as a list)")
    if "ranks" in rng:  # a run of several processes: each one's states, rank by rank
        ranks = rng["ranks"]
        if not isinstance(ranks, list) or not ranks or not all(_are_generator_states(r) for r in ranks):
            fail("rng.ranks must list every process's generator states (as 'rng' holds rank 0's)")


def _are_generator_states(rng) -> bool:
    if not isinstance(rng, dict):
        return False
    cuda = rng.get("cuda", [])
    generators = [rng.get("torch"), *(cuda if isinstance(cuda, list) else [None])]
    return all(isinstance(g, torch.Tensor) and g.dtype == torch.uint8 and g.dim() == 1 for g in generators)


def capture_rng() -> Dict[str, Any]:
    """The torch generator states (CPU, and every CUDA device when present)."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: Dict[str, Any]) -> None:
    """Set the generator states :func:`capture_rng` saved; a state torch does not
    accept raises :class:`CheckpointError`."""
    try:
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    except (RuntimeError, TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"the checkpoint's random-generator state is invalid: {err}") from None
