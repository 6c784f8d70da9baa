"""Networks used inside flows: coupling conditioners and ODE dynamics."""

from .made import MADE, MaskedLinear
from .mlp import MLP, ConditionalMLP
from .odefunc import ConcatSquashLinear, DynamicsNet
from .resmlp import ConditionalResidualMLP, ResidualMLP
from .resnet import ConditionalResNet, ResidualBlock, ResNet
from .velocity import VelocityNet, default_state_features

__all__ = [
    # vectors
    "MLP",
    "ConditionalMLP",
    "ResidualMLP",
    "ConditionalResidualMLP",
    "MADE",
    "MaskedLinear",
    # images
    "ResNet",
    "ResidualBlock",
    "ConditionalResNet",
    # continuous-time flows
    "ConcatSquashLinear",
    "DynamicsNet",
    "VelocityNet",
    "default_state_features",
]
