"""2-D toy targets for the fit benchmark, each with what is known of its true density.

The samples come from :mod:`pyro_flows.data`; the densities are written here.

* ``moons``: :func:`pyro_flows.data.make_moons` (its density has no closed form, so no
  entropy is reported);
* ``checkerboard``: :func:`pyro_flows.data.make_checkerboard`, uniform on the 8 dark
  squares of a 4 x 4 board of unit squares on :math:`[-2, 2]^2`, so :math:`p = 1/8` there
  and the entropy is exactly :math:`\\log 8`;
* ``8gaussians``: :func:`pyro_flows.data.make_8gaussians`, an equal-weight mixture of 8
  isotropic Gaussians (standard deviation 0.2) centred on the circle of radius 2; its
  log-density is exact (a log-sum-exp), and its entropy :math:`-E[\\log p(X)]` is
  estimated by Monte Carlo with that density.

>>> x = CHECKERBOARD.sample(1000, seed=0)
>>> bool((CHECKERBOARD.log_prob(x) == -math.log(8)).all())
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from pyro_flows.train.loop import mean_and_standard_error


@dataclass(frozen=True)
class Target:
    """A toy distribution: ``sample(n, seed)`` and, when known, the exact ``log_prob``."""

    name: str
    sample: Callable[..., torch.Tensor]
    log_prob: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    #: the entropy when it has a closed form
    exact_entropy: Optional[float] = None

    def entropy(self, num_samples: int = 1_000_000, seed: int = 12345):
        """``(entropy, standard error)`` in nats: exact when known, else Monte Carlo with the
        exact density, else ``(None, None)``."""
        if self.exact_entropy is not None:
            return self.exact_entropy, 0.0
        if self.log_prob is None:
            return None, None
        return mean_and_standard_error(-self.log_prob(self.sample(num_samples, seed=seed).double()))


def _moons(n, seed=0):
    from pyro_flows.data import make_moons

    return make_moons(n, seed=seed)


def _checkerboard_sample(n, seed=0):
    from pyro_flows.data import make_checkerboard

    return make_checkerboard(n, seed=seed)


def _checkerboard_log_prob(x):
    cell = torch.floor(x + 2.0)
    inside = ((x > -2) & (x < 2)).all(-1)
    dark = (cell.sum(-1) % 2) == 0
    return torch.where(inside & dark, -math.log(8.0), -math.inf).to(x.dtype)


# make_8gaussians' defaults: radius 2, standard deviation 2 * noise = 0.2.
_RADIUS, _NOISE = 2.0, 0.1
_STD = 2 * _NOISE


def _centres(dtype=torch.float64):
    angle = torch.arange(8, dtype=dtype) * (2 * math.pi / 8)
    return _RADIUS * torch.stack([angle.cos(), angle.sin()], -1)


def _gaussians_sample(n, seed=0):
    from pyro_flows.data import make_8gaussians

    return make_8gaussians(n, noise=_NOISE, seed=seed)


def _gaussians_log_prob(x):
    diff = x.unsqueeze(-2) - _centres(x.dtype).to(x.device)
    log_comp = -0.5 * (diff**2).sum(-1) / _STD**2 - 2 * math.log(_STD) - math.log(2 * math.pi)
    return torch.logsumexp(log_comp, -1) - math.log(8)


MOONS = Target("moons", _moons)
CHECKERBOARD = Target("checkerboard", _checkerboard_sample, _checkerboard_log_prob, math.log(8.0))
EIGHT_GAUSSIANS = Target("8gaussians", _gaussians_sample, _gaussians_log_prob)
TARGETS = {t.name: t for t in (MOONS, CHECKERBOARD, EIGHT_GAUSSIANS)}
