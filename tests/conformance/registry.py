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
    #: draws inputs on the transform's domain (base side), ``(shape, dtype) -> tensor``;
    #: ``None``: standard normal. Needed where the domain is not all of R^n (e.g. (0, 1)).
    sample_input: Optional[Callable[[Sequence[int], torch.dtype], torch.Tensor]] = None
    #: draws values on the codomain (data side) where they cannot be normal draws;
    #: ``None``: the checks reuse normal draws as data.
    sample_output: Optional[Callable[[Sequence[int], torch.dtype], torch.Tensor]] = None
    #: base distribution of the flow built in the checks on the transform's domain,
    #: ``(event_shape, dtype, device="cpu") -> distribution``; ``None``: N(0, I).
    base: Optional[Callable[..., torch.distributions.Distribution]] = None
    #: SGD step size of the stale-cache check; deep flows on large events (losses summed
    #: over many pixels) diverge at the default
    lr: float = 0.05
    #: size of the context vector of a conditional transform: the suite then sets
    #: ``module.context`` and checks ``module.condition(context)``
    context_dim: Optional[int] = None


def draw_input(entry: Entry, shape, dtype=torch.float64) -> torch.Tensor:
    """Inputs on the entry's domain (standard normal unless the entry says otherwise)."""
    if entry.sample_input is None:
        return torch.randn(tuple(shape), dtype=dtype)
    return entry.sample_input(tuple(shape), dtype)


def open_unit(shape, dtype):
    """Uniform draws inside (0.02, 0.98): inputs for transforms whose domain is (0, 1)."""
    return 0.02 + 0.96 * torch.rand(tuple(shape), dtype=dtype)


def all_entries():
    entries = []
    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("entries_"):
            module = importlib.import_module(f"{__package__}.{info.name}")
            entries.extend(module.ENTRIES)
    return entries
