"""The base class every pyro-flows transform derives from.

It adds three things to :class:`pyro.distributions.TransformModule`:

* **one computation, one place**: subclasses implement :meth:`FlowTransform._call_and_ladj`
  and :meth:`FlowTransform._inverse_and_ladj`, which return the value *and* the
  log-determinant together, so a coupling's conditioner runs once per direction;
* **a cache of the last call only, keyed so that it does not go stale**: the entry
  ``(x, y, log|det J|)`` of the most recent call maps a value the transform *produced*
  back (Pyro's identity rule: ``inv(T(x))`` returns ``x``, ``T(inv(y))`` returns
  ``y``), and only while that tensor is not written in place and has the same
  ``requires_grad``, in the same grad mode and train/eval mode, with the same
  parameters and buffers (the same tensor objects, at the same version counters:
  optimizer steps, ``load_state_dict`` and running-statistics updates bump them). So
  scoring a sample after an optimizer step, after swapping a parameter (also for
  the length of a ``torch.func.functional_call``), or with gradients after drawing it
  under ``no_grad`` recomputes instead of returning stale values or a value without a
  graph. A tensor given again, an *input* (torch's
  ``ComposeTransform.log_abs_det_jacobian`` calls each part on its input once more) or
  an output (a sample scored), hits only while no parameter's gradient changed since:
  an optimizer that writes through ``.data`` (Pyro's ``ClippedAdam``) moves no version
  counter, and a hit after its step would hand back the last step's values and their
  freed graph (the same data observed at every step of Pyro's SVI, which zeroes
  gradients as new tensors; a sample backpropagated through, stepped, then scored).
  Nothing is registered with torch: a changed key simply misses. What it cannot see is
  a ``.data`` write that no gradient change marks: one with no backward pass before it
  (``vector_to_parameters``, hand-made updates), or a ``.data``-writing optimizer in a
  loop that sets the gradients to ``None`` before each call (``zero_grad()``'s
  default) and scores the very same tensor every time. Write parameters in place under
  ``torch.no_grad()`` (``p.add_(...)``, ``p.copy_(...)``, as torch's optimizers do),
  which bumps the counters;
* **input checks that name the problem**: event shape and dtype (also against the
  dtype of the transform's parameters) are always checked (cheap, no device sync);
  finiteness is checked while distribution validation is on
  (``pyro.enable_validation``/``torch.distributions.Distribution.set_default_validate_args``,
  on by default), following Pyro's convention, and under ``torch.func.vmap`` too.

Direction convention (Pyro's): ``_call`` maps the base side to the data side, the
generative direction, and ``_inverse`` maps data to the base, the normalizing direction
(the "flow" of Dinh et al., 2015 and 2017). ``log_abs_det_jacobian(x, y)`` is
:math:`\\log|\\det \\partial y / \\partial x|` of ``_call``.
"""

from __future__ import annotations

import operator
import weakref
from typing import Optional, Sequence, Tuple

import torch
from pyro.distributions.torch_transform import TransformModule
from torch.distributions import Distribution, constraints

__all__ = ["FlowTransform", "check_context", "check_event", "context_batch_shape", "validation_enabled"]


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


_CONVERSIONS = {torch.float32: ".float()", torch.float64: ".double()", torch.float16: ".half()"}


def _conversion(dtype: torch.dtype) -> str:
    return _CONVERSIONS.get(dtype, f".to({dtype})")


