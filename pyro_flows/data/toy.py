"""Built-in 2-D toy data sets, generated from a seed (no downloads)."""

from __future__ import annotations

import math

import torch

__all__ = [
    "make_moons",
    "make_circles",
    "make_8gaussians",
    "make_checkerboard",
    "make_2spirals",
    "make_pinwheel",
    "make_rings",
    "TOY_DATASETS",
]


def make_moons(n: int, noise: float = 0.1, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Two interleaving half circles ("two moons"), standardised to roughly unit scale.

    :param int n: number of points (split evenly between the moons).
    :param float noise: standard deviation of the Gaussian noise added to each point.
    :param int seed: seed of the generator (the same seed gives the same data).
    :returns: tensor of shape ``(n, 2)``.

    >>> make_moons(4, seed=1).shape
    torch.Size([4, 2])
    """
    g = torch.Generator().manual_seed(seed)
    n_upper = n // 2
    t = torch.rand(n, generator=g, dtype=torch.float64) * math.pi
    upper = torch.stack([torch.cos(t), torch.sin(t)], -1)
    lower = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], -1)
    x = torch.where((torch.arange(n) < n_upper).unsqueeze(-1), upper, lower)
    x = x + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)
    # Centre and scale (the moons span about [-1, 2] x [-0.5, 1]).
    x = (x - torch.tensor([0.5, 0.25], dtype=torch.float64)) / torch.tensor([0.87, 0.5], dtype=torch.float64)
    return x.to(dtype)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_circles(
    n: int, noise: float = 0.05, seed: int = 0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Two concentric circles of radii 2 and 1 (half the points on each), plus noise.

    >>> make_circles(6, seed=1).shape
    torch.Size([6, 2])
    """
    g = _generator(seed)
    t = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
    radius = torch.where(torch.arange(n) < n // 2, 2.0, 1.0).double()
    x = radius.unsqueeze(-1) * torch.stack([torch.cos(t), torch.sin(t)], -1)
    x = x + noise * 2 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return x.to(dtype)


def make_8gaussians(
    n: int, noise: float = 0.1, seed: int = 0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """An equal mixture of 8 isotropic Gaussians (std ``noise * 2``) on a circle of radius 2.

    >>> make_8gaussians(5, seed=1).shape
    torch.Size([5, 2])
    """
    g = _generator(seed)
    k = torch.randint(0, 8, (n,), generator=g)
    angle = k.double() * (2 * math.pi / 8)
    centres = 2.0 * torch.stack([torch.cos(angle), torch.sin(angle)], -1)
    return (centres + 2 * noise * torch.randn(n, 2, generator=g, dtype=torch.float64)).to(dtype)


def make_checkerboard(n: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform on the 8 dark squares of a 4x4 checkerboard covering [-2, 2]^2.

    >>> x = make_checkerboard(1000, seed=1)
    >>> bool(((x.floor() + 2).sum(-1) % 2 == 0).all())
    True
    """
    g = _generator(seed)
    col = torch.randint(0, 4, (n,), generator=g)
    row = 2 * torch.randint(0, 2, (n,), generator=g) + col % 2
    corner = torch.stack([col, row], -1).double() - 2
    return (corner + torch.rand(n, 2, generator=g, dtype=torch.float64)).to(dtype)


def make_2spirals(
    n: int, noise: float = 0.1, seed: int = 0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Two interleaved Archimedean spirals (one the other rotated by pi), scaled to about [-3, 3]^2.

    >>> make_2spirals(4, seed=1).shape
    torch.Size([4, 2])
    """
    g = _generator(seed)
    t = torch.sqrt(torch.rand(n, generator=g, dtype=torch.float64)) * 3 * math.pi
    sign = torch.where(torch.arange(n) < n // 2, 1.0, -1.0).double()
    x = sign.unsqueeze(-1) * (t / math.pi).unsqueeze(-1) * torch.stack([torch.cos(t), torch.sin(t)], -1)
    return (x + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)).to(dtype)


def make_pinwheel(
    n: int,
    num_arms: int = 5,
    radial_std: float = 0.3,
    tangential_std: float = 0.1,
    rate: float = 0.25,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``num_arms`` curved Gaussian arms: a point at distance r along an arm is rotated by
    ``rate * exp(r)`` (the pinwheel of Johnson et al., 2016).

    >>> make_pinwheel(5, seed=1).shape
    torch.Size([5, 2])
    """
    g = _generator(seed)
    arm = torch.randint(0, num_arms, (n,), generator=g).double()
    r = 1.0 + radial_std * torch.randn(n, generator=g, dtype=torch.float64)
    tangential = tangential_std * torch.randn(n, generator=g, dtype=torch.float64)
    angle = arm * (2 * math.pi / num_arms) + rate * torch.exp(r)
    c, s = torch.cos(angle), torch.sin(angle)
    x = torch.stack([c * r - s * tangential, s * r + c * tangential], -1)
    return (2 * x).to(dtype)


def make_rings(
    n: int, noise: float = 0.08, seed: int = 0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Four concentric rings of radii 0.5, 1, 1.5 and 2, with points spread evenly.

    >>> make_rings(8, seed=1).shape
    torch.Size([8, 2])
    """
    g = _generator(seed)
    radius = 0.5 * (1 + torch.arange(n) % 4).double()
    t = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
    x = radius.unsqueeze(-1) * torch.stack([torch.cos(t), torch.sin(t)], -1)
    return (x + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)).to(dtype)


#: the built-in 2-D sets by name, each ``fn(n, seed=...)``
TOY_DATASETS = {
    "moons": make_moons,
    "circles": make_circles,
    "8gaussians": make_8gaussians,
    "checkerboard": make_checkerboard,
    "2spirals": make_2spirals,
    "pinwheel": make_pinwheel,
    "rings": make_rings,
}
