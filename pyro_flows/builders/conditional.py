"""Conditional flows for vectors: RealNVP whose couplings also see a context vector."""

from __future__ import annotations

import numbers
from typing import Callable, Optional, Sequence, Union

import torch
from pyro.distributions.conditional import ConditionalComposeTransformModule
from torch import nn

from ..transforms._arguments import check_bound, check_count, check_hidden_dims
from ..transforms.base import check_context
from ..transforms.coupling import conditional_affine_coupling
from .vector import VectorFlow, _check_input_dim, _warn_single_coupling

__all__ = ["conditional_real_nvp", "ConditionalVectorFlow"]


class ConditionalVectorFlow(ConditionalComposeTransformModule):
    r"""A stack of conditional transforms on vectors; ``condition(context)`` checks the
    context (shape ``(*context_batch, context_dim)``) and returns a
    :class:`~pyro_flows.builders.vector.VectorFlow` whose parts share this module's
    weights, with :math:`\log|\det J(c)| = \sum_k \log|\det J_k(c)|`.

    >>> cflow = conditional_real_nvp(3, context_dim=2, num_layers=2, hidden_dims=(8,))
    >>> flow = cflow.condition(torch.randn(4, 2))
    >>> type(flow).__name__, flow(torch.randn(4, 3)).shape
    ('VectorFlow', torch.Size([4, 3]))
    """

    def __init__(self, parts, event_shape: Sequence[int], context_dim: int, cache_size: int = 1):
        super().__init__(parts, cache_size=cache_size)
        self.event_shape = torch.Size(event_shape)
        self.context_dim = context_dim

    def condition(self, context: torch.Tensor) -> VectorFlow:
        check_context(type(self).__name__, context, self.context_dim, self)
        parts = [t.condition(context) for t in self.transforms]
        return VectorFlow(parts, self.event_shape, cache_size=self._cache_size)


def conditional_real_nvp(
    input_dim: int,
    context_dim: int,
    num_layers: int = 8,
    hidden_dims: Sequence[int] = (256, 256),
    mask: Union[str, torch.Tensor] = "half",
    activation: Callable[[], nn.Module] = nn.ReLU,
    scale_bound: Optional[float] = 2.0,
    shift_bound: Optional[float] = 8.0,
) -> ConditionalVectorFlow:
    r"""Conditional RealNVP: ``num_layers`` :class:`~pyro_flows.transforms.ConditionalAffineCoupling`
    layers with alternating partitions, each conditioner an MLP on ``[x^A, c]``:

    .. math::

        \log p(x \mid c) = \log p_Z(z) + \textstyle\sum_k \sum_i s^{(k)}_i(\cdot, c),
        \qquad z = f(x; c).

    Use it with :class:`pyro.distributions.ConditionalTransformedDistribution`; the
    context has shape ``(*context_batch, context_dim)`` and input batch shapes broadcast
    against ``context_batch``: draw ``sample(context_batch)`` for one sample per context,
    ``sample((n, *[1] * len(context_batch)))`` for ``n`` per context. Every coupling
    starts as the identity, so a new conditional flow is its base for every context.

    :param int input_dim: dimension :math:`D \ge 2` of the flow's vectors.
    :param int context_dim: size of the context vector.
    :param int num_layers: number of coupling layers.
    :param hidden_dims: hidden sizes of each conditioner MLP.
    :param mask: ``"half"``, ``"alternating"`` or a boolean tensor of shape ``(input_dim,)``;
        parities alternate layer to layer (a tensor on even layers, its complement on odd).
    :param scale_bound: soft bound on each log-scale.
    :param shift_bound: bound on each shift (default 8 as for
        :func:`~pyro_flows.transforms.affine_coupling`, ``None`` for none).

    >>> import pyro.distributions as dist
    >>> flow = conditional_real_nvp(3, context_dim=2, num_layers=2, hidden_dims=(16,))
    >>> d = dist.ConditionalTransformedDistribution(dist.Normal(torch.zeros(3), 1.0).to_event(1), [flow])
    >>> context = torch.randn(5, 2)
    >>> x = d.condition(context).sample((5,))
    >>> x.shape, d.condition(context).log_prob(x).shape
    (torch.Size([5, 3]), torch.Size([5]))
    >>> d.condition(context).sample((4, 1)).shape
    torch.Size([4, 5, 3])
    """
    input_dim = _check_input_dim(input_dim, "conditional_real_nvp")
    # a bool is no size (True passed as 1 and named the context's size "True" in errors)
    if isinstance(context_dim, bool) or not isinstance(context_dim, numbers.Integral) or context_dim < 1:
        raise ValueError(f"conditional_real_nvp needs a positive int context_dim, got {context_dim!r}")
    context_dim = int(context_dim)
    check_count(num_layers, "num_layers", "conditional_real_nvp")
    hidden_dims = check_hidden_dims(hidden_dims, "conditional_real_nvp")
    check_bound(scale_bound, "scale_bound", "conditional_real_nvp")
    check_bound(shift_bound, "shift_bound", "conditional_real_nvp")
    _warn_single_coupling("conditional_real_nvp", num_layers)
    parts = [
        conditional_affine_coupling(
            input_dim, context_dim, hidden_dims, mask, i % 2, activation, scale_bound, shift_bound
        )
        for i in range(num_layers)
    ]
    return ConditionalVectorFlow(parts, (input_dim,), context_dim)
