"""Base distributions as modules, so that ``.to(device)`` and ``state_dict`` cover them."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints
from torch.distributions.utils import lazy_property

__all__ = ["BaseDistribution", "base_distribution", "latent_bridge"]


class BaseDistribution(nn.Module):
    """Holds a distribution's tensor parameters as buffers and rebuilds it on call.

    Calling the module returns the distribution with its parameters on the module's
    current device and dtype, with ``event_shape`` the flow's event shape.

    :param distribution: any Pyro/PyTorch distribution whose constructor takes its
        ``arg_constraints`` as keyword arguments (Normal, Uniform, Beta, Laplace,
        StudentT, ...), optionally wrapped in ``.to_event(n)``.

    >>> base = BaseDistribution(dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1))
    >>> base().event_shape
    torch.Size([2])
    """

    def __init__(self, distribution: torch.distributions.Distribution):
        super().__init__()
        self.reinterpreted = 0
        while isinstance(distribution, torch.distributions.Independent):
            self.reinterpreted += distribution.reinterpreted_batch_ndims
            distribution = distribution.base_dist
        self.cls = type(distribution)
        self.names = []
        for name in distribution.arg_constraints:
            if isinstance(getattr(type(distribution), name, None), lazy_property) and (
                name not in distribution.__dict__
            ):
                # derived from the parameter given (a MultivariateNormal's covariance from
                # its scale_tril, probs from logits): passing both would over-specify it.
                # Checked before reading it, which would store it in the instance.
                continue
            value = getattr(distribution, name, None)
            if isinstance(value, torch.Tensor):
                self.register_buffer(name, value.detach().clone())
                self.names.append(name)
        self.kwargs = {
            k: v for k, v in vars(distribution).items() if k == "df" and not isinstance(v, torch.Tensor)
        }

    def forward(self) -> torch.distributions.Distribution:
        d = self.cls(**{n: getattr(self, n) for n in self.names}, **self.kwargs)
        return d.to_event(self.reinterpreted) if self.reinterpreted else d

    def extra_repr(self):
        return f"{self.cls.__name__}, reinterpreted_batch_ndims={self.reinterpreted}"


def _check_base_params(base, params: dict, owner: Optional[str] = None) -> None:
    """Refuse keywords a base given by name does not take, and Beta parameters that are
    not positive finite numbers (the Beta distribution would reject them under the name of
    a Dirichlet); ``owner`` (the transform being built) starts the message."""
    if not isinstance(base, str):
        return
    prefix = f"{owner}: " if owner else ""
    allowed = {"beta": ("a", "b")}.get(base.lower(), ())
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise TypeError(
            f"{prefix}base {base!r} takes {'keywords ' + ', '.join(allowed) if allowed else 'no keywords'}, "
            f"got {', '.join(unknown)}"
        )
    for key in allowed:
        if key not in params:
            continue
        value = params[key]
        try:
            number = None if isinstance(value, bool) else float(value)
        except (TypeError, ValueError, RuntimeError):
            number = None
        if number is None or not (math.isfinite(number) and number > 0):
            raise ValueError(
                f"{prefix}the Beta base needs positive, finite parameters a and b, got {key}={value!r}"
            )


def base_distribution(
    base: Union[str, torch.distributions.Distribution], event_shape: Sequence[int], **params
) -> BaseDistribution:
    """A standard base over ``event_shape`` by name, or a given distribution.

    * ``"normal"``: :math:`\\mathcal N(0, I)` (the default wherever a base is chosen,
      unless the transform names its own, see :class:`~pyro_flows.Flow`);
    * ``"uniform"``: Uniform(0, 1) per coordinate;
    * ``"beta"``: Beta(a, b) per coordinate (``a``, ``b`` keyword arguments, default 5, 5
      as in the 1-D flow examples).

    A distribution passed in must have event shape ``event_shape`` (or batch shape
    ``event_shape`` and none; it is then reinterpreted as one event).

    >>> base_distribution("beta", (3,), a=2.0, b=2.0)().event_shape
    torch.Size([3])
    """
    shape = torch.Size(event_shape)
    n = len(shape)
    if isinstance(base, str):
        name = base.lower()
        _check_base_params(base, params)
        if name == "normal":
            d = dist.Normal(torch.zeros(shape), torch.ones(shape))
        elif name == "uniform":
            d = dist.Uniform(torch.zeros(shape), torch.ones(shape))
        elif name == "beta":
            a, b = params.get("a", 5.0), params.get("b", 5.0)
            d = dist.Beta(torch.full(shape, float(a)), torch.full(shape, float(b)))
        else:
            raise ValueError(f"unknown base {base!r}; expected 'normal', 'uniform', 'beta' or a distribution")
        return BaseDistribution(d.to_event(n) if n else d)
    if not isinstance(base, torch.distributions.Distribution):
        raise TypeError(f"base must be a name or a torch/Pyro distribution, got {type(base).__name__}")
    if params:
        raise TypeError(
            f"keywords {', '.join(sorted(params))} apply to a base given by name, not to a distribution"
        )
    if base.event_shape == shape:
        return BaseDistribution(base)
    if base.event_shape == () and base.batch_shape == shape:
        return BaseDistribution(base.to_event(n))
    raise ValueError(
        f"base distribution has batch shape {tuple(base.batch_shape)} and event shape "
        f"{tuple(base.event_shape)}; expected event shape {tuple(shape)}"
    )


def _support_kind(constraint) -> str:
    """``"real"``, ``"unit"`` (the interval (0, 1)) or ``"other"``."""
    while isinstance(constraint, constraints.independent):
        constraint = constraint.base_constraint
    if isinstance(constraint, constraints._Real):
        return "real"
    if isinstance(constraint, constraints._Interval):
        low, high = torch.as_tensor(constraint.lower_bound), torch.as_tensor(constraint.upper_bound)
        if bool((low == 0).all()) and bool((high == 1).all()):
            return "unit"
    return "other"


def latent_bridge(
    base: torch.distributions.Distribution, transform: nn.Module, event_shape: Sequence[int]
) -> Optional[nn.Module]:
    """The transform that lets ``base`` drive ``transform`` when the base's support is
    not the transform's domain, or ``None`` when it is.

    * transform on the reals (RealNVP, NICE, ...), base on (0, 1) or elsewhere:
      :class:`~pyro_flows.transforms.ChangeOfBase` from the base to N(0, 1);
    * transform on (0, 1) (a bare :class:`~pyro_flows.transforms.MixtureCDF`), base on
      the reals: the base's :class:`~pyro_flows.transforms.BaseCDF`.

    The bridge is a fixed bijection between the two latents, so the density of the
    model is the same for every such base; only the latent changes.
    Supports of the same kind (Beta and Uniform on (0, 1)) are not bridged: the base
    then feeds the transform directly, as in the 1-D flow examples.

    >>> from pyro_flows import real_nvp
    >>> bridge = latent_bridge(base_distribution("beta", (2,))(), real_nvp(2, num_layers=2, hidden_dims=(4,)), (2,))
    >>> type(bridge).__name__, bridge.codomain.base_constraint
    ('ChangeOfBase', Real())
    """
    from .transforms.elementwise import BaseCDF, ChangeOfBase  # elementwise builds on this module

    domain = _support_kind(getattr(transform, "domain", constraints.real))
    support = _support_kind(base.support)
    if domain == support:
        return None
    if domain == "real":
        return ChangeOfBase(base, "normal", event_shape)
    if domain == "unit":
        return BaseCDF(base, event_shape)
    raise ValueError(
        f"cannot bridge a base with support {base.support} to a transform with domain "
        f"{transform.domain}; use a base on the transform's domain"
    )
