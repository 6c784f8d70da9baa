"""Built-in 2-D toy data sets, generated from a seed (no downloads)."""

from __future__ import annotations

import math

import torch

__all__ = ["make_moons"]


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
