"""2-D toy targets for the fit benchmark, each with what is known of its true density.

The samples come from :mod:`pyro_flows.data`; the densities are written here.

* ``moons``: :func:`pyro_flows.data.make_moons`, two half circles blurred by Gaussian noise
  (standard deviation 0.1) then scaled; its density is an integral along the two arcs,
  computed here by the midpoint rule with 500 nodes per arc (node spacing 0.006, far
  below the noise scale), and its entropy by Monte Carlo (at most 100,000 points) with
  that density;
* ``rings``: :func:`pyro_flows.data.make_rings`, four equally likely rings (radii 0.5 to 2)
  blurred by Gaussian noise (standard deviation 0.08); integrating the angle out gives the
  closed form :math:`p(x) = \\frac14\\sum_k \\frac{1}{2\\pi s^2}
  e^{-(|x|^2 + r_k^2)/2s^2} I_0(r_k |x| / s^2)` (:math:`I_0` the modified Bessel function),
  and the entropy is estimated by Monte Carlo with it;
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
    #: cap on the Monte Carlo sample of :meth:`entropy` for densities that are costly to
    #: evaluate (the moons' quadrature); ``None``: no cap
    max_entropy_samples: Optional[int] = None

    def entropy(self, num_samples: int = 1_000_000, seed: int = 12345):
        """``(entropy, standard error)`` in nats: exact when known, else Monte Carlo with the
        exact density, else ``(None, None)``."""
        if self.exact_entropy is not None:
            return self.exact_entropy, 0.0
        if self.log_prob is None:
            return None, None
        if self.max_entropy_samples is not None:
            num_samples = min(num_samples, self.max_entropy_samples)
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


# make_moons: noise 0.1 on the arcs, then (x - centre) / scale
_MOON_NOISE = 0.1
_MOON_CENTRE = (0.5, 0.25)
_MOON_SCALE = (0.87, 0.5)


def _moons_log_prob(y, nodes: int = 500, chunk: int = 2000):
    y = y.double()
    scale = torch.tensor(_MOON_SCALE, dtype=torch.float64)
    u = y * scale + torch.tensor(_MOON_CENTRE, dtype=torch.float64)
    t = (torch.arange(nodes, dtype=torch.float64) + 0.5) * (math.pi / nodes)
    upper = torch.stack([t.cos(), t.sin()], -1)
    lower = torch.stack([1 - t.cos(), 0.5 - t.sin()], -1)
    arcs = torch.cat([upper, lower])  # equal weight 1 / (2 nodes) each
    s2 = _MOON_NOISE**2
    parts = []
    for block in u.split(chunk):
        log_comp = -0.5 * torch.cdist(block, arcs).square() / s2 - math.log(2 * math.pi * s2)
        parts.append(torch.logsumexp(log_comp, -1) - math.log(2 * nodes))
    return torch.cat(parts) + math.log(_MOON_SCALE[0] * _MOON_SCALE[1])


def _rings_sample(n, seed=0):
    from pyro_flows.data import make_rings

    return make_rings(n, seed=seed)


_RING_RADII = (0.5, 1.0, 1.5, 2.0)
_RING_NOISE = 0.08


def _rings_log_prob(x):
    r = x.double().norm(dim=-1, keepdim=True)
    radii = torch.tensor(_RING_RADII, dtype=torch.float64)
    s2 = _RING_NOISE**2
    # exp(-(r^2 + a^2) / 2s^2) I0(a r / s^2) = exp(-(r - a)^2 / 2s^2) i0e(a r / s^2)
    log_comp = (
        -0.5 * (r - radii).square() / s2
        + torch.log(torch.special.i0e(radii * r / s2))
        - math.log(2 * math.pi * s2)
    )
    return (torch.logsumexp(log_comp, -1) - math.log(len(_RING_RADII))).to(x.dtype)


MOONS = Target("moons", _moons, _moons_log_prob, max_entropy_samples=100_000)
RINGS = Target("rings", _rings_sample, _rings_log_prob)
CHECKERBOARD = Target("checkerboard", _checkerboard_sample, _checkerboard_log_prob, math.log(8.0))
EIGHT_GAUSSIANS = Target("8gaussians", _gaussians_sample, _gaussians_log_prob)
TARGETS = {t.name: t for t in (MOONS, CHECKERBOARD, EIGHT_GAUSSIANS, RINGS)}
