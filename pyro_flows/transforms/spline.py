r"""Rational-quadratic spline couplings: neural spline flows (Durkan et al., 2019).

Each transformed coordinate goes through a monotone rational-quadratic spline
(Gregory & Delbourgo, 1982) whose knots are computed by the conditioner from the
conditioning part of the input. On :math:`[-B, B]` the spline has :math:`K` bins with
knots :math:`(x_k, y_k)_{k=0}^{K}`, :math:`x_0 = y_0 = -B`, :math:`x_K = y_K = B`, and
positive derivatives :math:`d_k` at the knots. In bin :math:`k`, with
:math:`w_k = x_{k+1} - x_k`, :math:`h_k = y_{k+1} - y_k`, :math:`s_k = h_k / w_k` and
:math:`\xi = (x - x_k) / w_k \in [0, 1]`,

.. math::

    g(x) = y_k + \frac{h_k \left(s_k \xi^2 + d_k \xi (1 - \xi)\right)}
                     {s_k + (d_{k+1} + d_k - 2 s_k)\, \xi (1 - \xi)},
    \qquad
    g'(x) = \frac{s_k^2 \left(d_{k+1} \xi^2 + 2 s_k \xi (1 - \xi) + d_k (1 - \xi)^2\right)}
                 {\left(s_k + (d_{k+1} + d_k - 2 s_k)\, \xi (1 - \xi)\right)^2}.

Outside :math:`[-B, B]` the map is the identity (the derivatives at :math:`\pm B` are
fixed to 1, so :math:`g` is :math:`C^1`). The inverse is in closed form: in bin
:math:`k`, :math:`\xi` is the root in :math:`[0, 1]` of :math:`a \xi^2 + b \xi + c = 0`
with :math:`\delta = d_{k+1} + d_k - 2 s_k`,
:math:`a = h_k (s_k - d_k) + (y - y_k)\delta`, :math:`b = h_k d_k - (y - y_k)\delta`,
:math:`c = -s_k (y - y_k)`, taken as :math:`\xi = 2c / (-b - \sqrt{b^2 - 4ac})`, the form
that does not cancel when :math:`a \to 0`, except where :math:`b < 0` and
:math:`|4ac| < b^2`: there that denominator cancels, and the value is the equal
:math:`\xi = (-b + \sqrt{b^2 - 4ac}) / 2a` (then :math:`a = h_k s_k - b > 0`).

Parameterisation: unnormalised widths and heights go through a softmax (with a minimum
bin size), derivatives through a softplus plus a minimum, shifted so that a zero input
gives derivative 1. So when the conditioner outputs zeros (its last layer starts at
zero) all bins are equal and every derivative is 1: the spline, and the new flow, is
the identity.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F

from ._arguments import check_count, check_positive_finite
from .base import FlowTransform, sum_event
from .coupling import (
    _ConditionalCoupling,
    _conditioner_output,
    _ContextBroadcast,
    _Coupling,
    _image_mask,
    _mlp_conditioner,
    _resnet_conditioner,
    _vector_mask,
)
from .reshape import _image_shape

__all__ = [
    "rational_quadratic_spline",
    "SplineCoupling",
    "ElementwiseSpline",
    "ConditionalSplineCoupling",
    "spline_coupling",
    "conditional_spline_coupling",
    "image_spline_coupling",
]

DEFAULT_MIN_BIN_WIDTH = 1e-3
DEFAULT_MIN_BIN_HEIGHT = 1e-3
DEFAULT_MIN_DERIVATIVE = 1e-3
_AFFINE_SCALE_BOUND = 2.0


def _knots(raw: torch.Tensor, bound: float, min_size: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Knot positions ``(..., K + 1)`` on ``[-bound, bound]`` and bin sizes ``(..., K)``
    from unnormalised sizes ``(..., K)`` (softmax, then at least ``min_size`` of the
    interval per bin)."""
    num_bins = raw.shape[-1]
    # softmax written out: torch.softmax over a last dimension of 8 ran at a third of the
    # speed on the CPU (fwd + bwd 560 us against 245 us for (512, 5, 8), torch 2.13).
    exp = (raw - raw.detach().amax(-1, keepdim=True)).exp()
    sizes = min_size + (1 - min_size * num_bins) * (exp / exp.sum(-1, keepdim=True))
    # Cumulative sizes with the ends set to exactly 0 and 1 (not a rounded sum), so that
    # the knots span exactly [-bound, bound].
    cumulative = F.pad(F.pad(torch.cumsum(sizes[..., :-1], -1), (1, 0)), (0, 1), value=1.0)
    knots = 2 * bound * cumulative - bound
    return knots, knots[..., 1:] - knots[..., :-1]


