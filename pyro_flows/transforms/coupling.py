"""Coupling layers: NICE's additive and RealNVP's affine coupling (lecture, Defs. 10.22-10.27).

For a partition :math:`x = (x^A, x^B)` given by a mask, a coupling layer maps

.. math::

    y^A = x^A, \\qquad y^B = \\hat f(x^B \\mid \\psi(x^A)),

with a conditioner network :math:`\\psi`. Its Jacobian is block-triangular, so
:math:`\\log|\\det J| = \\log|\\det \\partial \\hat f / \\partial x^B|` (Concept 10.24), and the
conditioner never needs to be inverted.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..nn.mlp import MLP
from .base import FlowTransform
from .masks import alternating_mask, half_mask, make_partition

__all__ = [
    "AdditiveCoupling",
    "AffineCoupling",
    "additive_coupling",
    "affine_coupling",
    "vector_mask",
]


class _Coupling(FlowTransform):
    """Shared machinery: the partition, the conditioner call and the reassembly."""

    #: how many parameter tensors the conditioner returns per transformed coordinate
    num_params = 1

    def __init__(
        self, mask: torch.Tensor, conditioner: Callable, event_shape: Optional[Sequence[int]] = None
    ):
        mask = torch.as_tensor(mask, dtype=torch.bool, device="cpu")
        if event_shape is None:
            event_shape = mask.shape
        super().__init__(event_shape=event_shape)
        self.partition = make_partition(mask, self.event_shape)
        self.conditioner = conditioner

    def _params(self, x_a: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Run the conditioner once and return its outputs for :math:`x^B`."""
        partition = self.partition  # one nn.Module attribute lookup, not four
        raw = self.conditioner(x_a)
        num = self.num_params
        chunks = raw.chunk(num, dim=partition.param_dim) if num > 1 else (raw,)
        expected = partition.b_shape
        n = len(expected)
        if len(chunks) != num or any(c.shape[c.dim() - n :] != expected for c in chunks):
            raise ValueError(
                f"{type(self).__name__}: conditioner returned shape {tuple(raw.shape)}; expected "
                f"{num} x {tuple(expected)} stacked along dim {partition.param_dim}"
            )
        if partition.masks_params:
            return tuple(partition.mask_params(c) for c in chunks)
        return chunks

    def _sum_event(self, t: torch.Tensor) -> torch.Tensor:
        n = len(self.event_shape)
        return t.sum(-1) if n == 1 else t.flatten(t.dim() - n).sum(-1)


class AdditiveCoupling(_Coupling):
    r"""NICE's additive coupling layer (Dinh et al., 2015; lecture Def. 10.26).

    .. math::

        y^A = x^A,\quad y^B = x^B + t(x^A);\qquad
        x^B = y^B - t(y^A);\qquad \log|\det J| = 0.

    :param mask: boolean tensor, ``True`` on the conditioning part A; shape ``event_shape``
        or broadcastable to it (e.g. ``(1, H, W)`` checkerboard, ``(C, 1, 1)`` channels).
    :param conditioner: callable mapping :math:`x^A` (shape ``(*batch, *A_shape)``) to the
        shift :math:`t` for :math:`x^B` (shape ``(*batch, *B_shape)``; for a checkerboard
        mask both are the full event shape).
    :param event_shape: the event shape; defaults to ``mask.shape``.

    >>> layer = additive_coupling(4, hidden_dims=(16,))
    >>> x = torch.randn(10, 4)
    >>> torch.allclose(layer.inv(layer(x)), x, atol=1e-6)
    True
    """

    def _call_and_ladj(self, x):
        x_a, x_b = self.partition.split(x)
        (shift,) = self._params(x_a)
        y = self.partition.merge(x_a, x_b + shift)
        return y, x.new_zeros(x.shape[: x.dim() - len(self.event_shape)])

    def _inverse_and_ladj(self, y):
        y_a, y_b = self.partition.split(y)
        (shift,) = self._params(y_a)
        x = self.partition.merge(y_a, y_b - shift)
        return x, y.new_zeros(y.shape[: y.dim() - len(self.event_shape)])


