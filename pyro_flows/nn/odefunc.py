r"""Dynamics networks for continuous-time flows, and the augmented ODE they define.

A continuous flow (Chen et al., 2018) moves a point along :math:`dz/dt = h(t, z)`. To
score data the log-density has to be carried along too (instantaneous change of
variables),

.. math::

    \frac{d}{dt}\log p(z_t) = -\operatorname{tr}\frac{\partial h}{\partial z}(t, z_t),

so the solver integrates the *augmented* state :math:`(z, a)` with
:math:`da/dt = \operatorname{tr}(\partial h/\partial z)`, and optionally the two
regularisers of Finlay et al. (2020, "How to train your neural ODE"),
:math:`\|h\|^2` (kinetic energy) and :math:`\|\partial h/\partial z\|_F^2` (Jacobian
Frobenius norm), whose integrals are small when the dynamics are cheap to solve.

* :class:`ConcatSquashLinear` / :class:`DynamicsNet`: the network :math:`h(t, z)`.
* :class:`AugmentedDynamics`: :math:`h` plus the trace (exact or Hutchinson) and the
  regularisers, in the ``func(t, state)`` form that ``torchdiffeq`` solves. One is built
  per solve, so the Hutchinson noise is fixed for that solve (including the adjoint pass).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "AugmentedDynamics",
    "ConcatSquashLinear",
    "DynamicsNet",
    "exact_trace",
    "hutchinson_trace",
    "trace_noise",
]

#: activations accepted by name; the trace is differentiated during training, so they are
#: smooth (with ReLU, :math:`\partial\,\mathrm{tr}/\partial\theta` would vanish almost everywhere)
ACTIVATIONS = {"softplus": nn.Softplus, "tanh": nn.Tanh, "elu": nn.ELU, "silu": nn.SiLU, "swish": nn.SiLU}


class ConcatSquashLinear(nn.Module):
    r"""A linear layer gated and shifted by time (Grathwohl et al., 2019):

    .. math::

        \mathrm{out}(t, z) = (W z + b) \odot \sigma(w_g t + b_g) + w_b t.

    The time is a scalar (one time for the whole batch, as in an ODE solve) or one time
    per row of :math:`z` (flow matching regresses the field at random times).

    :param int in_features: size of :math:`z`.
    :param int out_features: output size.

    >>> layer = ConcatSquashLinear(3, 5)
    >>> layer(torch.tensor(0.5), torch.randn(4, 3)).shape
    torch.Size([4, 5])
    >>> layer(torch.rand(4), torch.randn(4, 3)).shape
    torch.Size([4, 5])
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.gate = nn.Linear(1, out_features)
        self.time_shift = nn.Linear(1, out_features, bias=False)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t).reshape(-1, 1).to(z)
        return self.linear(z) * torch.sigmoid(self.gate(t)) + self.time_shift(t)


