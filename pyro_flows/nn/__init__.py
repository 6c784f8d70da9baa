"""Networks used inside flows: coupling conditioners and ODE dynamics."""

from .mlp import MLP, ConditionalMLP
from .odefunc import ConcatSquashLinear, DynamicsNet
from .resnet import ConditionalResNet, ResidualBlock, ResNet
from .velocity import VelocityNet

__all__ = [
    # vectors
    "MLP",
    "ConditionalMLP",
    # images
    "ResNet",
    "ResidualBlock",
    "ConditionalResNet",
    # continuous-time flows
    "ConcatSquashLinear",
    "DynamicsNet",
    "VelocityNet",
]
