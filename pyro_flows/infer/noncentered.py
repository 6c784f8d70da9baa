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

The flow guides' default, ``noncentered="auto"``, is partial: a centeredness
:math:`c \in [0, 1)` per element, fixed at the start (:func:`curvature_centeredness`),
gives :math:`x = \mu + \sigma^{1 - c} (u - c \mu)`; ``"learn"`` learns one per site.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
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
from pyro.poutine.runtime import _DIM_ALLOCATOR
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

from .supports import _support_numbers

__all__ = ["curvature_centeredness", "dependent_support_sites", "loc_scale_sites", "site_transform"]

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


def _support_bounds(support) -> list:
    """The tensors a support is parametrized by (an interval's bounds, say; none for the
    fixed supports such as ``positive`` or ``simplex``)."""
    return [value for value in _support_numbers(support).values() if torch.is_tensor(value)]


def dependent_support_sites(model, trace, args=(), kwargs=None) -> frozenset:
    """The latent sites of a model trace whose support depends on the values of other
    latent sites (``Uniform(0, t)`` with ``t`` latent): their bounds differ in a second
    run of the model from the prior. A guide must map such a site's coordinates with the
    support of the draw's own parents, not with the support at its initial point.

    >>> def model():
    ...     t = pyro.sample("t", dist.LogNormal(0.0, 1.0))
    ...     pyro.sample("u", dist.Uniform(0.0, t))
    ...     pyro.sample("v", dist.Uniform(0.0, 2.0))
    >>> sorted(dependent_support_sites(model, poutine.trace(model).get_trace()))
    ['u']
    """
    candidates = [name for name, site in trace.iter_stochastic_nodes() if _support_bounds(site["fn"].support)]
    if not candidates:
        return frozenset()
    values = [v for v in _values(trace) if torch.is_tensor(v)]
    devices = sorted({v.device.index or 0 for v in values if v.device.type == "cuda"})
    try:
        # the caller's random stream is left as it was
        with torch.random.fork_rng(devices=devices), poutine.block():
            other = poutine.trace(model).get_trace(*args, **dict(kwargs or {}))
    except Exception:  # a prior draw the model cannot take: assume every candidate depends
        return frozenset(candidates)
    out = set()
    for name in candidates:
        if name not in other.nodes:
            out.add(name)
            continue
        mine = _support_bounds(trace.nodes[name]["fn"].support)
        theirs = _support_bounds(other.nodes[name]["fn"].support)
        if len(mine) != len(theirs) or any(
            a.shape != b.shape or not torch.equal(a.detach(), b.detach())
            for a, b in zip(mine, theirs, strict=True)
        ):
            out.add(name)
    return frozenset(out)


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

    def __init__(
        self,
        unconstrained: Dict[str, torch.Tensor],
        noncentered: dict,
        densities: bool,
        shapes: Optional[Dict[str, torch.Size]] = None,
    ):
        super().__init__()
        self.unconstrained = unconstrained
        self.shapes = shapes or {}
        self.noncentered = noncentered
        self.densities = densities
        self.values: Dict[str, torch.Tensor] = {}
        self.log_densities: Dict[str, torch.Tensor] = {}

    def _pyro_sample(self, msg):
        name = msg["name"]
        if msg["is_observed"] or name not in self.unconstrained:
            return
        u = self.unconstrained[name]
        expected = self.shapes.get(name)
        if expected is not None:
            shape = msg["fn"].shape()
            if tuple(shape[len(shape) - len(expected) :]) != tuple(expected):
                raise shape_change_error(name, shape, expected)
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


def shape_change_error(name: str, shape, expected) -> ValueError:
    """The error for a latent site whose shape differs from the one a flow guide was built
    with (a flow guide models one latent vector of fixed size)."""
    return ValueError(
        f"flow guide: site {name!r} has shape {tuple(shape)} in this run of the "
        f"model, but {tuple(expected)} when the guide was built; a flow guide "
        "models one latent vector of fixed size, so the model's latent shapes "
        "(plate sizes, data-dependent sizes) must not change between calls. Build "
        "a new guide for the new shapes (after pyro.clear_param_store())."
    )


def plate_nesting(trace) -> int:
    """How many plate dimensions a model trace uses, those of its observed sites included."""
    dims = [
        -frame.dim
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized and frame.dim is not None
    ]
    return max(dims, default=0)


def plate_dims_taken(nesting: int) -> bool:
    """Whether an enclosing plate (vectorized particles, say) holds one of the rightmost
    ``nesting`` dimensions: a model run there, hidden from it by ``poutine.block``, would
    have its own plates placed further left."""
    return any(name is not None for name in _DIM_ALLOCATOR._stack[:nesting])


