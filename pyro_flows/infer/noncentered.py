r"""Non-centered coordinates for flow guides.

A hierarchical model draws a site from a location-scale family whose location and scale
depend on other latent variables, :math:`x \sim \mathcal N(\mu(v), \sigma(v))`. In these
*centered* coordinates the posterior of :math:`(v, x)` is a funnel whose neck a guide
fitted by reverse KL tends to miss. In *non-centered* coordinates (Papaspiliopoulos,
Roberts and Sköld, 2007)

.. math::

    x = \mu(v) + \sigma(v)\, u,

the prior of :math:`u` is the family's standard member and the funnel is gone. A flow
guide with ``noncentered=True`` models :math:`u` instead of :math:`x` and maps its draws
to the model's sites by running the model's own code, so :math:`\mu(v)` and
:math:`\sigma(v)` are those of the draw of :math:`v`; its density is

.. math::

    \log q(v, x) = \log \tilde q(v, u) - \log \sigma(v).

The model keeps its centered form: the guide is a different family for the same
posterior, the one a ``LocScaleReparam(0)`` of every location-scale site (Gorinova, Moore
and Hoffman, 2020) would give, with the ELBO and its gradients unchanged.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Dict, Optional, Tuple

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.distributions.util import sum_rightmost
from pyro.infer.reparam import NeuTraReparam
from pyro.poutine.messenger import Messenger
from pyro.poutine.plate_messenger import block_plate
from torch.distributions import (
    AffineTransform,
    Cauchy,
    Gumbel,
    Independent,
    Laplace,
    Normal,
    StudentT,
    biject_to,
    constraints,
)

__all__ = ["loc_scale_sites", "site_transform"]

#: the families whose ``loc`` and ``scale`` are a location and a scale on the real line
_LOC_SCALE = (Normal, StudentT, Cauchy, Laplace, Gumbel)


def _loc_scale(fn) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """``(loc, scale)`` of a site's distribution when it is a location-scale family on the
    real line (looking through ``to_event``, masks and expansions), else ``None``."""
    while isinstance(fn, (Independent, MaskedDistribution, ExpandedDistribution)):
        fn = fn.base_dist
    if isinstance(fn, _LOC_SCALE) and fn.support is constraints.real:
        return fn.loc, fn.scale
    return None


def loc_scale_sites(trace) -> frozenset:
    """The names of the latent sites of a model trace that a non-centered guide
    standardizes: those drawn from a location-scale family on the real line.

    >>> def model():
    ...     v = pyro.sample("v", dist.Normal(0.0, 3.0))
    ...     pyro.sample("s", dist.LogNormal(0.0, 1.0))
    ...     pyro.sample("x", dist.Normal(torch.zeros(3), (v / 2).exp()).to_event(1))
    >>> sorted(loc_scale_sites(poutine.trace(model).get_trace()))
    ['v', 'x']
    """
    return frozenset(
        name for name, site in trace.iter_stochastic_nodes() if _loc_scale(site["fn"]) is not None
    )


def site_transform(fn, noncentered: bool, centered: Optional[torch.Tensor] = None):
    """The map from a site's coordinates in the guide's latent vector to its value:
    ``x = loc + scale * u`` with the distribution's own ``loc`` and ``scale`` when
    ``noncentered``, else :func:`~torch.distributions.biject_to` of its support. With a
    centeredness ``c`` in [0, 1], the partial non-centering of Pyro's ``LocScaleReparam``,
    ``x = loc + scale ** (1 - c) * (u - c * loc)`` (``c = 1``: ``x = u``).

    >>> fn = dist.Normal(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 0.5]))
    >>> site_transform(fn, noncentered=True)(torch.ones(2))
    tensor([3.0000, 2.5000])
    >>> site_transform(dist.LogNormal(0.0, 1.0), noncentered=False)(torch.tensor(0.0))
    tensor(1.)
    """
    if not noncentered:
        return biject_to(fn.support)
    loc, scale = _loc_scale(fn)
    if centered is None:
        return AffineTransform(loc, scale)
    factor = scale.pow(1 - centered)
    return AffineTransform(loc - centered * loc * factor, factor)


def _log_density(transform, unconstrained: torch.Tensor, value: torch.Tensor, event_dim: int) -> torch.Tensor:
    # The Delta site's log-density: minus log|det| of the map from the latent coordinates.
    log_density = transform.inv.log_abs_det_jacobian(value, unconstrained)
    return sum_rightmost(log_density, log_density.dim() - value.dim() + event_dim)


class _SiteValues(Messenger):
    """Sets each latent site of the model it wraps from its latent coordinates, in the
    model's order, so a site's location and scale are those of its parents' values."""

    def __init__(self, unconstrained: Dict[str, torch.Tensor], noncentered: dict, densities: bool):
        super().__init__()
        self.unconstrained = unconstrained
        self.noncentered = noncentered
        self.densities = densities
        self.values: Dict[str, torch.Tensor] = {}
        self.log_densities: Dict[str, torch.Tensor] = {}

    def _pyro_sample(self, msg):
        name = msg["name"]
        if msg["is_observed"] or name not in self.unconstrained:
            return
        u = self.unconstrained[name]
        noncentered = name in self.noncentered
        transform = site_transform(msg["fn"], noncentered, self.noncentered.get(name))
        value = transform(u)
        # (a support's own bijection may change the shape: a simplex has one coordinate more)
        if noncentered and value.shape != u.shape:
            raise ValueError(
                f"non-centered guide: site {name!r} has location/scale of batch shape "
                f"{tuple(value.shape)} where its value has {tuple(u.shape)}; the guide needs "
                "a model whose site shapes do not depend on the draw"
            )
        msg["value"] = value
        self.values[name] = value
        if self.densities:
            self.log_densities[name] = _log_density(transform, u, value, msg["fn"].event_dim)