class AffineCoupling(_Coupling):
    r"""RealNVP's affine coupling layer (Dinh et al., 2017; lecture Def. 10.27).

    .. math::

        y^A = x^A,\quad y^B = e^{s(x^A)} \odot x^B + t(x^A);\qquad
        x^B = (y^B - t(y^A)) \odot e^{-s(y^A)};\qquad
        \log|\det J| = \textstyle\sum_i s_i(x^A).

    The log-scale is soft-bounded, :math:`s = b \tanh(\tilde s / b)` with
    ``scale_bound`` :math:`b`, so that each layer scales by at most :math:`e^{\pm b}`:
    deep flows stay finite in float32 even with large inputs, while small log-scales
    pass through almost unchanged. ``scale_bound=None`` disables the bound.

    :param mask: boolean tensor, ``True`` on the conditioning part A (see
        :class:`AdditiveCoupling`).
    :param conditioner: callable mapping :math:`x^A` to the shift and raw log-scale of
        :math:`x^B`, stacked along the partitioned dimension (vectors: last dim of size
        ``2 * |B|``; images: channel dim of size ``2 * C_B``), shift first.
    :param event_shape: the event shape; defaults to ``mask.shape``.
    :param float scale_bound: the soft bound :math:`b` on :math:`|s|` (default 2).

    >>> layer = affine_coupling(4, hidden_dims=(16,))
    >>> x = torch.randn(10, 4)
    >>> y = layer(x)
    >>> layer.log_abs_det_jacobian(x, y).shape
    torch.Size([10])
    """

    num_params = 2

    def __init__(
        self,
        mask: torch.Tensor,
        conditioner: Callable,
        event_shape: Optional[Sequence[int]] = None,
        scale_bound: Optional[float] = 2.0,
    ):
        super().__init__(mask, conditioner, event_shape)
        if scale_bound is not None and not scale_bound > 0:
            raise ValueError(f"scale_bound must be positive or None, got {scale_bound}")
        self.scale_bound = scale_bound

    def _shift_log_scale(self, x_a):
        shift, raw = self._params(x_a)
        if self.scale_bound is None:
            return shift, raw
        return shift, self.scale_bound * torch.tanh(raw / self.scale_bound)

    def _call_and_ladj(self, x):
        partition = self.partition
        x_a, x_b = partition.split(x)
        shift, log_scale = self._shift_log_scale(x_a)
        y = partition.merge(x_a, x_b * log_scale.exp() + shift)
        return y, self._sum_event(log_scale)

    def _inverse_and_ladj(self, y):
        partition = self.partition
        y_a, y_b = partition.split(y)
        shift, log_scale = self._shift_log_scale(y_a)
        x = partition.merge(y_a, (y_b - shift) * torch.exp(-log_scale))
        return x, self._sum_event(log_scale)

    def extra_repr(self):
        return f"{super().extra_repr()}, scale_bound={self.scale_bound}"


def vector_mask(input_dim: int, mask: Union[str, torch.Tensor] = "half", parity: int = 0) -> torch.Tensor:
    """A mask for vectors by name (``"half"`` or ``"alternating"``) or as given."""
    if isinstance(mask, str):
        makers = {"half": half_mask, "alternating": alternating_mask}
        if mask not in makers:
            raise ValueError(f"unknown mask {mask!r}; expected one of {sorted(makers)} or a bool tensor")
        return makers[mask](input_dim, parity)
    return torch.as_tensor(mask, dtype=torch.bool, device="cpu")


def _relu_in_place() -> nn.Module:
    return nn.ReLU(inplace=True)


def _mlp_conditioner(mask, num_params, hidden_dims, activation):
    n_a = int(mask.sum())
    if activation is nn.ReLU:
        # Each ReLU follows a Linear whose output nothing else reads, so it can run in
        # place: same values and gradients, one large allocation less per hidden layer
        # (on CPU about a fifth of the conditioner's time for log_prob and sample).
        activation = _relu_in_place
    return MLP(n_a, num_params * (mask.numel() - n_a), hidden_dims, activation)


def additive_coupling(
    input_dim: int,
    hidden_dims: Sequence[int] = (256, 256),
    mask: Union[str, torch.Tensor] = "half",
    parity: int = 0,
    activation: Callable[[], nn.Module] = nn.ReLU,
) -> AdditiveCoupling:
    """One :class:`AdditiveCoupling` on vectors of size ``input_dim`` with an
    :class:`~pyro_flows.nn.MLP` conditioner (last layer zero: starts as the identity).

    >>> additive_coupling(6, hidden_dims=(32,), mask="alternating", parity=1).event_shape
    torch.Size([6])
    """
    m = vector_mask(input_dim, mask, parity)
    return AdditiveCoupling(m, _mlp_conditioner(m, 1, hidden_dims, activation))


def affine_coupling(
    input_dim: int,
    hidden_dims: Sequence[int] = (256, 256),
    mask: Union[str, torch.Tensor] = "half",
    parity: int = 0,
    activation: Callable[[], nn.Module] = nn.ReLU,
    scale_bound: Optional[float] = 2.0,
) -> AffineCoupling:
    """One :class:`AffineCoupling` on vectors of size ``input_dim`` with an
    :class:`~pyro_flows.nn.MLP` conditioner (last layer zero: starts as the identity).

    >>> layer = affine_coupling(2, hidden_dims=(8,))
    >>> x = torch.randn(3, 2)
    >>> torch.equal(layer(x), x)  # a new layer is the identity
    True
    """
    m = vector_mask(input_dim, mask, parity)
    return AffineCoupling(m, _mlp_conditioner(m, 2, hidden_dims, activation), scale_bound=scale_bound)
