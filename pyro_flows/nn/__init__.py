"""Conditioner networks for coupling layers."""

from .mlp import MLP

# continuous-time flows
from .odefunc import ConcatSquashLinear, DynamicsNet  # noqa: E402

__all__ = [
    "MLP",
    # continuous-time flows
    "ConcatSquashLinear",
    "DynamicsNet",
]