def check_event(
    name: str,
    x: torch.Tensor,
    event_shape: Optional[Sequence[int]],
    what: str = "input",
    dtype: Optional[torch.dtype] = None,
):
    """Raise a ``ValueError`` naming the problem if ``x`` is not a float tensor of
    shape ``batch_shape + event_shape`` (and, under validation, finite). With ``dtype``
    (that of the transform's parameters), ``x`` must have that dtype too."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor {what}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(
            f"{name}: expected a floating-point {what}, got dtype {x.dtype} "
            "(convert with .float(); dequantize discrete data first)"
        )
    if dtype is not None and x.dtype != dtype:
        raise ValueError(
            f"{name}: the {what} has dtype {x.dtype} but the transform's parameters are {dtype}; "
            f"convert the {what} (x{_conversion(dtype)}) or the flow (flow{_conversion(x.dtype)})"
        )
    if event_shape is not None:
        event_shape = tuple(event_shape)
        n = len(event_shape)
        if x.dim() < n or tuple(x.shape[x.dim() - n :]) != event_shape:
            raise ValueError(
                f"{name}: expected {what} of shape (*batch_shape, {', '.join(map(str, event_shape))})"
                f" i.e. event shape {event_shape}, got shape {tuple(x.shape)}"
            )
    if validation_enabled():
        _check_finite(name, x, f"{what} contains")


def all_true(mask: torch.Tensor) -> bool:
    """Whether every element of the boolean ``mask`` is true, as a Python bool to branch
    on. ``torch._is_all_true`` is the reduction torch's own distributions validate with:
    unlike ``bool(mask.all())`` it may be branched on under ``torch.func.vmap``."""
    return bool(torch._is_all_true(mask))


def count_false(mask: torch.Tensor) -> str:
    """``"N "``, the number of false elements of ``mask`` for an error message, or ``""``
    under ``torch.func.vmap``, where a batched tensor has no single value to read."""
    try:
        return f"{int((~mask).sum())} "
    except RuntimeError:
        return ""


def _check_finite(name: str, x: torch.Tensor, what: str) -> None:
    """Raise a ``ValueError`` if ``x`` has a NaN or an infinity."""
    finite = torch.isfinite(x)
    if not all_true(finite):
        raise ValueError(f"{name}: {what} {count_false(finite)}non-finite value(s) (NaN or inf)")


def _state_of(module: torch.nn.Module) -> list:
    """The parameters and buffers of ``module`` and its submodules, read straight from the
    module dicts: about 8 us for a coupling with an MLP conditioner, against 30-40 us for
    ``(*parameters(), *buffers())`` (generators, name prefixes, a memo set)."""
    tensors = []
    stack = [module]
    while stack:
        state = stack.pop().__dict__
        tensors += state["_parameters"].values()
        tensors += state["_buffers"].values()
        stack += (m for m in state["_modules"].values() if m is not None)
    return [t for t in tensors if t is not None]


def _slots_of(module: torch.nn.Module) -> tuple:
    """Where each parameter and buffer of ``module``'s tree is held: ``(dicts, names,
    tensors)``, so that ``dicts[i][names[i]] is tensors[i]`` while nothing was swapped.
    ``torch.func.functional_call`` swaps tensors by writing these dicts and puts the
    module's own back afterwards; checking the slots (about 1 us for a coupling) tells a
    call made with the given tensors from one made with the module's own."""
    dicts, names, tensors = [], [], []
    stack = [module]
    while stack:
        state = stack.pop().__dict__
        for held in (state["_parameters"], state["_buffers"]):
            for name, t in held.items():
                if t is not None:
                    dicts.append(held)
                    names.append(name)
                    tensors.append(t)
        stack += (m for m in state["_modules"].values() if m is not None)
    return dicts, names, tensors


def _slots_unchanged(slots) -> bool:
    dicts, names, tensors = slots
    return all(map(operator.is_, map(dict.get, dicts, names), tensors))


def _first_float_dtype(tensors) -> Optional[torch.dtype]:
    for t in tensors:
        if t.is_floating_point():
            return t.dtype
    return None


def _module_dtype(module) -> Optional[torch.dtype]:
    """The dtype of ``module``'s first floating-point parameter or buffer (``None`` if none)."""
    return _first_float_dtype(_state_of(module))


