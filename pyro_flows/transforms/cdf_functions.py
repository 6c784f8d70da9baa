r"""Tail-accurate CDFs and quantiles of the scalar base distributions.

For a distribution :math:`G` acting coordinatewise (Normal, Uniform, Beta, or any
distribution implementing ``cdf``/``icdf`` such as Laplace or Cauchy) this module gives

* :func:`log_parts`: :math:`(\log G(z), \log(1 - G(z)), \log g(z))`, the form the
  root finder of :mod:`~pyro_flows.transforms.monotone_inverse` works with;
* :func:`quantile`: :math:`G^{-1}(u)`.

PyTorch has no Beta CDF, so :func:`beta_log_cdf` evaluates the regularized incomplete
beta function :math:`I_z(a, b)` by its continued fraction (modified Lentz iteration), on
whichever side of the mode it converges fast, and the Beta quantile is found with the
safeguarded Newton solver.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch.distributions import Beta, Normal, Uniform

from .monotone_inverse import solve_monotone

__all__ = ["beta_log_cdf", "log_parts", "quantile", "check_supported"]

_CF_MAX_ITER = 300


def _incomplete_beta_cf(x, a, b):
    """Continued fraction of :math:`I_x(a,b)`: returns ``h`` with
    :math:`I_x(a,b) = x^a (1-x)^b h / (a\\,B(a,b))`. Converges fast for
    :math:`x < (a+1)/(a+b+2)`."""
    tiny = torch.finfo(x.dtype).tiny * 1e3
    eps = torch.finfo(x.dtype).eps

    def nonzero(t):
        return torch.where(t.abs() < tiny, torch.full_like(t, tiny), t)

    c = torch.ones_like(x)
    # under torch.func.vmap no value can decide a branch: every iteration runs
    batched = torch._C._functorch.is_batchedtensor(x)
    d = 1.0 / nonzero(1 - (a + b) * x / (a + 1))
    h = d
    for m in range(1, _CF_MAX_ITER + 1):
        # even coefficient d_{2m} = m (b - m) x / ((a + 2m - 1)(a + 2m))
        coef = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 / nonzero(1 + coef * d)
        c = nonzero(1 + coef / c)
        h = h * d * c
        # odd coefficient d_{2m+1} = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1))
        coef = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 / nonzero(1 + coef * d)
        c = nonzero(1 + coef / c)
        delta = d * c
        h = h * delta
        if not batched and bool(((delta - 1).abs() <= 4 * eps).all()):
            break
    return h


def _beta_log_cdf_sf(z, a, b):
    log_beta = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)
    lower_side = z < (a + 1) / (a + b + 2)
    # the fraction for I_z(a, b) on the lower side, for I_{1-z}(b, a) = 1 - I_z(a, b) above
    zz = torch.where(lower_side, z, 1 - z)
    aa, bb = torch.where(lower_side, a, b), torch.where(lower_side, b, a)
    h = _incomplete_beta_cf(zz, aa, bb)
    log_near = aa * torch.log(zz) + bb * torch.log1p(-zz) - torch.log(aa) - log_beta + torch.log(h)
    log_far = torch.log1p(-torch.exp(log_near).clamp(max=1.0))
    log_cdf = torch.where(lower_side, log_near, log_far)
    log_sf = torch.where(lower_side, log_far, log_near)
    return log_cdf, log_sf


def _beta_log_pdf(z, a, b):
    log_beta = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)
    # a factor z^0 or (1-z)^0 is 1 at the ends too (0 * log 0 would be NaN), as in torch's Beta
    lower = torch.where(a == 1, 0.0, (a - 1) * torch.log(z))
    upper = torch.where(b == 1, 0.0, (b - 1) * torch.log1p(-z))
    return lower + upper - log_beta


class _BetaLogCDF(torch.autograd.Function):
    """``(log I_z(a,b), log(1 - I_z(a,b)))`` differentiable in ``z`` (a, b are fixed)."""

    @staticmethod
    def forward(z, a, b):
        return _beta_log_cdf_sf(z, a, b)

    @staticmethod
    def vmap(info, in_dims, z, a, b):
        # elementwise, so a mapped batch is one more batch dimension: evaluated on plain
        # tensors, the continued fraction stops once it has converged (a batched tensor
        # cannot decide a branch, and the 300 iterations cost 100 times as much)
        def front(t, dim):
            return t.expand(info.batch_size, *t.shape) if dim is None else t.movedim(dim, 0)

        out = _BetaLogCDF.apply(front(z, in_dims[0]), front(a, in_dims[1]), front(b, in_dims[2]))
        return out, (0, 0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs, *output)

    @staticmethod
    def backward(ctx, grad_cdf, grad_sf):
        z, a, b, log_cdf, log_sf = ctx.saved_tensors
        log_pdf = _beta_log_pdf(z, a, b)
        # at the ends of the support a slope g/G or g/(1-G) is 0/0 or infinite; an output
        # that receives no gradient must contribute none (not 0 * inf = NaN)
        from_cdf = torch.where(grad_cdf == 0, 0.0, grad_cdf * torch.exp(log_pdf - log_cdf))
        from_sf = torch.where(grad_sf == 0, 0.0, grad_sf * torch.exp(log_pdf - log_sf))
        return from_cdf - from_sf, None, None


def beta_log_cdf(z: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(log I_z(a, b), log(1 - I_z(a, b)))`` for ``z`` in (0, 1), differentiable in ``z``.

    >>> z = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    >>> log_cdf, _ = beta_log_cdf(z, torch.tensor(2.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    >>> torch.allclose(log_cdf.exp(), z**2)  # I_z(2, 1) = z^2
    True
    """
    a, b = a.detach().to(z), b.detach().to(z)
    z_, a_, b_ = torch.broadcast_tensors(z, a, b)
    return _BetaLogCDF.apply(z_, a_.contiguous(), b_.contiguous())


