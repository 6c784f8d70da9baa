"""Continuous-time flows: FFJORD."""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

from torch import nn

from ..nn.odefunc import DynamicsNet
from ..transforms.continuous import FFJORD
from ._checks import check_hidden_dims

__all__ = ["ffjord"]


def ffjord(
    input_dim: int,
    hidden_dims: Sequence[int] = (64, 64),
    activation: Union[str, Callable[[], nn.Module]] = "softplus",
    trace: str = "auto",
    noise: str = "rademacher",
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    adjoint: bool = False,
    options: Optional[dict] = None,
    kinetic_weight: float = 0.0,
    frobenius_weight: float = 0.0,
) -> FFJORD:
    r"""FFJORD (Grathwohl et al., 2019) on vectors of size ``input_dim``:
    one :class:`~pyro_flows.transforms.FFJORD` whose dynamics :math:`h(t, z)` is a
    :class:`~pyro_flows.nn.DynamicsNet` of concat-squash layers.

    .. math::

        \log p(x) = \log p_Z(z_1) + \int_0^1 \operatorname{tr}\frac{\partial h}{\partial z}(t, z_t)\,dt,
        \qquad z_0 = x,\ \dot z_t = h(t, z_t).

    The last layer starts at zero, so a new flow is its base distribution. Returns one
    :class:`~pyro.distributions.TransformModule`, so ``functools.partial(ffjord, ...)``
    can serve as Pyro's ``AutoNormalizingFlow(model, init_transform_fn)``. See
    :class:`~pyro_flows.transforms.FFJORD` for the trace, solver and regularisation
    options.

    :param int input_dim: dimension :math:`D \ge 1`.
    :param hidden_dims: hidden sizes of the dynamics network.
    :param activation: ``"softplus"`` (default), ``"tanh"``, ``"elu"``, ``"silu"`` or a
        callable returning a smooth ``nn.Module``.

    >>> import torch, pyro.distributions as dist
    >>> flow = ffjord(2, hidden_dims=(16,), rtol=1e-4, atol=1e-4)
    >>> d = dist.TransformedDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), [flow])
    >>> d.log_prob(torch.zeros(3, 2)).shape
    torch.Size([3])
    """
    if not isinstance(input_dim, int) or input_dim < 1:
        raise ValueError(f"ffjord: expected a positive integer input_dim, got {input_dim!r}")
    hidden_dims = check_hidden_dims(hidden_dims, "ffjord")
    dynamics = DynamicsNet(input_dim, hidden_dims, activation)
    return FFJORD(
        dynamics,
        input_dim,
        trace=trace,
        noise=noise,
        method=method,
        rtol=rtol,
        atol=atol,
        adjoint=adjoint,
        options=options,
        kinetic_weight=kinetic_weight,
        frobenius_weight=frobenius_weight,
    )