def site_values(
    model, unconstrained: Dict[str, torch.Tensor], noncentered: dict, args, kwargs, densities=True
):
    """Run ``model`` hidden from every other handler, with each latent site set from its
    latent coordinates; return the values and (with ``densities``) the Delta
    log-densities of the sites, ``-log|det|`` of each site's map. ``noncentered`` maps
    the non-centered sites to their centeredness (``None``: 0)."""
    messenger = _SiteValues(unconstrained, noncentered, densities)
    with poutine.block(), messenger:
        model(*args, **kwargs)
    missing = set(unconstrained) - set(messenger.values)
    if missing:
        raise ValueError(
            f"non-centered guide: the model did not reach the sites {sorted(missing)} of its first run"
        )
    return messenger.values, messenger.log_densities


def noncentered_init(site, centered: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The latent coordinates of a prototype site's initial value (``(x - loc) / scale``
    when fully non-centered)."""
    value = site["value"].detach()
    transform = site_transform(site["fn"], True, centered)
    return transform.inv(value).detach().expand(value.shape)


class NonCenteredNeuTraReparam(NeuTraReparam):
    """Pyro's :class:`~pyro.infer.reparam.NeuTraReparam` for a guide with
    ``noncentered=True``: the location-scale sites take ``loc + scale * u`` with the
    model's own location and scale, as in the guide."""

    def __init__(self, guide, model_args=(), model_kwargs=None):
        super().__init__(guide)
        self.model_args = tuple(model_args)
        self.model_kwargs = dict(model_kwargs or {})

    def apply(self, msg):
        name = msg["name"]
        if name not in self.guide.prototype_trace.nodes:
            return {"fn": msg["fn"], "value": msg["value"], "is_observed": msg["is_observed"]}
        if msg["is_observed"]:
            raise NotImplementedError(
                f"At pyro.sample({name!r}, ...), NeuTra does not support observed sites"
            )
        fn = msg["fn"]
        log_density = 0.0
        compute_density = poutine.get_mask() is not False
        if name not in self.x_unconstrained:  # the first latent site draws the shared latent
            self.transform = self.guide.get_transform()
            with ExitStack() as stack:
                for plate in self.guide.plates.values():
                    stack.enter_context(block_plate(dim=plate.dim, strict=False))
                z = pyro.sample(f"{name}_shared_latent", self.guide.get_base_dist().mask(False))
            x_unconstrained = self.transform(z)
            if compute_density:
                log_density = self.transform.log_abs_det_jacobian(z, x_unconstrained)
            self.x_unconstrained = {site["name"]: u for site, u in self.guide._unpack_latent(x_unconstrained)}
        u = self.x_unconstrained.pop(name)
        noncentered = self.guide.site_centeredness()
        transform = site_transform(fn, name in noncentered, noncentered.get(name))
        value = transform(u)
        if compute_density:
            log_density = log_density + fn.log_prob(value) - _log_density(transform, u, value, fn.event_dim)
        return {
            "fn": dist.Delta(value, log_density, event_dim=fn.event_dim),
            "value": value,
            "is_observed": True,
        }

    def transform_sample(self, latent):
        """The model's latent sites for draws of the warped posterior (see Pyro's)."""
        unconstrained = {site["name"]: u for site, u in self.guide._unpack_latent(self.transform(latent))}
        values, _ = site_values(
            self.guide.model,
            unconstrained,
            self.guide.site_centeredness(),
            self.model_args,
            self.model_kwargs,
            densities=False,
        )
        return values
