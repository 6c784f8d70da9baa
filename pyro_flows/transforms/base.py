"""The base class every pyro-flows transform derives from.

It adds three things to :class:`pyro.distributions.TransformModule`:

* **one computation, one place**: subclasses implement :meth:`FlowTransform._call_and_ladj`
  and :meth:`FlowTransform._inverse_and_ladj`, which return the value *and* the
  log-determinant together, so a coupling's conditioner runs once per direction;
* **a cache that cannot go stale**: besides the identity of the input (Pyro's rule), a
  cached value is only reused while the parameters and buffers are unchanged (their
  version counters are part of the cache key) and the train/eval mode is the same. So
  scoring the same tensor after an optimizer step recomputes instead of returning
  stale log-densities or a graph that was already freed by ``backward()``;
* **input checks that name the problem**: event shape and dtype are always checked
  (cheap, no device sync); finiteness is checked while distribution validation is on
  (``pyro.enable_validation``/``torch.distributions.Distribution.set_default_validate_args``,
  on by default), following Pyro's convention.

Direction convention (Pyro's): ``_call`` maps the base side to the data side, the
generative direction :math:`x = f^{-1}(z)` of the derivations, and ``_inverse`` maps data to
the base, the normalizing direction :math:`z = f(x)`.
``log_abs_det_jacobian(x, y)`` is :math:`\\log|\\det \\partial y / \\partial x|` of ``_call``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from pyro.distributions.torch_transform import TransformModule
from torch.distributions import Distribution, constraints
from torch.nn.modules import module as _module

__all__ = ["FlowTransform", "check_event", "validation_enabled"]


# Bumped whenever any module registers or replaces a parameter, buffer or submodule
# (torch calls these hooks from ``__setattr__`` and ``register_*``), so that a transform
# can keep the list of its state tensors between calls instead of walking its submodules
# on every call (which cost more than the arithmetic of a small layer).
_structure_generation = 0


def _bump_structure_generation(module, name, value):
    global _structure_generation
    _structure_generation += 1


_module.register_module_parameter_registration_hook(_bump_structure_generation)
_module.register_module_buffer_registration_hook(_bump_structure_generation)
_module.register_module_module_registration_hook(_bump_structure_generation)


# Shared (immutable) constraints for the usual event dims: TransformedDistribution reads
# domain/codomain several times per layer and call, and building one each time showed.
_REAL_EVENTS = tuple(constraints.independent(constraints.real, n) for n in range(5))


def _real_events(event_dim: int) -> constraints.Constraint:
    if event_dim < len(_REAL_EVENTS):
        return _REAL_EVENTS[event_dim]
    return constraints.independent(constraints.real, event_dim)


def validation_enabled() -> bool:
    """Whether value checks that need a device sync (finiteness) should run."""
    if torch.compiler.is_compiling():
        return False
    return bool(Distribution._validate_args)


def check_event(name: str, x: torch.Tensor, event_shape: Optional[Sequence[int]], what: str = "input"):
    """Raise a ``ValueError`` naming the problem if ``x`` is not a float tensor of
    shape ``batch_shape + event_shape`` (and, under validation, finite)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor {what}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(
            f"{name}: expected a floating-point {what}, got dtype {x.dtype} "
            "(convert with .float(); dequantize discrete data first)"
        )
    if event_shape is not None:
        event_shape = tuple(event_shape)
        n = len(event_shape)
        if x.dim() < n or tuple(x.shape[x.dim() - n :]) != event_shape:
            raise ValueError(
                f"{name}: expected {what} of shape (*batch_shape, {', '.join(map(str, event_shape))})"
                f" i.e. event shape {event_shape}, got shape {tuple(x.shape)}"
            )
    if validation_enabled() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name}: {what} contains {bad} non-finite value(s) (NaN or inf)")


