r"""MADE: a masked autoencoder for distribution estimation (Germain et al., 2015), the
conditioner of autoregressive flows.

Every input coordinate :math:`i` has a degree :math:`m(i) \in \{1, \dots, D\}` (its
place in the autoregressive order), every hidden unit a degree in
:math:`\{1, \dots, D - 1\}`. A weight from a unit of degree :math:`a` to a hidden unit
of degree :math:`b` is kept when :math:`b \ge a`, and one to an output of coordinate
:math:`j` when :math:`m(j) > a`. So the outputs of coordinate :math:`j` depend only on
the inputs :math:`x_i` with :math:`m(i) < m(j)`: one pass gives the parameters of every
conditional :math:`p(x_j \mid x_{<j})` at once.
"""

from __future__ import annotations

import numbers
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .mlp import _global_hooks, _has_hooks


def _positive_int(value) -> bool:
    """An integral number (``numpy.int64`` too) of at least 1 that is not a bool."""
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and value >= 1


__all__ = ["MADE", "MaskedLinear"]


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 ``mask`` (a buffer of the
    weight's shape ``(out_features, in_features)``) on every call.

    >>> layer = MaskedLinear(2, 2, torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    >>> with torch.no_grad():
    ...     _ = layer.weight.fill_(1.0), layer.bias.zero_()
    >>> layer(torch.tensor([[1.0, 2.0]])).tolist()
    [[1.0, 3.0]]
    """

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor):
        super().__init__(in_features, out_features)
        if tuple(mask.shape) != (out_features, in_features):
            raise ValueError(
                f"MaskedLinear: mask of shape {tuple(mask.shape)}, expected {(out_features, in_features)}"
            )
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def _degrees(order, input_dim: int) -> list:
    """The degree (1-based place in ``order``) of each coordinate, in plain Python: the
    tensors are made afterwards, on the default device."""
    order = [int(i) for i in order]
    if sorted(order) != list(range(input_dim)):
        raise ValueError(f"MADE: order must be a permutation of 0..{input_dim - 1}, got {order}")
    degrees = [0] * input_dim
    for place, i in enumerate(order):
        degrees[i] = place + 1
    return degrees


class MADE(nn.Module):
    r"""A masked MLP ``input_dim -> hidden_dims... -> input_dim * outputs_per_input`` whose
    outputs for coordinate :math:`j` depend only on the coordinates before :math:`j` in the
    autoregressive order.

    The outputs are grouped by coordinate: the last dimension holds
    ``outputs_per_input`` values for coordinate 0, then as many for coordinate 1, and so on
    (as a coupling conditioner lays out its parameters). Hidden unit :math:`k` of every
    layer has degree :math:`1 + (k \bmod (D - 1))` (all degrees used, none of them
    :math:`D`, whose units could feed no output).

    :param int input_dim: :math:`D \ge 1`.
    :param hidden_dims: sizes of the hidden layers (may be empty: one masked linear map).
    :param int outputs_per_input: outputs per coordinate.
    :param order: a permutation of ``range(D)``: ``order[k]`` is the coordinate that comes
        ``k``-th (default ``0, 1, ..., D - 1``, the natural order; ``reversed`` order is
        ``D - 1, ..., 0``).
    :param activation: a callable returning an ``nn.Module`` (default ``nn.ReLU``).
    :param bool zero_init: zero the last layer's weight and bias (a new autoregressive
        transform is then the identity).
    :param float dropout: probability of an :class:`~torch.nn.Dropout` after each hidden
        activation (train mode only; dropping a unit removes paths, so the outputs still
        depend only on earlier coordinates).

    >>> net = MADE(3, (16,), outputs_per_input=2, zero_init=False)
    >>> x = torch.randn(3)
    >>> jac = torch.autograd.functional.jacobian(net, x)  # (6, 3)
    >>> bool((jac[:2] == 0).all()), bool((jac[2:4, 1:] == 0).all())  # x_0: none; x_1: only x_0
    (True, True)
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int] = (128, 128),
        outputs_per_input: int = 1,
        order: Optional[Sequence[int]] = None,
        activation: Callable[[], nn.Module] = nn.ReLU,
        zero_init: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"MADE: dropout must be in [0, 1), got {dropout}")
        if not _positive_int(input_dim):
            raise ValueError(f"MADE: input_dim must be a positive int, got {input_dim!r}")
        if not _positive_int(outputs_per_input):
            raise ValueError(f"MADE: outputs_per_input must be a positive int, got {outputs_per_input!r}")
        if not all(_positive_int(h) for h in hidden_dims):
            # a float size would be truncated, a bool taken as 1
            raise ValueError(f"MADE: hidden sizes must be positive ints, got {tuple(hidden_dims)}")
        input_dim, outputs_per_input = int(input_dim), int(outputs_per_input)
        hidden_dims = tuple(int(h) for h in hidden_dims)
        degrees = torch.tensor(_degrees(range(input_dim) if order is None else order, input_dim))
        self.register_buffer("degrees", degrees)
        self.input_dim = input_dim
        self.outputs_per_input = outputs_per_input

        layers = []
        previous = degrees
        for size in hidden_dims:
            hidden = 1 + torch.arange(size) % max(1, input_dim - 1)
            mask = hidden[:, None] >= previous[None, :]
            layers += [MaskedLinear(len(previous), size, mask), activation()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            previous = hidden
        outputs = degrees.repeat_interleave(outputs_per_input)
        layers.append(MaskedLinear(len(previous), len(outputs), outputs[:, None] > previous[None, :]))
        self.net = nn.Sequential(*layers)
        if zero_init:
            nn.init.zeros_(layers[-1].weight)
            nn.init.zeros_(layers[-1].bias)

    @property
    def order(self) -> torch.Tensor:
        """The coordinates in autoregressive order."""
        return torch.argsort(self.degrees)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the masked layers called directly, as MLP does (no nn.Module.__call__ per layer)
        if _global_hooks():
            return self.net(x)
        for layer in self.net:
            kind = type(layer)
            if kind is MaskedLinear and not _has_hooks(layer):
                x = F.linear(x, layer.weight * layer.mask, layer.bias)
            elif kind is nn.ReLU and not _has_hooks(layer):
                x = torch.relu(x)
            elif kind is nn.Dropout and not _has_hooks(layer):
                x = F.dropout(x, layer.p, layer.training)
            else:
                x = layer(x)
        return x

    def extra_repr(self) -> str:
        return f"input_dim={self.input_dim}, outputs_per_input={self.outputs_per_input}"