def check_supported(d: torch.distributions.Distribution) -> None:
    """Raise ``ValueError`` unless ``d`` is scalar-valued with a usable CDF and quantile."""
    if d.event_shape != ():
        raise ValueError(
            f"expected a base that acts coordinatewise (scalar events, made an event with "
            f".to_event), got {type(d).__name__} with event shape {tuple(d.event_shape)}"
        )
    if isinstance(d, (Normal, Uniform, Beta)):
        return
    try:
        probe = d.sample()
        d.cdf(probe)
        d.icdf(torch.full_like(probe, 0.5))
    except NotImplementedError as err:
        raise ValueError(
            f"{type(d).__name__} does not implement cdf and icdf; use 'normal', 'uniform', "
            "'beta' or a distribution that does (Laplace, Cauchy, ...)"
        ) from err


def log_parts(d: torch.distributions.Distribution, z: torch.Tensor):
    """``(log G(z), log(1 - G(z)), log g(z))`` for a coordinatewise distribution ``d``."""
    if isinstance(d, Normal):
        t = (z - d.loc) / d.scale
        return torch.special.log_ndtr(t), torch.special.log_ndtr(-t), d.log_prob(z)
    if isinstance(d, Uniform):
        width = d.high - d.low
        log_pdf = -torch.log(width).expand_as(z)
        return _log_positive((z - d.low) / width), _log_positive((d.high - z) / width), log_pdf
    if isinstance(d, Beta):
        a, b = d.concentration1, d.concentration0
        log_cdf, log_sf = beta_log_cdf(z, a, b)
        return log_cdf, log_sf, _beta_log_pdf(z, a.to(z), b.to(z))
    cdf = d.cdf(z)
    return torch.log(cdf), torch.log1p(-cdf), d.log_prob(z)


def _log_positive(t: torch.Tensor) -> torch.Tensor:
    """``log(t)`` for ``t >= 0`` whose gradient is 0, not NaN, where ``t == 0`` (the edge
    of a Uniform's support, where the CDF's log is ``-inf``)."""
    positive = t > 0
    return torch.where(positive, torch.log(torch.where(positive, t, torch.ones_like(t))), -torch.inf)


def quantile(d: torch.distributions.Distribution, u: torch.Tensor) -> torch.Tensor:
    """:math:`G^{-1}(u)` for ``u`` strictly inside (0, 1).

    The Beta quantile is kept in :math:`[\\text{tiny}, 1 - \\epsilon/2]`, the open unit
    interval as the dtype represents it: a root nearer 1 than that rounds to 1, where
    the Beta density is 0 or infinite.
    """
    if isinstance(d, Normal):
        return d.loc + d.scale * torch.special.ndtri(u)
    if isinstance(d, Uniform):
        return d.low + u * (d.high - d.low)
    if isinstance(d, Beta):
        info = torch.finfo(u.dtype)
        lower, upper = torch.full_like(u, info.tiny), torch.full_like(u, 1 - info.eps / 2)
        return solve_monotone(lambda z: log_parts(d, z), u, lower, upper)
    return d.icdf(u)
