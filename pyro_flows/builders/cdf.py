"""The 1-D CDF flow (data CDF, then the base's quantile), coordinatewise over any event shape."""

from __future__ import annotations

from typing import Sequence, Union

import torch
from pyro.distributions.torch_transform import ComposeTransformModule

from ..transforms.elementwise import BaseCDF, MixtureCDF

__all__ = ["CDFFlow", "cdf_flow"]


class CDFFlow(ComposeTransformModule):
    r"""A base CDF followed by a mixture-CDF inverse: ``[BaseCDF(base), MixtureCDF]``,
    built by :func:`cdf_flow`; sampling maps :math:`z \mapsto F_\theta^{-1}(G(z))`.

    Remembers its ``event_shape`` and its base (``default_base``,
    ``default_base_params``) so that
    ``pyro_flows.Flow(cdf_flow(...))`` picks the matching base distribution.
    ``.mixture`` is the learnable :class:`~pyro_flows.transforms.MixtureCDF` and
    ``.base_cdf`` the fixed :class:`~pyro_flows.transforms.BaseCDF`.

    >>> flow = cdf_flow(3, event_shape=(2,))
    >>> type(flow.mixture).__name__, flow.event_shape, flow(torch.zeros(5, 2)).shape
    ('MixtureCDF', torch.Size([2]), torch.Size([5, 2]))
    """

    def __init__(self, parts, event_shape, default_base="normal", default_base_params=None):
        super().__init__(parts)
        self.event_shape = torch.Size(event_shape)
        self.default_base = default_base
        self.default_base_params = dict(default_base_params or {})

    # the parts as nn.Module prints them (numbered and indented), not torch's one-line join
    __repr__ = torch.nn.Module.__repr__

    @property
    def base_cdf(self) -> BaseCDF:
        return self.parts[0]

    @property
    def mixture(self) -> MixtureCDF:
        return self.parts[1]


def cdf_flow(
    num_components: int = 8,
    base: Union[str, torch.distributions.Distribution] = "normal",
    event_shape: Sequence[int] = (),
    component: str = "gaussian",
    **base_params,
) -> CDFFlow:
    r"""A universal 1-D flow to a chosen base (a learned CDF, then the base's quantile).

    Scoring maps data through the learned mixture CDF and then the base's quantile,

    .. math::

        x \xrightarrow{F_\theta} u \xrightarrow{G^{-1}} z, \qquad
        \log p(x) = \log p_Z(z) + \log F_\theta'(x) - \log g(z) = \log F_\theta'(x),

    so the density is the mixture's whatever the base; the base only decides what the
    latent looks like. Sampling runs :math:`z \mapsto G(z) \mapsto F_\theta^{-1}(\cdot)`.
    Returns one :class:`~pyro.distributions.TransformModule` whose domain is the base's
    support; use it with that base (``pyro_flows.Flow(cdf_flow(...))`` does so).

    :param int num_components: mixture components per coordinate.
    :param base: ``"normal"``, ``"uniform"``, ``"beta"`` (``a``, ``b`` keywords, default
        5, 5) or a scalar distribution with ``cdf``/``icdf``.
    :param event_shape: ``()`` for scalar data of shape ``(N,)``; ``(D,)`` etc. to act
        on each coordinate independently.
    :param str component: ``"gaussian"`` or ``"logistic"``.

    >>> import pyro_flows
    >>> flow = pyro_flows.Flow(cdf_flow(4, base="beta"))
    >>> flow.base().mean.item()
    0.5
    >>> flow.log_prob(torch.tensor([0.0, 1.0])).shape
    torch.Size([2])
    """
    parts = [BaseCDF(base, event_shape, **base_params), MixtureCDF(event_shape, num_components, component)]
    return CDFFlow(parts, event_shape, base, base_params)
