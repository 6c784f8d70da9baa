r"""Elementwise 1-D flows: a learnable mixture CDF and the CDFs of base distributions
(the probability integral transform and its inverse, Papamakarios et al., 2021, Sec. 2).

A 1-D flow from data :math:`X` to a base :math:`Z \sim p_Z` can always be built in two
steps: the data's CDF :math:`F` maps :math:`X` to
:math:`U \sim \mathrm{Uniform}(0, 1)` and the base's quantile :math:`G^{-1}` maps
:math:`U` to :math:`Z`:

.. math::

    x \;\xrightarrow{\;F\;}\; u \;\xrightarrow{\;G^{-1}\;}\; z,
    \qquad \log p_X(x) = \log p_Z(z) + \log F'(x) - \log g(z) = \log F'(x).

:class:`MixtureCDF` learns :math:`F`; :class:`BaseCDF` is :math:`G`; and
:class:`ChangeOfBase` is :math:`G_t^{-1} \circ G_s`, which moves the latent of any flow
from one base to another. Every transform here acts coordinatewise on an event of any
shape.

**Direction.** Following Pyro, ``_call`` goes from the base side to the data side, so

* ``MixtureCDF``: ``_call`` is :math:`F^{-1}` (u to x; root finding), ``_inverse`` is
  :math:`F` (x to u; closed form). Scoring data (``log_prob``) therefore never solves an
  equation; only sampling does.
* ``BaseCDF``: ``_call`` is :math:`G` (z to u), ``_inverse`` is :math:`G^{-1}`.

**The edges of (0, 1).** In floating point :math:`F(x)` rounds to 0 or 1 far in the
tails, where no quantile is finite. Values on the (0, 1) side are therefore kept in
:math:`[\text{tiny}, 1 - \epsilon/2]` of their dtype (:math:`1 - 1.1\cdot10^{-16}` in
float64), which bounds a Normal latent to about :math:`\pm 8.3` in float64 and
:math:`\pm 5.3` in float32. Log-densities stay exact there, because
:math:`\log F'(x)` is computed from :math:`x` in log space, never from :math:`u`.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch
from torch import nn
from torch.distributions import constraints

from ._arguments import check_event_shape
from .base import (
    FlowTransform,
    all_true,
    check_event,
    count_false,
    in_pyro_context,
    sum_event,
    validation_enabled,
)
from .cdf_functions import check_supported, log_parts, quantile
from .monotone_inverse import attach_implicit_gradient, invert_monotone

__all__ = ["MixtureCDF", "BaseCDF", "ChangeOfBase", "mixture_cdf", "base_cdf", "change_of_base"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_COMPONENTS = ("gaussian", "logistic")


def clamp_open_unit(u: torch.Tensor) -> torch.Tensor:
    """Keep ``u`` inside :math:`[\\text{tiny}, 1-\\epsilon/2]`, the open unit interval as
    the dtype can represent it."""
    info = torch.finfo(u.dtype)
    return u.clamp(min=info.tiny, max=1 - info.eps / 2)


def _cdf_from_log_parts(log_cdf: torch.Tensor, log_sf: torch.Tensor) -> torch.Tensor:
    """:math:`u = F(x)` read off whichever tail is accurate (``exp(log F)`` below 1/2,
    ``1 - exp(log(1 - F))`` above), kept inside the open unit interval."""
    u = torch.where(log_cdf < -math.log(2), log_cdf.exp(), -torch.expm1(log_sf))
    return clamp_open_unit(u)


def _check_unit(name: str, u: torch.Tensor, what: str = "input") -> None:
    """Under validation, ``u`` must lie in the unit interval (the transform's domain for
    an ``"input"``, its codomain for a ``"value"``)."""
    if not validation_enabled():
        return
    inside = (u >= 0) & (u <= 1)
    if not all_true(inside):
        raise ValueError(
            f"{name}: expected {what}s in the unit interval [0, 1], got {count_false(inside)}value(s) outside it"
        )


def _support_text(support) -> str:
    """A short description of a scalar support (``the unit interval [0, 1]``, ``the interval
    [-2, 3]``) or, for any other constraint, its repr."""
    if isinstance(support, constraints._Interval):
        low, high = torch.as_tensor(support.lower_bound), torch.as_tensor(support.upper_bound)
        if low.numel() == 1 and high.numel() == 1:
            if float(low) == 0 and float(high) == 1:
                return "the unit interval [0, 1]"
            return f"the interval [{float(low):g}, {float(high):g}]"
    return str(support)


def _plain_support(support):
    """The support as a parameter-free constraint (real, unit interval), or ``None``
    when it depends on the base's tensors (then it is rebuilt on demand)."""
    if isinstance(support, constraints._Real):
        return constraints.real
    if isinstance(support, constraints._Interval):
        low, high = torch.as_tensor(support.lower_bound), torch.as_tensor(support.upper_bound)
        if "meta" in (low.device.type, high.device.type):
            return None  # no values to inspect (construction under the meta device)
        if bool((low == 0).all()) and bool((high == 1).all()):
            return constraints.unit_interval
    return None


