"""Fully connected conditioner networks for coupling layers on vectors."""

from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

__all__ = ["MLP"]


class MLP(nn.Sequential):
    """A multilayer perceptron ``in_features -> hidden_dims... -> out_features``.

    Works on any leading batch shape. With ``zero_init=True`` (the default for
    conditioners) the last layer starts at zero, so a freshly built coupling layer is
    the identity map and a new flow starts as its base distribution.

    :param int in_features: input size.
    :param int out_features: output size.
    :param hidden_dims: sizes of the hidden layers.
    :param activation: a callable returning an ``nn.Module`` (default ``nn.ReLU``).
    :param bool zero_init: zero the weights and bias of the last layer.

    >>> net = MLP(3, 4, hidden_dims=(16,))
    >>> net(torch.randn(5, 2, 3)).shape
    torch.Size([5, 2, 4])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_dims: Sequence[int] = (256, 256),
        activation: Callable[[], nn.Module] = nn.ReLU,
        zero_init: bool = True,
    ):
        sizes = [in_features, *hidden_dims, out_features]
        layers = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(activation())
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = out_features
        if zero_init:
            nn.init.zeros_(self[-1].weight)
            nn.init.zeros_(self[-1].bias)