def check_context(
    name: str, context: torch.Tensor, context_dim: int, module: Optional[torch.nn.Module] = None
) -> torch.Tensor:
    """Return ``context`` if it is a floating-point tensor of shape ``(*batch, context_dim)``,
    else raise an error that names the problem (the context of a conditional flow).

    The context follows the rules of an input (see the module docstring): its shape and
    dtype are always checked, with ``module`` (the conditional flow) against the dtype of
    its parameters, never cast; its finiteness while distribution validation is on.
    Whether its batch shape broadcasts against an input's is checked when the conditioned
    flow is called (:func:`context_batch_shape`).

    >>> check_context("ConditionalThing", torch.zeros(4, 3), 2)
    Traceback (most recent call last):
        ...
    ValueError: ConditionalThing: expected a context of shape (*batch, 2), got (4, 3)
    """
    if not isinstance(context, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor context, got {type(context).__name__}")
    if not context.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point context, got dtype {context.dtype}")
    if context.dim() < 1 or context.shape[-1] != context_dim:
        raise ValueError(
            f"{name}: expected a context of shape (*batch, {context_dim}), got {tuple(context.shape)}"
        )
    dtype = None if module is None else _module_dtype(module)
    if dtype is not None and context.dtype != dtype:
        raise ValueError(
            f"{name}: the context has dtype {context.dtype} but the flow's parameters are {dtype}; "
            f"convert the context (context{_conversion(dtype)}) or the flow (flow{_conversion(context.dtype)})"
        )
    if validation_enabled():
        _check_finite(name, context, "the context contains")
    return context


def context_batch_shape(
    name: str, batch_shape: Sequence[int], context: torch.Tensor, what: str = "input"
) -> torch.Size:
    """The broadcast of an input's ``batch_shape`` with the batch shape of ``context``
    (``context.shape[:-1]``), or a ``ValueError`` naming both shapes.

    >>> context_batch_shape("ConditionalThing", (3,), torch.zeros(5, 2))
    Traceback (most recent call last):
        ...
    ValueError: ConditionalThing: the input's batch shape (3,) does not broadcast against the context's batch shape (5,); ...
    """
    try:
        return torch.broadcast_shapes(tuple(batch_shape), context.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"{name}: the {what}'s batch shape {tuple(batch_shape)} does not broadcast against the "
            f"context's batch shape {tuple(context.shape[:-1])}; give one context per {what} (the same "
            f"batch shape), one context for all (shape ({context.shape[-1]},)), or {what}s of batch shape "
            f"(n, {', '.join(['1'] * (context.dim() - 1))}) for n per context"
        ) from None


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
    def _check(self, x: torch.Tensor, what: str, dtype: Optional[torch.dtype] = None) -> None:
        """Raise if ``x`` is not a valid input (``what="input"``, of ``_call``) or value
        (``what="value"``, of ``_inverse``); ``dtype``: that of the parameters."""
        check_event(type(self).__name__, x, self.event_shape, what, dtype)

    def _call(self, x):
        return self._call_and_ladj(x)[0]

    def _inverse(self, y):
        return self._inverse_and_ladj(y)[0]

    def _state_tensors(self) -> list:
        """The tensors whose identity and version key the cache: every parameter and
        buffer (subclasses add tensors they hold as plain attributes)."""
        return _state_of(self)

    # ------------------------------------------------------------------- the cache
    # One entry, (x, y, ladj, grad mode, training, state, versions, pair key, gradient):
    # the last call's pair and log-det, the key under which they may be reused and the
    # gradient of the first trainable state tensor (see ``_gradients``). It is reused only
    # for the same tensor object, unchanged since (version counter and requires_grad of
    # both x and y), in the same grad mode and train/eval mode, with the same state
    # tensors at the same version counters. A lookup on one tensor (``__call__``/``inv``)
    # also walks the module tree to check that no tensor was replaced, and that no
    # gradient changed: a backward pass and an optimizer step writing through ``.data``
    # (ClippedAdam) came between otherwise. That holds for the input of the cached call
    # given again and for its output (a sample backpropagated through, stepped, then
    # scored). The pair lookup of ``log_abs_det_jacobian``, made right after the call
    # that produced the pair, compares version counters only.
    #
    # The state list is kept between calls: walking the module tree costs as much as
    # the rest of a small coupling's cache bookkeeping (~8 us against ~3 us; at
    # --dim 16 --batch 64 --hidden 32 32 a walk per call made log_prob 5% slower). A
    # list made stale by a replaced tensor cannot produce a wrong hit on one input (the
    # walk compares against the tree and rebuilds it); .to()/.double() drop it.

    def _state(self):
        """``(state tensors, dtype of the first floating one, slots)``, kept between calls
        while the slots hold the same tensors (see :func:`_slots_of`): a call inside
        ``torch.func.functional_call`` is cached under the tensors it was given."""
        state = self.__dict__.get("_state_list")
        if state is None or not _slots_unchanged(state[2]):
            tensors = self._state_tensors()
            state = self.__dict__["_state_list"] = tensors, _first_float_dtype(tensors), _slots_of(self)
        return state

    def _lookup(self, x, y, walk: bool):
        entry = self._cache
        if entry is None or (x is not None and x is not entry[0]) or (y is not None and y is not entry[1]):
            return None
        if walk and not _same_gradients(entry[8]):
            return None  # a backward pass came between: maybe a .data step too
        if entry[3] != torch.is_grad_enabled() or entry[4] != self.training or entry[7] != _pair_key(entry):
            return None
        state = entry[5]
        if walk:
            now = self._state_tensors()
            if len(now) != len(state) or any(a is not b for a, b in zip(now, state, strict=True)):
                self.__dict__.pop("_state_list", None)
                return None
        if [t._version for t in state] != entry[6]:
            return None
        return entry

    def _store(self, x, y, ladj, state):
        # versions read after the call: a call may update buffers (running statistics);
        # written to __dict__ directly: 0.06 us against 3.6 us through nn.Module.__setattr__
        # (which looks for parameters, buffers and submodules first), timeit, once per
        # layer and call
        if x.is_inference() or y.is_inference() or any(t.is_inference() for t in state):
            # no version counters to key them by (torch.inference_mode): the values, or
            # a state tensor such as a conditioned transform's context
            return
        grad = torch.is_grad_enabled()
        versions = [t._version for t in state]
        key = _pair_key((x, y))
        self.__dict__["_cache"] = (
            x,
            y,
            ladj,
            grad,
            self.training,
            state,
            versions,
            key,
            _gradients(state),
        )

    def _clear_cache(self):
        self.__dict__["_cache"] = None

    def _cached(self, x, y, walk: bool):
        """The matching entry, or ``None``. Compiled, the lookup runs eagerly: traced, the
        version counters would become guards of the graph and every optimizer step would
        recompile it."""
        if not self._cache_size:
            return None
        if torch.compiler.is_compiling():
            return _eager(FlowTransform._lookup)(self, x, y, walk)
        return self._lookup(x, y, walk)

    def _compute(self, value, what: str, fn):
        """Check ``value`` (also against the parameters' dtype), apply ``fn`` and cache
        the result, as the entry of a call (``what="input"``) or of an inverse."""
        if torch.compiler.is_compiling():
            self._check(value, what)
            out, ladj = in_pyro_context(self, fn, value)
            if self._cache_size:
                _eager(FlowTransform._store_eagerly)(self, value, out, ladj, what)
            return out, ladj
        state, dtype, _ = self._state()
        self._check(value, what, dtype)
        out, ladj = in_pyro_context(self, fn, value)
        if self._cache_size:
            if what == "input":
                self._store(value, out, ladj, state)
            else:
                self._store(out, value, ladj, state)
        return out, ladj

    def _store_eagerly(self, value, out, ladj, what):
        state = self._state()[0]
        if what == "input":
            self._store(value, out, ladj, state)
        else:
            self._store(out, value, ladj, state)

    def __call__(self, x):
        entry = self._cached(x, None, True)
        if entry is not None:
            return entry[1]
        return self._compute(x, "input", self._call_and_ladj)[0]

    def _inv_call(self, y):
        entry = self._cached(None, y, True)
        if entry is not None:
            return entry[0]
        return self._compute(y, "value", self._inverse_and_ladj)[0]

    def _inv_and_ladj(self, y):
        """``(self.inv(y), self.log_abs_det_jacobian(self.inv(y), y))`` with one cache
        lookup instead of two: what ``TransformedDistribution.log_prob`` asks of each part,
        for :meth:`pyro_flows.Flow.log_prob`'s loop."""
        entry = self._cached(None, y, True)
        if entry is not None:
            return entry[0], entry[2]
        return self._compute(y, "value", self._inverse_and_ladj)

    def _cached_ladj(self, x, y) -> Optional[torch.Tensor]:
        """The log-det of the pair ``(x, y)`` if it is the cached one, else ``None``."""
        entry = self._cached(x, y, False)
        return None if entry is None else entry[2]

    def log_abs_det_jacobian(self, x, y):
        """:math:`\\log|\\det \\partial y/\\partial x|`, shape ``batch_shape``; reuses the
        value computed with ``y`` (or ``x``) when the pair is the cached one."""
        ladj = self._cached_ladj(x, y)
        if ladj is not None:
            return ladj
        self._check(x, "input", self._state()[1])
        return in_pyro_context(self, self._call_and_ladj, x)[1]

    # -------------------------------------------------------- module housekeeping
    def _apply(self, fn, *args, **kwargs):
        self._clear_cache()  # frees the cached tensors of the old device/dtype
        self.__dict__.pop("_state_list", None)  # .to() may swap the tensors
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self):
        # Cached tensors carry autograd graphs: they cannot be pickled or deep-copied
        # and are worthless in a copy anyway.
        state = super().__getstate__()
        state["_cache"] = None
        state.pop("_state_list", None)  # a copy has tensors of its own
        return state

    # torch's Transform.__repr__ comes first in the method order and prints only the
    # class name; nn.Module's prints the settings (extra_repr) and the submodules, as
    # print(model) does for any PyTorch module
    __repr__ = torch.nn.Module.__repr__

    def extra_repr(self) -> str:
        return "" if self.event_shape is None else f"event_shape={tuple(self.event_shape)}"


