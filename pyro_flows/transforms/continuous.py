r"""Continuous-time flows: FFJORD (Chen et al., 2018; Grathwohl et al., 2019).

The normalizing map :math:`f` (data :math:`x` to latent :math:`z`) is the flow of
an ODE from :math:`t=0` to :math:`t=1`:

.. math::

    z_0 = x,\qquad \frac{dz_t}{dt} = h(t, z_t),\qquad f(x) = z_1,

and :math:`f^{-1}` integrates the same ODE backwards, from :math:`t=1` to :math:`t=0`. Any
network :math:`h` gives an invertible map (solutions of a Lipschitz ODE never cross), and
the log-determinant is the integrated trace of the Jacobian of :math:`h` (not of the whole
map), so the Jacobian needs no structure at all:

.. math::

    \log\Big|\det\frac{\partial f}{\partial x}\Big| = \int_0^1
    \operatorname{tr}\frac{\partial h}{\partial z}(t, z_t)\,dt .

In Pyro's convention (``_call`` = base to data) :class:`FFJORD` therefore *samples* by
integrating :math:`1 \to 0` and *scores* (``_inverse``) by integrating :math:`0 \to 1`.
"""

from __future__ import annotations

import importlib
import math
from typing import Callable, Mapping, Optional, Tuple

import torch
from pyro.distributions.conditional import ConditionalTransformModule
from torch import nn

from ..nn.odefunc import AugmentedDynamics, trace_noise
from .base import FlowTransform, check_context, check_event, context_batch_shape

__all__ = ["FFJORD", "ConditionalFFJORD", "EXACT_TRACE_MAX_DIM"]

#: with ``trace="auto"``, dimensions up to this use the exact trace even in training
EXACT_TRACE_MAX_DIM = 8

_TRACES = ("auto", "exact", "hutchinson")


def _torchdiffeq():
    try:
        import torchdiffeq
    except ImportError as error:
        raise ImportError(
            "FFJORD solves ODEs with torchdiffeq, which is not installed; install it with "
            "`pip install torchdiffeq` (in a source checkout of pyro-flows: `pip install -e '.[ode]'`)"
        ) from error
    return torchdiffeq


def _solver_names() -> Tuple[str, ...]:
    """torchdiffeq's solver names (empty if its layout changes: torchdiffeq then names the
    problem itself at the first solve)."""
    _torchdiffeq()
    try:
        return tuple(importlib.import_module("torchdiffeq._impl.odeint").SOLVERS)
    except (ImportError, AttributeError):
        return ()


def _fixed_grid_names() -> Tuple[str, ...]:
    """torchdiffeq's fixed-grid solvers (``euler``, ``rk4``, ...; empty if its layout changes)."""
    _torchdiffeq()
    try:
        solvers = importlib.import_module("torchdiffeq._impl.odeint").SOLVERS
        fixed = importlib.import_module("torchdiffeq._impl.solvers").FixedGridODESolver
    except (ImportError, AttributeError):
        return ()
    return tuple(name for name, cls in solvers.items() if isinstance(cls, type) and issubclass(cls, fixed))


def _check_grid(what: str, method: str, options) -> None:
    """A fixed-grid solver steps over the times it is given unless told a step: over
    ``[0, 1]`` that is one step, a silently crude solve. Ask for the step instead."""
    if method in _fixed_grid_names() and not any(
        k in (options or {}) for k in ("step_size", "grid_constructor")
    ):
        raise ValueError(
            f"FFJORD: the fixed-step solver {method!r} needs its step in {what}, e.g. "
            f"{what}={{'step_size': 0.125}} for 8 steps over t in [0, 1] (without one it takes a single step)"
        )


