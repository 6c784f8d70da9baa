"""Continuous-time flows: FFJORD."""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

from torch import nn

from ..nn.odefunc import DynamicsNet
from ..transforms.continuous import FFJORD, ConditionalFFJORD
from ._checks import check_hidden_dims

__all__ = ["ffjord", "conditional_ffjord"]


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
    sample_method: Optional[str] = None,
    sample_rtol: Optional[float] = None,
    sample_atol: Optional[float] = None,
    sample_options: Optional[dict] = None,
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
    :class:`~pyro_flows.transforms.FFJORD` for the trace, solver (for scoring and,
    with ``sample_*``, for sampling) and regularisation options. Train it by maximum
    likelihood, or by flow matching with :mod:`pyro_flows.train.flow_matching`.

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
        sample_method=sample_method,
        sample_rtol=sample_rtol,
        sample_atol=sample_atol,
        sample_options=sample_options,
    )


def conditional_ffjord(
    input_dim: int,
    context_dim: int,
    hidden_dims: Sequence[int] = (64, 64),
    activation: Union[str, Callable[[], nn.Module]] = "softplus",
    **settings,
) -> ConditionalFFJORD:
    r"""A conditional FFJORD: one :class:`~pyro_flows.transforms.ConditionalFFJORD` whose
    dynamics :math:`h(t, z; c)` is a :class:`~pyro_flows.nn.DynamicsNet` with the context
    concatenated to its input.

    Use it with :class:`pyro.distributions.ConditionalTransformedDistribution`, as a
    conditional density or an amortized posterior, like
    :func:`~pyro_flows.conditional_real_nvp`; train it by maximum likelihood or by
    conditional flow matching (:func:`pyro_flows.train.flow_matching.flow_matching_loss`
    with ``context=``). ``settings`` are the solver options of :func:`ffjord`.

    :param int input_dim: dimension :math:`D \ge 1`.
    :param int context_dim: size of the context vector.

    >>> import torch, pyro.distributions as dist
    >>> cflow = conditional_ffjord(2, context_dim=1, hidden_dims=(16,), rtol=1e-4, atol=1e-4)
    >>> base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    >>> d = dist.ConditionalTransformedDistribution(base, [cflow]).condition(torch.ones(3, 1))
    >>> d.log_prob(torch.zeros(3, 2)).shape
    torch.Size([3])
    """
    if not isinstance(input_dim, int) or input_dim < 1:
        raise ValueError(f"conditional_ffjord: expected a positive integer input_dim, got {input_dim!r}")
    hidden_dims = check_hidden_dims(hidden_dims, "conditional_ffjord")
    dynamics = DynamicsNet(input_dim, hidden_dims, activation, context_dim=context_dim)
    return ConditionalFFJORD(dynamics, input_dim, context_dim, **settings)
