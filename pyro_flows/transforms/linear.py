"""Learnable linear flows with cheap log-determinants: NICE's diagonal scaling and an
LU-parameterized invertible linear map (Kingma & Dhariwal, 2018)."""

from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch
from torch import nn

from ._arguments import check_count, check_event_shape
from .base import FlowTransform, check_event

__all__ = [
    "LocScale",
    "Permutation",
    "Scaling",
    "InvertibleLinear",
    "Invertible1x1Conv",
    "LUWeight",
    "scaling",
    "invertible_linear",
    "invertible_1x1_conv",
]


class Scaling(FlowTransform):
    r"""NICE's learnable diagonal scaling layer (Dinh et al., 2015, Sec. 3.3).

    .. math::

        y = e^{s} \odot x, \qquad x = e^{-s} \odot y, \qquad \log|\det J| = \textstyle\sum_i s_i.

    Additive couplings preserve volume; this layer is what lets a NICE flow give more
    weight to some latent directions than others. :math:`s` starts at zero.

    :param event_shape: shape of one event, e.g. ``(D,)`` or ``(C, H, W)``.

    >>> layer = scaling(3)
    >>> layer.log_abs_det_jacobian(torch.zeros(2, 3), layer(torch.zeros(2, 3))).tolist()
    [0.0, 0.0]
    """

    def __init__(self, event_shape: Sequence[int]):
        super().__init__(event_shape=check_event_shape(event_shape, type(self).__name__))
        self.log_scale = nn.Parameter(torch.zeros(self.event_shape))

    def _ladj(self, x):
        return self.log_scale.sum().expand(x.shape[: x.dim() - self.event_dim_])

    def _call_and_ladj(self, x):
        return x * self.log_scale.exp(), self._ladj(x)

    def _inverse_and_ladj(self, y):
        return y * torch.exp(-self.log_scale), self._ladj(y)


class LUWeight(nn.Module):
    r"""An invertible square matrix :math:`W = P L (U + \operatorname{diag}(\sigma e^{d}))`.

    :math:`P` is a fixed permutation, :math:`L` unit lower-triangular, :math:`U` strictly
    upper-triangular, :math:`\sigma` fixed signs and :math:`d` learnable log-magnitudes, so
    :math:`\log|\det W| = \sum_i d_i` costs :math:`O(n)` and :math:`W` stays invertible
    whatever the optimizer does. Initialised from a random rotation (Glow) so that the
    map mixes coordinates from the start while :math:`\log|\det W| = 0`.

    :param int n: size of the matrix.
    :param generator: optional ``torch.Generator`` for the initial rotation.

    >>> w = LUWeight(3)
    >>> torch.allclose(w.weight() @ w.inverse_weight(), torch.eye(3), atol=1e-5)
    True
    >>> bool(torch.isclose(torch.linalg.slogdet(w.weight())[1], w.log_abs_det(), atol=1e-5))
    True
    """

    def __init__(self, n: int, generator: torch.Generator | None = None):
        super().__init__()
        q = torch.linalg.qr(torch.randn(n, n, generator=generator, device="cpu", dtype=torch.float64))[0]
        p, lower, upper = torch.linalg.lu(q)
        diag = upper.diagonal()
        # The factorisation runs on the CPU in float64; the results go to the default
        # device and dtype (e.g. under torch.set_default_device("cuda")).
        like = {"dtype": torch.get_default_dtype(), "device": torch.empty(0).device}
        self.register_buffer("perm", p.to(**like))
        self.register_buffer("sign", diag.sign().to(**like))
        self.register_buffer("lower_mask", torch.ones(n, n).tril(-1))
        self.lower = nn.Parameter(lower.tril(-1).to(**like))
        self.upper = nn.Parameter(upper.triu(1).to(**like))
        self.log_diag = nn.Parameter(diag.abs().log().to(**like))
        self.n = n

    def factors(self):
        eye = torch.eye(self.n, dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign * self.log_diag.exp())
        return lower, upper

    def weight(self) -> torch.Tensor:
        lower, upper = self.factors()
        return self.perm @ lower @ upper

    def inverse_weight(self) -> torch.Tensor:
        """:math:`W^{-1} = U^{-1} L^{-1} P^T` by triangular solves (no general inverse)."""
        lower, upper = self.factors()
        eye = torch.eye(self.n, dtype=lower.dtype, device=lower.device)
        l_inv = torch.linalg.solve_triangular(lower, eye, upper=False, unitriangular=True)
        u_inv = torch.linalg.solve_triangular(upper, eye, upper=True)
        return u_inv @ l_inv @ self.perm.T

    def log_abs_det(self) -> torch.Tensor:
        return self.log_diag.sum()


