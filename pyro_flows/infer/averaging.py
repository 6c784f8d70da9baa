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
from typing import Dict, Optional

import pyro
import torch

__all__ = ["ParameterAverage"]


class ParameterAverage:
    r"""The running mean of every parameter in Pyro's parameter store (unconstrained
    values), updated by :meth:`update` after each optimiser step that should count.

    :meth:`applied` swaps the means in for the duration of a ``with`` block (in place, so
    a guide that reads its parameters from the store sees them) and puts the last iterates
    back afterwards; :meth:`apply` swaps them in for good.

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

    def update(self) -> None:
        """Add the store's current values to the mean (parameters new since the last call
        start their mean here)."""
        with torch.no_grad():
            for name, value in pyro.get_param_store().named_parameters():
                mean = self.means.get(name)
                if mean is None or mean.shape != value.shape:
                    self.means[name] = value.detach().clone()
                    self.counts[name] = 1
                else:
                    self.counts[name] += 1
                    mean.add_(value.detach() - mean, alpha=1.0 / self.counts[name])

    def _swap(self, saved: Optional[dict]) -> dict:
        previous = {}
        with torch.no_grad():
            for name, value in pyro.get_param_store().named_parameters():
                if name in self.means:
                    previous[name] = value.detach().clone()
                    value.copy_(self.means[name] if saved is None else saved[name])
        return previous

    def apply(self) -> None:
        """Replace the store's values by their means."""
        self._swap(None)

    @contextmanager
    def applied(self):
        """The means in the parameter store inside the block, the iterates after it."""
        saved = self._swap(None)
        try:
            yield self
        finally:
            self._swap(saved)
