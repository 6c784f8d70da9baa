r"""Flow matching: training a continuous flow's vector field without solving its ODE.

Maximum-likelihood FFJORD (Grathwohl et al., 2019) solves the ODE forward and
backward, with a trace, at every step. Conditional flow matching (Lipman et al., 2023;
Liu et al., 2023; Tong et al., 2023) trains the same vector field :math:`h_\theta(t, z)`
by regression on a probability path whose velocity is known in closed form, so a step
costs one network evaluation per point. After training, :class:`~pyro_flows.transforms.FFJORD`
is unchanged: ``log_prob`` integrates the same ODE with the trace, ``sample`` integrates
it backwards.

**Direction.** :class:`~pyro_flows.transforms.FFJORD` scores data by integrating
:math:`t: 0 \to 1` from :math:`z_0 = x` (data) to :math:`z_1` (base), and samples by
integrating :math:`1 \to 0`. So the path starts at a data point :math:`x` at
:math:`t = 0` and ends at a base sample :math:`z \sim p_Z` at :math:`t = 1`:

.. math::

    x_t = (1 - t)\,x + t\,z + \sigma\varepsilon, \qquad u_t = z - x, \qquad
    \mathcal{L}(\theta) = \mathbb{E}_{t \sim U(0, 1),\,(x, z),\,\varepsilon}
    \tfrac1D \big\|h_\theta(t, x_t) - u_t\big\|^2,

with :math:`\varepsilon \sim N(0, I)` and a constant :math:`\sigma \ge 0` (0: the
rectified flow of Liu et al., 2023; :math:`\sigma > 0`: the I-CFM/OT-CFM paths of
Tong et al., 2023). Its minimiser is the marginal field
:math:`h^*(t, y) = E[u_t \mid x_t = y]`, whose flow carries the data distribution at
:math:`t = 0` to the base at :math:`t = 1`; that is the map FFJORD's ``log_prob``
integrates. (In the notation of ``torchcfm``, whose ``ConditionalFlowMatcher`` gives
the same loss, the source ``x0`` is the data and the target ``x1`` the base sample.)

**Coupling of the pairs** :math:`(x, z)` in a batch:

* ``"independent"``: as drawn (I-CFM, Tong et al., 2023; rectified flow);
* ``"ot"``: minibatch optimal transport (OT-CFM, Tong et al., 2023): the base samples are
  permuted to minimise :math:`\sum_i \|x_i - z_{\pi(i)}\|^2`, solved exactly with SciPy's
  ``linear_sum_assignment``. Pairs then cross less, the regression target has less
  variance and the learnt paths are straighter (cheaper to integrate). A permutation
  keeps both marginals, so the optimum is still a flow from the data to :math:`p_Z`.
  The assignment is made in blocks of :data:`OT_BLOCK` rows (``ot_block``): its cost grows
  as the cube of the block, and on one CPU thread a whole batch of 512 costs about 20 ms,
  four times a training step of a 3 x 256 field, while four blocks of 128 cost 3 ms.

**Times.** :math:`t = u^a` with :math:`u \sim U(0, 1)` (``time_exponent`` :math:`a`,
default :data:`TIME_EXPONENT`); :math:`a > 1` spends more of the regression near the data
end :math:`t = 0`, where the field has to carve the density's sharp features.

With a context :math:`c` (a conditional field :math:`h(t, z; c)`, see
:class:`~pyro_flows.transforms.ConditionalFFJORD`) the loss is the same with
:math:`(x, c)` drawn together and :math:`z \sim p_Z` independent of :math:`c`; only the
independent coupling keeps that independence, so ``"ot"`` is refused with a context.

>>> import torch, pyro_flows
>>> flow = pyro_flows.ffjord(2, hidden_dims=(16,))
>>> x, z = torch.randn(8, 2), torch.randn(8, 2)
>>> flow_matching_loss(flow, x, z, path="independent").shape
torch.Size([8])
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from ..flow import Flow
from ..transforms.base import _module_dtype, check_context, check_event
from ..transforms.continuous import _ConditionedFFJORD

__all__ = [
    "PATHS",
    "OT_BLOCK",
    "TIME_EXPONENT",
    "ot_pairing",
    "sample_times",
    "conditional_path",
    "flow_matching_loss",
    "FlowMatching",
    "fm_options",
]

#: the couplings of data and base samples: independent pairs, minibatch OT pairs
PATHS = ("independent", "ot")

#: default rows per exact assignment of the ``"ot"`` path (see :func:`ot_pairing`)
OT_BLOCK = 128

#: default exponent :math:`a` of the training times :math:`t = u^a` (see :func:`sample_times`)
TIME_EXPONENT = 1.0


def _linear_sum_assignment():
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as error:
        raise ImportError(
            "flow matching with path='ot' pairs each batch by exact optimal transport with SciPy's "
            "linear_sum_assignment, and SciPy is not installed: `pip install scipy`, or use "
            "path='independent'"
        ) from error
    return linear_sum_assignment


def ot_pairing(x: torch.Tensor, z: torch.Tensor, block_size: Optional[int] = None) -> torch.Tensor:
    r"""The permutation :math:`\pi` minimising :math:`\sum_i \|x_i - z_{\pi(i)}\|^2` (exact
    assignment, SciPy's ``linear_sum_assignment``): ``z[pi]`` is paired with ``x``.

    The assignment costs :math:`O(N^3)`: for a batch of 512 it takes longer than a step
    of a 3 x 256 network. With ``block_size`` the batch is cut into consecutive blocks of
    that many rows and each block is paired on its own (the last block may be smaller);
    the pairs stay a permutation, so both marginals are kept.

    :param x: ``(N, D)``; :param z: ``(N, D)``.
    :param block_size: rows per assignment (``None``: the whole batch at once).
    :returns: a ``LongTensor`` of shape ``(N,)`` on ``z``'s device.

    >>> x = torch.tensor([[0.0], [10.0]]); z = torch.tensor([[9.0], [1.0]])
    >>> ot_pairing(x, z).tolist()
    [1, 0]
    >>> ot_pairing(x, z, block_size=1).tolist()
    [0, 1]
    """
    if x.dim() != 2 or z.shape != x.shape:
        raise ValueError(
            f"ot_pairing: expected two (N, D) batches of the same shape, got {tuple(x.shape)} and {tuple(z.shape)}"
        )
    if block_size is not None and (
        isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1
    ):
        raise ValueError(f"ot_pairing: block_size must be a positive integer or None, got {block_size!r}")
    solve = _linear_sum_assignment()
    n = x.shape[0]
    block = n if block_size is None else min(block_size, n)
    parts = []
    for start in range(0, n, max(block, 1)):
        cost = torch.cdist(
            x[start : start + block].detach().double(), z[start : start + block].detach().double()
        )
        rows, cols = solve(cost.square().cpu().numpy())
        # rows come back sorted 0..n-1 for a square cost, so cols[i] is the partner of x_i
        parts.append(torch.as_tensor(cols, dtype=torch.long) + start)
    if not parts:
        return torch.zeros(0, dtype=torch.long, device=z.device)
    return torch.cat(parts).to(z.device)


def sample_times(
    n: int,
    exponent: float = TIME_EXPONENT,
    dtype: Optional[torch.dtype] = None,
    device=None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    r"""``n`` training times :math:`t = u^a`, :math:`u \sim U(0, 1)`: uniform for
    :math:`a = 1`; for :math:`a > 1` their density :math:`t^{1/a - 1} / a` puts more of
    them near the data end of the path (:math:`t = 0`), where the field has to carve the
    sharp features of the density.

    >>> t = sample_times(10000, exponent=2.0, generator=torch.Generator().manual_seed(0))
    >>> round(float(t.mean()), 2)  # E[u^2] = 1/3
    0.33
    """
    if not (math.isfinite(exponent) and exponent > 0):
        raise ValueError(f"flow matching: the time exponent must be a positive number, got {exponent}")
    u = torch.rand(n, dtype=dtype, device=device, generator=generator)
    return u if exponent == 1 else u.pow(exponent)


def conditional_path(
    x: torch.Tensor,
    z: torch.Tensor,
    t: torch.Tensor,
    sigma: float = 0.0,
    noise: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""A point on the straight path from data ``x`` (:math:`t = 0`) to base sample ``z``
    (:math:`t = 1`) and its velocity: :math:`x_t = (1-t)x + tz + \sigma\varepsilon`,
    :math:`u_t = z - x`.

    :param t: ``(N,)`` times in [0, 1].
    :param noise: ``(N, D)`` :math:`\varepsilon`, one draw per point (drawn when ``None``
        and ``sigma > 0``).
    :returns: ``(x_t, u_t)``, each ``(N, D)``.

    >>> x_t, u = conditional_path(torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([0.25]))
    >>> x_t.tolist(), u.tolist()
    ([[0.25, 0.25]], [[1.0, 1.0]])
    """
    if noise is not None and noise.shape != x.shape:
        # a noise of fewer dimensions would broadcast: every point would get the same draw
        raise ValueError(
            f"flow matching: expected path noise of the data's shape {tuple(x.shape)} (one draw per "
            f"point), got shape {tuple(noise.shape)}"
        )
    if noise is not None and noise.dtype != x.dtype:
        # it would promote x_t, and the field fail on a matrix product of mixed dtypes
        raise ValueError(
            f"flow matching: expected path noise of the data's dtype {x.dtype}, got {noise.dtype}"
        )
    t = t.reshape(-1, *([1] * (x.dim() - 1))).to(x)
    x_t = (1 - t) * x + t * z
    if sigma > 0:
        x_t = x_t + sigma * (torch.randn_like(x) if noise is None else noise)
    return x_t, z - x


def _field_of(model) -> nn.Module:
    # an FFJORD / ConditionalFFJORD carries its network as .dynamics
    if isinstance(model, Flow):
        raise TypeError("flow matching: expected the flow's FFJORD transform (flow.transform), got a Flow")
    if isinstance(model, _ConditionedFFJORD):
        # its context would be silently dropped: the loss takes the context per point
        raise TypeError(
            "flow matching: expected the ConditionalFFJORD itself with context=..., got one "
            "conditioned on a context (.condition(c))"
        )
    return getattr(model, "dynamics", model)


def flow_matching_loss(
    model: nn.Module,
    x: torch.Tensor,
    z: torch.Tensor,
    path: str = "ot",
    sigma: float = 0.0,
    t: Optional[torch.Tensor] = None,
    noise: Optional[torch.Tensor] = None,
    context: Optional[torch.Tensor] = None,
    ot_block: Optional[int] = OT_BLOCK,
    time_exponent: float = TIME_EXPONENT,
) -> torch.Tensor:
    r"""The conditional flow-matching loss per point,
    :math:`\frac1D\|h_\theta(t, x_t) - u_t\|^2` (see the module docstring); its batch mean
    is the training objective.

    :param model: an :class:`~pyro_flows.transforms.FFJORD` or
        :class:`~pyro_flows.transforms.ConditionalFFJORD` (its ``dynamics`` are trained),
        or a network ``h(t, z[, context])`` taking one time per row.
    :param x: ``(N, D)`` data. :param z: ``(N, D)`` base samples :math:`z \sim p_Z`.
    :param str path: ``"ot"`` (minibatch optimal-transport pairs) or ``"independent"``.
    :param float sigma: the path's constant noise level :math:`\sigma \ge 0`.
    :param t: ``(N,)`` times (default: drawn by :func:`sample_times` with ``time_exponent``).
    :param noise: ``(N, D)`` path noise :math:`\varepsilon` (default: standard normal).
    :param context: ``(N, C)`` contexts of a conditional field, or one ``(C,)`` for all
        (independent path only).
    :param ot_block: rows per exact assignment of the ``"ot"`` path (``None`` or ``0``: the
        whole batch; see :func:`ot_pairing`).
    :param float time_exponent: the exponent of the default times (1: uniform).
    :returns: ``(N,)``.
    """
    if path not in PATHS:
        raise ValueError(f"flow matching: expected path in {PATHS}, got {path!r}")
    if not (sigma >= 0 and math.isfinite(sigma)):
        # an infinite sigma passed as ">= 0" and made every loss NaN
        raise ValueError(f"flow matching: expected a finite sigma >= 0, got {sigma}")
    if x.dim() != 2 or z.shape != x.shape:
        raise ValueError(
            f"flow matching: expected data and base samples of the same shape (N, D), got "
            f"{tuple(x.shape)} and {tuple(z.shape)}"
        )
    if context is not None and path == "ot":
        raise ValueError(
            "flow matching with a context needs path='independent': pairing a batch by optimal "
            "transport would make the base samples depend on the context"
        )
    field = _field_of(model)
    # the data and contexts follow the rules of a flow's inputs (shape, the parameters'
    # dtype, finite values under validation), so that a mistake is named here rather
    # than as a matrix-product error deep in the field or a NaN loss
    dtype = _module_dtype(field)
    check_event("flow matching", x, getattr(model, "event_shape", None), "data", dtype)
    if z.dtype != x.dtype:
        raise ValueError(
            f"flow matching: expected data and base samples of the same dtype, got {x.dtype} and {z.dtype}"
        )
    # the base samples too: a NaN among them made a NaN loss (or, with path="ot", SciPy's
    # "matrix contains invalid numeric entries")
    check_event("flow matching", z, getattr(model, "event_shape", None), "base samples", dtype)
    n = x.shape[0]
    if t is not None and t.numel() != n:
        raise ValueError(
            f"flow matching: expected {n} times (one per data point), got shape {tuple(t.shape)}"
        )
    if context is not None:
        context = _check_context(model, field, context, n)
    if path == "ot":
        # ot_block=0, like --fm-ot-block 0, pairs the whole batch at once
        z = z[ot_pairing(x, z, None if _is_zero(ot_block) else ot_block)]
    if t is None:
        t = sample_times(n, time_exponent, dtype=x.dtype, device=x.device)
    x_t, target = conditional_path(x, z, t, sigma, noise)
    velocity = field(t, x_t) if context is None else field(t, x_t, context)
    return (velocity - target).square().mean(-1)


def _is_zero(block) -> bool:
    return not isinstance(block, bool) and isinstance(block, int) and block == 0


def _check_context(model, field, context: torch.Tensor, n: int) -> torch.Tensor:
    """``context`` as ``(n, C)`` rows, or an error that names the problem: one context per
    data point ``(n, C)`` or one for all ``(C,)``, in the field's dtype, finite."""
    context_dim = getattr(model, "context_dim", getattr(field, "context_dim", None))
    if context_dim is None:  # a network of the user's: its own checks apply
        return context
    if context_dim == 0:
        raise ValueError("flow matching: got a context, but the field was built without one (context_dim=0)")
    check_context("flow matching", context, context_dim, field)
    if context.shape[:-1] not in ((), (1,), (n,)):
        raise ValueError(
            f"flow matching: expected one context per data point, shape ({n}, {context_dim}), or one for "
            f"all, shape ({context_dim},); got a context of shape {tuple(context.shape)} for {n} data points"
        )
    return context.expand(n, context_dim)


def fm_options(config) -> Tuple[str, float, Optional[int], float]:
    """``(path, sigma, ot_block, time_exponent)`` of a :class:`~pyro_flows.train.RunConfig`
    (``--fm-ot-block 0``: the whole batch in one assignment)."""
    block = getattr(config, "fm_ot_block", OT_BLOCK)
    return (
        config.path,
        config.fm_sigma,
        None if block == 0 else block,
        getattr(config, "fm_time_exponent", TIME_EXPONENT),
    )


class FlowMatching(nn.Module):
    """``x -> (flow-matching loss per point, penalty)`` for a :class:`~pyro_flows.Flow` whose
    transform is one :class:`~pyro_flows.transforms.FFJORD`: the training loop's objective
    with ``objective="flow-matching"`` (the counterpart of its maximum-likelihood module).
    Base samples are drawn from the flow's base distribution; the penalty is 0.

    >>> import pyro_flows
    >>> flow = pyro_flows.Flow(pyro_flows.ffjord(2, hidden_dims=(8,)))
    >>> loss, penalty = FlowMatching(flow, path="independent")(torch.randn(5, 2))
    >>> loss.shape, float(penalty)
    (torch.Size([5]), 0.0)
    """

    def __init__(
        self,
        flow: nn.Module,
        path: str = "ot",
        sigma: float = 0.0,
        ot_block: Optional[int] = OT_BLOCK,
        time_exponent: float = TIME_EXPONENT,
    ):
        super().__init__()
        from ..transforms.continuous import FFJORD

        transform = getattr(flow, "transform", None)
        bridge = getattr(flow, "bridge", None)
        if isinstance(transform, FFJORD) and bridge is not None:
            raise ValueError(
                "flow matching regresses the field on paths from a standard normal base; this flow's base "
                f"is not one (it is reached through {type(bridge).__name__}, as for --base uniform or beta): "
                "use the normal base (--base normal), or maximum likelihood (--objective likelihood)"
            )
        if not isinstance(transform, FFJORD):
            raise ValueError(
                "flow matching trains a Flow whose transform is a single FFJORD (--flow ffjord, "
                f"continuous data, normal base); got {type(transform).__name__}"
            )
        if path not in PATHS:
            raise ValueError(f"flow matching: expected path in {PATHS}, got {path!r}")
        self.flow = flow
        self.path = path
        self.sigma = float(sigma)
        self.ot_block = ot_block
        self.time_exponent = float(time_exponent)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = x.reshape(x.shape[0], -1)
        z = self.flow().base_dist.sample(x.shape[:1]).reshape(x.shape).to(x)
        loss = flow_matching_loss(
            self.flow.transform,
            x,
            z,
            self.path,
            self.sigma,
            ot_block=self.ot_block,
            time_exponent=self.time_exponent,
        )
        return loss, loss.new_zeros(())
