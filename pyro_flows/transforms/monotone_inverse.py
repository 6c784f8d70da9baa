r"""Inverting an increasing map :math:`F: \mathbb R \to (0, 1)` elementwise, with gradients.

Used for the inverse of a mixture CDF and of a Beta CDF, which have no closed form.
Both are described by a function ``log_parts(x) -> (log F(x), log(1 - F(x)), log F'(x))``
that is accurate in the tails, so the solver works on the log scale of whichever tail
the target lies in:

.. math::

    r(x) = \begin{cases} \log F(x) - \log u, & u \le \tfrac12,\\
                         \log(1-u) - \log(1-F(x)), & u > \tfrac12, \end{cases}

an increasing function with a single root. Targets such as :math:`u = 10^{-12}` or
:math:`1 - 10^{-12}` are thereby as well conditioned as :math:`u = 0.3`.

**Algorithm.** Newton steps on :math:`r`, safeguarded by a bracket
:math:`[\ell, h]` with :math:`r(\ell) \le 0 \le r(h)` that every evaluation shrinks: a
Newton step that leaves the bracket (or is not finite) is replaced by bisection, so the
iteration always converges, quadratically near the root. A positive bracket spanning
more than a factor 4 is bisected geometrically, :math:`\sqrt{\ell h}`, so that roots
many orders of magnitude below the bracket's top (a Beta quantile of :math:`10^{-100}`)
are found within ``max_iter``.

**Tolerance.** Iteration stops when every element's last step is at most
``rtol * |x|`` (relative, so tiny roots are resolved too) with ``rtol = 8 * finfo(dtype).eps`` by default (about
:math:`1.8\cdot10^{-15}` in float64, :math:`10^{-6}` in float32), or after ``max_iter``
steps.

**Gradients.** The iteration runs without autograd; :func:`attach_implicit_gradient`
then adds the graph of one Newton step whose *value* is zero, which by the implicit
function theorem gives :math:`\partial x/\partial\theta = -(\partial F/\partial\theta) /
(\partial F/\partial x)` and :math:`\partial x/\partial u = 1/F'(x)`, and a second one
with the slope's graph, which makes the second derivatives exact too (the Newton map's
derivative in :math:`x` vanishes at the root, so each step adds one exact order).
"""

from __future__ import annotations

from typing import Callable, Tuple

import torch

__all__ = ["LogParts", "invert_monotone", "attach_implicit_gradient", "solve_monotone"]

#: ``x -> (log F(x), log(1 - F(x)), log F'(x))``, elementwise
LogParts = Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _residual_and_slope(log_parts: LogParts, x, log_u, log_v, upper_tail):
    log_cdf, log_sf, log_pdf = log_parts(x)
    residual = torch.where(upper_tail, log_v - log_sf, log_cdf - log_u)
    # d residual / dx: F'/F in the lower tail, F'/(1-F) in the upper one
    slope = torch.exp(log_pdf - torch.where(upper_tail, log_sf, log_cdf))
    return residual, slope


def _midpoint(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """The bisection point of ``[lower, upper]``: geometric where the bracket is positive
    and spans more than a factor 4, so that a root such as :math:`10^{-200}` in
    :math:`[10^{-308}, 1]` is reached in a few dozen halvings of its exponent rather than
    hundreds of halvings of its value; arithmetic elsewhere."""
    geometric = (lower > 0) & (upper > 4 * lower)
    return torch.where(geometric, lower.sqrt() * upper.sqrt(), 0.5 * (lower + upper))


@torch.no_grad()
def invert_monotone(
    log_parts: LogParts,
    u: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    max_iter: int = 200,
    rtol: float | None = None,
) -> torch.Tensor:
    """Solve :math:`F(x) = u` elementwise inside the bracket ``[lower, upper]`` (no graph).

    :param log_parts: ``x -> (log F, log(1 - F), log F')``, elementwise, increasing F.
    :param u: targets strictly inside (0, 1).
    :param lower: points with :math:`F(lower) \\le u` (broadcastable to ``u``).
    :param upper: points with :math:`F(upper) \\ge u`.
    :returns: ``x`` of ``u``'s shape, dtype and device.

    >>> import torch
    >>> parts = lambda x: (torch.special.log_ndtr(x), torch.special.log_ndtr(-x),
    ...                    -0.5 * x**2 - 0.9189385332046727)
    >>> u = torch.tensor([1e-12, 0.5, 1 - 1e-12], dtype=torch.float64)
    >>> x = invert_monotone(parts, u, torch.full_like(u, -10.0), torch.full_like(u, 10.0))
    >>> torch.allclose(x, torch.special.ndtri(u), rtol=1e-12)
    True
    """
    u = u.detach()
    lower, upper = torch.broadcast_tensors(lower.detach().to(u), upper.detach().to(u), u)[:2]
    lower, upper = lower.clone(), upper.clone()
    if rtol is None:
        rtol = 8 * torch.finfo(u.dtype).eps
    log_u, log_v = torch.log(u), torch.log1p(-u)
    upper_tail = u > 0.5
    x = 0.5 * (lower + upper)
    # under torch.func.vmap no value can decide a branch: every iteration runs
    batched = torch._C._functorch.is_batchedtensor(x)
    for _ in range(max_iter):
        residual, slope = _residual_and_slope(log_parts, x, log_u, log_v, upper_tail)
        too_far = residual > 0
        upper = torch.where(too_far, x, upper)
        lower = torch.where(too_far, lower, x)
        step = x - residual / slope
        # NaN/inf steps fail both comparisons and fall back to bisection
        inside = (step > lower) & (step < upper)
        new = torch.where(inside, step, _midpoint(lower, upper))
        new = torch.where(residual == 0, x, new)
        converged = (new - x).abs() <= rtol * x.abs() + torch.finfo(x.dtype).tiny
        x = new
        if not batched and bool(converged.all()):
            break
    return x


def attach_implicit_gradient(log_parts: LogParts, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Return ``x`` (a root of :math:`F(x) = u` found without autograd) with the
    implicit-function gradient attached: same values, correct first and second
    derivatives with respect to ``u`` and to whatever ``log_parts`` depends on (for
    gradient penalties and Hessians through a numerical quantile)."""
    if not torch.is_grad_enabled():
        return x
    x = x.detach()
    upper_tail = u.detach() > 0.5
    log_u, log_v = torch.log(u), torch.log1p(-u)
    residual, slope = _residual_and_slope(log_parts, x, log_u, log_v, upper_tail)
    # a Newton step whose value is exactly zero but whose derivative is -dr/(dr/dx)
    x = x - (residual - residual.detach()) / slope.detach()
    # A second such step from there, with the slope's graph: the Newton map N has
    # dN/dx = 0 at the root, so the step's derivatives of order k need those of its
    # starting point to order k - 1 only; this makes the second derivatives exact.
    residual, slope = _residual_and_slope(log_parts, x, log_u, log_v, upper_tail)
    return x - (residual - residual.detach()) / slope


def solve_monotone(log_parts: LogParts, u: torch.Tensor, lower, upper, **kwargs) -> torch.Tensor:
    """:func:`invert_monotone` followed by :func:`attach_implicit_gradient`."""
    x = invert_monotone(log_parts, u, lower, upper, **kwargs)
    return attach_implicit_gradient(log_parts, x, u)
