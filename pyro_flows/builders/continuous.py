"""Continuous-time flows: FFJORD."""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

from torch import nn

from ..nn.odefunc import DynamicsNet
from ..nn.velocity import VelocityNet
from ..transforms._arguments import _is_int, check_flag, check_hidden_dims
from ..transforms.continuous import FFJORD, ConditionalFFJORD

__all__ = ["ffjord", "conditional_ffjord", "FIELDS"]

#: the networks of the field h(t, z): concat-squash layers (:class:`~pyro_flows.nn.DynamicsNet`,
#: for maximum likelihood) or an MLP on a Fourier embedding of t (:class:`~pyro_flows.nn.VelocityNet`,
#: for flow matching), each with its default hidden sizes and activation
FIELDS = {
    "concat-squash": ((64, 64), "softplus"),
    "velocity": ((256, 256, 256), "silu"),
}


def _check_size(value, name: str, caller: str) -> int:
    """``value`` as a positive int (an integral type such as ``numpy.int64`` is accepted;
    a bool, which would pass as 1, or a float is not)."""
    if not _is_int(value) or value < 1:
        raise ValueError(f"{caller}: expected a positive integer {name}, got {value!r}")
    return int(value)


def _field_network(
    name, input_dim, hidden_dims, activation, context_dim, caller, state_features=None, state_frequency=1.0
):
    if name not in FIELDS:
        raise ValueError(f"{caller}: expected field in {tuple(FIELDS)}, got {name!r}")
    default_hidden, default_activation = FIELDS[name]
    hidden_dims = check_hidden_dims(default_hidden if hidden_dims is None else hidden_dims, caller)
    activation = default_activation if activation is None else activation
    if name == "velocity":
        return VelocityNet(
            input_dim,
            hidden_dims,
            activation,
            zero_init=True,
            context_dim=context_dim,
            state_features=state_features,
            state_frequency=state_frequency,
        )
    if state_features or state_frequency != 1.0:
        raise ValueError(
            f"{caller}: state_features and state_frequency are options of field='velocity', not {name!r}"
        )
    return DynamicsNet(input_dim, hidden_dims, activation, context_dim=context_dim)


def ffjord(
    input_dim: int,
    hidden_dims: Optional[Sequence[int]] = None,
    activation: Union[str, Callable[[], nn.Module], None] = None,
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
    field: str = "concat-squash",
    state_features: Optional[int] = None,
    state_frequency: float = 1.0,
) -> FFJORD:
    r"""FFJORD (Grathwohl et al., 2019) on vectors of size ``input_dim``:
    one :class:`~pyro_flows.transforms.FFJORD` whose dynamics :math:`h(t, z)` is a
    :class:`~pyro_flows.nn.DynamicsNet` of concat-squash layers (``field="concat-squash"``,
    the default, for maximum likelihood) or a :class:`~pyro_flows.nn.VelocityNet`, an MLP
    on :math:`z` and a Fourier embedding of :math:`t` (``field="velocity"``, the field
    that flow matching trains best; ``docs/ffjord.md`` compares them).

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
    :param hidden_dims: hidden sizes of the dynamics network (``None``: 64-64 for
        ``"concat-squash"``, 256-256-256 for ``"velocity"``).
    :param activation: ``"softplus"``, ``"tanh"``, ``"elu"``, ``"silu"`` or a callable
        returning a smooth ``nn.Module`` (``None``: softplus for ``"concat-squash"``, SiLU
        for ``"velocity"``).
    :param str field: the network, ``"concat-squash"`` or ``"velocity"``.
    :param state_features: for ``field="velocity"``, the number of random Fourier
        features of the state the MLP reads besides :math:`z` (``None``: 128 for
        ``input_dim <= 2``, where they fit sharp densities much faster, none above;
        ``0``: none); see :class:`~pyro_flows.nn.VelocityNet`.
    :param float state_frequency: for ``field="velocity"``, the sd of their frequencies,
        in cycles per unit of :math:`z` (for data of unit scale).

    >>> import torch, pyro.distributions as dist
    >>> flow = ffjord(2, hidden_dims=(16,), rtol=1e-4, atol=1e-4)
    >>> d = dist.TransformedDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), [flow])
    >>> d.log_prob(torch.zeros(3, 2)).shape
    torch.Size([3])
    """
    input_dim = _check_size(input_dim, "input_dim", "ffjord")
    check_flag(adjoint, "adjoint", "ffjord")
    dynamics = _field_network(
        field, input_dim, hidden_dims, activation, 0, "ffjord", state_features, state_frequency
    )
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
    hidden_dims: Optional[Sequence[int]] = None,
    activation: Union[str, Callable[[], nn.Module], None] = None,
    field: str = "concat-squash",
    state_features: Optional[int] = None,
    state_frequency: float = 1.0,
    **settings,
) -> ConditionalFFJORD:
    r"""A conditional FFJORD: one :class:`~pyro_flows.transforms.ConditionalFFJORD` whose
    dynamics :math:`h(t, z; c)` is a :class:`~pyro_flows.nn.DynamicsNet` (or, with
    ``field="velocity"``, a :class:`~pyro_flows.nn.VelocityNet`) with the context
    concatenated to its input.

    Use it with :class:`pyro.distributions.ConditionalTransformedDistribution`, as a
    conditional density or an amortized posterior, like
    :func:`~pyro_flows.conditional_real_nvp`; train it by maximum likelihood or by
    conditional flow matching (:func:`pyro_flows.train.flow_matching.flow_matching_loss`
    with ``context=``). ``settings`` are the solver options of :func:`ffjord`.

    :param int input_dim: dimension :math:`D \ge 1`.
    :param int context_dim: size of the context vector.
    :param hidden_dims: hidden sizes; :param activation: the activation; :param str field:
        the network; :param state_features: :param float state_frequency: the features of
        :math:`z` of the velocity field (not of the context); as in :func:`ffjord`.

    >>> import torch, pyro.distributions as dist
    >>> cflow = conditional_ffjord(2, context_dim=1, hidden_dims=(16,), rtol=1e-4, atol=1e-4)
    >>> base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    >>> d = dist.ConditionalTransformedDistribution(base, [cflow]).condition(torch.ones(3, 1))
    >>> d.log_prob(torch.zeros(3, 2)).shape
    torch.Size([3])
    """
    input_dim = _check_size(input_dim, "input_dim", "conditional_ffjord")
    context_dim = _check_size(context_dim, "context_dim", "conditional_ffjord")
    check_flag(settings.get("adjoint", False), "adjoint", "conditional_ffjord")
    dynamics = _field_network(
        field,
        input_dim,
        hidden_dims,
        activation,
        context_dim,
        "conditional_ffjord",
        state_features,
        state_frequency,
    )
    return ConditionalFFJORD(dynamics, input_dim, context_dim, **settings)