class MixtureCDF(FlowTransform):
    r"""A learnable monotone map onto (0, 1): the CDF of a mixture, coordinatewise.

    .. math::

        F(x) = \sum_{i=1}^{K} \pi_i\, C\!\left(\frac{x - \mu_i}{\sigma_i}\right),\qquad
        \log F'(x) = \operatorname{logsumexp}_i\!\left(\log\pi_i + \log c\!\left(\tfrac{x-\mu_i}{\sigma_i}\right)
        - \log\sigma_i\right),

    with :math:`C, c` the standard Gaussian or logistic CDF and density, and
    :math:`\pi = \operatorname{softmax}(\text{logits})`, :math:`\sigma = e^{\text{log\_scale}}`,
    separately for every coordinate of the event. :math:`\log F` and :math:`\log(1-F)`
    are also evaluated in log space (``log_ndtr``, ``softplus``), so nothing underflows
    in the tails.

    Direction: ``_call`` is the sampling map :math:`u \mapsto F^{-1}(u)` from
    :math:`(0,1)^{\text{event}}` to data, with ``log_abs_det_jacobian`` :math:`= -\sum
    \log F'(x)`; ``_inverse`` is the scoring map :math:`x \mapsto F(x)` in closed form.
    :math:`F^{-1}` is found by a bracketed, safeguarded Newton iteration in log space
    (see :mod:`~pyro_flows.transforms.monotone_inverse`; relative tolerance
    :math:`8\epsilon` of the dtype), correct for targets as extreme as :math:`10^{-12}`
    and :math:`1-10^{-12}`, and differentiable: gradients of samples with respect to the
    parameters follow the implicit function theorem,
    :math:`\partial x/\partial\theta = -(\partial F/\partial\theta)/F'(x)`.

    Used with a Uniform(0, 1) base this is a complete 1-D flow; with
    :class:`BaseCDF` in front it targets any base (:func:`~pyro_flows.cdf_flow`).

    :param event_shape: shape of one event (``()`` for scalars, ``(D,)``, ``(C, H, W)``).
    :param int num_components: :math:`K`.
    :param str component: ``"gaussian"`` or ``"logistic"``.

    >>> import pyro.distributions as dist
    >>> cdf = mixture_cdf(num_components=3)
    >>> d = dist.TransformedDistribution(dist.Uniform(0.0, 1.0), [cdf])
    >>> x = d.sample((4,))
    >>> d.log_prob(x).shape
    torch.Size([4])
    >>> bool(torch.allclose(cdf(cdf.inv(x)), x, atol=1e-5))
    True
    """

    #: increasing in every coordinate, so ``TransformedDistribution.cdf``/``icdf`` work
    sign = 1

    def __init__(self, event_shape: Sequence[int] = (), num_components: int = 4, component: str = "gaussian"):
        name = type(self).__name__
        if isinstance(num_components, bool) or not isinstance(num_components, int) or num_components < 1:
            raise ValueError(f"{name}: num_components must be a positive integer, got {num_components!r}")
        if component not in _COMPONENTS:
            raise ValueError(f"{name}: component must be one of {_COMPONENTS}, got {component!r}")
        super().__init__(event_shape=check_event_shape(event_shape, name))
        self.num_components = num_components
        self.component = component
        shape = (*self.event_shape, num_components)
        spread = torch.linspace(-2.0, 2.0, num_components) if num_components > 1 else torch.zeros(1)
        self.logits = nn.Parameter(torch.zeros(shape))
        self.loc = nn.Parameter(spread.expand(shape).clone())
        self.log_scale = nn.Parameter(torch.zeros(shape))

    # ---------------------------------------------------------------- constraints
    @constraints.dependent_property(is_discrete=False)
    def domain(self):
        return constraints.independent(constraints.unit_interval, self.event_dim_)

    @constraints.dependent_property(is_discrete=False)
    def codomain(self):
        return constraints.independent(constraints.real, self.event_dim_)

    # ----------------------------------------------------------------------- math
    @torch.no_grad()
    def init_from_data(self, data: torch.Tensor) -> "MixtureCDF":
        """Place the components at the data's quantiles (a good start for training).

        :param data: shape ``(N, *event_shape)``, in the dtype of the parameters (checked,
            as for ``log_prob``: convert the data or the mixture first).

        >>> cdf = mixture_cdf(2)
        >>> cdf.init_from_data(torch.tensor([0.0, 1.0, 9.0, 10.0])).loc.tolist()  # the quartiles
        [0.75, 9.25]
        >>> cdf.init_from_data(torch.tensor([0.0, 1.0], dtype=torch.float64))
        Traceback (most recent call last):
        ...
        ValueError: MixtureCDF: the data has dtype torch.float64 but the transform's parameters are torch.float32; convert the data (x.float()) or the flow (flow.double())
        """
        check_event(type(self).__name__, data, self.event_shape, "data", self.loc.dtype)
        k = self.num_components
        levels = (torch.arange(k, dtype=data.dtype, device=data.device) + 0.5) / k
        centres = torch.quantile(data.reshape(data.shape[0], -1), levels, dim=0)  # (K, numel)
        spread = data.reshape(data.shape[0], -1).std(0).clamp_min(1e-3) / math.sqrt(k)
        self.loc.copy_(centres.T.reshape(self.loc.shape))
        self.log_scale.copy_(spread.log().reshape(*self.event_shape, 1).expand(self.log_scale.shape))
        self.logits.zero_()
        return self

    def log_parts(self, x: torch.Tensor):
        """``(log F(x), log(1 - F(x)), log F'(x))``, elementwise, each of ``x``'s shape."""
        t = (x.unsqueeze(-1) - self.loc) / self.log_scale.exp()
        log_weight = torch.log_softmax(self.logits, dim=-1)
        if self.component == "gaussian":
            log_cdf, log_sf = torch.special.log_ndtr(t), torch.special.log_ndtr(-t)
            log_pdf = -0.5 * t.square() - _HALF_LOG_2PI
        else:
            log_cdf, log_sf = -nn.functional.softplus(-t), -nn.functional.softplus(t)
            log_pdf = log_cdf + log_sf
        return (
            torch.logsumexp(log_weight + log_cdf, -1),
            torch.logsumexp(log_weight + log_sf, -1),
            torch.logsumexp(log_weight + log_pdf - self.log_scale, -1),
        )

    def _standard_quantile(self, p: torch.Tensor) -> torch.Tensor:
        if self.component == "gaussian":
            return torch.special.ndtri(p)
        return torch.log(p) - torch.log1p(-p)

    def _bracket(self, u: torch.Tensor):
        # Every component CDF is <= u at loc + scale * C^{-1}(u/2), so F is too; the
        # halving keeps the bracket valid despite rounding. Symmetric components give
        # the upper end from the upper tail, computed without cancellation.
        scale = self.log_scale.exp()
        lower = (self.loc + scale * self._standard_quantile(u.unsqueeze(-1) / 2)).amin(-1)
        upper = (self.loc - scale * self._standard_quantile((1 - u.unsqueeze(-1)) / 2)).amax(-1)
        return lower, upper

    def _call_and_ladj(self, u):
        _check_unit(type(self).__name__, u, "input")
        u = clamp_open_unit(u)
        with torch.no_grad():
            lower, upper = self._bracket(u)
        x = invert_monotone(self.log_parts, u, lower, upper)
        x = attach_implicit_gradient(self.log_parts, x, u)
        return x, -sum_event(self.log_parts(x)[2], self.event_dim_)

    def _inverse_and_ladj(self, x):
        log_cdf, log_sf, log_pdf = self.log_parts(x)
        return _cdf_from_log_parts(log_cdf, log_sf), -sum_event(log_pdf, self.event_dim_)

    def log_abs_det_jacobian(self, x, y):
        """:math:`-\\sum \\log F'(y)`: read from the data side ``y``, so no root finding."""
        ladj = self._cached_ladj(x, y)
        if ladj is not None:
            return ladj
        self._check(y, "value", self._state()[1])
        return -sum_event(in_pyro_context(self, self.log_parts, y)[2], self.event_dim_)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_components={self.num_components}, component={self.component!r}"