def in_pyro_context(module: torch.nn.Module, fn, value):
    """``fn(value)``, inside ``module``'s Pyro context if it was converted to a
    :class:`~pyro.nn.PyroModule` (``pyro.nn.module.to_pyro_module_``). A PyroModule
    registers the parameters it reads with Pyro (``pyro.param``) only while that context
    is active; ``nn.Module.__call__`` enters it, a transform's calls (``t(x)``,
    ``t.inv(y)``) do not. Without it SVI would leave the parameters a transform reads
    itself (ActNorm's, Scaling's, a MixtureCDF's) untrained and train only those of its
    conditioner networks."""
    context = module.__dict__.get("_pyro_context")
    if context is None:
        return fn(value)
    with context:
        return fn(value)


_EAGER = {}


def _eager(fn):
    """``fn`` wrapped to run outside compiled graphs, built on first use so that importing
    pyro-flows does not import ``torch._dynamo``."""
    wrapped = _EAGER.get(fn)
    if wrapped is None:
        wrapped = _EAGER[fn] = torch.compiler.disable(fn)
    return wrapped


def sum_event(t: torch.Tensor, event_dim: int) -> torch.Tensor:
    """Sum ``t`` over its rightmost ``event_dim`` dimensions: per-coordinate log-densities
    or log-determinants of shape ``batch_shape + event_shape`` to shape ``batch_shape``."""
    if event_dim == 0:
        return t
    if event_dim == 1:
        return t.sum(-1)
    return t.flatten(t.dim() - event_dim).sum(-1)


