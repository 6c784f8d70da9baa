"""Density-estimation targets for the fit benchmark, each with its exact density.

The 2-D samples come from :mod:`pyro_flows.data`; the densities are written here.

* ``moons``: :func:`pyro_flows.data.make_moons`: a point uniform on one of two half
  circles plus isotropic Gaussian noise (std 0.1), then standardised. Its density is a
  1-D integral over the arc, computed by the midpoint rule on 1000 nodes per half circle
  (relative error below 1e-6 at this noise level, far below the test-set noise);
* ``8gaussians``: :func:`pyro_flows.data.make_8gaussians`, an equal-weight mixture of 8
  isotropic Gaussians (standard deviation 0.2) centred on the circle of radius 2;
* ``checkerboard``: :func:`pyro_flows.data.make_checkerboard`, uniform on the 8 dark
  squares of a 4 x 4 board of unit squares on :math:`[-2, 2]^2`, so :math:`p = 1/8` there
  and the entropy is exactly :math:`\\log 8`;
* ``rings``: :func:`pyro_flows.data.make_rings`, four concentric circles (radii 0.5 to 2)
  plus Gaussian noise (std 0.08); averaging the noise over the angle gives the closed form
  :math:`p(x) = \\frac14 \\sum_r \\frac{1}{2\\pi\\sigma^2} e^{-(\\rho - r)^2 / 2\\sigma^2}
  \\tilde I_0(r\\rho/\\sigma^2)` with :math:`\\rho = |x|` and the exponentially scaled Bessel
  function :math:`\\tilde I_0(u) = e^{-u} I_0(u)`;
* ``spirals``: :func:`pyro_flows.data.make_2spirals`, a point on one of two
  interleaved spirals :math:`\\pm (t/\\pi)(\\cos t, \\sin t)` with :math:`t = 3\\pi\\sqrt u`,
  :math:`u` uniform, plus isotropic Gaussian noise (std 0.1). Its density is a 1-D
  integral over :math:`u`, computed by the midpoint rule on 20,000 nodes per spiral
  (spacing along the curve at most 0.011, a ninth of the noise);
* ``pinwheel``: :func:`pyro_flows.data.make_pinwheel`, five arms: on arm :math:`k` a
  point :math:`(r, t) \\sim N(1, 0.3^2) \\times N(0, 0.1^2)` is rotated by
  :math:`2\\pi k / 5 + 0.25 e^r` and doubled. The map has Jacobian determinant
  :math:`4 (1 - 0.25 e^r t)`, and its preimages are the roots of a 1-D equation in the
  polar angle, found on a grid of 1024 angles and refined by Newton steps (far in the tails,
  where the arms fold over, there are three);
* ``mixture10``: a 10-D mixture of 8 Gaussians with fixed random means in
  :math:`[-3, 3]^{10}` and diagonal standard deviations in :math:`[0.3, 0.8]`;
* ``banana10``: five independent 2-D bananas, :math:`x_{2i-1} = a z_{2i-1}`,
  :math:`x_{2i} = z_{2i} + b (x_{2i-1}^2 - a^2)` with :math:`z \\sim N(0, I_{10})`,
  :math:`a = 2.5`, :math:`b = 0.3`: a volume-preserving map after the scaling, so
  :math:`H = 5 \\log(2\\pi e) + 5 \\log a` exactly. About 6% of the pairs (27% of the points)
  have a coordinate beyond :math:`\\pm 5` and the largest reach 20-40, which is where splines with identity
  tails on :math:`[-5, 5]` fail.

Entropies without a closed form are estimated by Monte Carlo with the exact density.

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
        x = self.sample(num_samples, seed=seed).double()
        return mean_and_standard_error(torch.cat([-self.log_prob(c) for c in x.split(50_000)]))

    @property
    def dim(self) -> int:
        return int(self.sample(1).shape[-1])


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


# make_moons' defaults: noise 0.1, then x -> (x - centre) / scale.
_MOONS_NOISE = 0.1
_MOONS_CENTRE, _MOONS_SCALE = (0.5, 0.25), (0.87, 0.5)
_MOONS_NODES = 1000


def _moons_log_prob(x):
    centre = torch.tensor(_MOONS_CENTRE, dtype=torch.float64, device=x.device)
    scale = torch.tensor(_MOONS_SCALE, dtype=torch.float64, device=x.device)
    u = x.double() * scale + centre  # back to the unstandardised moons
    t = (torch.arange(_MOONS_NODES, dtype=torch.float64, device=x.device) + 0.5) * (math.pi / _MOONS_NODES)
    arcs = torch.cat(
        [torch.stack([t.cos(), t.sin()], -1), torch.stack([1 - t.cos(), 0.5 - t.sin()], -1)]
    )  # (2 * nodes, 2): both half circles, each node weight 1 / (2 * nodes)
    sq = torch.cdist(u, arcs).square()
    var = _MOONS_NOISE**2
    log_p = torch.logsumexp(-0.5 * sq / var, -1) - math.log(2 * _MOONS_NODES) - math.log(2 * math.pi * var)
    return (log_p + scale.log().sum()).to(x.dtype)


_RINGS_NOISE = 0.08
_RINGS_RADII = (0.5, 1.0, 1.5, 2.0)


def _rings_sample(n, seed=0):
    from pyro_flows.data import make_rings

    return make_rings(n, noise=_RINGS_NOISE, seed=seed)


def _rings_log_prob(x):
    rho = x.double().norm(dim=-1, keepdim=True)
    radii = torch.tensor(_RINGS_RADII, dtype=torch.float64, device=x.device)
    var = _RINGS_NOISE**2
    log_ring = -0.5 * (rho - radii) ** 2 / var + torch.special.i0e(rho * radii / var).log()
    log_norm = math.log(len(_RINGS_RADII)) + math.log(2 * math.pi * var)
    return (torch.logsumexp(log_ring, -1) - log_norm).to(x.dtype)


_SPIRALS_NOISE = 0.1
_SPIRALS_NODES = 20_000


def _spirals_sample(n, seed=0):
    from pyro_flows.data import make_2spirals

    return make_2spirals(n, noise=_SPIRALS_NOISE, seed=seed)


def _spirals_log_prob(x, nodes: int = _SPIRALS_NODES):
    # u uniform on (0, 1): midpoint nodes, t = 3 pi sqrt(u); both spirals, each node
    # weighing 1 / (2 * nodes)
    u = (torch.arange(nodes, dtype=torch.float64, device=x.device) + 0.5) / nodes
    t = 3 * math.pi * u.sqrt()
    arm = (t / math.pi).unsqueeze(-1) * torch.stack([t.cos(), t.sin()], -1)
    curve = torch.cat([arm, -arm])
    var = _SPIRALS_NOISE**2
    log_p = torch.cat(
        [torch.logsumexp(-0.5 * torch.cdist(c, curve).square() / var, -1) for c in x.double().split(500)]
    )
    return (log_p - math.log(2 * nodes) - math.log(2 * math.pi * var)).to(x.dtype)


# make_pinwheel's defaults
_PINWHEEL_ARMS, _PINWHEEL_RADIAL, _PINWHEEL_TANGENTIAL, _PINWHEEL_RATE = 5, 0.3, 0.1, 0.25
_PINWHEEL_GRID = 1024


def _pinwheel_sample(n, seed=0):
    from pyro_flows.data import make_pinwheel

    return make_pinwheel(n, seed=seed)


def _pinwheel_angle_gap(beta, rho, target):
    """``h(beta)`` of :func:`_pinwheel_log_prob`, wrapped to [-pi, pi)."""
    h = beta + _PINWHEEL_RATE * torch.exp(rho * beta.cos()) - target
    return torch.remainder(h + math.pi, 2 * math.pi) - math.pi


def _pinwheel_log_prob(x, grid: int = _PINWHEEL_GRID):
    # y = x / 2 = R(a_k + rate e^r) (r, t) on arm k. In polar coordinates (r, t) =
    # rho (cos b, sin b), so the preimages on arm k are the roots of
    # h(b) = b + rate e^(rho cos b) + a_k - angle(y) (mod 2 pi), with
    # h'(b) = 1 - rate e^r t, the Jacobian determinant of (r, t) -> y: found on a grid of
    # b, refined by Newton steps, and summed (one root where h' > 0 throughout, three
    # where the arms fold over, far in the tails).
    out = []
    arms = torch.arange(_PINWHEEL_ARMS, dtype=torch.float64, device=x.device) * (2 * math.pi / _PINWHEEL_ARMS)
    b = (torch.arange(grid + 1, dtype=torch.float64, device=x.device) / grid * 2 - 1) * math.pi
    normal = torch.distributions.Normal(0.0, 1.0)
    for chunk in x.double().split(1024):
        y = chunk / 2
        rho = y.norm(dim=-1)[:, None, None]
        psi = torch.atan2(y[:, 1], y[:, 0])[:, None, None]
        target = psi - arms[None, :, None]

        g = _pinwheel_angle_gap(b.expand(len(y), _PINWHEEL_ARMS, -1), rho, target)
        lo, hi = g[..., :-1], g[..., 1:]
        cross = (lo * hi <= 0) & ((hi - lo).abs() < math.pi)  # a root, not the wrap
        # Newton from the secant point of each bracketing cell (cells without a root too,
        # masked out after)
        beta = b[:-1] - lo * (b[1:] - b[:-1]) / torch.where(hi != lo, hi - lo, torch.ones_like(lo))
        for _ in range(4):
            slope = 1 - _PINWHEEL_RATE * torch.exp(rho * beta.cos()) * rho * beta.sin()
            beta = beta - _pinwheel_angle_gap(beta, rho, target) / slope
        r, t = rho * beta.cos(), rho * beta.sin()
        det = (1 - _PINWHEEL_RATE * torch.exp(r) * t).abs()
        log_q = (
            normal.log_prob((r - 1) / _PINWHEEL_RADIAL)
            - math.log(_PINWHEEL_RADIAL)
            + normal.log_prob(t / _PINWHEEL_TANGENTIAL)
            - math.log(_PINWHEEL_TANGENTIAL)
            - det.log()
        )
        log_q = torch.where(cross, log_q, torch.full_like(log_q, -math.inf))
        out.append(torch.logsumexp(log_q.flatten(1), -1))
    # each arm with probability 1 / K; x = 2 y
    return (torch.cat(out) - math.log(_PINWHEEL_ARMS) - math.log(4.0)).to(x.dtype)


def _mixture10_parameters():
    g = torch.Generator().manual_seed(2019)
    means = 6 * torch.rand(8, 10, generator=g, dtype=torch.float64) - 3
    stds = 0.3 + 0.5 * torch.rand(8, 10, generator=g, dtype=torch.float64)
    return means, stds


def _mixture10_sample(n, seed=0):
    means, stds = _mixture10_parameters()
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 8, (n,), generator=g)
    x = means[k] + stds[k] * torch.randn(n, 10, generator=g, dtype=torch.float64)
    return x.float()


def _mixture10_log_prob(x):
    means, stds = (t.to(x.device) for t in _mixture10_parameters())
    comp = torch.distributions.Normal(means, stds).log_prob(x.double().unsqueeze(-2)).sum(-1)
    return (torch.logsumexp(comp, -1) - math.log(8)).to(x.dtype)


_BANANA_A, _BANANA_B = 2.5, 0.3


def _banana10_sample(n, seed=0):
    z = torch.randn(n, 5, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    first = _BANANA_A * z[..., 0]
    second = z[..., 1] + _BANANA_B * (first**2 - _BANANA_A**2)
    return torch.stack([first, second], -1).reshape(n, 10).float()


def _banana10_log_prob(x):
    pairs = x.double().unflatten(-1, (5, 2))
    first, second = pairs[..., 0], pairs[..., 1]
    z1 = first / _BANANA_A
    z2 = second - _BANANA_B * (first**2 - _BANANA_A**2)
    normal = torch.distributions.Normal(0.0, 1.0)
    log_p = normal.log_prob(z1) - math.log(_BANANA_A) + normal.log_prob(z2)
    return log_p.sum(-1).to(x.dtype)


def banana10_entropy() -> float:
    """:math:`H = 5 \\log(2\\pi e) + 5 \\log a` (a standard normal in 10-D, scaled by a on
    five coordinates, then a shear with unit Jacobian)."""
    return 5 * math.log(2 * math.pi * math.e) + 5 * math.log(_BANANA_A)


MOONS = Target("moons", _moons, _moons_log_prob)
EIGHT_GAUSSIANS = Target("8gaussians", _gaussians_sample, _gaussians_log_prob)
CHECKERBOARD = Target("checkerboard", _checkerboard_sample, _checkerboard_log_prob, math.log(8.0))
RINGS = Target("rings", _rings_sample, _rings_log_prob)
SPIRALS = Target("spirals", _spirals_sample, _spirals_log_prob)
PINWHEEL = Target("pinwheel", _pinwheel_sample, _pinwheel_log_prob)
MIXTURE10 = Target("mixture10", _mixture10_sample, _mixture10_log_prob)
BANANA10 = Target("banana10", _banana10_sample, _banana10_log_prob, banana10_entropy())
TARGETS = {
    t.name: t for t in (MOONS, EIGHT_GAUSSIANS, CHECKERBOARD, RINGS, SPIRALS, PINWHEEL, MIXTURE10, BANANA10)
}
