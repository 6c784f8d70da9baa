"""Built-in 1-D data set for the 1-D flow examples, generated from a seed."""

from __future__ import annotations

import torch

__all__ = ["make_bimodal"]


def make_bimodal(n: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    r"""A bimodal scalar data set: a Gaussian mode and a right-skewed mode.

    With probability 0.4, :math:`x \sim \mathcal N(-2, 0.5^2)`; otherwise
    :math:`x = 1 + e^{0.5 \varepsilon}`, :math:`\varepsilon \sim \mathcal N(0, 1)` (a
    log-normal mode near 2 with a long right tail). The skewed mode is not a Gaussian, so
    a mixture of few Gaussians cannot fit it exactly.

    :param int n: number of points.
    :param int seed: seed of the generator (the same seed gives the same data).
    :returns: tensor of shape ``(n,)``.

    >>> make_bimodal(5, seed=1).shape
    torch.Size([5])
    """
    g = torch.Generator().manual_seed(seed)
    left = -2.0 + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    right = 1.0 + torch.exp(0.5 * torch.randn(n, generator=g, dtype=torch.float64))
    x = torch.where(torch.rand(n, generator=g, dtype=torch.float64) < 0.4, left, right)
    return x.to(dtype)