def mixture_cdf(
    num_components: int = 4, event_shape: Sequence[int] = (), component: str = "gaussian"
) -> MixtureCDF:
    """A :class:`MixtureCDF` with ``num_components`` components per coordinate.

    >>> mixture_cdf(5, event_shape=(2,)).loc.shape
    torch.Size([2, 5])
    """
    return MixtureCDF(event_shape, num_components, component)


class BaseCDF(FlowTransform):
    r"""The CDF :math:`G` of a base distribution, coordinatewise: :math:`z \mapsto u = G(z)`.

    .. math::

        u = G(z), \qquad z = G^{-1}(u), \qquad \log\left|\frac{du}{dz}\right| = \sum \log g(z).

    Placed on the base side of a flow whose domain is :math:`(0,1)` (a :class:`MixtureCDF`),
    it makes the latent follow :math:`G` instead of Uniform(0, 1). It has
    no parameters; the base's parameters are buffers, so it follows ``.to()``.
    Supported: ``"normal"``, ``"uniform"``, ``"beta"`` (Beta CDF by continued fraction,
    its quantile by safeguarded Newton), or any scalar distribution with ``cdf``/``icdf``.

    :param base: name or distribution, as for :func:`~pyro_flows.bases.base_distribution`.
    :param event_shape: shape of one event.
    :param params: for ``"beta"``: ``a``, ``b`` (default 5, 5).

    >>> g = base_cdf("beta", a=2.0, b=2.0)
    >>> g(torch.tensor([0.5]))  # the median of a symmetric Beta
    tensor([0.5000])
    """

    #: increasing in every coordinate, so ``TransformedDistribution.cdf``/``icdf`` work
    sign = 1

    def __init__(
        self,
        base: Union[str, torch.distributions.Distribution] = "normal",
        event_shape: Sequence[int] = (),
        **params,
    ):
        from ..bases import _check_base_params, base_distribution  # bases builds bridges from this module

        name = type(self).__name__
        _check_base_params(base, params, name)
        super().__init__(event_shape=check_event_shape(event_shape, name))
        self.base = base_distribution(base, self.event_shape, **params)
        check_supported(self._scalar())
        self._support = _plain_support(self._scalar().support)

    def _scalar(self) -> torch.distributions.Distribution:
        d = self.base()
        while isinstance(d, torch.distributions.Independent):
            d = d.base_dist
        return d

    @constraints.dependent_property(is_discrete=False)
    def domain(self):
        support = self._support if self._support is not None else self._scalar().support
        return constraints.independent(support, self.event_dim_)

    @constraints.dependent_property(is_discrete=False)
    def codomain(self):
        return constraints.independent(constraints.unit_interval, self.event_dim_)

    def _check_support(self, z: torch.Tensor, owner: str, what: str) -> None:
        """Under validation, ``z`` must lie in the base's support (this transform's
        domain): outside it the CDF is 0 or 1 or undefined, and the result would be a
        silent NaN or a value clamped to the edge. ``owner`` is named in the error (the
        transform the user called). A real support needs nothing beyond finiteness,
        which :meth:`_check` has seen to."""
        if not validation_enabled():
            return
        support = self._support if self._support is not None else self._scalar().support
        if isinstance(support, constraints._Real):
            return
        inside = support.check(z)
        if not all_true(inside):
            raise ValueError(
                f"{owner}: expected {what}s in the support of the {self.base.cls.__name__} base, "
                f"{_support_text(support)}; got {count_false(inside)}value(s) outside it"
            )

    def _cdf(self, z):
        d = self._scalar()
        log_cdf, log_sf, log_pdf = log_parts(d, z)
        return _cdf_from_log_parts(log_cdf, log_sf), sum_event(log_pdf, self.event_dim_)

    def _quantile(self, u):
        d = self._scalar()
        z = quantile(d, clamp_open_unit(u))
        return z, sum_event(d.log_prob(z), self.event_dim_)

    def _call_and_ladj(self, z):
        self._check_support(z, type(self).__name__, "input")
        return self._cdf(z)

    def _inverse_and_ladj(self, u):
        _check_unit(type(self).__name__, u, "value")
        return self._quantile(u)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, base={self.base.cls.__name__}"


