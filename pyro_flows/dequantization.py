r"""Variational dequantization (Ho et al., 2019, "Flow++", Sec. 3.1).

A flow has a density :math:`p(y)` on :math:`[0, 1)^D`; the data are discrete levels
:math:`x \in \{0, \dots, K-1\}^D`. Uniform dequantization, :math:`y = (x + u)/K` with
:math:`u \sim \mathcal U[0,1)^D`, gives the bound
:math:`\log P(x) \ge \mathbb E_u[\log p(y)] - D\log K`, loose wherever :math:`p` is not
flat inside the cell of :math:`x`. With a learned noise distribution :math:`q(u \mid x)`
on :math:`[0, 1)^D` the same argument (Jensen's inequality) gives

.. math::

    \log P(x) = \log \int_{[0,1)^D} p\Big(\frac{x+u}{K}\Big) K^{-D}\, du
    \;\ge\; \mathbb E_{u \sim q(\cdot\mid x)}\Big[\log p\Big(\frac{x+u}{K}\Big)
    - \log q(u \mid x)\Big] - D \log K,

tight when :math:`q(u \mid x)` is proportional to :math:`p` on the cell. Flow and
:math:`q` are trained jointly on this bound; the uniform case is :math:`q = 1`. With
:math:`S` samples :math:`u_s \sim q`, the importance-weighted estimate

.. math::

    \log P(x) \approx \log \frac1S \sum_{s=1}^S
    \frac{p((x + u_s)/K)}{q(u_s \mid x)} - D\log K

is a tighter bound in expectation that tends to :math:`\log P(x)` as :math:`S` grows
(Burda et al., 2016).

:class:`VariationalDequantizer` is :math:`q`: a standard Normal
:math:`\varepsilon \in \mathbb R^{C\times H\times W}`, a per-pixel affine map and
checkerboard affine couplings whose conditioners see :math:`\varepsilon^A` and features
of :math:`x` from a small convolutional network, then a sigmoid onto :math:`(0, 1)`.
:class:`DequantizedFlow` puts a flow and a dequantizer together: its ``log_prob`` of a
(uniformly) dequantized point is the single-sample bound for the cell the point lies in,
so any training loop that minimises ``-log_prob`` trains both, and
:func:`pyro_flows.bits_per_dim` of it is the bound in bits/dim.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .nn.resnet import ResNet
from .transforms.base import all_true, validation_enabled
from .transforms.masks import checkerboard_mask
from .transforms.preprocess import _into_cells

__all__ = ["VariationalDequantizer", "DequantizedFlow"]


class VariationalDequantizer(nn.Module):
    r"""The noise distribution :math:`q(u \mid x)` on :math:`(0, 1)^D` of variational
    dequantization, a conditional flow (Ho et al., 2019).

    Sampling, for levels :math:`x` of shape ``(*batch, C, H, W)``:

    .. math::

        h = g(x/(K-1) - \tfrac12),\quad
        \varepsilon \sim \mathcal N(0, I),\quad
        e_0 = \varepsilon \odot e^{a(h)} + b(h),\quad
        e_{l} = \text{coupling}_l(e_{l-1};\, h),\quad
        u = \sigma(e_L),

    where :math:`g` is a convolutional feature network, :math:`(b, a)` are read from the
    features, and each coupling is affine on the pixels of one checkerboard colour
    given the other colour and :math:`h` (log-scales soft-bounded by 3). Then

    .. math::

        \log q(u \mid x) = \log \mathcal N(\varepsilon; 0, I) - \sum_i a_i(h)
        - \sum_l \log|\det J_l| - \sum_i \log \sigma'(e_{L,i}).

    Every output layer starts at zero, so a new dequantizer is
    :math:`u = \sigma(\varepsilon)`.

    :param shape: image shape ``(C, H, W)``, H and W at least 2.
    :param int num_levels: :math:`K`.
    :param int hidden_channels: width of the feature and conditioner networks.
    :param int num_couplings: checkerboard couplings (alternating colours).
    :param int num_blocks: residual blocks per network.
    :param int feature_channels: channels of the features :math:`h`.

    >>> q = VariationalDequantizer((1, 4, 4), num_levels=17, hidden_channels=8)
    >>> u, log_q = q(torch.randint(0, 17, (5, 1, 4, 4)).float())
    >>> u.shape, log_q.shape, bool(((u > 0) & (u < 1)).all())
    (torch.Size([5, 1, 4, 4]), torch.Size([5]), True)
    """

    def __init__(
        self,
        shape: Sequence[int],
        num_levels: int,
        hidden_channels: int = 32,
        num_couplings: int = 4,
        num_blocks: int = 1,
        feature_channels: int = 8,
    ):
        super().__init__()
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or shape[1] < 2 or shape[2] < 2:
            raise ValueError(
                f"VariationalDequantizer: expected an image shape (C, H, W) with H, W >= 2, got {shape}"
            )
        if num_levels < 2:
            raise ValueError(f"VariationalDequantizer: num_levels must be at least 2, got {num_levels}")
        self.shape = torch.Size(shape)
        self.num_levels = int(num_levels)
        c = shape[0]
        self.features = ResNet(
            c, feature_channels, hidden_channels, num_blocks, batch_norm=False, zero_init=False
        )
        self.initial = nn.Conv2d(feature_channels, 2 * c, 3, padding=1)
        nn.init.zeros_(self.initial.weight)
        nn.init.zeros_(self.initial.bias)
        self.couplings = nn.ModuleList(
            ResNet(c + feature_channels, 2 * c, hidden_channels, num_blocks, batch_norm=False)
            for _ in range(num_couplings)
        )
        masks = torch.stack(
            [checkerboard_mask(shape[1], shape[2], parity % 2) for parity in range(num_couplings)]
        )
        # built on the CPU; kept, like the parameters, on the default device and dtype
        like = {"dtype": torch.get_default_dtype(), "device": torch.empty(0).device}
        self.register_buffer("masks", masks.to(**like), persistent=False)

    def _check(self, levels: torch.Tensor) -> torch.Tensor:
        if levels.dim() < 3 or levels.shape[-3:] != self.shape:
            raise ValueError(
                f"VariationalDequantizer: expected levels of shape (*batch, {', '.join(map(str, self.shape))}), "
                f"got {tuple(levels.shape)}"
            )
        return levels.to(self.initial.weight.dtype)

    @staticmethod
    def _bounded(raw: torch.Tensor) -> torch.Tensor:
        return 3.0 * torch.tanh(raw / 3.0)

    def forward(
        self, levels: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        r"""Draw :math:`u \sim q(\cdot \mid x)` (reparameterized) for levels :math:`x` of
        shape ``(*batch, C, H, W)``; returns ``u`` (same shape, in :math:`(0, 1)`) and
        :math:`\log q(u \mid x)`, shape ``batch``. The base noise :math:`\varepsilon` comes
        from ``generator`` when given (else torch's global generator)."""
        x = self._check(levels)
        batch = x.shape[:-3]
        x = x.reshape(-1, *self.shape)
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        u, log_q = self.transform(eps, x)
        return u.reshape(*batch, *self.shape), log_q.reshape(batch)

    def transform(self, eps: torch.Tensor, levels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        r"""The map :math:`\varepsilon \mapsto u` given levels (both ``(N, C, H, W)``) and
        :math:`\log q(u \mid x)` of the result, shape ``(N,)``."""
        h = self.features(levels / (self.num_levels - 1) - 0.5)
        shift, raw = self.initial(h).chunk(2, dim=1)
        log_scale = self._bounded(raw)
        e = eps * log_scale.exp() + shift
        log_det = log_scale.sum((1, 2, 3))
        for mask, net in zip(self.masks, self.couplings, strict=True):
            mask = mask.to(e.dtype)
            shift, raw = net(torch.cat([e * mask, h], dim=1)).chunk(2, dim=1)
            log_scale = self._bounded(raw) * (1 - mask)
            e = e * log_scale.exp() + shift * (1 - mask)
            log_det = log_det + log_scale.sum((1, 2, 3))
        u = torch.sigmoid(e)
        log_sigmoid_grad = (-F.softplus(-e) - F.softplus(e)).sum((1, 2, 3))
        log_normal = -0.5 * (eps**2).sum((1, 2, 3)) - 0.5 * eps[0].numel() * math.log(2 * math.pi)
        return u, log_normal - log_det - log_sigmoid_grad

    def extra_repr(self) -> str:
        return f"shape={tuple(self.shape)}, num_levels={self.num_levels}, num_couplings={len(self.couplings)}"


class DequantizedFlow(nn.Module):
    r"""A flow on :math:`[0, 1)^D` and its dequantization, as one model of discrete data.

    :param flow: a model with ``log_prob`` and ``sample`` on :math:`[0, 1)^D` (e.g. a
        :class:`~pyro_flows.Flow` ending in :class:`~pyro_flows.transforms.Logit`).
    :param int num_levels: :math:`K`.
    :param dequantizer: a :class:`VariationalDequantizer`, or ``None`` for uniform noise.

    ``log_prob(y)`` of a point :math:`y \in [0, 1)^D` is the single-sample bound
    :math:`\log p((x+u)/K) - \log q(u \mid x)` for its cell :math:`x`
    (:math:`x/K \le y < (x+1)/K`, so ``levels / K`` scores ``levels``) with a fresh
    :math:`u \sim q(\cdot \mid x)` (the noise already in ``y`` is replaced), so a loop
    that minimises ``-log_prob`` of uniformly dequantized batches trains flow and
    dequantizer jointly, and ``bits_per_dim(log_prob, D, K)`` is the bound in bits/dim.
    :meth:`bound` and :meth:`log_likelihood` take the levels themselves. Inside
    :meth:`fixed_noise` the noise is drawn from a given generator instead of torch's global
    one, so held-out data score the same every time (``pyro-flows fit`` and ``evaluate`` do
    that with the run's seed).

    >>> import pyro_flows
    >>> from pyro_flows.transforms import Logit
    >>> flow = pyro_flows.Flow([pyro_flows.glow((1, 4, 4), num_scales=1, steps_per_scale=1,
    ...     hidden_channels=4), Logit((1, 4, 4))])
    >>> model = DequantizedFlow(flow, 17, VariationalDequantizer((1, 4, 4), 17, hidden_channels=4))
    >>> levels = torch.randint(0, 17, (3, 1, 4, 4)).float()
    >>> model.bound(levels).shape, model.log_likelihood(levels, num_samples=4).shape
    (torch.Size([3]), torch.Size([3]))
    """

    def __init__(
        self, flow: nn.Module, num_levels: int, dequantizer: Optional[VariationalDequantizer] = None
    ):
        super().__init__()
        if num_levels < 2:
            raise ValueError(f"DequantizedFlow: num_levels must be at least 2, got {num_levels}")
        self.flow = flow
        self.dequantizer = dequantizer
        self.num_levels = int(num_levels)
        self.event_shape = torch.Size(flow.event_shape)
        self._generator: Optional[torch.Generator] = None

    @contextlib.contextmanager
    def fixed_noise(self, generator: torch.Generator) -> Iterator["DequantizedFlow"]:
        """Within the block, draw the dequantization noise from ``generator`` (on the
        device of the data): scoring the same points with a generator seeded the same
        way gives the same numbers, as for fixed uniform noise.

        >>> import pyro_flows
        >>> flow = pyro_flows.Flow(pyro_flows.glow((1, 4, 4), num_scales=1, steps_per_scale=1, hidden_channels=4))
        >>> model = DequantizedFlow(flow, 17, VariationalDequantizer((1, 4, 4), 17, hidden_channels=4))
        >>> y = torch.randint(0, 17, (3, 1, 4, 4)) / 17.0
        >>> scores = []
        >>> for _ in range(2):
        ...     with model.fixed_noise(torch.Generator().manual_seed(5)):
        ...         scores.append(model.log_prob(y))
        >>> torch.equal(*scores)
        True
        """
        previous, self._generator = self._generator, generator
        try:
            yield self
        finally:
            self._generator = previous

    def _noise(self, levels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        generator = self._generator
        if self.dequantizer is None:
            u = torch.rand(levels.shape, generator=generator, dtype=levels.dtype, device=levels.device)
            return u, levels.new_zeros(levels.shape[: levels.dim() - len(self.event_shape)])
        return self.dequantizer(levels, generator=generator)

    def bound(self, levels: torch.Tensor) -> torch.Tensor:
        r"""One-sample estimate of the bound :math:`\log p((x+u)/K) - \log q(u\mid x)`
        (density units of :math:`[0,1)^D`; subtract :math:`D\log K` for :math:`\log P(x)`),
        shape ``batch``.

        ``levels`` are the integers :math:`0, \dots, K-1` themselves (in a float dtype);
        under distribution validation anything else (data already scaled to
        :math:`[0, 1)`, which would be scored as the cells of its first few levels) is a
        ``ValueError``."""
        _check_levels(levels, self.num_levels, "bound")
        u, log_q = self._noise(levels)
        return self.flow.log_prob(_into_cells(levels, u, self.num_levels)) - log_q

    def log_likelihood(self, levels: torch.Tensor, num_samples: int = 16) -> torch.Tensor:
        r"""Importance-weighted estimate with ``num_samples`` draws of
        :math:`\log \frac1S \sum_s p((x+u_s)/K) / q(u_s \mid x)`, in the units of
        :meth:`bound` (subtract :math:`D\log K` for :math:`\log P(x)`); shape ``batch``."""
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        _check_levels(levels, self.num_levels, "log_likelihood")
        draws = torch.stack([self.bound(levels) for _ in range(num_samples)])
        return torch.logsumexp(draws, 0) - math.log(num_samples)

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """The bound of the cell of ``y`` in :math:`[0,1)^D` (see the class docstring).

        Under distribution validation ``y`` must lie in :math:`[0, 1]` (1 is read as the
        top cell, as data scaled by :math:`1/(K-1)` have it): raw levels or data on
        another scale would all be scored as an edge cell."""
        if validation_enabled() and isinstance(y, torch.Tensor) and y.numel():
            inside = (y >= 0) & (y <= 1)
            if not all_true(inside):
                raise ValueError(
                    f"DequantizedFlow.log_prob: expected points in [0, 1] (levels scaled by 1/K, e.g. "
                    f"dequantize(levels, {self.num_levels})), got {_range_text(y)}; pass the levels "
                    "themselves to bound() or log_likelihood()"
                )
        return self.bound(_cells(y.detach(), self.num_levels))

    def sample(self, sample_shape=()) -> torch.Tensor:
        r"""Samples of the flow in :math:`[0, 1)^D`; ``floor(K y)`` are the levels, in
        :math:`0, \dots, K-1`.

        A flow can put some mass outside :math:`[0, 1)^D`: one ending in
        :class:`~pyro_flows.transforms.Logit` with ``alpha`` samples
        :math:`(-\alpha, 1 - \alpha) / (1 - 2\alpha)`, about :math:`(-0.056, 1.056)` for
        0.05. Such values are moved into the nearest edge cell (below 0 to 0, from 1 on to
        the largest value below 1 whose level is :math:`K-1`), so every sample is a point
        of some cell, as the model's :meth:`log_prob` reads it.

        >>> import pyro_flows
        >>> from pyro_flows.transforms import Logit
        >>> model = DequantizedFlow(pyro_flows.Flow(Logit((3,), alpha=0.05)), 4)
        >>> y = model.sample((5000,))
        >>> bool((y >= 0).all() and (y < 1).all()), torch.floor(4 * y).unique().tolist()
        (True, [0.0, 1.0, 2.0, 3.0])
        """
        y = self.flow.sample(sample_shape)
        return y.clamp(0.0, _below_one(self.num_levels, y.dtype))


def _range_text(x: torch.Tensor) -> str:
    """``"values in [min, max]"`` for an error message (``"other values"`` under
    ``torch.func.vmap``, where a batched tensor has no single value to read)."""
    try:
        return f"values in [{float(x.min())}, {float(x.max())}]"
    except RuntimeError:
        return "other values"


def _check_levels(levels: torch.Tensor, num_levels: int, method: str) -> None:
    r"""Under distribution validation, ``levels`` must be integers in
    :math:`0, \dots, K-1`: scaled data passed instead would be read as levels and
    scored, silently, as the wrong cells."""
    if not (validation_enabled() and isinstance(levels, torch.Tensor) and levels.numel()):
        return
    whole = levels == levels.round()
    if not all_true(whole & (levels >= 0) & (levels <= num_levels - 1)):
        fractions = "" if all_true(whole) else ", not all whole numbers"
        raise ValueError(
            f"DequantizedFlow.{method}: expected integer levels in [0, {num_levels - 1}], got "
            f"{_range_text(levels)}{fractions}; pass the levels, not data already scaled to [0, 1) "
            "(log_prob takes those)"
        )


def _cells(y: torch.Tensor, num_levels: int) -> torch.Tensor:
    r"""The level :math:`x` of each value with :math:`x/K \le y < (x+1)/K` (the divisions
    rounded as when ``y`` was made from ``x``), clamped to :math:`0, \dots, K-1`.
    ``floor(K y)`` alone is one too low for some points on the grid: in float32,
    ``floor(13 / 22 * 22)`` is 12."""
    levels = torch.floor(y * num_levels)
    levels = levels - (levels / num_levels > y).to(levels.dtype)
    levels = levels + ((levels + 1) / num_levels <= y).to(levels.dtype)
    return levels.clamp(0, num_levels - 1)


def _below_one(num_levels: int, dtype: torch.dtype) -> float:
    """The largest value below 1 in ``dtype`` whose level ``floor(K y)`` is ``K - 1`` (the
    product ``K y`` is rounded to ``dtype``, and could round up to ``K``)."""
    top = torch.nextafter(torch.ones((), dtype=dtype), torch.zeros((), dtype=dtype))
    while torch.floor(top * num_levels) >= num_levels:
        top = torch.nextafter(top, torch.zeros((), dtype=dtype))
    return float(top)
