"""Conditioner networks for coupling layers."""

from .mlp import MLP

__all__ = ["MLP"]
