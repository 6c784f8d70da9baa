r"""Masked autoregressive rational-quadratic spline flows (Papamakarios et al., 2017;
Durkan et al., 2019).

Every coordinate goes through its own monotone rational-quadratic spline (see
:mod:`pyro_flows.transforms.spline`) whose parameters depend on the *data-side* values of
the coordinates before it in an autoregressive order:

.. math::

    y_i = g_{\theta_i(y_{<i})}(x_i),\qquad x_i = g^{-1}_{\theta_i(y_{<i})}(y_i),\qquad
    \log|\det J| = \textstyle\sum_i \log g'_{\theta_i(y_{<i})}(x_i),

with :math:`\theta(y)` computed by a :class:`~pyro_flows.nn.MADE`. Scoring (data to base,
``_inverse``) needs every :math:`\theta_i(y_{<i})`, all known from :math:`y`: one pass of
the network. Sampling (base to data, ``_call``) has to produce :math:`y_{<i}` before
:math:`\theta_i`: :math:`D` passes, one per coordinate. This is the masked autoregressive
flow's trade (Papamakarios et al., 2017): cheap density, sequential sampling. Unlike a
coupling, every coordinate is transformed in every layer, each conditioned on all those
before it.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ..nn.made import MADE
from ._arguments import check_count
from .base import FlowTransform
from .coupling import _conditioner_output
from .spline import (
    DEFAULT_MIN_BIN_HEIGHT,
    DEFAULT_MIN_BIN_WIDTH,
    DEFAULT_MIN_DERIVATIVE,
    _params_per_coordinate,
    _SplineParams,
)

__all__ = ["SplineAutoregressive", "spline_autoregressive"]


class SplineAutoregressive(_SplineParams, FlowTransform):
    r"""A masked autoregressive layer whose transformers are rational-quadratic splines:
    :math:`y_i = g_{\theta_i(y_{<i})}(x_i)` for every coordinate :math:`i` (in the
    conditioner's order), with :math:`g_\theta` the spline of
    :func:`~pyro_flows.transforms.rational_quadratic_spline` (``num_bins`` bins on
    ``[-tail_bound, tail_bound]``, identity tails).

    The inverse (data to base, what ``log_prob`` needs) runs the conditioner once on
    :math:`y`; the forward map (base to data, what ``sample`` needs) runs it :math:`D`
    times, filling in one more coordinate per pass. The log-determinant is
    :math:`\sum_i \log g'_{\theta_i(y_{<i})}(x_i)` either way.

    :param conditioner: an autoregressive network mapping :math:`y` of shape ``(*batch, D)``
        to ``(*batch, D * P)``, the :math:`P` parameters of coordinate :math:`i` (those of
        :class:`~pyro_flows.transforms.SplineCoupling`: :math:`K` widths, :math:`K` heights, :math:`K - 1`
        derivatives, then with ``affine`` a shift and a log-scale) at ``[i * P, (i + 1) * P)``
        and depending only on the coordinates before :math:`i`, e.g. a
        :class:`~pyro_flows.nn.MADE` with ``outputs_per_input=P``.
    :param int input_dim: :math:`D`.
    :param int num_bins: :math:`K`.
    :param float tail_bound: :math:`B`.
    :param float min_bin_width: smallest bin width, as a fraction of :math:`2B`.
    :param float min_bin_height: smallest bin height, as a fraction of :math:`2B`.
    :param float min_derivative: smallest derivative at a knot.
    :param bool affine: also a shift :math:`t_i(y_{<i})` and a soft-bounded log-scale
        :math:`s_i(y_{<i})` around the spline, :math:`y_i = t_i + e^{s_i} g(x_i)`, as in
        :class:`~pyro_flows.transforms.SplineCoupling`.

    >>> layer = spline_autoregressive(3, hidden_dims=(16,), num_bins=4)
    >>> x = 3 * torch.randn(10, 3)
    >>> torch.allclose(layer(x), x, atol=1e-5)  # a new layer is the identity
    True
    >>> _ = torch.nn.init.normal_(layer.conditioner.net[-1].weight)
    >>> torch.allclose(layer.inv(layer(x)), x, atol=1e-4)
    True
    """

    def __init__(
        self,
        conditioner: Callable,
        input_dim: int,
        num_bins: int = 8,
        tail_bound: float = 3.0,
        min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
        min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
        min_derivative: float = DEFAULT_MIN_DERIVATIVE,
        affine: bool = False,
    ):
        input_dim = check_count(input_dim, "input_dim", "SplineAutoregressive")
        super().__init__(event_shape=(input_dim,))
        self._set_spline(num_bins, tail_bound, min_bin_width, min_bin_height, min_derivative, affine)
        self.conditioner = conditioner
        self.input_dim = input_dim

    def _spline_params(self, y: torch.Tensor):
        raw = _conditioner_output(self.conditioner, y)
        per = _params_per_coordinate(self.num_bins, self.affine)
        if raw.shape[-1:] != (self.input_dim * per,):
            raise ValueError(
                f"{type(self).__name__}: conditioner returned shape {tuple(raw.shape)}; expected "
                f"(*batch, {self.input_dim * per}): {per} parameters per coordinate of {self.input_dim}"
            )
        return self._split_params(raw.unflatten(-1, (self.input_dim, per)))

    def _spline(self, x, inverse):
        if inverse:  # data to base: every theta_i(y_<i) from one pass
            out, log_derivative = self._transform(x, self._spline_params(x), inverse=True)
            return out, log_derivative.sum(-1)
        # Base to data: after pass k the first k coordinates in the order are final (those
        # of the first one depend on nothing, those of the k-th on the k - 1 before it), so
        # D passes give y; the log-det comes from the last pass, whose parameters saw the
        # final y.
        y = x
        for _ in range(self.input_dim):
            y, log_derivative = self._transform(x, self._spline_params(y), inverse=False)
        return y, log_derivative.sum(-1)

    def extra_repr(self) -> str:
        return (
            f"input_dim={self.input_dim}, num_bins={self.num_bins}, tail_bound={self.tail_bound}, "
            f"affine={self.affine}"
        )


def spline_autoregressive(
    input_dim: int,
    hidden_dims: Sequence[int] = (128, 128),
    num_bins: int = 8,
    tail_bound: float = 3.0,
    order: Optional[Sequence[int]] = None,
    activation: Callable[[], nn.Module] = nn.ReLU,
    affine: bool = False,
    dropout: float = 0.0,
    **spline_options,
) -> SplineAutoregressive:
    """One :class:`SplineAutoregressive` on vectors of size ``input_dim`` with a
    :class:`~pyro_flows.nn.MADE` conditioner (last layer zero: starts as the identity).

    :param order: the autoregressive order, a permutation of ``range(input_dim)`` (default:
        the natural order ``0, 1, ..., D - 1``).
    :param float dropout: dropout probability after each hidden layer of the MADE (train
        mode only: sample in eval mode, since the :math:`D` passes of the forward map would
        each draw their own dropout).

    >>> layer = spline_autoregressive(3, hidden_dims=(8,), order=[2, 1, 0])
    >>> layer.conditioner.order.tolist(), layer.conditioner.net[-1].out_features  # 3 * (3 * 8 - 1)
    ([2, 1, 0], 69)
    """
    per = _params_per_coordinate(num_bins, affine)
    conditioner = MADE(input_dim, hidden_dims, per, order, activation, dropout=dropout)
    return SplineAutoregressive(
        conditioner, input_dim, num_bins=num_bins, tail_bound=tail_bound, affine=affine, **spline_options
    )
