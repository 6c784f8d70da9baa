"""``Flow``: one module that owns a transform and its base distribution."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import pyro.distributions as dist
import torch
from pyro.distributions.torch_transform import ComposeTransformModule
from torch import nn
from torch.distributions import Distribution

from .bases import base_distribution, latent_bridge
from .transforms.base import FlowTransform

__all__ = ["Flow"]


class Flow(nn.Module):
    r"""A normalizing flow model: a transform and its base distribution in one module.

    Calling it returns a :class:`pyro.distributions.TransformedDistribution` on the
    module's device and dtype, so that ``.to("cuda")``, ``.double()``, ``state_dict`` and
    ``.parameters()`` cover both parts. With base :math:`p_Z` and transform :math:`T`
    (base to data; the normalizing map is :math:`T^{-1}`),

    .. math::

        \log p(x) = \log p_Z(T^{-1}(x)) - \log\left|\det \frac{\partial T}{\partial z}\right|_{z=T^{-1}(x)},
        \qquad x = T(z),\; z \sim p_Z.

    :param transform: a :class:`~pyro.distributions.TransformModule` (or a plain
        :class:`torch.distributions.transforms.Transform`) or a list of them (applied in
        order from the base).
    :param base: ``"normal"``, ``"uniform"``, ``"beta"`` or a distribution; see
        :func:`~pyro_flows.bases.base_distribution`. Default: the transform's
        ``default_base`` if it has one (e.g. :func:`~pyro_flows.cdf_flow`), else ``"normal"``.
        When the base's support differs from the transform's domain (a Beta base for a
        RealNVP), :func:`~pyro_flows.bases.latent_bridge` puts the matching
        :class:`~pyro_flows.transforms.ChangeOfBase` in front; the
        model's density is unchanged, only its latent follows the chosen base.
    :param event_shape: shape of one data point; read from the transform when it has an
        ``event_shape`` attribute.

    >>> import pyro_flows
    >>> flow = Flow(pyro_flows.real_nvp(2, num_layers=2, hidden_dims=(8,)))
    >>> x = flow.sample((5,))
    >>> flow.log_prob(x).shape
    torch.Size([5])
    """

    def __init__(
        self,
        transform: Union[nn.Module, Sequence[nn.Module]],
        base: Union[str, torch.distributions.Distribution, None] = None,
        event_shape: Optional[Sequence[int]] = None,
        **base_params,
    ):
        super().__init__()
        if isinstance(transform, (list, tuple)):
            transform = ComposeTransformModule(list(transform))
        elif not isinstance(transform, nn.Module):
            # a plain torch transform (AffineTransform, ...): a module, as a list would be
            transform = ComposeTransformModule([transform])
        self.transform = transform
        if event_shape is None:
            event_shape = _event_shape_of(transform)
        self.event_shape = torch.Size(event_shape)
        if base is None:
            base = getattr(transform, "default_base", "normal")
            base_params = {**getattr(transform, "default_base_params", {}), **base_params}
        self.base = base_distribution(base, self.event_shape, **base_params)
        # Follow a transform that was already moved (e.g. built then .double()'d): the
        # base, and the bridge, whose target base is built in the default dtype.
        reference = next(iter(transform.parameters()), None)
        if reference is not None:
            self.base.to(device=reference.device, dtype=reference.dtype)
        self.bridge = latent_bridge(self.base(), transform, self.event_shape)
        if reference is not None and self.bridge is not None:
            self.bridge.to(device=reference.device, dtype=reference.dtype)

    def _transforms(self) -> list:
        parts = (
            self.transform.parts if isinstance(self.transform, ComposeTransformModule) else [self.transform]
        )
        bridge = [] if self.bridge is None else [self.bridge]
        return bridge + list(parts)

    def forward(self) -> dist.TransformedDistribution:
        return dist.TransformedDistribution(self.base(), self._transforms())

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of data ``x`` of shape ``(*batch, *event_shape)``; shape ``batch``
        (empty for an empty batch).

        With distribution validation off it runs the loop of
        :meth:`torch.distributions.TransformedDistribution.log_prob` (the same calls, the
        same arithmetic, the same caches) without building the distribution, whose
        constructor composes all the parts once more to work out shapes: at a small batch
        that was about a tenth of a call."""
        if isinstance(x, torch.Tensor) and x.numel() == 0:
            # torch's Independent.log_prob (the base's) cannot sum over an empty batch;
            # the layers still run, so a wrong shape or dtype is reported as for any batch
            for transform in reversed(self._transforms()):
                x = transform.inv(x)
            return x.new_zeros(x.shape[: x.dim() - len(self.event_shape)])
        if Distribution._validate_args:
            try:
                return self().log_prob(x)  # the support check, with torch's message
            except ValueError as err:
                # torch's message prints the values, summarised for a large batch, where
                # the NaN may not show: name it (only on the way out, at no cost otherwise)
                nan = (
                    int(torch.isnan(x).sum()) if isinstance(x, torch.Tensor) and x.is_floating_point() else 0
                )
                if nan:
                    raise ValueError(
                        f"Flow.log_prob: the value holds NaN ({nan} of {x.numel()} elements); {err}"
                    ) from err
                raise
        transforms = self._transforms()
        event_dims = [(t.domain.event_dim, t.codomain.event_dim) for t in transforms]
        base = self.base()
        event_dim = _data_event_dim(event_dims, len(base.event_shape))
        log_prob = 0.0
        y = x
        for transform, (domain_dim, codomain_dim) in zip(
            reversed(transforms), reversed(event_dims), strict=True
        ):
            if isinstance(transform, FlowTransform):
                x, ladj = transform._inv_and_ladj(y)
            else:
                x = transform.inv(y)
                ladj = transform.log_abs_det_jacobian(x, y)
            event_dim += domain_dim - codomain_dim
            log_prob = log_prob - _sum_rightmost(ladj, event_dim - domain_dim)
            y = x
        return log_prob + _sum_rightmost(base.log_prob(y), event_dim - len(base.event_shape))

    def sample(self, sample_shape=()) -> torch.Tensor:
        """Draw samples without gradients, shape ``(*sample_shape, *event_shape)``: the
        base's draws through every part, as
        :meth:`torch.distributions.TransformedDistribution.sample` does, without building
        the distribution."""
        transforms = self._transforms()
        base = _expanded_base(self.base(), transforms)
        with torch.no_grad():
            x = base.sample(sample_shape)
            for transform in transforms:
                x = transform(x)
            return x

    def rsample(self, sample_shape=()) -> torch.Tensor:
        """Draw reparameterized samples (gradients reach the parameters)."""
        return self().rsample(sample_shape)