@contextmanager
def own_plate_dims():
    """Run a model's plates on dimensions of their own: the enclosing plates' dimensions,
    which Pyro allocates globally whether or not a ``poutine.block`` hides those plates,
    are set aside while the block runs and restored after. Inside, a plate takes the
    dimension it takes in a run of its own (automatic ones from -1 leftwards)."""
    held = _DIM_ALLOCATOR._stack
    _DIM_ALLOCATOR._stack = []
    try:
        yield
    finally:
        _DIM_ALLOCATOR._stack = held


def site_values(
    model,
    unconstrained: Dict[str, torch.Tensor],
    noncentered: dict,
    args,
    kwargs,
    densities=True,
    shapes: Optional[Dict[str, torch.Size]] = None,
):
    """Run ``model`` hidden from every other handler, with each latent site set from its
    latent coordinates; return the values and (with ``densities``) the Delta
    log-densities of the sites, ``-log|det|`` of each site's map. ``noncentered`` maps
    the non-centered sites to their centeredness (``None``: 0). The other sites take the
    bijection of their support in this run (which may depend on their parents' values).
    With ``shapes`` (the sites' shapes when the guide was built), a site of another
    shape is refused with an error that says why."""
    messenger = _SiteValues(unconstrained, noncentered, densities, shapes)
    with poutine.block(), messenger:
        model(*args, **kwargs)
    missing = set(unconstrained) - set(messenger.values)
    if missing:
        raise ValueError(
            f"non-centered guide: the model did not reach the sites {sorted(missing)} of its first run"
        )
    return messenger.values, messenger.log_densities


def _values(trace):
    return [site["value"] for _, site in trace.iter_stochastic_nodes()]


def _rest_curvature(model, trace, name: str, args, kwargs, exact_max: int, probes: int) -> torch.Tensor:
    """Minus the second derivative of the log density of everything but site ``name`` with
    respect to its value, at the point of ``trace``: per element for sites of up to
    ``exact_max`` elements, else the mean over its elements (a Hutchinson estimate of the
    Hessian's trace with fixed Rademacher probes), broadcast to the site's shape."""
    values = {n: s["value"].detach() for n, s in trace.iter_stochastic_nodes()}
    x = values[name].clone().requires_grad_(True)
    values[name] = x
    with poutine.block():
        rest = poutine.trace(poutine.condition(model, data=values)).get_trace(*args, **kwargs)
    log_rest = rest.log_prob_sum(site_filter=lambda n, site: n != name)
    if not torch.is_tensor(log_rest) or not log_rest.requires_grad:
        return torch.zeros_like(x.detach())
    # log_rest may need grad through other tensors only (learnt parameters of the model's
    # own reparametrizers, say) and not depend on x at all
    (grad,) = torch.autograd.grad(log_rest, x, create_graph=True, allow_unused=True)
    if grad is None or not grad.requires_grad:  # constant or linear in x: no curvature
        return torch.zeros_like(x.detach())
    flat = grad.reshape(-1)
    n = flat.numel()
    if n <= exact_max:
        rows = [torch.autograd.grad(flat[i], x, retain_graph=True)[0].reshape(-1)[i] for i in range(n)]
        return -torch.stack(rows).reshape(x.shape).detach()
    gen = torch.Generator().manual_seed(0)
    total = 0.0
    for _ in range(probes):
        v = (torch.randint(0, 2, x.shape, generator=gen) * 2 - 1).to(dtype=x.dtype, device=x.device)
        (hv,) = torch.autograd.grad(grad, x, v, retain_graph=True)
        total = total + (v * hv).sum()
    return torch.full_like(x.detach(), -float(total) / (probes * n))


