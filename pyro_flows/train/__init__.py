"""Training flows by maximum likelihood or flow matching: options, the loop, checkpoints and
multi-process runs.

The ``pyro-flows`` command is a thin layer over :func:`fit_run`, :func:`evaluate_run` and
:func:`sample_run`; :func:`fit` trains on a tensor in memory.
"""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import RunConfig
from .fit import fit
from .loop import NonFiniteLossError, train
from .run import evaluate_run, fit_run, sample_run
from .stopping import RunInterrupted, RunTerminated

__all__ = [
    "RunConfig",
    "fit",
    "train",
    "fit_run",
    "evaluate_run",
    "sample_run",
    "save_checkpoint",
    "load_checkpoint",
    "CheckpointError",
    "NonFiniteLossError",
    "RunInterrupted",
    "RunTerminated",
]
