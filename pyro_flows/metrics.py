r"""Evaluation metrics for density models of discrete data.

**Bits per dimension.** A flow fitted to uniformly dequantized data
:math:`y = (x + u) / K \in [0, 1)^D` (see
:func:`pyro_flows.transforms.dequantize`) has a density :math:`p(y)` on the unit cube.
The density of the same data on the pixel scale :math:`[0, K)^D` is
:math:`p(y) / K^D`, and by Jensen's inequality the discrete model
:math:`P(x) = \int_{[0,1)^D} p((x+u)/K)\, K^{-D}\, du` satisfies

.. math::

    \log P(x) \;\ge\; \mathbb E_u\big[\log p\big((x+u)/K\big)\big] - D \log K .

Bits per dimension is the negative of this bound per dimension, in bits:

.. math::

    \text{bits/dim} = \frac{-\log p(y) + D \log K}{D \log 2}
    = -\frac{\log p(y)}{D \log 2} + \log_2 K .

The :math:`\log_2 K` term (8 for 8-bit images, :math:`\log_2 17 \approx 4.09` for
sklearn's digits) converts the unit-cube density into a probability of the :math:`K`
discrete levels; without it numbers are not comparable with the literature. A model
that puts uniform mass on the :math:`K^D` discrete images scores exactly
:math:`\log_2 K` bits/dim.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch

__all__ = ["bits_per_dim"]


def bits_per_dim(
    log_prob: Union[torch.Tensor, float], num_dims: int, num_levels: Optional[int] = None
) -> Union[torch.Tensor, float]:
    r"""Bits per dimension of data with density ``log_prob`` on :math:`[0, 1]^D`.

    :param log_prob: :math:`\log p(y)` in nats, a tensor (any shape, one value per data
        point) or a float; ``y`` must be the dequantized data scaled to :math:`[0, 1)`.
    :param int num_dims: :math:`D`, the number of dimensions of one data point
        (e.g. ``C * H * W``).
    :param int num_levels: :math:`K`, the number of discrete levels per dimension; adds
        :math:`\log_2 K`. ``None`` for continuous data (no discretization term).
    :returns: :math:`(-\log p(y) + D \log K) / (D \log 2)`, same shape as ``log_prob``.

    A uniform density on :math:`[0,1]^D` (``log_prob = 0``) of 256-level data gives 8:

    >>> bits_per_dim(torch.zeros(2), num_dims=3 * 32 * 32, num_levels=256)
    tensor([8., 8.])
    >>> round(bits_per_dim(-64 * math.log(2), num_dims=64), 6)
    1.0
    """
    if num_dims < 1:
        raise ValueError(f"num_dims must be positive, got {num_dims}")
    if num_levels is not None and num_levels < 2:
        raise ValueError(f"num_levels must be at least 2 (or None for continuous data), got {num_levels}")
    log_k = 0.0 if num_levels is None else math.log(num_levels)
    return (-log_prob / num_dims + log_k) / math.log(2)
