r"""Preprocessing for discrete data: uniform dequantization and the logit transform
(Dinh et al., 2017, Sec. 4.1).

A flow models a *density*, but pixels take :math:`K` discrete levels
:math:`x \in \{0, \dots, K-1\}^D`. Adding uniform noise and rescaling,

.. math::

    y = \frac{x + u}{K} \in [0, 1)^D, \qquad u \sim \mathcal U[0, 1)^D,

turns them into continuous data whose density :math:`p(y)` gives a lower bound on the
discrete likelihood, :math:`\log P(x) \ge \mathbb E_u[\log p(y)] - D \log K`
(see :func:`pyro_flows.metrics.bits_per_dim`). The :class:`Logit` transform then maps
:math:`[0, 1]` to :math:`\mathbb R`, where the base distribution lives, and is part of
the flow, so ``log_prob`` stays a density of :math:`y`.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch.distributions import constraints

from .base import FlowTransform, all_true, sum_event, validation_enabled

__all__ = ["Logit", "logit", "dequantize"]


def dequantize(x: torch.Tensor, num_levels: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    r"""Uniform dequantization: :math:`y = (x + u) / K` with :math:`u \sim \mathcal U[0, 1)`.

    Apply it afresh to every training batch (new noise each time) and once, with a
    fixed generator, to held-out data before computing bits/dim.

    :param x: discrete levels :math:`0, \dots, K-1` stored in any dtype (a float tensor
        keeps its dtype; an integer one becomes the default float dtype).
    :param int num_levels: :math:`K`, e.g. 256 for 8-bit images, 17 for sklearn digits.
    :param generator: optional :class:`torch.Generator` for the noise.
    :returns: a float tensor in :math:`[0, 1)` of the shape of ``x``.

    >>> y = dequantize(torch.tensor([0.0, 3.0]), num_levels=4)
    >>> bool((y >= torch.tensor([0.0, 0.75])).all() and (y < torch.tensor([0.25, 1.0])).all())
    True
    """
    if num_levels < 2:
        raise ValueError(f"num_levels must be at least 2, got {num_levels}")
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if x.numel() and (
        bool((x < 0).any()) or bool((x > num_levels - 1).any()) or bool((x != x.round()).any())
    ):
        raise ValueError(
            f"dequantize: expected integer levels in [0, {num_levels - 1}], got values in "
            f"[{float(x.min())}, {float(x.max())}] (pass the raw levels, not already-scaled data)"
        )
    u = torch.rand(
        x.shape, generator=generator, dtype=x.dtype, device="cpu" if generator is not None else x.device
    )
    return _into_cells(x, u.to(x.device), num_levels)


def _into_cells(levels: torch.Tensor, u: torch.Tensor, num_levels: int) -> torch.Tensor:
    r""":math:`(x + u) / K` for noise :math:`u \in [0, 1)`, kept inside the cell
    :math:`[x/K, (x+1)/K)` of each level: rounded, :math:`x + u` is :math:`x + 1` for
    :math:`u` within half a unit in the last place of 1 (in float32, about 1 draw in
    :math:`2^{17}` at level 255), which would put the value in the next cell, or at 1
    for the top level."""
    y = (levels + u) / num_levels
    top = (levels + 1) / num_levels
    return torch.where(y < top, y, torch.nextafter(top, torch.zeros_like(top)))


class Logit(FlowTransform):
    r"""The logit preprocessing of RealNVP as a flow layer, mapping data in
    :math:`[0, 1]` to :math:`\mathbb R`.

    Scoring (``_inverse``, data :math:`x` to base side :math:`z`) and sampling (``_call``):

    .. math::

        z = \operatorname{logit}(\alpha + (1 - 2\alpha)\, x), \qquad
        x = \frac{\sigma(z) - \alpha}{1 - 2\alpha},

    .. math::

        \log\left|\det\frac{\partial x}{\partial z}\right|
        = \sum_i \big[\log p_i + \log(1 - p_i)\big] - D \log(1 - 2\alpha),
        \quad p = \sigma(z) = \alpha + (1 - 2\alpha) x.

    :math:`\alpha > 0` keeps :math:`z` finite at :math:`x = 0` and :math:`x = 1`. Put it
    last in the list of transforms (nearest the data): ``log_prob`` is then the density
    of the data in :math:`[0, 1]^D`, the quantity bits/dim are computed from. The
    support is the image of :math:`\mathbb R`, the open interval
    :math:`(-\alpha / (1-2\alpha),\, (1-\alpha)/(1-2\alpha))`, which contains
    :math:`[0, 1]` when :math:`\alpha > 0`; with :math:`\alpha = 0` it is :math:`(0, 1)`,
    and data at exactly 0 or 1 are refused under validation.

    :param event_shape: shape of one data point, e.g. ``(C, H, W)``.
    :param float alpha: the margin :math:`\alpha \in [0, 1/2)` (RealNVP uses 0.05).

    >>> layer = logit((2,), alpha=0.05)
    >>> x = torch.tensor([[0.0, 1.0]])
    >>> layer.inv(x)                     # logit(0.05), logit(0.95)
    tensor([[-2.9444,  2.9444]])
    >>> torch.allclose(layer(layer.inv(x)), x, atol=1e-6)
    True
    """

    def __init__(self, event_shape: Sequence[int], alpha: float = 0.05):
        if not 0.0 <= alpha < 0.5:
            raise ValueError(f"alpha must be in [0, 0.5), got {alpha}")
        super().__init__(event_shape=event_shape)
        self.alpha = float(alpha)

    @constraints.dependent_property(is_discrete=False)
    def codomain(self):
        return constraints.independent(constraints.interval(*self._bounds()), self.event_dim_)

    def _bounds(self):
        """The ends of the image of the real line, which map to -inf and +inf."""
        a = self.alpha
        return -a / (1 - 2 * a), (1 - a) / (1 - 2 * a)

    def _check(self, x, what, dtype=None):
        super()._check(x, what, dtype)
        if what != "value" or not x.numel() or not validation_enabled():
            return
        # The support is the open interval: its end points map to -inf and +inf. (The
        # codomain stays torch's closed interval, which biject_to knows; with alpha > 0
        # both contain [0, 1], with alpha = 0 the ends 0 and 1 are data a user may have.)
        low, high = self._bounds()
        if not all_true((x > low) & (x < high)):
            if self.alpha == 0:
                expected = (
                    "data strictly inside (0, 1) (alpha=0 maps 0 and 1 to -inf and +inf; use alpha > 0)"
                )
            else:
                expected = "data in [0, 1] (dequantized and scaled by 1/K)"
            try:
                got = f", got values in [{float(x.min())}, {float(x.max())}]"
            except RuntimeError:  # under vmap a batched tensor has no single value
                got = ""
            raise ValueError(f"Logit: expected {expected}{got}")

    def _ladj(self, z):
        # log sigma'(z) = log sigma(z) + log(1 - sigma(z)) = -softplus(-z) - softplus(z)
        per_coordinate = -F.softplus(-z) - F.softplus(z) - math.log1p(-2 * self.alpha)
        return sum_event(per_coordinate, self.event_dim_)

    def _call_and_ladj(self, z):
        x = (torch.sigmoid(z) - self.alpha) / (1 - 2 * self.alpha)
        return x, self._ladj(z)

    def _inverse_and_ladj(self, x):
        p = self.alpha + (1 - 2 * self.alpha) * x
        z = torch.log(p) - torch.log1p(-p)
        per_coordinate = torch.log(p) + torch.log1p(-p) - math.log1p(-2 * self.alpha)
        return z, sum_event(per_coordinate, self.event_dim_)

    def extra_repr(self):
        return f"{super().extra_repr()}, alpha={self.alpha}"


def logit(event_shape: Sequence[int], alpha: float = 0.05) -> Logit:
    """A :class:`Logit` preprocessing layer for data of shape ``event_shape``.

    >>> logit((1, 2, 2)).inv(torch.full((3, 1, 2, 2), 0.5)).abs().max().item()
    0.0
    """
    return Logit(event_shape, alpha)
