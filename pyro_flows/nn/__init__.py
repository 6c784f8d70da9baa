"""Conditioner networks for coupling layers."""

from .mlp import MLP

# infer area: conditional conditioners
from .mlp import ConditionalMLP  # noqa: E402

__all__ = [
    "MLP",
    # infer area
    "ConditionalMLP",
]