def base_cdf(base="normal", event_shape: Sequence[int] = (), **params) -> BaseCDF:
    """A :class:`BaseCDF` (see there).

    >>> base_cdf("normal")(torch.tensor([0.0])).tolist()
    [0.5]
    """
    return BaseCDF(base, event_shape, **params)


class ChangeOfBase(FlowTransform):
    r"""Move a latent from one base to another: :math:`z_t = G_t^{-1}(G_s(z_s))`, coordinatewise.

    .. math::

        \log\left|\frac{dz_t}{dz_s}\right| = \sum \log g_s(z_s) - \sum \log g_t(z_t).

    The composition :math:`Z_s \to U \to Z_t` of a CDF and a quantile function. Put in front of a flow
    that expects a ``target`` latent (e.g. a RealNVP, which expects a real-valued one), it
    lets that flow be driven by a ``source`` base such as Uniform(0, 1) or Beta(5, 5)
    without changing the model's density; :class:`~pyro_flows.Flow` inserts it
    automatically when the base's support does not match the transform's domain.

    >>> bridge = change_of_base("uniform", "normal")
    >>> bridge(torch.tensor([0.5, 0.975])).tolist()  # the Normal quantiles
    [0.0, 1.95996...]
    """

    #: increasing in every coordinate, so ``TransformedDistribution.cdf``/``icdf`` work
    sign = 1

    def __init__(self, source="uniform", target="normal", event_shape: Sequence[int] = (), **source_params):
        from ..bases import _check_base_params  # bases builds bridges from this module

        name = type(self).__name__
        _check_base_params(source, source_params, name)
        super().__init__(event_shape=check_event_shape(event_shape, name))
        self.source = BaseCDF(source, event_shape, **source_params)
        self.target = BaseCDF(target, event_shape)

    @constraints.dependent_property(is_discrete=False)
    def domain(self):
        return self.source.domain

    @constraints.dependent_property(is_discrete=False)
    def codomain(self):
        return self.target.domain

    # The parts' own checks would name them (BaseCDF) instead of this transform, and the
    # middle value u, a CDF's output, lies in [0, 1] by construction: check the ends only.
    def _call_and_ladj(self, z):
        self.source._check_support(z, type(self).__name__, "input")
        u, log_source = self.source._cdf(z)
        out, log_target = self.target._quantile(u)
        return out, log_source - log_target

    def _inverse_and_ladj(self, y):
        self.target._check_support(y, type(self).__name__, "value")
        u, log_target = self.target._cdf(y)
        z, log_source = self.source._quantile(u)
        return z, log_source - log_target


def change_of_base(source="uniform", target="normal", event_shape: Sequence[int] = (), **source_params):
    """A :class:`ChangeOfBase` (see there).

    >>> change_of_base("uniform", "normal").inv(torch.tensor([0.0])).tolist()
    [0.5]
    """
    return ChangeOfBase(source, target, event_shape, **source_params)