def _check_options(what: str, options) -> None:
    """Raise if ``options`` (named ``what``) is not a dict or holds a ``step_size`` that is
    not a positive finite number (torchdiffeq would fail deep in its grid construction,
    with "unsupported range: 0 -> inf", or loop without end)."""
    if options is None:
        return
    if not isinstance(options, Mapping):
        raise ValueError(f"FFJORD: {what} must be a dict of solver options, got {type(options).__name__}")
    step = options.get("step_size")
    if step is None:
        return
    try:
        value = float(step)
    except (TypeError, ValueError, RuntimeError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"FFJORD: {what}: step_size must be a positive finite number (the fixed step of a solve "
            f"over t in [0, 1]), got {step!r}"
        )


def _check_solver(method, rtol, atol, options, sample_method, sample_rtol, sample_atol, sample_options):
    """Raise an error that names the problem if a solver setting of :class:`FFJORD` is
    invalid (checked when it is built and again at each solve, for settings changed since)."""
    solvers = _solver_names()
    for name in (method, sample_method):
        if solvers and name is not None and name not in solvers:
            raise ValueError(f"FFJORD: unknown solver {name!r}; expected one of {sorted(solvers)}")
    if not all(0 < tol < math.inf for tol in (rtol, atol)):
        raise ValueError(f"FFJORD: tolerances must be positive and finite, got rtol={rtol}, atol={atol}")
    if not all(tol is None or 0 < tol < math.inf for tol in (sample_rtol, sample_atol)):
        raise ValueError(
            "FFJORD: tolerances must be positive and finite, got "
            f"sample_rtol={sample_rtol}, sample_atol={sample_atol}"
        )
    _check_options("options", options)
    _check_options("sample_options", sample_options)
    _check_grid("options", method, options)
    if sample_method is not None or sample_options is not None:
        # the sampling solver as FFJORD.solver_settings(sampling=True) makes it: given
        # sample_options replace options also when the method is the scoring one, so a
        # fixed-step method needs its step there too (else: options, checked above)
        _check_grid("sample_options", sample_method or method, sample_options)


def _check_field_size(owner: str, dynamics: nn.Module, attribute: str, value: int) -> None:
    """A field that states its sizes (``dim``, ``context_dim`` of :class:`~pyro_flows.nn.DynamicsNet`
    and :class:`~pyro_flows.nn.VelocityNet`) must have the flow's: otherwise the first solve
    failed on a matrix product of mismatched shapes, or blamed the context given."""
    size = getattr(dynamics, attribute, None)
    if isinstance(size, int) and not isinstance(size, bool) and size != value:
        name = "input_dim" if attribute == "dim" else attribute
        raise ValueError(f"{owner}: the dynamics have {attribute}={size}, but {name}={value}")


