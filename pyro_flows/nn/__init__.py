"""Conditioner networks for coupling layers."""

from .mlp import MLP

# images
from .resnet import ResidualBlock, ResNet

__all__ = [
    "MLP",
    # images
    "ResNet",
    "ResidualBlock",
]
