r"""A vector field with a Fourier embedding of time, for flows trained by flow matching.

:class:`~pyro_flows.nn.DynamicsNet` feeds the time through a sigmoid gate and a shift
in every layer, which suits maximum-likelihood FFJORD: its field changes slowly with
:math:`t` and the ODE solver is cheaper for it. A field trained by flow matching is a
regression on :math:`(t, z)` whose target changes quickly in :math:`t` near the data
end of the path, and a plain MLP on :math:`z` and a few sinusoids of :math:`t` fits it
better for the same cost (the architecture of the 2-D examples of Tong et al., 2023,
with the time embedding of Tancik et al., 2020):

.. math::

    \gamma(t) = \big(t, \sin(\pi k_1 t), \cos(\pi k_1 t), \dots, \sin(\pi k_m t),
    \cos(\pi k_m t)\big), \qquad h(t, z) = \mathrm{MLP}\big([z, \phi(z), \gamma(t)]\big).

The state itself enters through random Fourier features too (Tancik et al., 2020):
:math:`\phi(z) = (\sin 2\pi Bz, \cos 2\pi Bz)` with the rows of :math:`B` drawn once from
:math:`\mathcal N(0, s^2 I)`. An MLP on :math:`z` alone is biased towards smooth
functions and learns the sharp edges of a density (a checkerboard's squares, thin rings)
slowly; with :math:`\phi` it resolves features about :math:`1/s` wide from the first
steps (``docs/ffjord.md`` measures the gain: on the 2-D rings and checkerboard, the KL
gap of flow matching after the same CPU time is several times smaller).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from .odefunc import ACTIVATIONS

__all__ = ["VelocityNet", "default_state_features"]

#: random Fourier features of the state a :class:`VelocityNet` of at most
#: :data:`STATE_FEATURES_MAX_DIM` dimensions gets unless told otherwise
STATE_FEATURES = 128
#: the largest dimension that gets them by default: they cut the KL gap of flow matching
#: several times on the 2-D targets, but widened it on a 10-D mixture (docs/ffjord.md)
STATE_FEATURES_MAX_DIM = 2


def default_state_features(dim: int) -> int:
    """The number of state features a field on vectors of size ``dim`` gets by default.

    >>> default_state_features(2), default_state_features(10)
    (128, 0)
    """
    return STATE_FEATURES if dim <= STATE_FEATURES_MAX_DIM else 0


class VelocityNet(nn.Module):
    r"""The field :math:`h(t, z)` as an MLP on :math:`z` concatenated with the Fourier
    features :math:`\gamma(t)` of the time (see the module docstring).

    The time is a scalar (one time for the whole batch, as in an ODE solve) or one time
    per row of :math:`z` (flow matching regresses the field at random times). With
    ``context_dim > 0`` a context vector :math:`c` is concatenated too, :math:`h(t, z; c)`.

    :param int dim: size of :math:`z`.
    :param hidden_dims: hidden sizes.
    :param activation: a name in :data:`~pyro_flows.nn.odefunc.ACTIVATIONS` or a callable
        returning a smooth ``nn.Module`` (the exact trace differentiates the field).
    :param frequencies: the multiples :math:`k_j` of :math:`\pi` in :math:`\gamma(t)`;
        ``()`` feeds the raw time only.
    :param bool zero_init: zero the last layer, so that a new flow is the identity.
    :param int context_dim: size of the context vector (0: unconditional).
    :param state_features: number :math:`m` of rows of :math:`B` in the features
        :math:`\phi(z)` of the state (``0``: the MLP reads :math:`z` alone; ``None``:
        :func:`default_state_features`, 128 up to 2 dimensions and none above).
    :param float state_frequency: the sd :math:`s` of the entries of :math:`B`, in cycles
        per unit of :math:`z`: it suits data of unit scale (standardise them first).
        :math:`B` is drawn from torch's global generator when the network is built and
        is saved in its ``state_dict``.

    >>> net = VelocityNet(2, hidden_dims=(16, 16))
    >>> net(torch.tensor(0.3), torch.randn(5, 2)).shape, net(torch.rand(5), torch.randn(5, 2)).shape
    (torch.Size([5, 2]), torch.Size([5, 2]))
    """

    def __init__(
        self,
        dim: int,
        hidden_dims: Sequence[int] = (256, 256, 256),
        activation: Union[str, Callable[[], nn.Module]] = "silu",
        frequencies: Sequence[float] = (1, 2, 4, 8, 16),
        zero_init: bool = False,
        context_dim: int = 0,
        state_features: Optional[int] = None,
        state_frequency: float = 1.0,
    ):
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"VelocityNet: expected a positive integer dim, got {dim!r}")
        if not isinstance(context_dim, int) or context_dim < 0:
            raise ValueError(f"VelocityNet: expected an integer context_dim >= 0, got {context_dim!r}")
        if isinstance(activation, str):
            if activation not in ACTIVATIONS:
                raise ValueError(
                    f"VelocityNet: unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}"
                )
            activation = ACTIVATIONS[activation]
        if state_features is None:
            state_features = default_state_features(dim)
        if not isinstance(state_features, int) or isinstance(state_features, bool) or state_features < 0:
            raise ValueError(f"VelocityNet: expected an integer state_features >= 0, got {state_features!r}")
        if not (math.isfinite(state_frequency) and state_frequency > 0):
            raise ValueError(
                f"VelocityNet: state_frequency must be a positive number, got {state_frequency!r}"
            )
        frequencies = tuple(float(k) for k in frequencies)
        if not all(math.isfinite(k) and k > 0 for k in frequencies):
            raise ValueError(f"VelocityNet: frequencies must be positive numbers, got {frequencies}")
        self.dim = dim
        self.context_dim = context_dim
        # the multiples k_j (exact in any dtype); pi is applied in the time's dtype
        self.register_buffer("frequencies", torch.tensor(frequencies, dtype=torch.get_default_dtype()))
        self.state_features = state_features
        if state_features:  # no buffer without features: state_dicts saved before them still load
            self.register_buffer("state_matrix", state_frequency * torch.randn(state_features, dim))
        sizes = [dim + 2 * state_features + context_dim + 1 + 2 * len(frequencies), *hidden_dims]
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), activation()]
        layers.append(nn.Linear(sizes[-1], dim))
        self.net = nn.Sequential(*layers)
        if zero_init:
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    def time_features(self, t: torch.Tensor, rows: int) -> torch.Tensor:
        r""":math:`\gamma(t)` as ``(rows, 1 + 2m)``; ``t`` a scalar or ``(rows,)``."""
        t = torch.as_tensor(t).to(self.frequencies).reshape(-1, 1).expand(rows, 1)
        angles = math.pi * (t * self.frequencies)
        return torch.cat([t, angles.sin(), angles.cos()], -1)

    def state_features_of(self, z: torch.Tensor) -> torch.Tensor:
        r""":math:`\phi(z) = (\sin 2\pi Bz, \cos 2\pi Bz)` as ``(rows, 2m)``, for ``z`` of
        shape ``(rows, dim)`` (a network built with ``state_features > 0``).

        >>> net = VelocityNet(2, (8,), state_features=3)
        >>> net.state_features_of(torch.zeros(4, 2))[0]
        tensor([0., 0., 0., 1., 1., 1.])
        """
        angles = (2 * math.pi) * (z @ self.state_matrix.to(z).T)
        return torch.cat([angles.sin(), angles.cos()], -1)

    def forward(
        self, t: torch.Tensor, z: torch.Tensor, context: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        parts = [z]
        if self.state_features:
            parts.append(self.state_features_of(z))
        parts.append(self.time_features(t, z.shape[0]).to(z))
        if self.context_dim:
            if context is None or context.shape[-1] != self.context_dim:
                got = None if context is None else tuple(context.shape)
                raise ValueError(
                    f"VelocityNet: expected a context of shape (N, {self.context_dim}), got {got}"
                )
            parts.append(context.expand(z.shape[0], self.context_dim))
        elif context is not None:
            raise ValueError("VelocityNet: got a context, but the network was built with context_dim=0")
        return self.net(torch.cat(parts, -1))