def _sum_rightmost(value, dim: int):
    """``value`` summed over its ``dim`` rightmost dimensions (torch's helper of the same name)."""
    if dim == 0:
        return value
    return value.reshape(value.shape[:-dim] + (-1,)).sum(-1)


def _data_event_dim(event_dims: list, base_event_dim: int) -> int:
    """``len(TransformedDistribution(base, parts).event_shape)`` from the parts' ``(domain,
    codomain)`` event dims, as torch works it out: the parts may have more event dims than
    the base (a coupling over a base with a batch shape) or change them (a reshape)."""
    if not event_dims:
        return base_event_dim
    # the event dims of ComposeTransform(parts).domain and .codomain
    domain = event_dims[-1][1]
    for domain_dim, codomain_dim in reversed(event_dims):
        domain = max(domain + domain_dim - codomain_dim, domain_dim)
    codomain = event_dims[0][0]
    for domain_dim, codomain_dim in event_dims:
        codomain = max(codomain + codomain_dim - domain_dim, codomain_dim)
    return max(codomain, base_event_dim + codomain - domain)


def _expanded_base(base: Distribution, transforms: list) -> Distribution:
    """``base`` expanded to the batch shape the parts give it, as
    :class:`~torch.distributions.TransformedDistribution` does: a part with a batch shape of
    its own (an ``AffineTransform`` with a ``(3, 2)`` shift over ``(2,)`` events) gets
    independent draws per batch element, not one draw broadcast."""
    shape = base.batch_shape + base.event_shape
    data_shape = shape
    for transform in transforms:
        data_shape = transform.forward_shape(data_shape)
    expanded = data_shape
    for transform in reversed(transforms):
        expanded = transform.inverse_shape(expanded)
    if expanded == shape:
        return base
    return base.expand(expanded[: len(expanded) - len(base.event_shape)])


def _event_shape_of(transform) -> torch.Size:
    parts = getattr(transform, "parts", [transform])
    for part in parts:
        shape = getattr(part, "event_shape", None)
        if shape is not None:
            return torch.Size(shape)
    raise ValueError("cannot infer the event shape from the transform; pass event_shape=")