class FlowTransform(TransformModule):
    """Base class of pyro-flows transforms (a :class:`~pyro.distributions.TransformModule`).

    Subclasses set ``domain``/``codomain`` (or rely on the real-valued defaults built
    from ``event_dim``), optionally ``event_shape`` (checked on every call), and
    implement :meth:`_call_and_ladj` and :meth:`_inverse_and_ladj`. Both return the
    log-determinant of the *forward* map ``_call`` at the pair (x, y), summed over the
    event dimensions, so ``log_abs_det_jacobian`` has shape ``batch_shape``.

    A minimal subclass, :math:`y = x + c` with :math:`\\log|\\det J| = 0`:

    >>> class Shift(FlowTransform):
    ...     def __init__(self, shift, dim):
    ...         super().__init__(event_shape=(dim,))
    ...         self.shift = shift
    ...     def _call_and_ladj(self, x):
    ...         return x + self.shift, x.new_zeros(x.shape[:-1])
    ...     def _inverse_and_ladj(self, y):
    ...         return y - self.shift, y.new_zeros(y.shape[:-1])
    >>> t = Shift(2.0, dim=3)
    >>> y = t(torch.zeros(4, 3))
    >>> y[0].tolist(), t.log_abs_det_jacobian(torch.zeros(4, 3), y).shape
    ([2.0, 2.0, 2.0], torch.Size([4]))
    >>> t(torch.zeros(4, 2))
    Traceback (most recent call last):
        ...
    ValueError: Shift: expected input of shape (*batch_shape, 3) i.e. event shape (3,), got shape (4, 2)
    """

    bijective = True
    #: number of rightmost dimensions that form one event
    event_dim_: int = 1

    def __init__(self, event_shape: Optional[Sequence[int]] = None, cache_size: int = 1):
        super().__init__(cache_size=cache_size)
        self.event_shape = None if event_shape is None else torch.Size(event_shape)
        if self.event_shape is not None:
            self.event_dim_ = len(self.event_shape)
        self._clear_cache()

    # ----------------------------------------------------------------- constraints
    @constraints.dependent_property(is_discrete=False)
    def domain(self):
        return _real_events(self.event_dim_)

    @constraints.dependent_property(is_discrete=False)
    def codomain(self):
        return _real_events(self.event_dim_)

    # --------------------------------------------------------------- to implement
    def _call_and_ladj(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _inverse_and_ladj(self, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    # ------------------------------------------------------------------ plumbing
    def _check(self, x: torch.Tensor, what: str) -> None:
        check_event(type(self).__name__, x, self.event_shape, what)

    def _call(self, x):
        return self._call_and_ladj(x)[0]

    def _inverse(self, y):
        return self._inverse_and_ladj(y)[0]

    def _stamp(self):
        # Parameters and buffers are updated in place by optimizers, load_state_dict and
        # running-statistics updates, each of which bumps the tensor's version counter.
        return (self.training,) + tuple(t._version for t in self._state_tensors())

    def _state_tensors(self):
        cached = self.__dict__.get("_state_tensor_list")
        if cached is None or cached[0] != _structure_generation:
            cached = _structure_generation, (*self.parameters(), *self.buffers())
            self.__dict__["_state_tensor_list"] = cached
        return cached[1]

    def _clear_cache(self):
        self._store_entry((None, None), None, None)

    def _store_entry(self, x_y, ladj, stamp):
        # Plain attributes, written to __dict__ directly: nn.Module.__setattr__ (which
        # looks for parameters, buffers and submodules first) was a visible part of a
        # small layer's call time.
        self.__dict__.update(_cached_x_y=x_y, _cached_ladj=ladj, _cache_stamp=stamp)

    def _cache_hit(self, x, y) -> bool:
        if torch.compiler.is_compiling():
            # Traced, the version counters would become guards of the compiled graph and
            # every optimizer step would trigger a recompilation; run the lookup eagerly.
            return _cache_hit_eagerly(self, x, y)
        return self._cache_lookup(x, y)

    def _cache_lookup(self, x, y) -> bool:
        x_old, y_old = self._cached_x_y
        if x_old is None or self._cache_stamp is None:
            return False
        if (x is not None and x is not x_old) or (y is not None and y is not y_old):
            return False
        return self._cache_stamp == self._stamp()

    def _store(self, x, y, ladj):
        if self._cache_size:
            if torch.compiler.is_compiling():
                _store_eagerly(self, x, y, ladj)  # as in _cache_hit
            else:
                self._store_stamped(x, y, ladj)

    def _store_stamped(self, x, y, ladj):
        self._store_entry((x, y), ladj, self._stamp())

    def __call__(self, x):
        if self._cache_size and self._cache_hit(x, None):
            return self._cached_x_y[1]
        self._check(x, "input")
        y, ladj = self._call_and_ladj(x)
        self._store(x, y, ladj)
        return y

    def _inv_call(self, y):
        if self._cache_size and self._cache_hit(None, y):
            return self._cached_x_y[0]
        self._check(y, "value")
        x, ladj = self._inverse_and_ladj(y)
        self._store(x, y, ladj)
        return x

    def log_abs_det_jacobian(self, x, y):
        """:math:`\\log|\\det \\partial y/\\partial x|`, shape ``batch_shape``; reuses the
        value computed with ``y`` (or ``x``) when the pair is the cached one."""
        if self._cache_size and self._cache_hit(x, y):
            return self._cached_ladj
        self._check(x, "input")
        return self._call_and_ladj(x)[1]

    # -------------------------------------------------------- module housekeeping
    def _apply(self, fn, *args, **kwargs):
        self._clear_cache()
        self.__dict__.pop("_state_tensor_list", None)  # .to() may swap the tensors
        return super()._apply(fn, *args, **kwargs)

    def train(self, mode: bool = True):
        self._clear_cache()
        return super().train(mode)

    def __getstate__(self):
        # Cached tensors carry autograd graphs: they cannot be pickled or deep-copied
        # and are worthless in a copy anyway.
        state = super().__getstate__()
        state["_cached_x_y"] = None, None
        state["_cached_ladj"] = None
        state["_cache_stamp"] = None
        state.pop("_state_tensor_list", None)  # a copy has tensors of its own
        return state

    def extra_repr(self) -> str:
        return "" if self.event_shape is None else f"event_shape={tuple(self.event_shape)}"


# Cache bookkeeping run outside compiled graphs (see FlowTransform._cache_hit).
_cache_hit_eagerly = torch.compiler.disable(FlowTransform._cache_lookup)
_store_eagerly = torch.compiler.disable(FlowTransform._store_stamped)


def sum_event(t: torch.Tensor, event_dim: int) -> torch.Tensor:
    """Sum ``t`` over its rightmost ``event_dim`` dimensions: per-coordinate log-densities
    or log-determinants of shape ``batch_shape + event_shape`` to shape ``batch_shape``."""
    if event_dim == 0:
        return t
    if event_dim == 1:
        return t.sum(-1)
    return t.flatten(t.dim() - event_dim).sum(-1)