def curvature_centeredness(
    model, trace, sites, args=(), kwargs=None, exact_max: int = 64, probes: int = 8
) -> Dict[str, torch.Tensor]:
    r"""A centeredness per element of each site in ``sites``, from how strongly the rest of
    the model pins it at the point of ``trace`` (the guide's initial point).

    For :math:`x \sim \mathcal N(\mu, \sigma)` whose other factors (its children and
    the data) have curvature :math:`h = -\partial^2_x \log p(\text{rest} \mid x)`,
    the posterior of :math:`x` given its parents is Gaussian with variance
    :math:`\sigma^2 / (1 + \sigma^2 h)` in the conjugate case, and the coordinates
    :math:`x = \mu + \sigma^{1 - c} (u - c \mu)` of Pyro's ``LocScaleReparam``
    decouple :math:`u` from the parents when

    .. math::

        c = \frac{\kappa}{1 + \kappa}, \qquad \kappa = \sigma^2 \max(h, 0):

    the centered coordinates (:math:`c \to 1`) where the data dominate the prior, the
    non-centered ones (:math:`c \to 0`) where the prior does (Papaspiliopoulos, Roberts
    and Sköld, 2007; Gorinova, Moore and Hoffman, 2020). :math:`h` is exact per element
    for sites of up to ``exact_max`` elements and the site's mean (a Hutchinson estimate
    with ``probes`` fixed probes) above. A non-finite curvature gives :math:`c = 0`.

    >>> def model(y):
    ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     pyro.sample("y", dist.Normal(mu, 0.1), obs=y)
    >>> trace = poutine.trace(model).get_trace(torch.tensor(0.0))
    >>> round(float(curvature_centeredness(model, trace, ["mu"], (torch.tensor(0.0),))["mu"]), 4)
    0.9901
    """
    kwargs = dict(kwargs or {})
    out = {}
    devices = sorted({v.device.index or 0 for v in _values(trace) if v.device.type == "cuda"})
    for name in sorted(sites):
        site = trace.nodes[name]
        _, scale = _loc_scale(site["fn"])
        # the model's own code may draw (a plate's subsample, say): the caller's random
        # stream is left as it was
        with torch.random.fork_rng(devices=devices):
            h = _rest_curvature(model, trace, name, args, kwargs, exact_max, probes)
        kappa = scale.detach().square() * h.clamp(min=0)
        c = (kappa / (1 + kappa)).expand(h.shape)
        out[name] = torch.where(torch.isfinite(c), c, torch.zeros_like(c)).contiguous()
    return out


def noncentered_init(site, centered: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The latent coordinates of a prototype site's initial value (``(x - loc) / scale``
    when fully non-centered)."""
    value = site["value"].detach()
    transform = site_transform(site["fn"], True, centered)
    return transform.inv(value).detach().expand(value.shape)


class NonCenteredNeuTraReparam(NeuTraReparam):
    r"""Pyro's :class:`~pyro.infer.reparam.NeuTraReparam` for a guide with ``noncentered``
    set (or latent supports that depend on other latents): the location-scale sites take
    the guide's map with the model's own location and scale (``loc + scale * u`` when
    fully non-centered, see :func:`site_transform`), as in the guide. Any other
    :class:`~pyro.infer.autoguide.AutoContinuous` guide is warped as by Pyro's, except
    that the flow's :math:`\log|\det J|` enters the potential once: Pyro's adds it to
    the first latent site, which counts it once per element when that site is in a plate."""

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
                    # a factor of its own, outside the latent sites' plates: in the Delta of a
                    # first site in a plate (where Pyro's NeuTraReparam puts it) the log|det J|
                    # of the whole latent vector was counted once per element of the plate
                    ladj = self.transform.log_abs_det_jacobian(z, x_unconstrained)
                    pyro.factor(f"{name}_shared_latent_log_det", ladj)
            self.x_unconstrained = {site["name"]: u for site, u in self.guide._unpack_latent(x_unconstrained)}
        u = self.x_unconstrained.pop(name)
        noncentered = self.guide.site_centeredness() if hasattr(self.guide, "site_centeredness") else {}
        transform = site_transform(fn, name in noncentered, noncentered.get(name))
        value = transform(u)
        if compute_density:
            log_density = log_density + fn.log_prob(value) - _log_density(transform, u, value, fn.event_dim)
        return {
            "fn": dist.Delta(value, log_density, event_dim=fn.event_dim),
            "value": value,
            "is_observed": True,
        }

    @property
    def runs_model(self) -> bool:
        """Whether draws are mapped to the model's sites by running the model (a flow guide
        with non-centered sites or supports that depend on other latents); else as Pyro's,
        with the bijections of the supports at the guide's initial point."""
        return bool(
            getattr(self.guide, "noncentered_sites", None)
            or getattr(self.guide, "dependent_support_sites", None)
        )

    def model_plate_nesting(self) -> int:
        """How many plate dimensions the model uses, those of its observed sites included
        (the draws' batch dimension must stand left of them when the model runs)."""
        values = {n: s["value"] for n, s in self.guide.prototype_trace.iter_stochastic_nodes()}
        with poutine.block():
            trace = poutine.trace(poutine.condition(self.guide.model_as_written, data=values)).get_trace(
                *self.model_args, **self.model_kwargs
            )
        dims = [
            -f.dim for site in trace.nodes.values() for f in site.get("cond_indep_stack", ()) if f.vectorized
        ]
        return max(dims, default=0)

    def transform_sample(self, latent):
        """The model's latent sites for draws of the warped posterior (see Pyro's)."""
        if not self.runs_model:
            return super().transform_sample(latent)
        unconstrained = {site["name"]: u for site, u in self.guide._unpack_latent(self.transform(latent))}
        values, _ = site_values(
            self.guide.model_as_written,
            unconstrained,
            self.guide.site_centeredness(),
            self.model_args,
            self.model_kwargs,
            densities=False,
            shapes=self.guide._site_shapes(),
        )
        return values