def _gradients(state) -> Optional[tuple]:
    """With gradients enabled, the gradient of the first trainable state tensor as it is
    now: the tensor, a weak reference to its gradient (``None`` for none; weak, so that
    holding it keeps no gradient alive) and the gradient's version counter. A backward
    pass through the transform changes the gradient of every parameter it used, the
    first one included, so one stands for all (one lookup per call instead of one per
    tensor). ``None`` under ``no_grad`` (no backward pass can consume what such a call
    cached) or without trainable tensors."""
    if not torch.is_grad_enabled():
        return None
    for t in state:
        if t.requires_grad and t.is_leaf:  # a context held as state has no .grad
            g = t.grad
            return t, None if g is None else weakref.ref(g), None if g is None else g._version
    return None


def _same_gradients(key) -> bool:
    """Whether the tensor recorded in ``key`` still has the same gradient, unchanged."""
    if key is None:
        return True
    t, ref, version = key
    g = t.grad
    if g is None or ref is None:
        return g is None and ref is None
    return ref() is g and g._version == version


def _pair_key(entry) -> tuple:
    """What the pair itself adds to the key: a tensor written in place (a reused input
    buffer) or given ``requires_grad`` after the call (which the cached result's graph
    would not know) misses."""
    x, y = entry[0], entry[1]
    return x._version, y._version, x.requires_grad, y.requires_grad
