r"""Amortized posteriors: neural posterior estimation with a conditional flow.

Given simulated pairs :math:`(\theta_i, x_i)`, :math:`\theta_i \sim p(\theta)`,
:math:`x_i \sim p(x \mid \theta_i)`, maximising :math:`\sum_i \log q(\theta_i \mid x_i)`
over a conditional density :math:`q` fits the posterior :math:`p(\theta \mid x)` for
every :math:`x` at once (Papamakarios & Murray, 2016; Greenberg et al., 2019): the
expected loss is :math:`\mathbb E_{p(x)} \mathrm{KL}(p(\theta \mid x) \,\|\, q(\theta \mid x))`
plus a constant. Here :math:`q` is a conditional RealNVP
(:func:`~pyro_flows.builders.conditional_real_nvp`) on standardized parameters,
conditioned on standardized data; or (``flow="ffjord"``) a conditional continuous-time
flow (:func:`~pyro_flows.builders.conditional_ffjord`) trained by conditional flow
matching, which regresses a vector field :math:`h(t, z; x)` instead of maximising the
likelihood (flow matching posterior estimation, Dax et al., 2023); its density is the
same change of variables through the ODE.

A prior with bounded support (a box) is handled the way ``sbi`` does it: the flow is fit
to :math:`\theta` itself, draws outside the support are rejected, and ``log_prob`` is
renormalized by the probability :math:`Z(x)` that a flow draw lands inside,
:math:`q(\theta \mid x) = q_{\text{flow}}(\theta \mid x) / Z(x)` on the support (a
Monte Carlo estimate). Mapping the box to an unbounded space first (a logit) turns a
posterior that touches the box's edge into a long tail that a flow fits badly: on the
two-moons benchmark one observation's KL went to thousands.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import operator
import time
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from pyro.distributions import constraints as pyro_constraints
from torch import nn
from torch.distributions import (
    AffineTransform,
    Distribution,
    Independent,
    Normal,
    TransformedDistribution,
    biject_to,
    constraints,
)

from ..builders.conditional import conditional_real_nvp
from .supports import _support_numbers, _unwrapped

__all__ = ["ConditionalPosterior", "fit_posterior"]

Pairs = Tuple[torch.Tensor, torch.Tensor]


def _is_real(support: constraints.Constraint) -> bool:
    r"""Whether ``support`` is all of :math:`\mathbb R^d`: ``real``, ``real_vector`` or any
    ``independent(...)`` of them (the support of ``Normal(...).to_event(1)``), recognised by
    structure rather than by identity with ``constraints.real_vector``."""
    return isinstance(_base(support), constraints._Real)


def _base(support: constraints.Constraint) -> constraints.Constraint:
    return _unwrapped(support)[0]


def _constraint_like(support: constraints.Constraint, like: torch.Tensor) -> constraints.Constraint:
    """``support`` with its tensors (an interval's bounds, ...) on ``like``'s device (their
    dtype stays: comparisons promote): a copy, or ``support`` itself if none moves."""
    if isinstance(support, constraints.independent):
        base = _constraint_like(support.base_constraint, like)
        if base is support.base_constraint:
            return support
        return constraints.independent(base, support.reinterpreted_batch_ndims)
    moved = {}
    for name, value in vars(support).items():
        if isinstance(value, torch.Tensor) and value.device != like.device:
            moved[name] = value.to(like.device)
    if not moved:
        return support
    support = copy.copy(support)
    for name, value in moved.items():
        setattr(support, name, value)
    return support


def _support_state(support: constraints.Constraint) -> dict:
    """A support as a ``state_dict`` entry: its kind, event dims and numbers (an interval's
    bounds), tensors on the CPU (plain data: ``torch.load(..., weights_only=True)`` reads it)."""
    base, event_dims = _unwrapped(support)
    numbers = {
        name: value.detach().to("cpu", torch.float64) if isinstance(value, torch.Tensor) else value
        for name, value in _support_numbers(support).items()
    }
    return {"support": type(base).__name__, "support_event_dims": event_dims, "support_numbers": numbers}


def _same_extra_state(a: dict, b: dict) -> bool:
    if set(a) != set(b) or any(a[k] != b[k] for k in ("reject", "support", "support_event_dims")):
        return False
    x, y = a["support_numbers"], b["support_numbers"]
    if not isinstance(x, dict) or set(x) != set(y):
        return False
    for name, value in x.items():
        value = torch.as_tensor(value, dtype=torch.float64)
        other = torch.as_tensor(y[name], dtype=torch.float64)
        if value.shape != other.shape or not torch.equal(value, other):
            return False
    return True


def _describe_extra_state(state) -> str:
    if not isinstance(state, dict) or "support" not in state:
        return f"an unknown support ({state!r})"
    numbers = ", ".join(
        f"{k}={v.tolist() if isinstance(v, torch.Tensor) else v}"
        for k, v in state.get("support_numbers", {}).items()
    )
    return f"support {state['support']}({numbers}) and reject={state.get('reject')}"


def _is_simplex(support: constraints.Constraint) -> bool:
    return isinstance(_base(support), type(constraints.simplex))


def _lower_dimensional(support: constraints.Constraint, dim: int) -> Optional[int]:
    r"""The number of free coordinates of ``support`` if it is a lower-dimensional set in
    :math:`\mathbb R^{dim}` (a simplex, a sphere), else ``None``."""
    if isinstance(_base(support), type(pyro_constraints.sphere)):  # no bijection registered
        return dim - 1
    try:
        transform = biject_to(support)
    except NotImplementedError:
        return None
    try:
        free = transform.inverse_shape(torch.Size([dim]))
    except Exception:  # a transform that cannot say: not known to be lower-dimensional
        return None
    return free[-1] if len(free) == 1 and free[-1] != dim else None


class ConditionalPosterior(nn.Module):
    r"""A trained amortized posterior :math:`q(\theta \mid x)`, returned by :func:`fit_posterior`.

    With :math:`u = b^{-1}(\theta)` the parameters in the space the flow is fit in, the
    flow models the standardized :math:`\tilde u = (u - m_u) / s_u` given the
    standardized data :math:`\tilde x = (x - m_x) / s_x`:

    .. math::

        \log q(\theta \mid x) = \log q_{\text{flow}}(\tilde u \mid \tilde x)
            - \textstyle\sum_j \log s_{u,j} - \log|\det J_b(u)| - \log Z(x),

    so densities are in the units of :math:`\theta`. For an unbounded support, ``b`` is the
    identity and :math:`Z = 1`. For a bounded one, either (``reject=True``, the default of
    :func:`fit_posterior`) ``b`` is the identity, draws outside the support are rejected
    and :math:`Z(x)`, the flow's probability of the support, is estimated from
    ``num_normalizing_draws`` draws per call of :meth:`log_prob`; or (``reject=False``)
    ``b`` is :func:`torch.distributions.biject_to` of the support and :math:`Z = 1`.
    The standardization statistics are buffers: they follow ``.to(device)`` and
    ``state_dict()``. The support's tensors (a box's bounds) follow ``.to(device)`` too.
    The ``state_dict`` also records the support and ``reject`` (as ``_extra_state``), and
    loading it into a posterior built with others is an error: the same weights would
    give another density.

    :param flow: a :class:`~pyro_flows.builders.ConditionalVectorFlow` or a
        :class:`~pyro_flows.transforms.ConditionalFFJORD` on ``theta_dim`` with context
        size ``x_dim``.
    :param theta_loc: :math:`m_u`, shape ``(theta_dim,)``.
    :param theta_scale: :math:`s_u`, shape ``(theta_dim,)``.
    :param x_loc: :math:`m_x`, shape ``(x_dim,)``.
    :param x_scale: :math:`s_x`, shape ``(x_dim,)``.
    :param support: the support of :math:`\theta` (default: all of :math:`\mathbb R^d`).
    :param bool reject: the flow is on :math:`\theta` itself and draws outside ``support``
        are rejected (else on :math:`b^{-1}(\theta)`).
    """

    #: flow draws per observation that estimate :math:`Z(x)` in :meth:`log_prob`
    num_normalizing_draws = 100_000
    #: at most this many rounds of draws in :meth:`sample` before giving up
    max_rejection_rounds = 100

    def __init__(
        self,
        flow: nn.Module,
        theta_loc: torch.Tensor,
        theta_scale: torch.Tensor,
        x_loc: torch.Tensor,
        x_scale: torch.Tensor,
        support: constraints.Constraint = constraints.real_vector,
        reject: bool = False,
    ):
        super().__init__()
        self.flow = flow
        self.register_buffer("theta_loc", theta_loc)
        self.register_buffer("theta_scale", theta_scale)
        self.register_buffer("x_loc", x_loc)
        self.register_buffer("x_scale", x_scale)
        self.support = _constraint_like(support, theta_loc)
        self.reject = bool(reject) and not _is_real(support)
        self.history: dict = {}

    def _apply(self, fn, *args, **kwargs):
        # ``.to(device)``, ``.double()``, ...: the support's tensors (an interval's bounds)
        # are no buffers, but must follow the parameters to their device (a box's bounds on
        # the CPU cannot be compared with draws on a GPU); an estimate of Z(x) on the old
        # device or in the old dtype is dropped
        module = super()._apply(fn, *args, **kwargs)
        self.support = _constraint_like(self.support, self.theta_loc)
        self._z_cache = None
        return module

    def get_extra_state(self) -> dict:
        """What the weights mean besides the buffers: ``reject`` and the support (its kind
        and its numbers, e.g. a box's bounds), saved with the ``state_dict``."""
        return {"reject": self.reject, **_support_state(self.support)}

    def set_extra_state(self, state: dict) -> None:
        own = self.get_extra_state()
        if not isinstance(state, dict) or not _same_extra_state(state, own):
            raise ValueError(
                f"posterior: the saved state was made with {_describe_extra_state(state)}, but this "
                f"posterior has {_describe_extra_state(own)}; the same weights would give another "
                "density. Build it with the support and reject of the saved one (fit_posterior: "
                "the prior's support, reject for bounded='reject')"
            )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a state saved before the support and reject were recorded loads as it did
        state_dict.setdefault(prefix + "_extra_state", self.get_extra_state())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def theta_dim(self) -> int:
        return self.theta_loc.shape[-1]

    @property
    def x_dim(self) -> int:
        return self.x_loc.shape[-1]

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != self.x_dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"posterior: expected x of shape (*batch, {self.x_dim}), got {shape}")
        if not torch.isfinite(x).all():
            raise ValueError("posterior: x has NaN or infinite entries")
        return x.to(self.x_loc.dtype)

    def standardized_distribution(self, x: torch.Tensor) -> Distribution:
        """The flow's distribution of :math:`\\tilde u` given ``x`` (batch shape ``x.shape[:-1]``),
        before the standardization and the support map are undone."""
        x = self._check_x(x)
        context = (x - self.x_loc) / self.x_scale
        zeros = self.theta_loc.new_zeros(*context.shape[:-1], self.theta_dim)
        base = Independent(Normal(zeros, torch.ones_like(zeros)), 1)
        return TransformedDistribution(base, [self.flow.condition(context)])

    def distribution(self, x: torch.Tensor) -> Distribution:
        r""":math:`q(\theta \mid x)` as a distribution with batch shape ``x.shape[:-1]`` and
        event shape ``(theta_dim,)``; its ``log_prob`` includes the log-determinants of the
        standardization and of the support map. With ``reject`` it is the flow's
        distribution, neither truncated to the support nor renormalized (:meth:`sample` and
        :meth:`log_prob` are)."""
        inner = self.standardized_distribution(x)
        parts = [AffineTransform(self.theta_loc, self.theta_scale, event_dim=1)]
        if not self.reject and not _is_real(self.support):
            parts.append(biject_to(self.support))
        return TransformedDistribution(inner, parts, validate_args=False)

    def _inside(self, theta: torch.Tensor) -> torch.Tensor:
        if theta.numel() == 0:  # torch's independent(...).check cannot reshape an empty batch
            return torch.ones(theta.shape[:-1], dtype=torch.bool, device=theta.device)
        inside = self.support.check(theta)
        return inside.all(-1) if inside.dim() == theta.dim() else inside  # elementwise or not

    @torch.no_grad()
    def sample(self, x: torch.Tensor, num_samples: Union[int, Sequence[int]] = 1) -> torch.Tensor:
        """``num_samples`` draws of :math:`\\theta` for each observation: shape
        ``(num_samples, theta_dim)`` for one ``x`` of shape ``(x_dim,)``, and
        ``(num_samples, *batch, theta_dim)`` for ``x`` of shape ``(*batch, x_dim)``;
        ``num_samples`` is an int >= 0, or a sample shape (a tuple of them) that takes its
        place (a ``TypeError`` for anything else, e.g. ``2.5``).
        With ``reject``, draws outside the support are replaced by new ones (a
        ``RuntimeError`` if ``max_rejection_rounds`` rounds leave some outside).

        >>> post = fit_posterior((torch.randn(64, 2), torch.randn(64, 3)), max_epochs=1, hidden_dims=(8,))
        >>> post.sample(torch.zeros(3), 5).shape, post.sample(torch.zeros(4, 3), 5).shape
        (torch.Size([5, 2]), torch.Size([5, 4, 2]))
        """
        sample_shape = _sample_shape(num_samples)
        x = self._check_x(x)
        if sample_shape.numel() == 0 or x.shape[:-1].numel() == 0:
            # no draws (num_samples=0 or an empty batch of x): torch's support checks cannot
            # reshape an empty batch, so answer without drawing
            return self.theta_loc.new_zeros(*sample_shape, *x.shape[:-1], self.theta_dim)
        q = self.distribution(x)
        draws = q.sample(sample_shape)
        if not self.reject:
            return draws
        missing = ~self._inside(draws)
        rounds = 0
        while missing.any():
            if rounds == self.max_rejection_rounds:
                raise RuntimeError(
                    f"posterior: after {rounds} rounds of draws, {int(missing.sum())} of "
                    f"{missing.numel()} draws are still outside the prior's support (the flow "
                    "puts almost no mass inside it for this x)"
                )
            fresh = q.sample(sample_shape)
            fill = missing & self._inside(fresh)
            draws = torch.where(fill.unsqueeze(-1), fresh, draws)
            missing = missing & ~fill
            rounds += 1
        return draws

    @torch.no_grad()
    def log_normalizer(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\log Z(x)`, the log-probability that a draw of the flow given ``x`` lies
        in the support, estimated from ``num_normalizing_draws`` draws (at least one is
        counted inside, so it stays finite); 0 without ``reject``. Shape ``x.shape[:-1]``."""
        x = self._check_x(x)
        if not self.reject or x.shape[:-1].numel() == 0:
            return x.new_zeros(x.shape[:-1])
        n = _as_int(self.num_normalizing_draws)
        if n is None or n < 1:
            # 0 draws gave Z = inf and so log_prob = -inf everywhere; a float (1e6) a TypeError
            # from deep inside torch.Size
            raise ValueError(
                "posterior: num_normalizing_draws must be an int >= 1 (the flow draws per "
                f"observation that estimate Z(x)), got {self.num_normalizing_draws!r}"
            )
        q = self.distribution(x)
        # in rounds of at most about a million draws over all observations
        per_round = max(1, 1_000_000 // max(1, x.shape[:-1].numel()))
        count, done = x.new_zeros(x.shape[:-1]), 0
        while done < n:
            m = min(per_round, n - done)
            count = count + self._inside(q.sample((m,))).to(x.dtype).sum(0)
            done += m
        return (count / n).clamp_min(1.0 / n).log()

    def _log_normalizer_cached(self, x: torch.Tensor) -> torch.Tensor:
        # Scoring many batches of theta against the same x must not redraw Z each time:
        # keep the last estimate while x, the weights and buffers (their version counters)
        # and the number of draws it is made of are unchanged.
        key = (
            tuple(p._version for p in self.parameters()),
            tuple(b._version for b in self.buffers()),
            self.num_normalizing_draws,
        )
        cached = getattr(self, "_z_cache", None)
        if (
            cached is not None
            and cached[0] == key
            and cached[1].shape == x.shape
            and torch.equal(cached[1], x)
        ):
            return cached[2]
        z = self.log_normalizer(x)
        self._z_cache = (key, x.detach().clone(), z)
        return z

    def log_prob(self, theta: torch.Tensor, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        r""":math:`\log q(\theta \mid x)` in the units of :math:`\theta`; ``theta`` of shape
        ``(*batch, theta_dim)`` and ``x`` of shape ``(*batch', x_dim)`` broadcast, e.g.
        many ``theta`` against one ``x``. Outside the prior's support, and at an infinite
        ``theta``, it is :math:`-\infty`; a ``theta`` with NaN entries is a ``ValueError``.
        With ``reject``, it is renormalized by :meth:`log_normalizer` unless
        ``normalize=False``; the estimate is kept while ``x`` and the weights stay the same.
        It is a Monte Carlo estimate made without gradients: the gradient of ``log_prob``
        with respect to ``x`` or the weights leaves out that of :math:`\log Z(x)`."""
        if not isinstance(theta, torch.Tensor) or theta.dim() < 1 or theta.shape[-1] != self.theta_dim:
            shape = tuple(theta.shape) if isinstance(theta, torch.Tensor) else type(theta).__name__
            raise ValueError(f"posterior: expected theta of shape (*batch, {self.theta_dim}), got {shape}")
        nan = torch.isnan(theta).any(-1)
        if nan.any():
            raise ValueError(
                f"posterior: theta has NaN entries ({int(nan.sum())} of {nan.numel()} points, e.g. "
                f"at index {tuple(int(i) for i in nan.nonzero()[0])}); a density is not defined there"
            )
        x = self._check_x(x)
        theta = theta.to(self.theta_loc.dtype)
        try:
            batch = torch.broadcast_shapes(theta.shape[:-1], x.shape[:-1])
        except RuntimeError:
            raise ValueError(
                f"posterior: theta of shape {tuple(theta.shape)} and x of shape {tuple(x.shape)} have "
                f"batch shapes {tuple(theta.shape[:-1])} and {tuple(x.shape[:-1])}, which do not "
                "broadcast (for every theta against every x, give theta a batch dim of size 1 "
                "after the sample dim, e.g. theta.unsqueeze(-2))"
            ) from None
        if batch.numel() == 0:  # nothing to score (torch's support checks fail on it)
            return theta.new_zeros(batch)
        theta = theta.expand(*batch, self.theta_dim)
        inside = self._inside(theta) & torch.isfinite(theta).all(-1)
        if not inside.all():
            # evaluate a finite point in the flow's domain instead (the flow does not take
            # inf, and without reject the inverse support map is not finite outside), then
            # report -inf there
            safe = self.theta_loc
            if not self.reject and not _is_real(self.support):
                safe = biject_to(self.support)(self.theta_loc)
            theta = torch.where(inside.unsqueeze(-1), theta, safe)
        log_q = self.distribution(x.expand(*batch, self.x_dim)).log_prob(theta)
        if self.reject and normalize:
            log_q = log_q - self._log_normalizer_cached(x)  # one Z per observation, then broadcast
        return torch.where(inside, log_q, log_q.new_full((), -math.inf))

    def extra_repr(self) -> str:
        reject = ", reject=True" if self.reject else ""
        return f"theta_dim={self.theta_dim}, x_dim={self.x_dim}, support={self.support}{reject}"


def _as_int(n) -> Optional[int]:
    """``n`` as an int if it is an integer (a Python or numpy int, an integer tensor of one
    element), ``None`` otherwise (a bool, a float, anything else)."""
    if isinstance(n, bool):
        return None
    try:
        return operator.index(n)
    except TypeError:
        return None


def _sample_shape(num_samples) -> torch.Size:
    """``num_samples`` (an int >= 0, or a tuple of them) as a sample shape."""
    items = num_samples if isinstance(num_samples, (tuple, list, torch.Size)) else (num_samples,)
    shape = []
    for n in items:
        n = _as_int(n)
        if n is None or n < 0:
            raise TypeError(
                "posterior: num_samples must be an int >= 0 or a sample shape (a tuple of such "
                f"ints), got {num_samples!r}"
            )
        shape.append(n)
    return torch.Size(shape)


#: the fewest pairs that :func:`fit_posterior` takes: two to train on (their standard
#: deviations standardize theta and x) and one held out for early stopping
MIN_PAIRS = 3


def _as_pairs(simulator_or_pairs, prior, num_simulations) -> Pairs:
    if callable(simulator_or_pairs):
        if prior is None:
            raise ValueError("fit_posterior: a simulator needs a prior to draw theta from")
        if (
            isinstance(num_simulations, bool)
            or not isinstance(num_simulations, int)
            or num_simulations < MIN_PAIRS
        ):
            raise ValueError(
                f"fit_posterior: num_simulations must be an int >= {MIN_PAIRS} (two simulations to "
                f"train on and one held out), got {num_simulations!r}"
            )
        theta = prior.sample((num_simulations,))
        x = simulator_or_pairs(theta)
        return theta, x
    if not isinstance(simulator_or_pairs, (tuple, list)) or len(simulator_or_pairs) != 2:
        raise TypeError(
            "fit_posterior: expected a simulator (a callable theta -> x) or a pair of tensors "
            f"(theta, x), got {type(simulator_or_pairs).__name__}"
        )
    theta = simulator_or_pairs[0]
    held = theta.shape[0] if isinstance(theta, torch.Tensor) and theta.dim() else None
    if num_simulations is not None and held is not None and held != num_simulations:
        # it only sizes a simulator's run: given with pairs, it would have been ignored
        raise ValueError(
            f"fit_posterior: num_simulations={num_simulations!r} is for a simulator; the pairs "
            f"given hold {held} simulations: slice them (theta[:n], x[:n]) or leave "
            "num_simulations out"
        )
    return tuple(simulator_or_pairs)


def _check_pairs(theta, x) -> Pairs:
    for name, value in (("theta", theta), ("x", x)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"fit_posterior: {name} must be a tensor, got {type(value).__name__}")
        if value.dim() == 1:
            raise ValueError(
                f"fit_posterior: {name} has shape {tuple(value.shape)}; expected (num_simulations, dim) "
                "(reshape a scalar per simulation to (-1, 1))"
            )
        if value.dim() != 2:
            raise ValueError(
                f"fit_posterior: {name} must have shape (num_simulations, dim), got {tuple(value.shape)}"
            )
        if value.shape[-1] == 0:
            raise ValueError(f"fit_posterior: {name} has shape {tuple(value.shape)}, no columns")
        bad = ~torch.isfinite(value).all(-1)
        if bad.any():
            raise ValueError(
                f"fit_posterior: {int(bad.sum())} of {len(value)} simulations have NaN or infinite "
                f"entries in {name} (e.g. row {int(bad.nonzero()[0])}); drop them before fitting"
            )
    if len(theta) != len(x):
        raise ValueError(f"fit_posterior: got {len(theta)} theta but {len(x)} x; they must pair up")
    if len(theta) < MIN_PAIRS:
        raise ValueError(
            f"fit_posterior: got {len(theta)} pairs (theta, x); need at least {MIN_PAIRS}: two to "
            "train on (their standard deviations standardize theta and x) and one held out for "
            "early stopping"
        )
    return theta, x


def _prior_support(prior: Distribution, theta: torch.Tensor, bounded: str) -> constraints.Constraint:
    r"""The support of ``theta`` that ``prior`` implies (``real_vector`` for any unbounded
    one), after checking that the prior's draws have ``theta``'s shape and that there is a
    density on :math:`\mathbb R^d` for the flow to fit under it."""
    dim = theta.shape[-1]
    shape = prior.batch_shape + prior.event_shape
    # a scalar prior applies its support to each coordinate
    if shape not in (torch.Size([dim]), torch.Size([])):
        raise ValueError(
            f"fit_posterior: the prior draws theta of shape {tuple(shape)} (batch_shape "
            f"{tuple(prior.batch_shape)} + event_shape {tuple(prior.event_shape)}), but theta has "
            f"dimension {dim} (shape {tuple(theta.shape)}); give a prior on {dim}-dimensional theta"
        )
    support = prior.support
    if _is_real(support):
        return constraints.real_vector
    if support.is_discrete:
        raise ValueError(
            f"fit_posterior: the prior's support {support} is discrete; a posterior density of "
            "theta needs a continuous prior"
        )
    free = _lower_dimensional(support, dim)
    if free is not None:
        what, example = "", ""
        if _is_simplex(support):
            what = " (a Dirichlet/simplex prior: the coordinates sum to one)"
            example = f" (e.g. the log-ratios log(theta_i / theta_{dim}), i < {dim})"
        raise ValueError(
            f"fit_posterior: the prior's support {support} is a {free}-dimensional set in R^{dim}{what}, "
            f"and has no density on R^{dim} for a flow to fit; reparameterize theta to {free} free "
            f"coordinates{example} with a prior on those"
        )
    if bounded == "transform":
        try:
            biject_to(support)
        except NotImplementedError:
            raise ValueError(
                f'fit_posterior: bounded="transform" needs a bijection onto the prior\'s support '
                f'{support}, and torch has none registered for it; use bounded="reject"'
            ) from None
    inside = support.check(theta)
    if not (inside.all(-1) if inside.dim() == theta.dim() else inside).all():
        raise ValueError("fit_posterior: some theta lie outside the prior's support")
    return support


@contextlib.contextmanager
def _seeded(seed: Optional[int]):
    """Within: torch's global CPU generator seeded with ``seed`` on a fork of its state
    (restored on exit, so that the caller's stream goes on as if nothing had drawn from
    it), and a private generator seeded with it; without a seed, the global RNG as it is
    and no private generator."""
    if seed is None:
        yield None
        return
    with torch.random.fork_rng(devices=[]):
        # the CPU generator as torch.manual_seed seeds it (the same draws as before), but
        # not the CUDA generators, which torch.manual_seed would reseed and the fork of the
        # CPU state does not restore
        torch.random.default_generator.manual_seed(seed)
        yield torch.Generator().manual_seed(seed)


def _loc_scale(values: torch.Tensor) -> Pairs:
    loc = values.mean(0)
    scale = values.std(0)
    # A constant coordinate carries no information; leave it unscaled (and centred on its
    # value) rather than divide by 0. Recognised by equality: the mean of a constant column
    # is rounded, so its standard deviation in float32 is often 1e-8 to 1e-5 instead of 0,
    # and dividing by that made a tiny change of such a coordinate a huge input.
    constant = (values == values[:1]).all(0) | ~(scale > 1e-12 * (1 + loc.abs()))
    loc = torch.where(constant, values[0], loc)
    scale = torch.where(constant, torch.ones_like(scale), scale)
    return loc, scale


#: the flows :func:`fit_posterior` fits
FLOWS = ("real_nvp", "ffjord")
#: draws of (t, z) per held-out pair in the held-out flow-matching loss
VALIDATION_DRAWS = 16


def _likelihood_loss(net, u_std, x_std):
    """The negative log-likelihood of the standardized pairs ``idx`` under a conditional
    vector flow (maximum likelihood)."""

    def loss_of(idx):
        zeros = u_std.new_zeros(len(idx), u_std.shape[-1])
        base = Independent(Normal(zeros, torch.ones_like(zeros)), 1)
        return -TransformedDistribution(base, [net.condition(x_std[idx])]).log_prob(u_std[idx]).mean()

    return loss_of


def _flow_matching_losses(u_std, x_std, val_idx, hidden_dims, time_exponent, generator, dtype):
    """A conditional FFJORD on the standardized pairs, its conditional flow-matching loss
    on a minibatch (fresh times and base samples) and its held-out loss (the same fixed
    draws of both for every epoch, so that epochs compare)."""
    # imported here: the RealNVP path does not need the ODE machinery
    from ..builders.continuous import conditional_ffjord
    from ..train.flow_matching import flow_matching_loss, sample_times

    dim = u_std.shape[-1]
    # No random Fourier features of the state: they help a sharp 2-D density at a fixed
    # scale, but a posterior's width changes with x, and in a screen on the linear
    # Gaussian task they made the fit several times worse. Sampling (and so the rejection
    # and Z(x) of a bounded prior) takes 8 fixed rk4 steps: a field trained on straight
    # paths samples as well as adaptively (docs/ffjord.md, "Solvers for scoring and for
    # sampling"); log_prob stays adaptive (dopri5).
    net = conditional_ffjord(
        dim,
        x_std.shape[-1],
        (128, 128, 128) if hidden_dims is None else hidden_dims,
        field="velocity",
        state_features=0,
        sample_method="rk4",
        sample_options={"step_size": 1 / 8},
    ).to(dtype)
    # the held-out regression at VALIDATION_DRAWS fixed (t, z) per pair: one draw is too
    # noisy a criterion for early stopping
    val_idx = val_idx.repeat(VALIDATION_DRAWS)
    val_z = torch.randn(len(val_idx), dim, generator=generator, dtype=dtype)
    val_t = sample_times(len(val_idx), time_exponent, dtype=dtype, generator=generator)

    def loss_of(idx):
        x_idx = u_std[idx]
        z = torch.randn_like(x_idx)
        return flow_matching_loss(
            net, x_idx, z, path="independent", context=x_std[idx], time_exponent=time_exponent
        ).mean()

    def held_out_loss():
        return flow_matching_loss(
            net, u_std[val_idx], val_z, path="independent", t=val_t, context=x_std[val_idx]
        ).mean()

    return loss_of, held_out_loss, net


def fit_posterior(
    simulator_or_pairs: Union[Callable[[torch.Tensor], torch.Tensor], Pairs, List[torch.Tensor]],
    prior: Optional[Distribution] = None,
    num_simulations: Optional[int] = None,
    *,
    flow: str = "real_nvp",
    num_layers: int = 6,
    hidden_dims: Optional[Sequence[int]] = None,
    scale_bound: Optional[float] = 3.0,
    batch_size: int = 128,
    lr: float = 1e-3,
    max_epochs: Optional[int] = None,
    max_seconds: Optional[float] = None,
    validation_fraction: float = 0.1,
    patience: int = 50,
    clip_norm: Optional[float] = 5.0,
    lr_decays: int = 0,
    lr_decay: float = 0.2,
    seed: Optional[int] = 0,
    dtype: torch.dtype = torch.float32,
    bounded: str = "reject",
    time_exponent: float = 1.0,
) -> ConditionalPosterior:
    r"""Fit an amortized posterior :math:`q(\theta \mid x)` by neural posterior
    estimation (Papamakarios & Murray, 2016; Greenberg et al., 2019).

    ``theta`` and ``x`` are z-scored with the training pairs' statistics, a conditional
    RealNVP is trained by maximum likelihood with Adam on minibatches, and training stops
    when the held-out loss has not improved for ``patience`` epochs (or at ``max_epochs``
    or after ``max_seconds``); the weights of the best held-out epoch are kept.

    With ``flow="ffjord"`` the flow is a conditional FFJORD with a
    :class:`~pyro_flows.nn.VelocityNet` field, trained by conditional flow matching on
    the independent straight path (Lipman et al., 2023; as a posterior estimator, Dax et
    al., 2023): the loss is :math:`\frac1D\|h(t, x_t; x) - (z - \tilde u)\|^2` with
    :math:`x_t = (1 - t) \tilde u + t z` and :math:`z \sim N(0, I)` drawn independently
    of the pair, and the held-out loss that early stopping
    watches is the same regression at 16 fixed draws of times and base samples per
    held-out pair. That loss flattens while the density still improves
    (it keeps the regression's irreducible variance), so give such a fit a time budget
    (``max_seconds``) and a long ``patience``. Its ``log_prob`` solves the ODE
    adaptively (exact trace up to a few dimensions) and ``sample`` with 8 fixed rk4
    steps, so both cost more per call than the RealNVP's.

    :param simulator_or_pairs: a simulator, called once as ``simulator(theta)`` on a batch
        ``theta`` of shape ``(num_simulations, theta_dim)`` and returning ``x`` of shape
        ``(num_simulations, x_dim)``; or a pair ``(theta, x)`` of such tensors.
    :param prior: draws ``theta`` for a simulator (``prior.sample((n,))`` must have shape
        ``(n, theta_dim)``); with pairs it is optional and only supplies the support. Its
        ``batch_shape + event_shape`` must be ``(theta_dim,)`` (or ``()``: a scalar prior's
        support holds for each coordinate). A support that is all of :math:`\mathbb R^d`
        (``real``, ``real_vector``, or ``independent`` of them, as of
        ``Normal(...).to_event(1)``) is unbounded; a discrete support, or a
        lower-dimensional one (the simplex of a ``Dirichlet``), on which ``theta`` has no
        density in :math:`\mathbb R^d`, is refused.
    :param int num_simulations: simulations to run (simulator only: with pairs, it must
        be left out or equal their number); at least 3, as for
        pairs: two to train on and one held out.
    :param str flow: ``"real_nvp"`` (conditional RealNVP by maximum likelihood) or
        ``"ffjord"`` (conditional FFJORD by flow matching).
    :param int num_layers: coupling layers of the conditional RealNVP.
    :param hidden_dims: hidden sizes of each coupling's conditioner (default ``(64, 64)``),
        or of the FFJORD's velocity field (default ``(128, 128, 128)``).
    :param float scale_bound: soft bound on each coupling's log-scale.
    :param int batch_size: minibatch size (an int >= 1).
    :param float lr: Adam's learning rate.
    :param int max_epochs: at most this many epochs (default: until early stopping).
    :param float max_seconds: stop after this many seconds of training.
    :param float validation_fraction: share of the pairs held out for early stopping (at
        least one pair, and at least two must be left to train on).
    :param int patience: epochs without a held-out improvement before stopping (default
        50: with 20, two moons at 5000 simulations stopped after a third of the time
        ``sbi`` took, at a KL of 0.80 against its 0.61; with 50 it reached 0.30. The best
        held-out epoch's weights are kept either way; see docs/inference.md).
    :param float clip_norm: gradient norm clipping (``None``: none).
    :param int lr_decays: on a plateau (``patience`` epochs without a held-out
        improvement) restart from the best weights with the learning rate times
        ``lr_decay``, this many times before stopping.
    :param float lr_decay: the factor of each such decay.
    :param int seed: seeds the simulations (the prior's draws and the simulator's draws from
        torch's global CPU generator), the split, the initialisation and the minibatches, so
        that the same ``seed`` gives the same fit. The fit runs on a fork of the global CPU
        RNG seeded with it (:func:`torch.random.fork_rng`): the caller's global RNG is left
        as it was, and draws after the call are those it would have made without it.
        ``None``: the fit draws from the global RNG as it is, and advances it.
    :param str bounded: for a ``prior`` with bounded support: ``"reject"`` fits the flow to
        ``theta`` as it is, rejects draws outside the support and renormalizes ``log_prob``
        (see :class:`ConditionalPosterior`); ``"transform"`` fits it to
        ``biject_to(support).inv(theta)`` (a logit for a box), which can turn a posterior
        that touches the support's edge into a long tail that the flow fits badly.
    :param float time_exponent: with ``flow="ffjord"``, the times of the regression are
        :math:`t = u^a`, :math:`u \sim U(0, 1)`; :math:`a > 1` spends more of it near the
        parameters' end of the path (:math:`t = 0`), where a sharp posterior is carved.
    :returns: a :class:`ConditionalPosterior` in eval mode; ``history`` holds the training
        and held-out losses per epoch (negative log-likelihoods, or flow-matching losses
        with ``flow="ffjord"``), the epochs, the seconds and the best epoch.

    >>> theta = torch.randn(500, 2)
    >>> x = theta + 0.5 * torch.randn(500, 2)
    >>> post = fit_posterior((theta, x), max_epochs=3, hidden_dims=(16,))
    >>> post.sample(torch.zeros(2), 10).shape, post.log_prob(torch.zeros(2), torch.zeros(2)).shape
    (torch.Size([10, 2]), torch.Size([]))
    >>> fm = fit_posterior((theta[:, :1], x), flow="ffjord", max_epochs=2, hidden_dims=(16,))
    >>> fm.sample(torch.zeros(2), 10).shape, type(fm.flow).__name__
    (torch.Size([10, 1]), 'ConditionalFFJORD')
    """
    if flow not in FLOWS:
        raise ValueError(f"fit_posterior: flow must be one of {', '.join(FLOWS)}, got {flow!r}")
    if bounded not in ("reject", "transform"):
        raise ValueError(f"fit_posterior: bounded must be 'reject' or 'transform', got {bounded!r}")
    reject = bounded == "reject"
    if not (math.isfinite(time_exponent) and time_exponent > 0):
        raise ValueError(f"fit_posterior: time_exponent must be a finite number > 0, got {time_exponent}")
    if not 0 < validation_fraction < 1:
        raise ValueError(f"fit_posterior: validation_fraction must be in (0, 1), got {validation_fraction}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"fit_posterior: batch_size must be an int >= 1, got {batch_size!r}")
    with _seeded(seed) as generator:
        theta, x = _check_pairs(*_as_pairs(simulator_or_pairs, prior, num_simulations))
        if flow == "real_nvp" and theta.shape[-1] < 2:
            raise ValueError(
                f"fit_posterior: theta has dimension {theta.shape[-1]}; the RealNVP couplings need at "
                'least 2 (flow="ffjord" takes one)'
            )
        theta, x = theta.detach().to(dtype), x.detach().to(dtype)
        support = constraints.real_vector if prior is None else _prior_support(prior, theta, bounded)

        u = theta if _is_real(support) or reject else biject_to(support).inv(theta)
        num = len(u)
        num_val = max(1, int(round(validation_fraction * num)))
        if num - num_val < 2:
            raise ValueError(
                f"fit_posterior: validation_fraction={validation_fraction} holds out {num_val} of {num} "
                f"pairs and leaves {num - num_val} to train on; need at least 2 (lower it or add pairs)"
            )
        order = torch.randperm(num, generator=generator)
        val_idx, train_idx = order[:num_val], order[num_val:]
        theta_loc, theta_scale = _loc_scale(u[train_idx])
        x_loc, x_scale = _loc_scale(x[train_idx])
        u_std = (u - theta_loc) / theta_scale
        x_std = (x - x_loc) / x_scale
        if flow == "real_nvp":
            net = conditional_real_nvp(
                theta.shape[-1],
                x.shape[-1],
                num_layers=num_layers,
                hidden_dims=(64, 64) if hidden_dims is None else hidden_dims,
                scale_bound=scale_bound,
            ).to(dtype)
            loss_of = _likelihood_loss(net, u_std, x_std)
            held_out_loss = functools.partial(loss_of, val_idx)
        else:
            loss_of, held_out_loss, net = _flow_matching_losses(
                u_std, x_std, val_idx, hidden_dims, time_exponent, generator, dtype
            )
        posterior = ConditionalPosterior(net, theta_loc, theta_scale, x_loc, x_scale, support, reject)

        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        history = {"train": [], "validation": []}
        best, best_state, since_best, epoch, decays_left = math.inf, None, 0, 0, lr_decays
        start = time.perf_counter()
        net.train()
        while max_epochs is None or epoch < max_epochs:
            perm = train_idx[torch.randperm(len(train_idx), generator=generator)]
            total = 0.0
            for batch in perm.split(batch_size):
                loss = loss_of(batch)
                optimizer.zero_grad()
                loss.backward()
                if clip_norm is not None:
                    nn.utils.clip_grad_norm_(net.parameters(), clip_norm)
                optimizer.step()
                total += float(loss.detach()) * len(batch)
            with torch.no_grad():
                val = float(held_out_loss())
            epoch += 1
            history["train"].append(total / len(train_idx))
            history["validation"].append(val)
            if val < best:
                best, since_best = val, 0
                best_state = copy.deepcopy(net.state_dict())
            else:
                since_best += 1
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                break
            if since_best >= patience:
                if decays_left == 0:
                    break
                # a plateau: go back to the best weights and take smaller steps from there
                decays_left, since_best = decays_left - 1, 0
                net.load_state_dict(best_state)
                for group in optimizer.param_groups:
                    group["lr"] *= lr_decay
        if best_state is not None:
            net.load_state_dict(best_state)
        posterior.eval()
        history.update(
            epochs=epoch,
            best_epoch=history["validation"].index(best) + 1 if best_state is not None else 0,
            seconds=time.perf_counter() - start,
            num_simulations=num,
        )
        posterior.history = history
        return posterior