def _derivative_offset(min_derivative: float) -> float:
    """The shift that makes ``min_derivative + softplus(0 + shift) == 1``."""
    return math.log(math.expm1(1 - min_derivative))


def rational_quadratic_spline(
    inputs: torch.Tensor,
    widths: torch.Tensor,
    heights: torch.Tensor,
    derivatives: torch.Tensor,
    bound: float,
    inverse: bool = False,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Apply the monotone rational-quadratic spline :math:`g` (or :math:`g^{-1}` with
    ``inverse=True``) elementwise, with identity tails outside ``[-bound, bound]``.

    :param inputs: values, shape ``S``.
    :param widths: unnormalised bin widths, shape ``S + (K,)``.
    :param heights: unnormalised bin heights, shape ``S + (K,)``.
    :param derivatives: unconstrained derivatives at the ``K - 1`` interior knots, shape
        ``S + (K - 1,)`` (zero gives derivative 1).
    :param float bound: :math:`B`, the spline acts on :math:`[-B, B]`.
    :param bool inverse: compute :math:`g^{-1}` instead of :math:`g`.
    :returns: ``(outputs, log_abs_det)``, both of shape ``S``; ``log_abs_det`` is
        :math:`\log g'(x)` at the input of :math:`g` (for ``inverse=True``, at the
        output), so it is the log-derivative of the *forward* map in both cases.

    >>> x = torch.linspace(-4, 4, 9)
    >>> zeros = torch.zeros(9, 5)
    >>> y, ladj = rational_quadratic_spline(x, zeros, zeros, zeros[:, :4], bound=3.0)
    >>> torch.allclose(y, x, atol=1e-6), float(ladj.abs().max()) < 1e-6
    (True, True)
    """
    num_bins = widths.shape[-1]
    if heights.shape != widths.shape or widths.shape[:-1] != inputs.shape:
        raise ValueError(
            f"rational_quadratic_spline: expected widths and heights of shape inputs.shape + (K,); got "
            f"inputs of shape {tuple(inputs.shape)}, widths {tuple(widths.shape)}, heights {tuple(heights.shape)}"
        )
    if derivatives.shape != widths.shape[:-1] + (num_bins - 1,):
        raise ValueError(
            f"rational_quadratic_spline: expected {num_bins - 1} interior derivatives per value (K - 1 for "
            f"K = {num_bins} bins; those at +-bound are fixed to 1), got {derivatives.shape[-1]}: derivatives "
            f"of shape {tuple(derivatives.shape)}, widths {tuple(widths.shape)}"
        )
    x_knots, bin_widths = _knots(widths, bound, min_bin_width)
    y_knots, bin_heights = _knots(heights, bound, min_bin_height)
    ones = derivatives.new_ones(derivatives.shape[:-1] + (1,))
    interior = min_derivative + F.softplus(derivatives + _derivative_offset(min_derivative))
    knot_derivatives = torch.cat([ones, interior, ones], -1)

    inside = (inputs >= -bound) & (inputs <= bound)
    clamped = inputs.clamp(-bound, bound)
    # The bin of each value: how many interior knots lie at or below it.
    knots = y_knots if inverse else x_knots
    index = torch.searchsorted(knots[..., 1:-1].contiguous(), clamped.unsqueeze(-1).contiguous(), right=True)

    def pick(t):
        return t.gather(-1, index).squeeze(-1)

    x_k, w_k = pick(x_knots), pick(bin_widths)
    y_k, h_k = pick(y_knots), pick(bin_heights)
    d_k = pick(knot_derivatives[..., :-1])
    d_k1 = pick(knot_derivatives[..., 1:])
    slope = h_k / w_k
    curvature = d_k1 + d_k - 2 * slope

    if inverse:
        dy = clamped - y_k
        a = h_k * (slope - d_k) + dy * curvature
        b = h_k * d_k - dy * curvature
        c = -slope * dy
        discriminant = (b * b - 4 * a * c).clamp_min(0)
        xi = (2 * c) / (-b - discriminant.sqrt())
        # That form of the root adds two negative terms when b >= 0. When b < 0 its
        # denominator is |b| - sqrt(b^2 + 4|ac|), which cancels as |4ac| / b^2 -> 0 (float32
        # round trips were then off by up to a tenth of the bin's height); the equal form
        # (-b + sqrt(disc)) / 2a, with a = h s - b > 0 there, adds positives instead. It
        # replaces the value where |4ac| < b^2 (beyond, the first form loses a few ulps at
        # most), as a constant: the graph, and so every gradient elsewhere, stays bit for
        # bit what it was (trained splines' numbers do not move), and the gradient there is
        # the first form's.
        # (detached rather than under no_grad, which a JIT trace does not record)
        a_, b_, c_, h_, s_ = (t.detach() for t in (a, b, c, h_k, slope))
        cancels = (b_ < 0) & (4 * (a_ * c_).abs() < b_ * b_)
        stable = (discriminant.detach().sqrt() - b_) / (2 * (h_ * s_ - b_))
        correction = torch.where(cancels, stable - xi.detach(), torch.zeros_like(stable))
        xi = xi + correction
        xi = xi.clamp(0, 1)
        outputs = x_k + xi * w_k
    else:
        xi = (clamped - x_k) / w_k
        outputs = y_k + h_k * (slope * xi * xi + d_k * xi * (1 - xi)) / (slope + curvature * xi * (1 - xi))
    one_minus = 1 - xi
    denominator = slope + curvature * xi * one_minus
    numerator = d_k1 * xi * xi + 2 * slope * xi * one_minus + d_k * one_minus * one_minus
    log_derivative = 2 * torch.log(slope) + torch.log(numerator) - 2 * torch.log(denominator)

    outputs = torch.where(inside, outputs, inputs)
    log_derivative = torch.where(inside, log_derivative, torch.zeros_like(log_derivative))
    return outputs, log_derivative


class _SplineParams:
    """Shared by the spline coupling and its conditioned twin: the spline settings and the
    map from conditioner output to the spline's three parameter tensors."""

    def _set_spline(self, num_bins, tail_bound, min_bin_width, min_bin_height, min_derivative, affine=False):
        owner = type(self).__name__
        if not isinstance(num_bins, int) or isinstance(num_bins, bool) or num_bins < 2:
            raise ValueError(f"{owner}: num_bins must be an int >= 2, got {num_bins!r}")
        tail_bound = check_positive_finite(tail_bound, "tail_bound", owner)
        # Zero minimums are refused: a bin of width or height 0, or a knot derivative of 0,
        # which a softmax or softplus reaches in floating point for large enough parameters,
        # divides by zero (NaN values and log-determinants, not invertible).
        if not 0 < min_bin_width * num_bins < 1 or not 0 < min_bin_height * num_bins < 1:
            raise ValueError(
                f"{owner}: min_bin_width and min_bin_height must be in (0, 1/num_bins) = (0, {1 / num_bins:.3g}), "
                f"got {min_bin_width} and {min_bin_height} (a bin of size 0 makes the spline non-invertible)"
            )
        if not 0 < min_derivative < 1:
            raise ValueError(
                f"{owner}: min_derivative must be in (0, 1), got {min_derivative} (a derivative of 0 makes the "
                "spline non-invertible)"
            )
        self.num_bins = num_bins
        self.tail_bound = float(tail_bound)
        self.min_bin_width = min_bin_width
        self.min_bin_height = min_bin_height
        self.min_derivative = min_derivative
        self.affine = bool(affine)

    def _split_params(self, params: torch.Tensor):
        """``(widths, heights, derivatives)`` (and ``shift, log_scale`` with ``affine``) from
        the parameters of each coordinate laid out along the last dimension, in that order."""
        k = self.num_bins
        if not self.affine:
            return params.split_with_sizes((k, k, k - 1), -1)
        widths, heights, derivatives, shift, raw = params.split_with_sizes((k, k, k - 1, 1, 1), -1)
        # soft-bounded log-scale, as in AffineCoupling: at most e^{+-2} per layer
        log_scale = _AFFINE_SCALE_BOUND * torch.tanh(raw.squeeze(-1) / _AFFINE_SCALE_BOUND)
        return widths, heights, derivatives, shift.squeeze(-1), log_scale

    def _transform(self, x: torch.Tensor, params, inverse: bool):
        """The spline (with the affine part when ``affine``), elementwise: ``(y, log g'(x))``
        per value, the log-derivative of the forward map. ``params`` as ``_split_params``
        returns them."""
        widths, heights, derivatives = params[:3]
        if self.affine and inverse:
            # the forward map is y = t + e^s g(x): undo the affine part first
            x = (x - params[3]) * torch.exp(-params[4])
        y, log_derivative = rational_quadratic_spline(
            x,
            widths,
            heights,
            derivatives,
            self.tail_bound,
            inverse=inverse,
            min_bin_width=self.min_bin_width,
            min_bin_height=self.min_bin_height,
            min_derivative=self.min_derivative,
        )
        if self.affine:
            if not inverse:
                y = params[3] + torch.exp(params[4]) * y
            log_derivative = log_derivative + params[4]
        return y, log_derivative

    # Transforms with this mixin compute both directions in one method, ``_spline``.
    def _call_and_ladj(self, x):
        return self._spline(x, inverse=False)

    def _inverse_and_ladj(self, y):
        return self._spline(y, inverse=True)


def _params_per_coordinate(num_bins: int, affine: bool = False) -> int:
    """Conditioner outputs per transformed coordinate: ``K`` widths, ``K`` heights and
    ``K - 1`` interior derivatives (and a shift and a log-scale with ``affine``)."""
    return 3 * num_bins - 1 + 2 * bool(affine)


class SplineCoupling(_SplineParams, _Coupling):
    r"""A coupling layer whose transformer is a monotone rational-quadratic spline
    (neural spline flow, Durkan et al., 2019).

    .. math::

        y^A = x^A,\quad y^B_i = g_{\theta_i(x^A)}(x^B_i);\qquad
        x^B_i = g^{-1}_{\theta_i(y^A)}(y^B_i);\qquad
        \log|\det J| = \textstyle\sum_i \log g'_{\theta_i(x^A)}(x^B_i),

    where :math:`g_\theta` is the spline of :func:`rational_quadratic_spline` with ``num_bins``
    bins on ``[-tail_bound, tail_bound]`` and identity tails, and :math:`\theta_i` its
    :math:`3K - 1` parameters for coordinate :math:`i`. The inverse is in closed form, so
    sampling and scoring cost the same.

    :param mask: boolean tensor, ``True`` on the conditioning part A (a vector mask, a
        checkerboard ``(1, H, W)`` or a channel mask ``(C, 1, 1)``).
    :param conditioner: callable mapping :math:`x^A` to the spline parameters of
        :math:`x^B`, :math:`3K - 1` per coordinate of :math:`x^B`, grouped by coordinate
        along the partitioned dimension (vectors: last dim of size ``(3K - 1) * |B|``,
        the first :math:`3K - 1` values for the first coordinate of B; images: the
        channel dim, ``(3K - 1) * C_B``). Widths, then heights, then derivatives.
    :param event_shape: the event shape; defaults to ``mask.shape``.
    :param int num_bins: :math:`K`.
    :param float tail_bound: :math:`B`.
    :param float min_bin_width: smallest bin width, as a fraction of :math:`2B`.
    :param float min_bin_height: smallest bin height, as a fraction of :math:`2B`.
    :param float min_derivative: smallest derivative at a knot.
    :param bool affine: also a conditional shift :math:`t` and soft-bounded log-scale
        :math:`s = 2 \tanh(\tilde s / 2)` (two more conditioner outputs per coordinate):
        :math:`y^B_i = t_i + e^{s_i} g_{\theta_i}(x^B_i)`, inverse
        :math:`x^B_i = g^{-1}_{\theta_i}((y^B_i - t_i) e^{-s_i})`, and :math:`s_i` added to the
        log-determinant. In the scoring direction the affine part acts first, so it can bring
        data that lie far outside :math:`[-B, B]` (where the spline alone is the identity)
        into the spline's interval, conditionally on :math:`x^A`.

    >>> layer = spline_coupling(4, hidden_dims=(16,), num_bins=4)
    >>> x = 3 * torch.randn(10, 4)
    >>> torch.allclose(layer(x), x, atol=1e-5)  # a new layer is the identity
    True
    >>> _ = torch.nn.init.normal_(layer.conditioner[-1].weight)
    >>> torch.allclose(layer.inv(layer(x)), x, atol=1e-4)
    True
    """

    def __init__(
        self,
        mask: torch.Tensor,
        conditioner: Callable,
        event_shape: Optional[Sequence[int]] = None,
        num_bins: int = 8,
        tail_bound: float = 3.0,
        min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
        min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
        min_derivative: float = DEFAULT_MIN_DERIVATIVE,
        affine: bool = False,
    ):
        super().__init__(mask, conditioner, event_shape)
        self._set_spline(num_bins, tail_bound, min_bin_width, min_bin_height, min_derivative, affine)

    def _spline_params(self, x_a: torch.Tensor):
        partition = self.partition
        raw = _conditioner_output(self.conditioner, x_a)
        per = _params_per_coordinate(self.num_bins, self.affine)
        dim = partition.param_dim
        expected = list(partition.b_shape)
        expected[dim] *= per
        n = len(expected)
        if list(raw.shape[raw.dim() - n :]) != expected:
            # a conditioned layer names the conditional class the user built
            owner = getattr(self, "_owner", type(self).__name__)
            counted = "3 * num_bins + 1 with affine" if self.affine else "3 * num_bins - 1"
            raise ValueError(
                f"{owner}: conditioner returned shape {tuple(raw.shape)}; expected "
                f"(*batch, {', '.join(map(str, expected))}): {per} parameters ({counted}) per "
                f"coordinate of {tuple(partition.b_shape)} along dim {dim}"
            )
        # (..., |B| * P, ...) -> (..., |B|, P, ...) -> parameters last
        params = raw.unflatten(dim, (partition.b_shape[dim], per)).movedim(dim, -1)
        return self._split_params(params)

    def _spline(self, x, inverse):
        partition = self.partition
        x_a, x_b = partition.split(x)
        y_b, log_derivative = self._transform(x_b, self._spline_params(x_a), inverse)
        if partition.masks_params:
            # Checkerboard: the spline ran on every pixel; keep A exactly as it was.
            keep = partition.mask.to(x.dtype)
            y = keep * x + (1 - keep) * y_b
            log_derivative = log_derivative * (1 - keep)
        else:
            y = partition.merge(x_a, y_b)
        return y, sum_event(log_derivative, self.event_dim_)

    def extra_repr(self):
        return f"{super().extra_repr()}, num_bins={self.num_bins}, tail_bound={self.tail_bound}"


class ElementwiseSpline(_SplineParams, FlowTransform):
    r"""An unconditional monotone rational-quadratic spline on every coordinate of a vector,
    its knots learned directly (no conditioner):
    :math:`y_i = g_{\theta_i}(x_i)`, :math:`\log|\det J| = \sum_i \log g'_{\theta_i}(x_i)`.

    Durkan et al. (2019) give the coordinates a coupling leaves unchanged such splines;
    :func:`~pyro_flows.spline_flow` puts one before each coupling with
    ``elementwise=True``, so every layer transforms every coordinate (in 2-D: one
    conditional and one unconditional spline per layer, as in a 2-D autoregressive
    spline flow). Starts as the identity; identity tails outside ``[-B, B]``.

    :param int dim: size of the vectors.
    :param int num_bins: :math:`K`.
    :param float tail_bound: :math:`B`.

    >>> layer = ElementwiseSpline(3, num_bins=4)
    >>> x = torch.randn(5, 3)
    >>> torch.allclose(layer(x), x, atol=1e-6)
    True
    >>> _ = torch.nn.init.normal_(layer.params)
    >>> torch.allclose(layer.inv(layer(x)), x, atol=1e-5)
    True
    """

    def __init__(
        self,
        dim: int,
        num_bins: int = 8,
        tail_bound: float = 3.0,
        min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
        min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
        min_derivative: float = DEFAULT_MIN_DERIVATIVE,
    ):
        check_count(dim, "dim", type(self).__name__)
        super().__init__(event_shape=(dim,))
        self._set_spline(num_bins, tail_bound, min_bin_width, min_bin_height, min_derivative)
        self.params = nn.Parameter(torch.zeros(dim, _params_per_coordinate(num_bins)))

    def _spline(self, x, inverse):
        params = self.params.expand(x.shape + self.params.shape[-1:])
        y, log_derivative = self._transform(x, self._split_params(params), inverse)
        return y, log_derivative.sum(-1)

    def extra_repr(self):
        return f"dim={self.params.shape[0]}, num_bins={self.num_bins}, tail_bound={self.tail_bound}"


class _ConditionedSplineCoupling(_ContextBroadcast, SplineCoupling):
    """What ``ConditionalSplineCoupling.condition(context)`` returns."""

    def __init__(self, parent: "ConditionalSplineCoupling", context: torch.Tensor):
        super().__init__(
            parent,
            context,
            num_bins=parent.num_bins,
            tail_bound=parent.tail_bound,
            min_bin_width=parent.min_bin_width,
            min_bin_height=parent.min_bin_height,
            min_derivative=parent.min_derivative,
            affine=parent.affine,
        )


class ConditionalSplineCoupling(_SplineParams, _ConditionalCoupling):
    r"""A rational-quadratic spline coupling with a context :math:`c` (see
    :class:`SplineCoupling`): the spline parameters are :math:`\theta_i(x^A, c)`.

    :param mask: boolean tensor, ``True`` on the conditioning part A.
    :param conditioner: module called as ``conditioner(x_a, context)``, returning
        :math:`3K - 1` spline parameters per coordinate of :math:`x^B`.
    :param int context_dim: size of the context vector.
    :param event_shape: the event shape; defaults to ``mask.shape``.

    The spline options ``num_bins``, ``tail_bound``, ``min_bin_width``, ``min_bin_height``,
    ``min_derivative`` and ``affine`` are those of :class:`SplineCoupling`.

    ``condition(context)`` returns a :class:`SplineCoupling` sharing this module's
    partition and conditioner.

    >>> layer = conditional_spline_coupling(3, context_dim=2, hidden_dims=(8,))
    >>> t = layer.condition(torch.randn(5, 2))
    >>> t(torch.randn(5, 3)).shape
    torch.Size([5, 3])
    """

    def __init__(
        self,
        mask: torch.Tensor,
        conditioner: nn.Module,
        context_dim: int,
        event_shape: Optional[Sequence[int]] = None,
        num_bins: int = 8,
        tail_bound: float = 3.0,
        min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
        min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
        min_derivative: float = DEFAULT_MIN_DERIVATIVE,
        affine: bool = False,
    ):
        super().__init__(mask, conditioner, context_dim, event_shape)
        self._set_spline(num_bins, tail_bound, min_bin_width, min_bin_height, min_derivative, affine)

    def condition(self, context: torch.Tensor) -> SplineCoupling:
        return _ConditionedSplineCoupling(self, self._check_context(context))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_bins={self.num_bins}, tail_bound={self.tail_bound}"


def spline_coupling(
    input_dim: int,
    hidden_dims: Sequence[int] = (128, 128),
    mask: Union[str, torch.Tensor] = "half",
    parity: int = 0,
    num_bins: int = 8,
    tail_bound: float = 3.0,
    activation: Callable[[], nn.Module] = nn.ReLU,
    affine: bool = False,
    dropout: float = 0.0,
    conditioner: str = "mlp",
    **spline_options,
) -> SplineCoupling:
    """One :class:`SplineCoupling` on vectors of size ``input_dim`` with an
    :class:`~pyro_flows.nn.MLP` conditioner, or with ``conditioner="residual"`` a
    :class:`~pyro_flows.nn.ResidualMLP` (last layer zero: starts as the identity;
    ``dropout`` in train mode).

    >>> layer = spline_coupling(2, hidden_dims=(8,))
    >>> layer.conditioner[-1].out_features  # (3 * 8 - 1) parameters for the one coordinate of B
    23
    """
    m = _vector_mask(input_dim, mask, parity, "spline_coupling")
    per = _params_per_coordinate(num_bins, affine)
    net = _mlp_conditioner(
        m, per, hidden_dims, activation, dropout=dropout, conditioner=conditioner, builder="spline_coupling"
    )
    return SplineCoupling(m, net, num_bins=num_bins, tail_bound=tail_bound, affine=affine, **spline_options)


def conditional_spline_coupling(
    input_dim: int,
    context_dim: int,
    hidden_dims: Sequence[int] = (128, 128),
    mask: Union[str, torch.Tensor] = "half",
    parity: int = 0,
    num_bins: int = 8,
    tail_bound: float = 3.0,
    activation: Callable[[], nn.Module] = nn.ReLU,
    affine: bool = False,
    dropout: float = 0.0,
    conditioner: str = "mlp",
    **spline_options,
) -> ConditionalSplineCoupling:
    """One :class:`ConditionalSplineCoupling` on vectors of size ``input_dim`` with a
    :class:`~pyro_flows.nn.ConditionalMLP` conditioner, or with ``conditioner="residual"``
    a :class:`~pyro_flows.nn.ConditionalResidualMLP` (last layer zero; ``dropout`` in
    train mode).

    >>> layer = conditional_spline_coupling(2, 1, hidden_dims=(8,))
    >>> x = torch.randn(3, 2)
    >>> torch.allclose(layer.condition(torch.ones(1))(x), x, atol=1e-6)
    True
    """
    m = _vector_mask(input_dim, mask, parity, "conditional_spline_coupling")
    per = _params_per_coordinate(num_bins, affine)
    net = _mlp_conditioner(
        m,
        per,
        hidden_dims,
        activation,
        context_dim,
        dropout,
        conditioner,
        builder="conditional_spline_coupling",
    )
    return ConditionalSplineCoupling(
        m, net, context_dim, num_bins=num_bins, tail_bound=tail_bound, affine=affine, **spline_options
    )


def image_spline_coupling(
    shape: Sequence[int],
    mask: Union[str, torch.Tensor] = "checkerboard",
    parity: int = 0,
    hidden_channels: int = 64,
    num_blocks: int = 4,
    batch_norm: bool = True,
    num_bins: int = 8,
    tail_bound: float = 3.0,
    affine: bool = False,
    **spline_options,
) -> SplineCoupling:
    """One :class:`SplineCoupling` on images of shape ``(C, H, W)`` with a
    :class:`~pyro_flows.nn.ResNet` conditioner (output layer zero: starts as the
    identity); masks as in :func:`~pyro_flows.transforms.image_affine_coupling`.

    >>> layer = image_spline_coupling((2, 4, 4), "channel", hidden_channels=8, num_blocks=1, num_bins=4)
    >>> x = torch.randn(3, 2, 4, 4)
    >>> torch.allclose(layer(x), x, atol=1e-6)
    True
    """
    builder = "image_spline_coupling"
    shape = _image_shape(shape, builder)
    m = _image_mask(shape, mask, parity, builder)
    per = _params_per_coordinate(num_bins, affine)
    conditioner = _resnet_conditioner(shape, m, per, hidden_channels, num_blocks, batch_norm, builder)
    return SplineCoupling(
        m,
        conditioner,
        event_shape=shape,
        num_bins=num_bins,
        tail_bound=tail_bound,
        affine=affine,
        **spline_options,
    )