class DynamicsNet(nn.Module):
    r"""The time-dependent vector field :math:`h(t, z)` of a continuous flow: concat-squash
    layers ``dim -> hidden_dims... -> dim`` with an activation between them.

    With ``zero_init=True`` (default) the last layer starts at zero, so :math:`h \equiv 0`
    and a new flow is the identity (and its first solves take a single step).

    With ``context_dim > 0`` the field is conditional, :math:`h(t, z; c)`: the context
    :math:`c` is concatenated to :math:`z` at the input of the first layer (the trace is
    still taken with respect to :math:`z` only).

    :param int dim: size of :math:`z`.
    :param hidden_dims: hidden sizes.
    :param activation: a name in :data:`ACTIVATIONS` (``"softplus"``, ``"tanh"``, ...)
        or a callable returning an ``nn.Module``; it should be smooth.
    :param bool zero_init: zero the last layer.
    :param int context_dim: size of the context vector (0: unconditional).

    >>> net = DynamicsNet(2, hidden_dims=(16, 16), activation="tanh", zero_init=False)
    >>> net(torch.tensor(0.0), torch.randn(7, 2)).shape
    torch.Size([7, 2])
    >>> DynamicsNet(2, (16,), context_dim=3)(torch.rand(7), torch.randn(7, 2), torch.randn(7, 3)).shape
    torch.Size([7, 2])
    """

    def __init__(
        self,
        dim: int,
        hidden_dims: Sequence[int] = (64, 64),
        activation: Union[str, Callable[[], nn.Module]] = "softplus",
        zero_init: bool = True,
        context_dim: int = 0,
    ):
        super().__init__()
        if not isinstance(context_dim, int) or context_dim < 0:
            raise ValueError(f"DynamicsNet: expected an integer context_dim >= 0, got {context_dim!r}")
        if isinstance(activation, str):
            if activation not in ACTIVATIONS:
                raise ValueError(
                    f"DynamicsNet: unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}"
                )
            activation = ACTIVATIONS[activation]
        sizes = [dim + context_dim, *hidden_dims, dim]
        self.dim = dim
        self.context_dim = context_dim
        self.layers = nn.ModuleList(
            ConcatSquashLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.activations = nn.ModuleList(activation() for _ in hidden_dims)
        if zero_init:
            last = self.layers[-1]
            for p in (last.linear.weight, last.linear.bias, last.time_shift.weight):
                nn.init.zeros_(p)

    def forward(
        self, t: torch.Tensor, z: torch.Tensor, context: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        if self.context_dim:
            if context is None or context.shape[-1] != self.context_dim:
                got = None if context is None else tuple(context.shape)
                raise ValueError(
                    f"DynamicsNet: expected a context of shape (N, {self.context_dim}), got {got}"
                )
            z = torch.cat([z, context.expand(*z.shape[:-1], self.context_dim)], -1)
        elif context is not None:
            raise ValueError("DynamicsNet: got a context, but the network was built with context_dim=0")
        for layer, act in zip(self.layers[:-1], self.activations, strict=True):
            z = act(layer(t, z))
        return self.layers[-1](t, z)


def trace_noise(kind: str, like: torch.Tensor) -> torch.Tensor:
    """Probe vectors :math:`\\varepsilon` with :math:`E[\\varepsilon\\varepsilon^\\top] = I`:
    ``"rademacher"`` (:math:`\\pm 1`, lower variance) or ``"gaussian"``; shape, dtype and
    device of ``like``."""
    if kind == "rademacher":
        return torch.randint(0, 2, like.shape, dtype=like.dtype, device=like.device) * 2 - 1
    if kind == "gaussian":
        return torch.randn_like(like)
    raise ValueError(f"unknown trace noise {kind!r}; expected 'rademacher' or 'gaussian'")


def exact_trace(h: torch.Tensor, z: torch.Tensor, create_graph: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    r""":math:`\operatorname{tr}(\partial h/\partial z)` and :math:`\|\partial h/\partial z\|_F^2`
    per sample, by one backward pass per dimension (row :math:`i` of the Jacobian is
    :math:`\nabla_z h_i`; samples do not interact, so summing over the batch is exact).

    :param h: ``(N, D)`` output of the dynamics at ``z`` (``(N, D)``, in the graph).
    :returns: two tensors of shape ``(N,)``.
    """
    trace = h.new_zeros(h.shape[0])
    frobenius = h.new_zeros(h.shape[0])
    for i in range(h.shape[1]):
        (row,) = torch.autograd.grad(
            h[:, i].sum(), z, create_graph=create_graph, retain_graph=True, materialize_grads=True
        )
        trace = trace + row[:, i]
        frobenius = frobenius + row.square().sum(-1)
    return trace, frobenius


def hutchinson_trace(
    h: torch.Tensor, z: torch.Tensor, noise: torch.Tensor, create_graph: bool
) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Unbiased estimates :math:`\varepsilon^\top (\partial h/\partial z)\,\varepsilon` of the
    trace and :math:`\|\varepsilon^\top \partial h/\partial z\|^2` of the squared Frobenius
    norm, from one vector-Jacobian product (Hutchinson, 1989; Grathwohl et al., 2019).

    :param noise: ``(N, D)`` probes with :math:`E[\varepsilon\varepsilon^\top] = I`.
    :returns: two tensors of shape ``(N,)``.
    """
    (vjp,) = torch.autograd.grad(h, z, noise, create_graph=create_graph, materialize_grads=True)
    return (vjp * noise).sum(-1), vjp.square().sum(-1)


class AugmentedDynamics(nn.Module):
    r"""The ODE right-hand side solved by a continuous flow, for one solve.

    State ``(z, a)`` or, with ``regularize=True``, ``(z, a, k, j)``, each of batch size
    ``N``; its derivative is

    .. math::

        \dot z = h(t, z),\quad \dot a = \operatorname{tr}\frac{\partial h}{\partial z},\quad
        \dot k = \|h\|^2,\quad \dot j = \Big\|\frac{\partial h}{\partial z}\Big\|_F^2,

    with the trace and norm exact (``noise=None``) or estimated with the fixed probes
    ``noise``. Counts its evaluations in :attr:`calls`.

    Gradients through the trace are built only when the caller has gradients enabled
    (training, or the adjoint pass); under ``torch.no_grad()`` it stores no graph.

    :param net: the dynamics :math:`h(t, z)` on ``(N, D)`` inputs.
    :param noise: ``None`` for the exact trace, else ``(N, D)`` Hutchinson probes.
    :param bool regularize: also integrate the kinetic energy and Jacobian norm.

    >>> net = DynamicsNet(2, (8,), zero_init=False)
    >>> dz, da = AugmentedDynamics(net)(torch.tensor(0.0), (torch.randn(5, 2), torch.zeros(5)))
    >>> dz.shape, da.shape
    (torch.Size([5, 2]), torch.Size([5]))
    """

    def __init__(self, net: nn.Module, noise: Optional[torch.Tensor] = None, regularize: bool = False):
        super().__init__()
        self.net = net
        self.noise = noise
        self.regularize = regularize
        self.calls = 0

    def forward(self, t: torch.Tensor, state: Tuple[torch.Tensor, ...]) -> Tuple[torch.Tensor, ...]:
        self.calls += 1
        z = state[0]
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            if not (create_graph and z.requires_grad):
                # a leaf without history (the initial value, or a no-grad solve). Without
                # a graph to build, always: the adjoint's forward solve (under no_grad) of
                # an input that requires grad starts from a view that "requires grad" but
                # is cut from autograd, so the trace at t0 came out as 0
                z = z.detach().requires_grad_(True)
            h = self.net(t, z)
            if self.noise is None:
                trace, frobenius = exact_trace(h, z, create_graph)
            else:
                trace, frobenius = hutchinson_trace(h, z, self.noise, create_graph)
        derivatives = (h, trace)
        if self.regularize:
            derivatives += (h.square().sum(-1), frobenius)
        if not create_graph:
            derivatives = tuple(d.detach() for d in derivatives)
        return derivatives