def _full_precision(x: torch.Tensor):
    """Autocast off, for an invertible matrix product: under ``torch.autocast`` a
    bfloat16 product would hand the next layer a tensor of another dtype than its
    parameters (which it refuses) and lose the exact inverse."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.autocast(device, enabled=False)
    return contextlib.nullcontext()


class InvertibleLinear(FlowTransform):
    r"""A learnable affine flow with an LU-parameterized matrix (Kingma & Dhariwal, 2018).

    In the normalizing direction (data to base, ``_inverse``)
    :math:`f(x) = A^{-1}(x - b)`; sampling (``_call``) is :math:`x = A z + b`, and

    .. math::

        \log|\det \partial x/\partial z| = \log|\det A| = \textstyle\sum_i d_i,

    with :math:`A` parameterized by :class:`LUWeight`: :math:`O(D)` log-determinant and
    always invertible. On its own an affine flow is only a Gaussian; between couplings
    it is a learned generalisation of a permutation.

    :param int input_dim: size :math:`D` of the vectors.

    >>> layer = invertible_linear(3)
    >>> z = torch.randn(4, 3)
    >>> torch.allclose(layer.inv(layer(z)), z, atol=1e-5)
    True
    """

    def __init__(self, input_dim: int):
        check_count(input_dim, "input_dim", type(self).__name__)
        super().__init__(event_shape=(input_dim,))
        self.weight = LUWeight(input_dim)
        self.bias = nn.Parameter(torch.zeros(input_dim))

    def _ladj(self, x):
        return self.weight.log_abs_det().expand(x.shape[:-1])

    def _call_and_ladj(self, x):
        with _full_precision(x):
            return nn.functional.linear(x, self.weight.weight(), self.bias), self._ladj(x)

    def _inverse_and_ladj(self, y):
        with _full_precision(y):
            return nn.functional.linear(y - self.bias, self.weight.inverse_weight()), self._ladj(y)


def scaling(input_dim: int) -> Scaling:
    """A :class:`Scaling` layer on vectors of size ``input_dim``.

    >>> scaling(4).log_scale.shape
    torch.Size([4])
    """
    return Scaling((check_count(input_dim, "input_dim", "scaling"),))


def invertible_linear(input_dim: int) -> InvertibleLinear:
    """An :class:`InvertibleLinear` layer on vectors of size ``input_dim``.

    >>> invertible_linear(3)(torch.zeros(5, 3)).shape
    torch.Size([5, 3])
    """
    return InvertibleLinear(check_count(input_dim, "input_dim", "invertible_linear"))


# ---------------------------------------------------------------------------- images
class Invertible1x1Conv(FlowTransform):
    r"""Glow's invertible 1x1 convolution (Kingma & Dhariwal, 2018):
    the same learned invertible matrix :math:`W \in \mathbb R^{C \times C}` mixes the
    channels at every pixel, a learned generalisation of the channel permutation
    between couplings.

    .. math::

        y_{:, h, w} = W x_{:, h, w}, \qquad x_{:, h, w} = W^{-1} y_{:, h, w}, \qquad
        \log|\det J| = H W \log|\det W| = H W \textstyle\sum_i d_i,

    with :math:`W = P L (U + \operatorname{diag}(\sigma e^{d}))` parameterized by
    :class:`LUWeight`, so the log-determinant costs :math:`O(C)` and the inverse uses
    triangular solves. :math:`W` starts as a random rotation (:math:`\log|\det W| = 0`).

    :param int num_channels: channels :math:`C` of the ``(C, H, W)`` events.

    >>> layer = invertible_1x1_conv(3)
    >>> x = torch.randn(2, 3, 4, 4)
    >>> torch.allclose(layer.inv(layer(x)), x, atol=1e-5)
    True
    """

    def __init__(self, num_channels: int):
        check_count(num_channels, "num_channels", type(self).__name__)
        super().__init__()
        self.event_dim_ = 3
        self.num_channels = num_channels
        self.weight = LUWeight(num_channels)

    def _check(self, x, what, dtype=None):
        check_event(type(self).__name__, x, None, what, dtype)
        if x.dim() < 3 or x.shape[-3] != self.num_channels:
            raise ValueError(
                f"{type(self).__name__}: expected {what} of shape (*batch, {self.num_channels}, H, W), "
                f"got {tuple(x.shape)}"
            )

    def _ladj(self, x):
        return (self.weight.log_abs_det() * (x.shape[-1] * x.shape[-2])).expand(x.shape[:-3])

    @staticmethod
    def _mix(matrix, x):
        # W @ (*batch, C, H*W): a contiguous result (einsum's was a permuted view, which
        # torch's own transforms, e.g. AffineTransform's log-det, cannot .view())
        return (matrix @ x.flatten(-2)).unflatten(-1, x.shape[-2:])

    def _call_and_ladj(self, x):
        with _full_precision(x):
            return self._mix(self.weight.weight(), x), self._ladj(x)

    def _inverse_and_ladj(self, y):
        with _full_precision(y):
            return self._mix(self.weight.inverse_weight(), y), self._ladj(y)

    def extra_repr(self):
        return f"num_channels={self.num_channels}"


def invertible_1x1_conv(num_channels: int) -> Invertible1x1Conv:
    """An :class:`Invertible1x1Conv` over ``num_channels`` channels.

    >>> invertible_1x1_conv(4).weight.weight().shape
    torch.Size([4, 4])
    """
    return Invertible1x1Conv(num_channels)


class LocScale(Scaling):
    r"""A learnable elementwise affine map :math:`y = \mu + e^{\rho} \odot x`,
    :math:`\log|\det J| = \sum_i \rho_i`, started at a given location and scale: a
    :class:`Scaling` followed by a learnable shift.

    The last layer of a flow guide: it places the flow at the model's initial point and
    sets the initial spread, so the couplings only have to learn the shape.

    :param loc: initial :math:`\mu`; its shape is the event shape (``(D,)`` for vectors).
        A floating-point tensor keeps its dtype and device (the parameters are made
        like it); anything else (a list, an integer tensor) is read in the default dtype.
    :param float init_scale: initial :math:`e^{\rho}` (all coordinates).

    >>> layer = LocScale(torch.tensor([1.0, -1.0]), init_scale=0.5)
    >>> layer(torch.ones(2)).tolist()
    [1.5, -0.5]
    >>> LocScale(torch.tensor([1.0], dtype=torch.float64)).loc.dtype
    torch.float64
    """

    def __init__(self, loc: torch.Tensor, init_scale: float = 1.0):
        if isinstance(loc, torch.Tensor) and loc.is_floating_point():
            loc = loc.detach()
        else:
            loc = torch.as_tensor(loc, dtype=torch.get_default_dtype())
        if not (init_scale > 0 and math.isfinite(init_scale)):  # inf: log-scale inf, NaN outputs
            raise ValueError(
                f"{type(self).__name__}: init_scale must be positive and finite, got {init_scale}"
            )
        super().__init__(loc.shape)
        # the location as given, not rounded to the default dtype nor moved to the
        # default device; the log-scale made like it
        self.loc = nn.Parameter(loc.clone())
        self.log_scale = nn.Parameter(torch.full_like(loc, math.log(init_scale)))

    def _call_and_ladj(self, x):
        y, ladj = super()._call_and_ladj(x)
        return self.loc + y, ladj

    def _inverse_and_ladj(self, y):
        return super()._inverse_and_ladj(y - self.loc)


class Permutation(FlowTransform):
    r"""A fixed permutation of coordinates, :math:`y = x_{\pi}`, :math:`\log|\det J| = 0`.

    Between coupling layers it lets every pair of coordinates meet on opposite sides of
    some partition (with fixed half masks, coordinates in the same half never condition
    one another). The permutation is drawn from a generator seeded by ``seed`` so that a
    rebuilt guide has the same one: the parameter store alone restores a guide.

    :param int dim: size of the vectors.
    :param int seed: seed of the permutation.

    >>> p = Permutation(4, seed=0)
    >>> x = torch.randn(3, 4)
    >>> torch.equal(p.inv(p(x)), x)
    True
    """

    def __init__(self, dim: int, seed: int = 0):
        check_count(dim, "dim", type(self).__name__)
        super().__init__(event_shape=(dim,))
        perm = torch.randperm(dim, generator=torch.Generator().manual_seed(seed), device="cpu")
        device = torch.empty(0).device  # drawn on the CPU for reproducibility, kept on the default device
        self.register_buffer("perm", perm.to(device))
        self.register_buffer("inverse_perm", torch.argsort(perm).to(device))

    def _call_and_ladj(self, x):
        return x[..., self.perm], x.new_zeros(x.shape[:-1])

    def _inverse_and_ladj(self, y):
        return y[..., self.inverse_perm], y.new_zeros(y.shape[:-1])