class FFJORD(FlowTransform):
    r"""Free-form continuous flow (FFJORD) on vectors, as a Pyro ``TransformModule``.

    With dynamics :math:`h(t, z)` and :math:`\tau(t) = \int_0^t \operatorname{tr}
    \frac{\partial h}{\partial z}(s, z_s)\,ds`:

    * ``_inverse`` (data :math:`x` to base, the normalizing :math:`f`): solve
      :math:`t: 0 \to 1` from :math:`z_0 = x`; returns :math:`z_1`.
    * ``_call`` (base :math:`z` to data, sampling): solve :math:`t: 1 \to 0` from
      :math:`z_1 = z`; returns :math:`x = z_0`.
    * ``log_abs_det_jacobian`` of ``_call``: :math:`\log|\det \partial x/\partial z| =
      -\tau(1)`, so :math:`\log p(x) = \log p_Z(z_1) + \int_0^1 \operatorname{tr}
      \frac{\partial h}{\partial z}\,dt`.

    The trace is computed exactly (one backward pass per dimension) or estimated with
    Hutchinson's estimator :math:`\varepsilon^\top \frac{\partial h}{\partial z}\varepsilon`
    (one pass; the probes :math:`\varepsilon` are drawn once per solve, so every step of
    one solve sees the same noise). ``trace="auto"`` uses the exact trace in eval mode and
    for dimensions up to :data:`EXACT_TRACE_MAX_DIM`, Hutchinson otherwise; in eval mode
    the log-density is then deterministic.

    After each solve, :attr:`nfe` holds the number of evaluations of :math:`h` (it grows as
    the dynamics get stiff) and, with the adjoint method, :attr:`nfe_backward` those of the
    last backward pass. With ``kinetic_weight`` or ``frobenius_weight`` positive, the
    integrals :math:`\int_0^1 \|h\|^2 dt` and :math:`\int_0^1 \|\partial h/\partial z\|_F^2 dt`
    (Finlay et al., 2020) are integrated alongside, exposed per sample as
    :attr:`kinetic_energy` and :attr:`jacobian_frobenius`, and their weighted batch mean as
    :attr:`regularization`, to add to the loss.

    Inputs of shape ``(*batch, D)``; the batch is flattened for the solver and restored.

    :param dynamics: the network :math:`h(t, z)` mapping a scalar time and ``(N, D)`` to
        ``(N, D)``, e.g. :class:`~pyro_flows.nn.DynamicsNet`.
    :param int input_dim: :math:`D`.
    :param str trace: ``"auto"``, ``"exact"`` or ``"hutchinson"``.
    :param str noise: Hutchinson probes, ``"rademacher"`` or ``"gaussian"``.
    :param str method: a torchdiffeq solver (``"dopri5"``, ``"dopri8"``, ``"rk4"``, ...).
    :param float rtol: relative tolerance of adaptive solvers.
    :param float atol: absolute tolerance. Both are raised to at least
        :math:`64\,\epsilon_\text{dtype}`: a float32 solve cannot resolve 1e-12, and its steps
        would shrink until they underflow.
    :param bool adjoint: backpropagate with the adjoint method (memory independent of the
        number of steps, at the cost of a backward solve).
    :param options: extra solver options (e.g. ``{"step_size": 0.05}`` for ``"rk4"``).
    :param float kinetic_weight: weight of the kinetic-energy regulariser.
    :param float frobenius_weight: weight of the Jacobian-Frobenius regulariser.
    :param str sample_method: the solver of the sampling direction (``_call``, base to
        data); ``None`` (default) uses ``method``. Scoring (``log_prob``) and sampling
        rarely need the same accuracy: a field trained by flow matching on a straight
        path (:mod:`pyro_flows.train.flow_matching`) samples well with a few fixed steps,
        e.g. ``sample_method="rk4", sample_options={"step_size": 0.125}`` (8 steps), while
        its log-density is best computed adaptively. ``docs/ffjord.md`` measures both.
    :param float sample_rtol: tolerance of an adaptive sampling solver (``None``: ``rtol``).
    :param float sample_atol: tolerance of an adaptive sampling solver (``None``: ``atol``).
    :param sample_options: solver options of the sampling direction (``None``: ``options``
        when ``sample_method`` is ``None``, else none).

    >>> import pyro.distributions as dist
    >>> from pyro_flows.nn import DynamicsNet
    >>> flow = FFJORD(DynamicsNet(2, (16,), zero_init=False), input_dim=2)
    >>> d = dist.TransformedDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), [flow])
    >>> x = d.sample((5,))
    >>> d.log_prob(x).shape, flow.nfe > 0
    (torch.Size([5]), True)
    """

    def __init__(
        self,
        dynamics: nn.Module,
        input_dim: int,
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
    ):
        if not isinstance(input_dim, int) or input_dim < 1:
            raise ValueError(f"FFJORD: expected a positive integer input_dim, got {input_dim!r}")
        _check_field_size("FFJORD", dynamics, "dim", input_dim)
        if trace not in _TRACES:
            raise ValueError(f"FFJORD: expected trace in {_TRACES}, got {trace!r}")
        if noise not in ("rademacher", "gaussian"):
            raise ValueError(f"FFJORD: expected noise 'rademacher' or 'gaussian', got {noise!r}")
        _check_solver(method, rtol, atol, options, sample_method, sample_rtol, sample_atol, sample_options)
        if kinetic_weight < 0 or frobenius_weight < 0:
            raise ValueError(
                f"FFJORD: regularisation weights must be >= 0, got {kinetic_weight}, {frobenius_weight}"
            )
        super().__init__(event_shape=(input_dim,))
        self.dynamics = dynamics
        self.input_dim = input_dim
        self.trace = trace
        self.noise = noise
        self.method = method
        self.rtol = rtol
        self.atol = atol
        self.adjoint = adjoint
        self.options = dict(options or {})
        self.kinetic_weight = float(kinetic_weight)
        self.frobenius_weight = float(frobenius_weight)
        self.sample_method = sample_method
        self.sample_rtol = sample_rtol
        self.sample_atol = sample_atol
        self.sample_options = None if sample_options is None else dict(sample_options)
        self._reset_solve_stats()

    # ----------------------------------------------------------------- results
    def _reset_solve_stats(self):
        #: evaluations of h in the last solve
        self.nfe = 0
        #: per-sample integrals of the last solve (``None`` unless regularising)
        self.kinetic_energy: Optional[torch.Tensor] = None
        self.jacobian_frobenius: Optional[torch.Tensor] = None
        # the last solve's ODE function (not a submodule: it only holds a reference to
        # ``dynamics`` and its probes), kept to count the adjoint pass's evaluations
        self.__dict__["_last_solve"] = None

    def _record_solve(self, func: AugmentedDynamics, integrals: Optional[Tuple[torch.Tensor, torch.Tensor]]):
        """Keep the statistics of a solve: its ODE function (whose count of calls goes on
        through an adjoint pass) and, when regularising, the per-sample kinetic and
        Frobenius integrals."""
        self.nfe = func.calls
        self.__dict__["_last_solve"] = func
        if integrals is not None:
            self.kinetic_energy, self.jacobian_frobenius = integrals

    @property
    def regularizes(self) -> bool:
        return self.kinetic_weight > 0 or self.frobenius_weight > 0

    @property
    def nfe_backward(self) -> int:
        """Evaluations of :math:`h` by the adjoint pass since the last solve (0 without
        ``adjoint=True``: plain backpropagation goes through the stored steps instead)."""
        return _adjoint_calls(self.__dict__.get("_last_solve"), self.nfe)

    @property
    def regularization(self) -> torch.Tensor:
        r"""``kinetic_weight * mean(kinetic_energy) + frobenius_weight * mean(jacobian_frobenius)``
        of the last solve (a differentiable scalar; ``0.`` when not regularising)."""
        return _regularization(
            self.dynamics,
            self.kinetic_weight,
            self.frobenius_weight,
            self.kinetic_energy,
            self.jacobian_frobenius,
        )

    def uses_exact_trace(self) -> bool:
        """Whether the next solve computes the trace exactly (see ``trace``)."""
        if self.trace == "auto":
            return not self.training or self.input_dim <= EXACT_TRACE_MAX_DIM
        return self.trace == "exact"

    def solver_settings(self, sampling: bool) -> dict:
        """``method``, ``rtol``, ``atol`` and ``options`` of the scoring (``sampling=False``)
        or sampling direction, as passed to torchdiffeq (before the dtype floor)."""
        if not sampling or (
            self.sample_method is None
            and self.sample_rtol is None
            and self.sample_atol is None
            and self.sample_options is None
        ):
            return dict(method=self.method, rtol=self.rtol, atol=self.atol, options=dict(self.options))
        options = self.sample_options
        if options is None:
            options = self.options if self.sample_method is None else {}
        return dict(
            method=self.sample_method or self.method,
            rtol=self.rtol if self.sample_rtol is None else self.sample_rtol,
            atol=self.atol if self.sample_atol is None else self.sample_atol,
            options=dict(options),
        )

    # ------------------------------------------------------------------- solve
    def _field(self, z: torch.Tensor) -> Tuple[torch.Tensor, Callable, Tuple[torch.Tensor, ...]]:
        """``z`` (broadcast as needed), the dynamics on its flattened rows, and any tensors
        besides the parameters that the dynamics read (the adjoint needs them)."""
        return z, self.dynamics, ()

    def _solve(self, z: torch.Tensor, t0: float, t1: float) -> Tuple[torch.Tensor, torch.Tensor]:
        """Integrate from ``t0`` to ``t1``; returns the end point and
        :math:`\\int_{t_0}^{t_1} \\operatorname{tr}(\\partial h/\\partial z)\\,dt`, which is
        the log|det| of the map ``z(t0) -> z(t1)``. Sampling (``t0 > t1``) uses the
        ``sample_*`` solver settings."""
        if torch.is_inference_mode_enabled() or z.is_inference():
            # the trace is taken by autograd, which inference mode switches off: solve
            # outside it, without gradients, from a normal copy of the input
            with torch.inference_mode(False), torch.no_grad():
                return self._solve(z.clone(), t0, t1)
        torchdiffeq = _torchdiffeq()
        z, field, extra_inputs = self._field(z)
        batch_shape = z.shape[:-1]
        flat = z.reshape(-1, self.input_dim)
        n = flat.shape[0]
        zeros = flat.new_zeros(n)
        if n == 0:
            self._reset_solve_stats()
            return z, zeros.reshape(batch_shape)
        noise = None if self.uses_exact_trace() else trace_noise(self.noise, flat)
        func = AugmentedDynamics(field, noise, self.regularizes)
        state = (flat, zeros) + ((zeros, zeros) if self.regularizes else ())
        times = torch.tensor([t0, t1], dtype=flat.dtype, device=flat.device)
        # the settings are plain attributes, which may have been changed since __init__
        _check_solver(
            self.method,
            self.rtol,
            self.atol,
            self.options,
            self.sample_method,
            self.sample_rtol,
            self.sample_atol,
            self.sample_options,
        )
        floor = 64 * torch.finfo(flat.dtype).eps
        settings = self.solver_settings(sampling=t0 > t1)
        kwargs = dict(
            rtol=max(settings["rtol"], floor), atol=max(settings["atol"], floor), method=settings["method"]
        )
        if settings["options"]:
            kwargs["options"] = settings["options"]
        if self.adjoint:
            params = tuple(p for p in self.dynamics.parameters() if p.requires_grad)
            params += tuple(x for x in extra_inputs if x.requires_grad)
            solution = torchdiffeq.odeint_adjoint(func, state, times, adjoint_params=params, **kwargs)
        else:
            solution = torchdiffeq.odeint(func, state, times, **kwargs)
        end = [s[-1] for s in solution]
        integrals = None
        if self.regularizes:
            # the integrands are >= 0; a backward solve accumulates them with a minus sign
            sign = math.copysign(1.0, t1 - t0)
            integrals = ((sign * end[2]).reshape(batch_shape), (sign * end[3]).reshape(batch_shape))
        self._record_solve(func, integrals)
        return end[0].reshape(z.shape), end[1].reshape(batch_shape)

    def _call_and_ladj(self, x):
        # base -> data: t from 1 to 0; the integrated trace is log|det dx/dz| directly
        return self._solve(x, 1.0, 0.0)

    def _inverse_and_ladj(self, y):
        # data -> base: t from 0 to 1, the normalizing f; the ladj of _call is minus its log-det
        z, log_det = self._solve(y, 0.0, 1.0)
        return z, -log_det

    # ------------------------------------------------------------ housekeeping
    # The solver settings are part of the cache key: scoring a sample after changing
    # method or tolerances (to compare solvers), the trace's noise, the adjoint or the
    # regularisation weights (whose integrals the solve records) must solve again.
    def _solver_key(self) -> str:
        settings = (self.trace, self.noise, self.adjoint, self.kinetic_weight, self.frobenius_weight)
        return repr((self.solver_settings(False), self.solver_settings(True), settings))

    def _store(self, x, y, ladj, state):
        super()._store(x, y, ladj, state)
        self.__dict__["_cached_solver_key"] = self._solver_key()

    def _lookup(self, x, y, walk: bool):
        entry = super()._lookup(x, y, walk)
        if entry is not None and self.__dict__.get("_cached_solver_key") != self._solver_key():
            return None
        return entry

    def __getstate__(self):
        state = super().__getstate__()
        state["_last_solve"] = None
        state["kinetic_energy"] = None
        state["jacobian_frobenius"] = None
        return state

    # torch.distributions.Transform's repr hides the module tree and the solver settings
    __repr__ = nn.Module.__repr__

    def extra_repr(self) -> str:
        parts = [
            f"input_dim={self.input_dim}",
            f"method={self.method!r}",
            f"rtol={self.rtol:g}",
            f"atol={self.atol:g}",
            f"trace={self.trace!r}",
        ]
        if self.adjoint:
            parts.append("adjoint=True")
        if self.solver_settings(sampling=True) != self.solver_settings(sampling=False):
            sampling = self.solver_settings(sampling=True)
            parts.append(f"sample_method={sampling['method']!r}")
            if sampling["options"]:
                parts.append(f"sample_options={sampling['options']}")
        if self.regularizes:
            parts.append(
                f"kinetic_weight={self.kinetic_weight:g}, frobenius_weight={self.frobenius_weight:g}"
            )
        return ", ".join(parts)


