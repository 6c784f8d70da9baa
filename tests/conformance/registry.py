"""The registry of every public transform and builder checked by the conformance suite.

Each family adds its entries in its own ``entries_*.py`` module beside this one, as a
list named ``ENTRIES``. An entry builds a fresh transform; the suite randomises its
parameters and runs every generic check on it.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch


@dataclass
class Entry:
    name: str
    #: builds a fresh transform (called under the test's default dtype/device)
    factory: Callable[[], torch.nn.Module]
    #: event shape of the transform's domain (its input, base side)
    event_shape: Sequence[int]
    #: classes this entry covers (used to check that every public transform is registered)
    covers: Sequence[type] = field(default_factory=tuple)
    #: scale of the random parameter perturbation
    randomize_scale: float = 0.3
    #: warm-up: called once on the randomised transform with a data batch (e.g. ActNorm init)
    warmup: Optional[Callable[[torch.nn.Module, torch.Tensor], None]] = None
    #: tolerance of the log|det J| comparison in float64
    atol: float = 1e-8
    #: whether train and eval mode differ (batch norm): both are then checked
    has_train_mode: bool = False
    #: extra keyword for tests to skip expensive checks (e.g. exact Jacobian of big events)
    jacobian: bool = True
    #: whether the transform supports torch.compile-equality checks on CPU
    compile: bool = True
    #: maps a standard-normal batch into the transform's codomain (data side) for
    #: transforms whose data live on a bounded set (e.g. Logit: data in [0, 1]); the
    #: mapped batch is used on both sides, so it must also lie in the domain
    to_codomain: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    #: SGD step size of the stale-cache check; deep flows on large events (losses summed
    #: over many pixels) diverge at the default
    lr: float = 0.05


def all_entries():
    entries = []
    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("entries_"):
            module = importlib.import_module(f"{__package__}.{info.name}")
            entries.extend(module.ENTRIES)
    return entries
