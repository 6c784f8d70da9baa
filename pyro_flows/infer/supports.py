"""What a site's support is made of: the constraint under any ``independent`` wrappers,
how many event dimensions those add, and the numbers it is parametrized by (an
interval's bounds), read the same way by the flow guides (is a support fixed or does it
depend on other latents?) and the amortized posteriors (what to save with the weights)."""

from __future__ import annotations

from typing import Dict, List, Tuple, Union

import torch
from torch.distributions import constraints

__all__: List[str] = []


def _unwrapped(support: constraints.Constraint) -> Tuple[constraints.Constraint, int]:
    """``support`` without its ``independent`` wrappers, and the event dims they add."""
    event_dims = 0
    while isinstance(support, constraints.independent):
        event_dims += support.reinterpreted_batch_ndims
        support = support.base_constraint
    return support, event_dims


def _support_numbers(support: constraints.Constraint) -> Dict[str, Union[torch.Tensor, bool, int, float]]:
    """The tensors and plain numbers the (unwrapped) support holds, by attribute name, in
    name order; none for the fixed supports (``real``, ``positive``, ``simplex``)."""
    base, _ = _unwrapped(support)
    return {
        name: value
        for name, value in sorted(vars(base).items())
        if isinstance(value, (torch.Tensor, bool, int, float))
    }
