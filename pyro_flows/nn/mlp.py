"""Fully connected conditioner networks for coupling layers on vectors."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MLP", "ConditionalMLP"]


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
    :param float dropout: probability of an :class:`~torch.nn.Dropout` after each hidden
        activation (train mode only; 0 adds none).

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
        dropout: float = 0.0,
    ):
        if not 0 <= dropout < 1:
            raise ValueError(f"MLP: dropout must be in [0, 1), got {dropout}")
        sizes = [in_features, *hidden_dims, out_features]
        layers = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(activation())
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = out_features
        if zero_init:
            nn.init.zeros_(self[-1].weight)
            nn.init.zeros_(self[-1].bias)

    def __getitem__(self, idx):
        # nn.Sequential slices into a new instance of the class, which MLP's constructor
        # cannot build from a list of layers: a slice is a plain nn.Sequential of them
        if isinstance(idx, slice):
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The layers' own computation without nn.Module.__call__ around each: plain
        # nn.Linear and nn.ReLU layers with no hooks run as F.linear and relu (in place
        # when the layer says so); anything else is called as a module. In a small
        # coupling flow the five module calls per conditioner were a fifth of log_prob.
        # An in-place activation (the coupling builders make their ReLUs in place) writes
        # only over the fresh output of F.linear: the output of a hooked or custom layer may
        # have been handed on (a forward hook's record, a full backward hook's view, which
        # autograd refuses to see modified), so the activation then gets a copy.
        hooked = _global_hooks()
        fresh = False
        for layer in self._modules.values():
            kind = type(layer)
            plain = not hooked and not _has_hooks(layer)
            if kind is nn.Linear and plain:
                params = layer._parameters
                x = F.linear(x, params["weight"], params["bias"])
                fresh = True
                continue
            if kind is nn.ReLU and plain:
                x = torch.relu_(x) if layer.inplace and fresh else torch.relu(x)
            else:
                if not fresh and getattr(layer, "inplace", False):
                    x = x.clone()
                x = layer(x)
            fresh = False
        return x


def _has_hooks(module: nn.Module) -> bool:
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
    )


def _global_hooks() -> bool:
    hooks = nn.modules.module
    return bool(
        hooks._global_forward_hooks
        or hooks._global_forward_pre_hooks
        or hooks._global_backward_hooks
        or hooks._global_backward_pre_hooks
    )


# ---------------------------------------------------------------- conditional
class _OnContext:
    """The conditional form of a network of ``x``: it reads ``[x, context]``, with the
    leading batch shapes of the two broadcast against each other. Mixed in before the
    network's class, whose ``__init__`` takes ``in_features + context_features`` inputs and
    which keeps ``in_features`` and ``context_features``."""

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if context.shape[-1:] != (self.context_features,):
            raise ValueError(
                f"{type(self).__name__}: expected a context of shape (*batch, {self.context_features}), "
                f"got shape {tuple(context.shape)}"
            )
        batch = torch.broadcast_shapes(x.shape[:-1], context.shape[:-1])
        x = x.expand(*batch, x.shape[-1])
        context = context.to(x.dtype).expand(*batch, self.context_features)
        return super().forward(torch.cat([x, context], dim=-1))


class ConditionalMLP(_OnContext, MLP):
    """An :class:`MLP` on the concatenation ``[x, context]``, for conditional couplings.

    The leading batch shapes of ``x`` and ``context`` are broadcast against each other,
    so one context can serve a whole batch of inputs, a batch of contexts can serve one
    input, or both can be batched alike. The first ``in_features`` input columns read
    ``x`` and the last ``context_features`` read the context: zeroing the latter turns the
    network into an :class:`MLP` with the same weights.

    :param int in_features: size of ``x``.
    :param int context_features: size of the context.
    :param int out_features: output size.
    :param hidden_dims: sizes of the hidden layers.
    :param activation: a callable returning an ``nn.Module`` (default ``nn.ReLU``).
    :param bool zero_init: zero the weights and bias of the last layer.

    >>> net = ConditionalMLP(3, 2, 4, hidden_dims=(16,))
    >>> net(torch.randn(5, 3), torch.randn(2)).shape
    torch.Size([5, 4])
    >>> net(torch.randn(3), torch.randn(7, 2)).shape
    torch.Size([7, 4])
    """

    def __init__(
        self,
        in_features: int,
        context_features: int,
        out_features: int,
        hidden_dims: Sequence[int] = (256, 256),
        activation: Callable[[], nn.Module] = nn.ReLU,
        zero_init: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__(
            in_features + context_features, out_features, hidden_dims, activation, zero_init, dropout
        )
        self.in_features = in_features
        self.context_features = context_features
