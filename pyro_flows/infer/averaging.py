r"""Iterate averaging of the parameters in Pyro's parameter store.

With a constant learning rate, stochastic optimisation does not settle at the optimum: the
iterates :math:`\phi_t` wander around it, and the last one carries that noise. Their average
over a window of late steps (Polyak and Juditsky, 1992; Ruppert, 1988),

.. math::

    \bar\phi = \frac{1}{T - t_0} \sum_{t = t_0 + 1}^{T} \phi_t,

keeps the optimum and averages the noise away; for variational inference with a constant
step size this is the recommendation of Dhaka et al. (2020), "Robust, accurate stochastic
optimization for variational inference". The optimiser is untouched (plain Adam stays plain
Adam); only the parameters one *uses* after training change.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, List, Tuple

import pyro
import torch

__all__ = ["ParameterAverage"]


class ParameterAverage:
    r"""The running mean of every parameter in Pyro's parameter store, updated by
    :meth:`update` after each optimiser step that should count.

    The store holds a constrained parameter by its unconstrained value, and that is what
    is averaged: a ``constraints.positive`` parameter gets the geometric mean of its
    iterates (the exponential of the mean of their logarithms), a simplex the softmax of
    the mean of its unconstrained coordinates. A parameter whose shape changed since the
    last :meth:`update` starts its mean afresh there; one whose dtype or device changed
    keeps its mean, moved along (so a store moved to ``float64`` is averaged in
    ``float64``).

    :meth:`state_dict` and :meth:`load_state_dict` save and restore the means and their
    counts (tensors and ints, so ``torch.save`` of it loads with ``weights_only=True``),
    beside the store's own ``pyro.get_param_store().get_state()``, so that an interrupted
    run goes on with its average.

    :meth:`applied` swaps the means in for the duration of a ``with`` block (in place, so
    a guide that reads its parameters from the store sees them) and puts the last iterates
    back afterwards, also when the block raises; :meth:`apply` swaps them in for good.
    Parameters without a mean (new since the last :meth:`update`) keep their values; a
    parameter of another shape than its mean is refused before anything is written.

    >>> import pyro
    >>> pyro.clear_param_store()
    >>> p = pyro.param("p", torch.tensor(0.0))
    >>> average = ParameterAverage()
    >>> for value in (1.0, 2.0, 6.0):
    ...     _ = p.data.fill_(value)
    ...     average.update()
    >>> with average.applied():
    ...     float(pyro.param("p"))
    3.0
    >>> float(pyro.param("p"))
    6.0
    """

    def __init__(self):
        self.counts: Dict[str, int] = {}
        self.means: Dict[str, torch.Tensor] = {}

    def state_dict(self) -> dict:
        """The means and their counts: ``{"means": {name: tensor}, "counts": {name: int}}``
        (copies: later updates do not change a state taken before)."""
        return {
            "means": {name: mean.detach().clone() for name, mean in self.means.items()},
            "counts": dict(self.counts),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the means and counts of :meth:`state_dict` (replacing the current ones).

        >>> average = ParameterAverage()
        >>> average.load_state_dict({"means": {"p": torch.tensor(2.0)}, "counts": {"p": 3}})
        >>> average.counts
        {'p': 3}
        """
        means, counts = state.get("means"), state.get("counts")
        if not isinstance(means, dict) or not isinstance(counts, dict) or set(means) != set(counts):
            raise ValueError(
                "ParameterAverage.load_state_dict: expected {'means': {name: tensor}, 'counts': {name: int}} "
                "with the same names, as state_dict() returns"
            )
        for name, count in counts.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(
                    f"ParameterAverage.load_state_dict: the count of {name!r} must be a positive int, got {count!r}"
                )
            if not isinstance(means[name], torch.Tensor):
                raise ValueError(
                    f"ParameterAverage.load_state_dict: the mean of {name!r} must be a tensor, "
                    f"got {type(means[name]).__name__}"
                )
        self.means = {name: mean.detach().clone() for name, mean in means.items()}
        self.counts = {name: int(count) for name, count in counts.items()}

    def update(self) -> None:
        """Add the store's current values to the mean (parameters new since the last call,
        or of a new shape, start their mean here)."""
        with torch.no_grad():
            for name, value in pyro.get_param_store().named_parameters():
                value = value.detach()
                mean = self.means.get(name)
                if mean is None or mean.shape != value.shape:
                    self.means[name] = value.clone()
                    self.counts[name] = 1
                    continue
                if mean.dtype != value.dtype or mean.device != value.device:
                    # follow the store's moves: averaging a float64 store in float32 would
                    # round every later iterate to float32
                    mean = self.means[name] = mean.to(device=value.device, dtype=value.dtype)
                self.counts[name] += 1
                mean.add_(value - mean, alpha=1.0 / self.counts[name])

    def _averaged(self) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """The store's tensors that have a mean, with it; checked before anything is
        written, so that a refusal leaves the store as it was."""
        pairs = []
        for name, value in pyro.get_param_store().named_parameters():
            mean = self.means.get(name)
            if mean is None:
                continue
            if mean.shape != value.shape:
                raise ValueError(
                    f"ParameterAverage: Pyro's parameter store holds {name!r} of shape "
                    f"{tuple(value.shape)}, but its mean has shape {tuple(mean.shape)}: the "
                    "parameter was replaced since the last update(). Call update() before "
                    "applying the means, or start a new ParameterAverage."
                )
            pairs.append((value, mean))
        return pairs

    def _swap_in(self) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Write the means into the store's tensors; returns each tensor written with its
        previous value."""
        pairs = self._averaged()
        with torch.no_grad():
            previous = [(value, value.detach().clone()) for value, _ in pairs]
            for value, mean in pairs:
                value.copy_(mean)
        return previous

    def apply(self) -> None:
        """Replace the store's values by their means."""
        self._swap_in()

    @contextmanager
    def applied(self):
        """The means in the parameter store inside the block, the iterates after it (put
        back into the tensors the means were written to, whatever the block did to the
        store)."""
        previous = self._swap_in()
        try:
            yield self
        finally:
            with torch.no_grad():
                for value, last in previous:
                    value.copy_(last)