def _adjoint_calls(last_solve: Optional[AugmentedDynamics], nfe: int) -> int:
    """Evaluations of the field by the adjoint pass since the solve that made ``nfe`` of
    them (the ODE function's count goes on through the backward pass)."""
    return 0 if last_solve is None else last_solve.calls - nfe


def _regularization(dynamics, kinetic_weight, frobenius_weight, kinetic, frobenius) -> torch.Tensor:
    """``kinetic_weight * mean(kinetic) + frobenius_weight * mean(frobenius)``, or a zero of
    the dynamics' dtype and device when not regularising or before any solve."""
    if not (kinetic_weight > 0 or frobenius_weight > 0) or kinetic is None:
        param = next(dynamics.parameters(), None)
        return torch.zeros(()) if param is None else param.new_zeros(())
    return kinetic_weight * kinetic.mean() + frobenius_weight * frobenius.mean()


class _SolveRecord:
    """The statistics of the last solve of any transform conditioned on a
    :class:`ConditionalFFJORD`, which holds this record; each conditioned transform writes
    into it. It references neither of them, so it keeps alive only what the transform's own
    statistics do: one solve's ODE function and integrals."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.nfe = 0
        self.kinetic_energy: Optional[torch.Tensor] = None
        self.jacobian_frobenius: Optional[torch.Tensor] = None
        self.last_solve: Optional[AugmentedDynamics] = None

    def store(self, func: AugmentedDynamics, integrals: Optional[Tuple[torch.Tensor, torch.Tensor]]):
        self.nfe = func.calls
        self.last_solve = func
        if integrals is not None:
            self.kinetic_energy, self.jacobian_frobenius = integrals


class _ConditionedFFJORD(FFJORD):
    """:class:`ConditionalFFJORD` with its context fixed: an :class:`FFJORD` sharing the
    parent's dynamics and solver settings, whose inputs are broadcast against the
    context's batch shape (one base sample per context, or ``n`` per context). Its solves
    are also recorded on the parent, where the user can read them."""

    def __init__(self, parent: "ConditionalFFJORD", context: torch.Tensor):
        super().__init__(parent.dynamics, parent.input_dim, **parent.settings)
        # A plain attribute, not a buffer: gradients reach whatever produced the context.
        self.context = context
        self._owner = type(parent).__name__
        # the parent's record, not the parent: nothing here keeps the module tree alive
        self._record = parent._record

    def _reset_solve_stats(self):
        super()._reset_solve_stats()
        # absent while FFJORD.__init__ runs: conditioning must not clear the parent's record
        record = self.__dict__.get("_record")
        if record is not None:
            record.reset()

    def _record_solve(self, func, integrals):
        super()._record_solve(func, integrals)
        self._record.store(func, integrals)

    def __getstate__(self):
        # a copy cannot write into the original parent, and must not carry its tensors
        state = super().__getstate__()
        state["_record"] = _SolveRecord()
        return state

    # The train/eval mode is the parent's, read through the dynamics they share: a module
    # built here would otherwise start in training mode whatever the parent's, and score
    # with Hutchinson's estimator after ``parent.eval()`` (trace="auto" above
    # EXACT_TRACE_MAX_DIM). ``parent.train()``/``eval()`` set the dynamics' mode, also for a
    # transform conditioned before; ``train()``/``eval()`` here reach the dynamics too.
    @property
    def training(self) -> bool:
        return self.dynamics.training

    @training.setter
    def training(self, mode: bool) -> None:
        pass  # nn.Module.train() sets the dynamics' mode next; nn.Module.__init__ sets True

    def _check(self, x, what, dtype=None):
        # errors name the class the user built, not this private one
        check_event(self._owner, x, self.event_shape, what, dtype)

    def _field(self, z):
        context = self.context
        batch = context_batch_shape(self._owner, z.shape[:-1], context)
        z = z.expand(*batch, self.input_dim)
        flat_context = context.expand(*batch, context.shape[-1]).reshape(-1, context.shape[-1])
        dynamics = self.dynamics

        def field(t, rows):
            return dynamics(t, rows, flat_context)

        return z, field, (flat_context,)

    def _state_tensors(self):
        # A context changed in place must invalidate the cache like a parameter would.
        return [*super()._state_tensors(), self.context]


class ConditionalFFJORD(ConditionalTransformModule):
    r"""A conditional continuous flow: :class:`FFJORD` whose dynamics :math:`h(t, z; c)`
    also read a context vector :math:`c`, so that

    .. math::

        \log p(x \mid c) = \log p_Z(z_1) + \int_0^1 \operatorname{tr}
        \frac{\partial h}{\partial z}(t, z_t; c)\,dt, \qquad z_0 = x,\ \dot z_t = h(t, z_t; c).

    ``condition(context)`` returns an :class:`FFJORD` (sharing this module's weights)
    for use with :class:`pyro.distributions.ConditionalTransformedDistribution`; inputs
    broadcast against the context's batch shape. Train it by maximum likelihood or, much
    faster, by conditional flow matching
    (:func:`pyro_flows.train.flow_matching.flow_matching_loss` with ``context=``).

    :param dynamics: the network :math:`h(t, z, c)` on ``(N, D)`` and ``(N, C)`` rows,
        e.g. :class:`~pyro_flows.nn.DynamicsNet` with ``context_dim=C``.
    :param int input_dim: :math:`D`.
    :param int context_dim: :math:`C`.
    :param settings: the solver and trace options of :class:`FFJORD`.

    >>> import pyro.distributions as dist
    >>> from pyro_flows.nn import DynamicsNet
    >>> cflow = ConditionalFFJORD(DynamicsNet(2, (16,), context_dim=3, zero_init=False), 2, 3)
    >>> base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    >>> d = dist.ConditionalTransformedDistribution(base, [cflow]).condition(torch.randn(5, 3))
    >>> d.sample().shape, d.log_prob(torch.zeros(5, 2)).shape
    (torch.Size([5, 2]), torch.Size([5]))

    The solver statistics of :class:`FFJORD` are read here, on this module: after a solve
    of any transform conditioned on it, :attr:`nfe` (and :attr:`nfe_backward` after an
    adjoint backward pass) and, with ``kinetic_weight`` or ``frobenius_weight`` positive,
    :attr:`kinetic_energy`, :attr:`jacobian_frobenius` and :attr:`regularization`, to add to
    the loss:

    >>> cflow = ConditionalFFJORD(
    ...     DynamicsNet(2, (8,), context_dim=3, zero_init=False), 2, 3, kinetic_weight=0.1
    ... )
    >>> d = dist.ConditionalTransformedDistribution(base, [cflow]).condition(torch.randn(4, 3))
    >>> loss = -d.log_prob(torch.zeros(4, 2)).mean() + cflow.regularization
    >>> cflow.nfe > 0, cflow.kinetic_energy.shape
    (True, torch.Size([4]))
    """

    bijective = True

    def __init__(self, dynamics: nn.Module, input_dim: int, context_dim: int, **settings):
        super().__init__()
        if not isinstance(context_dim, int) or context_dim < 1:
            raise ValueError(
                f"ConditionalFFJORD: expected a positive integer context_dim, got {context_dim!r}"
            )
        _check_field_size("ConditionalFFJORD", dynamics, "dim", input_dim)
        _check_field_size("ConditionalFFJORD", dynamics, "context_dim", context_dim)
        # validates the settings once, here rather than at the first condition()
        FFJORD(dynamics, input_dim, **settings)
        self.dynamics = dynamics
        self.input_dim = input_dim
        self.context_dim = context_dim
        self.settings = dict(settings)
        self.event_shape = torch.Size((input_dim,))
        # the last solve of a transform conditioned on this module (see _SolveRecord)
        self._record = _SolveRecord()

    def condition(self, context: torch.Tensor) -> FFJORD:
        check_context(type(self).__name__, context, self.context_dim, self)
        return _ConditionedFFJORD(self, context)

    # ------------------------------------------------------------- results
    # The statistics of FFJORD, from the last solve of a transform conditioned on this module.
    @property
    def nfe(self) -> int:
        """Evaluations of :math:`h` in the last solve."""
        return self._record.nfe

    @property
    def nfe_backward(self) -> int:
        """Evaluations of :math:`h` by the adjoint pass since the last solve (0 without
        ``adjoint=True``: plain backpropagation goes through the stored steps instead)."""
        return _adjoint_calls(self._record.last_solve, self._record.nfe)

    @property
    def kinetic_energy(self) -> Optional[torch.Tensor]:
        r"""Per-sample :math:`\int_0^1 \|h\|^2 dt` of the last solve, of its batch shape
        (``None`` unless regularising)."""
        return self._record.kinetic_energy

    @property
    def jacobian_frobenius(self) -> Optional[torch.Tensor]:
        r"""Per-sample :math:`\int_0^1 \|\partial h/\partial z\|_F^2 dt` of the last solve,
        of its batch shape (``None`` unless regularising)."""
        return self._record.jacobian_frobenius

    def _weights(self) -> Tuple[float, float]:
        # the settings are what each condition() passes on to the transform it builds
        settings = self.settings
        return float(settings.get("kinetic_weight", 0.0)), float(settings.get("frobenius_weight", 0.0))

    @property
    def regularizes(self) -> bool:
        kinetic_weight, frobenius_weight = self._weights()
        return kinetic_weight > 0 or frobenius_weight > 0

    @property
    def regularization(self) -> torch.Tensor:
        r"""``kinetic_weight * mean(kinetic_energy) + frobenius_weight * mean(jacobian_frobenius)``
        of the last solve (a differentiable scalar; ``0.`` when not regularising)."""
        record = self._record
        return _regularization(
            self.dynamics, *self._weights(), record.kinetic_energy, record.jacobian_frobenius
        )

    def __getstate__(self):
        # the recorded tensors carry autograd graphs: a copy starts without them, as FFJORD's
        state = super().__getstate__()
        state["_record"] = _SolveRecord()
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("_record", _SolveRecord())  # pickled before it had one

    def extra_repr(self) -> str:
        return f"input_dim={self.input_dim}, context_dim={self.context_dim}"
