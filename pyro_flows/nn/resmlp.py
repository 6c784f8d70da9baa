"""Fully connected residual conditioner networks for coupling layers on vectors."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .mlp import _global_hooks, _has_hooks, _OnContext

__all__ = ["ResidualMLP", "ConditionalResidualMLP"]


class _Stage(nn.Module):
    """One stage of a :class:`ResidualMLP` between two hidden widths (see there)."""

    def __init__(self, n_in: int, n_out: int, activation: Callable[[], nn.Module], dropout: float):
        super().__init__()
        self.residual = n_in == n_out
        self.act1 = activation()
        self.linear1 = nn.Linear(n_in, n_out)
        if self.residual:
            self.act2 = activation()
            self.drop = nn.Dropout(dropout) if dropout > 0 else None
            self.linear2 = nn.Linear(n_out, n_out)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.residual:
            return _linear(self.linear1, _act(self.act1, h))
        u = _linear(self.linear1, _act(self.act1, h))
        # in place only on the fresh output of F.linear: a hooked or custom linear1 may have
        # handed u on (a forward hook's record, a backward hook's view, a saved output)
        u = _act(self.act2, u, in_place=_plain(self.linear1, nn.Linear))
        if self.drop is not None:
            u = self.drop(u)
        return h + _linear(self.linear2, u)


class ResidualMLP(nn.Module):
    r"""A fully connected residual network ``in_features -> hidden_dims... -> out_features``
    with pre-activation residual blocks (He et al., 2016).

    With hidden widths :math:`(d_0, \dots, d_{L-1})` and activation :math:`\sigma`,

    .. math::

        h_0 = W_{\mathrm{in}} x + b_{\mathrm{in}}, \qquad
        h_i = h_{i-1} + W_{i,2}\,\sigma\!\left(W_{i,1}\,\sigma(h_{i-1}) + b_{i,1}\right) + b_{i,2}
        \quad (d_i = d_{i-1}), \qquad
        y = W_{\mathrm{out}}\,\sigma(h_{L-1}) + b_{\mathrm{out}}.

    Every step between two equal widths is a residual block of two :math:`d \times d`
    linear layers, each preceded by the activation; a step between different widths is a
    plain pre-activated linear layer :math:`h_i = W_i \sigma(h_{i-1}) + b_i` (no skip).
    So ``hidden_dims=(128, 128)`` is an input layer to 128, one residual block of two
    128x128 layers and an output layer: one 128x128 layer more than
    :class:`~pyro_flows.nn.MLP` with the same ``hidden_dims``. The skip connections keep a
    path of identity Jacobians from input to output, which eases the optimisation of
    deeper conditioners.

    Works on any leading batch shape. With ``zero_init=True`` (the default for
    conditioners) the output layer starts at zero, so a freshly built coupling layer is the
    identity map and a new flow starts as its base distribution.

    :param int in_features: input size.
    :param int out_features: output size.
    :param hidden_dims: widths of the hidden states :math:`h_0, \dots, h_{L-1}` (at least one).
    :param activation: a callable returning an ``nn.Module`` (default ``nn.ReLU``).
    :param bool zero_init: zero the weights and bias of the output layer.
    :param float dropout: probability of an :class:`~torch.nn.Dropout` inside each residual
        block (between its two linear layers) and before the output layer (train mode
        only; 0 adds none).

    >>> net = ResidualMLP(3, 4, hidden_dims=(16, 16))
    >>> len(net.blocks), net.blocks[0].residual
    (1, True)
    >>> net(torch.randn(5, 2, 3)).shape
    torch.Size([5, 2, 4])
    >>> bool(net(torch.randn(7, 3)).eq(0).all())  # zero-initialised output layer
    True
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_dims: Sequence[int] = (128, 128),
        activation: Callable[[], nn.Module] = nn.ReLU,
        zero_init: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        hidden_dims = tuple(int(h) for h in hidden_dims)
        if not hidden_dims or min(hidden_dims) < 1 or min(in_features, out_features) < 1:
            raise ValueError(
                "ResidualMLP needs positive sizes and at least one hidden width, got "
                f"in={in_features}, out={out_features}, hidden_dims={hidden_dims}"
            )
        if not 0 <= dropout < 1:
            raise ValueError(f"ResidualMLP: dropout must be in [0, 1), got {dropout}")
        self.in_features = in_features
        self.out_features = out_features
        self.hidden_dims = hidden_dims
        self.input = nn.Linear(in_features, hidden_dims[0])
        self.blocks = nn.ModuleList(
            _Stage(a, b, activation, dropout) for a, b in zip(hidden_dims[:-1], hidden_dims[1:], strict=True)
        )
        self.act_out = activation()
        self.drop_out = nn.Dropout(dropout) if dropout > 0 else None
        self.output = nn.Linear(hidden_dims[-1], out_features)
        if zero_init:
            nn.init.zeros_(self.output.weight)
            nn.init.zeros_(self.output.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _linear(self.input, x)
        for block in self.blocks:
            h = block(h)
        u = _act(self.act_out, h)
        if self.drop_out is not None:
            u = self.drop_out(u)
        return _linear(self.output, u)


def _plain(layer: nn.Module, kind: type) -> bool:
    """Whether ``layer`` is exactly a ``kind`` with no hooks, so that its functional form
    may stand in for the module call."""
    return type(layer) is kind and not _has_hooks(layer) and not _global_hooks()


def _linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # a plain nn.Linear without hooks runs as F.linear, without nn.Module.__call__ (as MLP)
    if _plain(layer, nn.Linear):
        params = layer._parameters
        return F.linear(x, params["weight"], params["bias"])
    return layer(x)


def _act(layer: nn.Module, x: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    # the input of a pre-activation is still needed by the skip connection: never in place
    # unless the caller says so, also for an activation built in place (ReLU(inplace=True))
    if _plain(layer, nn.ReLU):
        return torch.relu_(x) if in_place else torch.relu(x)
    if not in_place and getattr(layer, "inplace", False):
        x = x.clone()
    return layer(x)


# ---------------------------------------------------------------- conditional
class ConditionalResidualMLP(_OnContext, ResidualMLP):
    """A :class:`ResidualMLP` on the concatenation ``[x, context]``, for conditional
    couplings; leading batch shapes are broadcast as in
    :class:`~pyro_flows.nn.ConditionalMLP`.

    :param int in_features: size of ``x``.
    :param int context_features: size of the context.
    :param int out_features: output size.
    :param hidden_dims: widths of the hidden states.
    :param activation: a callable returning an ``nn.Module`` (default ``nn.ReLU``).
    :param bool zero_init: zero the weights and bias of the output layer.
    :param float dropout: dropout probability, as in :class:`ResidualMLP`.

    >>> net = ConditionalResidualMLP(3, 2, 4, hidden_dims=(16, 16))
    >>> net(torch.randn(5, 3), torch.randn(2)).shape
    torch.Size([5, 4])
    """

    def __init__(
        self,
        in_features: int,
        context_features: int,
        out_features: int,
        hidden_dims: Sequence[int] = (128, 128),
        activation: Callable[[], nn.Module] = nn.ReLU,
        zero_init: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__(
            in_features + context_features, out_features, hidden_dims, activation, zero_init, dropout
        )
        self.in_features = in_features
        self.context_features = context_features
