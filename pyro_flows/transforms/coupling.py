"""Coupling layers: NICE's additive coupling (Dinh et al., 2015) and RealNVP's affine
coupling (Dinh et al., 2017), their conditional twins, and the helpers that build them
with an MLP (vectors) or a ResNet (images) conditioner.

For a partition :math:`x = (x^A, x^B)` given by a mask, a coupling layer maps

.. math::

    y^A = x^A, \\qquad y^B = \\hat f(x^B \\mid \\psi(x^A)),

with a conditioner network :math:`\\psi`. Its Jacobian is block-triangular, so
:math:`\\log|\\det J| = \\log|\\det \\partial \\hat f / \\partial x^B|`, and the
conditioner never needs to be inverted.

A conditional coupling's conditioner also sees a context vector :math:`c`,
:math:`y^B = \\hat f(x^B \\mid \\psi(x^A, c))`, so one set of weights defines a family of
flows indexed by :math:`c` (amortized posteriors, class-conditional densities).
``condition(c)`` returns an ordinary coupling that shares the partition and the
conditioner with the conditional module: no copies, nothing rebuilt.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from pyro.distributions.conditional import ConditionalTransformModule
from torch import nn

from ..nn.mlp import MLP, ConditionalMLP
from ..nn.resmlp import ConditionalResidualMLP, ResidualMLP
from ..nn.resnet import ResNet
from ._arguments import check_bound, check_count, check_hidden_dims
from .base import FlowTransform, check_context, check_event, context_batch_shape, sum_event
from .masks import (
    IndexPartition,
    MaskPartition,
    alternating_mask,
    bool_mask,
    channel_mask,
    checkerboard_mask,
    half_mask,
    make_partition,
)
from .reshape import _image_shape

__all__ = [
    "AdditiveCoupling",
    "AffineCoupling",
    "ConditionalAdditiveCoupling",
    "ConditionalAffineCoupling",
    "additive_coupling",
    "affine_coupling",
    "conditional_additive_coupling",
    "conditional_affine_coupling",
    "image_additive_coupling",
    "image_affine_coupling",
    "image_mask",
    "vector_mask",
]


def _partition_of(
    mask: Union[torch.Tensor, IndexPartition, MaskPartition],
    event_shape: Optional[Sequence[int]],
    owner: str,
):
    """The event shape (``mask.shape`` unless given) and the partition ``mask`` makes of it;
    a partition already built (a conditioned coupling shares its parent's) is kept.
    ``owner`` (the class being built) is named in errors."""
    if isinstance(mask, (IndexPartition, MaskPartition)):
        if event_shape is None:
            raise ValueError(f"{owner}: a coupling built from a partition needs its event_shape")
        return torch.Size(event_shape), mask
    mask = bool_mask(mask, owner)
    event_shape = torch.Size(mask.shape if event_shape is None else event_shape)
    return event_shape, make_partition(mask, event_shape, owner)


def _conditioner_output(conditioner: Callable, x: torch.Tensor) -> torch.Tensor:
    """``conditioner(x)`` in the dtype of ``x``.

    Under ``torch.autocast`` the conditioner's layers return the autocast dtype (e.g.
    bfloat16); the coupling itself (scales, shifts, spline knots) then runs in the data's
    dtype, since bfloat16 knots give NaN and a bfloat16 log-scale loses the log-density's
    precision. Outside autocast this is the conditioner's output itself."""
    raw = conditioner(x)
    if raw.dtype != x.dtype:
        raw = raw.to(x.dtype)
    return raw


class _Coupling(FlowTransform):
    """Shared machinery: the partition, the conditioner call and the reassembly."""

    #: how many parameter tensors the conditioner returns per transformed coordinate
    num_params = 1

    def __init__(
        self,
        mask: torch.Tensor,
        conditioner: Callable,
        event_shape: Optional[Sequence[int]] = None,
    ):
        # (``mask`` may also be a partition already built: a conditioned coupling's parent's)
        event_shape, partition = _partition_of(mask, event_shape, type(self).__name__)
        super().__init__(event_shape=event_shape)
        self.partition = partition
        self.conditioner = conditioner

    def _params(self, x_a: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Run the conditioner once and return its outputs for :math:`x^B`."""
        partition = self.partition  # one nn.Module attribute lookup, not four
        raw = _conditioner_output(self.conditioner, x_a)
        num = self.num_params
        chunks = raw.chunk(num, dim=partition.param_dim) if num > 1 else (raw,)
        expected = partition.b_shape
        n = len(expected)
        if len(chunks) != num or any(c.shape[c.dim() - n :] != expected for c in chunks):
            # a conditioned layer names the conditional class the user built
            owner = getattr(self, "_owner", type(self).__name__)
            raise ValueError(
                f"{owner}: conditioner returned shape {tuple(raw.shape)}; expected "
                f"{num} x {tuple(expected)} stacked along dim {partition.param_dim}"
            )
        if partition.masks_params:
            return tuple(partition.mask_params(c) for c in chunks)
        return chunks


def _soft_bound(s: torch.Tensor, bound: float, sign: float = 1.0) -> torch.Tensor:
    """:math:`b \\tanh(s / b)`, computed as :math:`2b\\,\\sigma(2s / b) - b` (the same function);
    with ``sign=-1`` its exact negative, in as many operations.

    On the CPU, torch's float32 ``tanh`` is far slower than ``sigmoid`` (timeit on a
    (128, 32) block of standard normals, one thread: 47 us against 2.8 us), enough to show
    in a small flow's ``log_prob``. The rounding differs: an absolute error of about
    :math:`2b` float epsilons instead of a relative one, far below float32's own noise in a
    log-density; 0 still maps to exactly 0, so a new coupling is still the identity."""
    # at the default bound of 2 the inner factor 2 / b is 1: skip that multiplication (and
    # its backward), which is measurable in a small flow's training step
    scaled = s if bound == 2.0 else s * (2.0 / bound)
    return torch.sigmoid(scaled).mul(2.0 * bound * sign).sub_(bound * sign)


class AdditiveCoupling(_Coupling):
    r"""NICE's additive coupling layer (Dinh et al., 2015).

    .. math::

        y^A = x^A,\quad y^B = x^B + t(x^A);\qquad
        x^B = y^B - t(y^A);\qquad \log|\det J| = 0.

    :param mask: boolean tensor, ``True`` on the conditioning part A; shape ``event_shape``
        or broadcastable to it (e.g. ``(1, H, W)`` checkerboard, ``(C, 1, 1)`` channels).
    :param conditioner: callable mapping :math:`x^A` (shape ``(*batch, *A_shape)``) to the
        shift :math:`t` for :math:`x^B` (shape ``(*batch, *B_shape)``; for a checkerboard
        mask both are the full event shape).
    :param event_shape: the event shape; defaults to ``mask.shape``.

    >>> layer = additive_coupling(4, hidden_dims=(16,))
    >>> x = torch.randn(10, 4)
    >>> torch.allclose(layer.inv(layer(x)), x, atol=1e-6)
    True
    """

    def _call_and_ladj(self, x):
        x_a, x_b = self.partition.split(x)
        (shift,) = self._params(x_a)
        y = self.partition.merge(x_a, x_b + shift)
        return y, x.new_zeros(x.shape[: x.dim() - len(self.event_shape)])

    def _inverse_and_ladj(self, y):
        y_a, y_b = self.partition.split(y)
        (shift,) = self._params(y_a)
        x = self.partition.merge(y_a, y_b - shift)
        return x, y.new_zeros(y.shape[: y.dim() - len(self.event_shape)])


class AffineCoupling(_Coupling):
    r"""RealNVP's affine coupling layer (Dinh et al., 2017).

    .. math::

        &y^A = x^A,\quad y^B = e^{s(x^A)} \odot x^B + t(x^A); \\
        &x^B = (y^B - t(y^A)) \odot e^{-s(y^A)};\qquad
        \log|\det J| = \textstyle\sum_i s_i(x^A).

    The log-scale is soft-bounded, :math:`s = b \tanh(\tilde s / b)` with
    ``scale_bound`` :math:`b`, so that each layer scales by at most :math:`e^{\pm b}`:
    small log-scales pass through almost unchanged. ``scale_bound=None`` (or ``math.inf``)
    disables the bound.

    The shift is clamped to :math:`[-c, c]` with ``shift_bound`` :math:`c` (default 8, in
    the units of standardized data; exactly the conditioner's shift where it does not
    bind, and like Pyro's clamped log-scale without gradient where it does). A bounded
    scale alone does not keep deep flows finite: an MLP conditioner's shift grows linearly
    with :math:`|x^A|`, so far from the data :math:`|z|` grows geometrically with depth
    (a 60-layer ``real_nvp`` with perturbed weights reached :math:`|z| \approx 10^{24}` on
    inputs of size 50, and :math:`z^2` overflowed float32). With both bounds each layer
    maps :math:`|x|` to at most :math:`e^{b}(|x| + c)`. ``shift_bound=None`` (or ``math.inf``)
    disables it.

    :param mask: boolean tensor, ``True`` on the conditioning part A (see
        :class:`AdditiveCoupling`).
    :param conditioner: callable mapping :math:`x^A` to the shift and raw log-scale of
        :math:`x^B`, stacked along the partitioned dimension (vectors: last dim of size
        ``2 * |B|``; images: channel dim of size ``2 * C_B``), shift first.
    :param event_shape: the event shape; defaults to ``mask.shape``.
    :param float scale_bound: the soft bound :math:`b` on :math:`|s|` (default 2).
    :param float shift_bound: the bound :math:`c` on :math:`|t|` (default 8).

    >>> layer = affine_coupling(4, hidden_dims=(16,))
    >>> x = torch.randn(10, 4)
    >>> y = layer(x)
    >>> layer.log_abs_det_jacobian(x, y).shape
    torch.Size([10])
    """

    num_params = 2

    def __init__(
        self,
        mask: torch.Tensor,
        conditioner: Callable,
        event_shape: Optional[Sequence[int]] = None,
        scale_bound: Optional[float] = 2.0,
        shift_bound: Optional[float] = 8.0,
    ):
        super().__init__(mask, conditioner, event_shape)
        self.scale_bound = check_bound(scale_bound, "scale_bound", type(self).__name__)
        self.shift_bound = check_bound(shift_bound, "shift_bound", type(self).__name__)

    def _shift_log_scale(self, x_a, sign: float = 1.0):
        """The shift and ``sign`` times the bounded log-scale."""
        shift, log_scale = self._params(x_a)
        if self.shift_bound is not None:
            # A clamp, the cheapest bound: exact where it does not bind. Measured on an
            # 8-coupling real_nvp, D=64, hidden 32-32, batch 128, one thread, interleaved:
            # +5% log_prob/sample, +7% train step; a smooth saturation (6 ops) cost 15-18%.
            shift = shift.clamp(-self.shift_bound, self.shift_bound)
        if self.scale_bound is not None:
            log_scale = _soft_bound(log_scale, self.scale_bound, sign)
        elif sign < 0:
            log_scale = -log_scale
        return shift, log_scale

    # Fewest operations for the same values (up to rounding): x e^s + t as one addcmul,
    # and the inverse gets -s straight from the bound (no negation) and multiplies by
    # e^{-s} (a division's backward costs more). On a small flow (D=64, hidden 32-32,
    # batch 128) each operation per coupling is a few percent of a log_prob.
    def _call_and_ladj(self, x):
        partition = self.partition
        x_a, x_b = partition.split(x)
        shift, log_scale = self._shift_log_scale(x_a)
        y = partition.merge(x_a, torch.addcmul(shift, x_b, log_scale.exp()))
        return y, log_scale.sum(-1) if self.event_dim_ == 1 else sum_event(log_scale, self.event_dim_)

    def _inverse_and_ladj(self, y):
        partition = self.partition
        y_a, y_b = partition.split(y)
        shift, neg_log_scale = self._shift_log_scale(y_a, -1.0)
        x = partition.merge(y_a, (y_b - shift) * neg_log_scale.exp())
        if self.event_dim_ == 1:
            return x, -neg_log_scale.sum(-1)
        return x, -sum_event(neg_log_scale, self.event_dim_)

    def extra_repr(self):
        return f"{super().extra_repr()}, scale_bound={self.scale_bound}, shift_bound={self.shift_bound}"


# ---------------------------------------------------------------- conditional twins
class _BoundConditioner(nn.Module):
    """A conditional conditioner with its context fixed: ``x_a -> conditioner(x_a, context)``.

    The context is held as a plain attribute (not a buffer), so gradients flow back to
    whatever produced it (an encoder, a data tensor with ``requires_grad``)."""

    def __init__(self, conditioner: nn.Module, context: torch.Tensor):
        super().__init__()
        self.conditioner = conditioner
        self.context = context

    def forward(self, x_a: torch.Tensor) -> torch.Tensor:
        return self.conditioner(x_a, self.context)


class _ContextBroadcast:
    """Mixin for a coupling conditioned on a context: the input's batch shape is
    broadcast against the context's before the coupling runs, so that ``x^A`` and the
    conditioner's outputs line up (e.g. one base sample per context in a batch). Errors
    name the conditional class the user built (``ConditionalAffineCoupling``), and a batch
    shape that does not broadcast against the context's is refused with both shapes."""

    def __init__(self, parent: "_ConditionalCoupling", context: torch.Tensor, **kwargs):
        # the parent's partition itself (no new masks) and its conditioner, bound to the context
        conditioner = _BoundConditioner(parent.conditioner, context)
        super().__init__(parent.partition, conditioner, parent.event_shape, **kwargs)
        self.context = context
        self._owner = type(parent).__name__

    def _check(self, x, what, dtype=None):
        check_event(self._owner, x, self.event_shape, what, dtype)

    def _expand(self, x: torch.Tensor, what: str = "input") -> torch.Tensor:
        event_dim = len(self.event_shape)
        batch = context_batch_shape(self._owner, x.shape[: x.dim() - event_dim], self.context, what)
        return x.expand(*batch, *self.event_shape)

    def _state_tensors(self):
        # A context changed in place must miss the cache like a parameter would.
        return [*super()._state_tensors(), self.context]

    def _call_and_ladj(self, x):
        return super()._call_and_ladj(self._expand(x))

    def _inverse_and_ladj(self, y):
        return super()._inverse_and_ladj(self._expand(y, "value"))


class _ConditionedAdditiveCoupling(_ContextBroadcast, AdditiveCoupling):
    """What ``ConditionalAdditiveCoupling.condition(context)`` returns."""


class _ConditionedAffineCoupling(_ContextBroadcast, AffineCoupling):
    """What ``ConditionalAffineCoupling.condition(context)`` returns."""

    def __init__(self, parent: "ConditionalAffineCoupling", context: torch.Tensor):
        super().__init__(parent, context, scale_bound=parent.scale_bound, shift_bound=parent.shift_bound)


class _ConditionalCoupling(ConditionalTransformModule):
    """Shared machinery: the partition (built once), the conditioner, context checks."""

    bijective = True

    def __init__(
        self,
        mask: torch.Tensor,
        conditioner: nn.Module,
        context_dim: int,
        event_shape: Optional[Sequence[int]] = None,
    ):
        super().__init__()
        if not isinstance(context_dim, int) or context_dim < 1:
            raise ValueError(
                f"{type(self).__name__}: context_dim must be a positive int, got {context_dim!r}"
            )
        self.context_dim = context_dim
        self.event_shape, self.partition = _partition_of(mask, event_shape, type(self).__name__)
        self.conditioner = conditioner

    def _check_context(self, context: torch.Tensor) -> torch.Tensor:
        return check_context(type(self).__name__, context, self.context_dim, self)

    def extra_repr(self) -> str:
        return f"event_shape={tuple(self.event_shape)}, context_dim={self.context_dim}"


class ConditionalAdditiveCoupling(_ConditionalCoupling):
    r"""NICE's additive coupling with a context :math:`c` (see :class:`AdditiveCoupling`).

    .. math::

        y^A = x^A,\quad y^B = x^B + t(x^A, c);\qquad
        x^B = y^B - t(y^A, c);\qquad \log|\det J| = 0.

    :param mask: boolean tensor, ``True`` on the conditioning part A.
    :param conditioner: module called as ``conditioner(x_a, context)``, returning the
        shift of :math:`x^B` (e.g. :class:`~pyro_flows.nn.ConditionalMLP`).
    :param int context_dim: size of the context vector.
    :param event_shape: the event shape; defaults to ``mask.shape``.

    ``condition(context)`` (context of shape ``(*context_batch, context_dim)``) returns
    an :class:`AdditiveCoupling` sharing this module's partition and conditioner; input
    batch shapes are broadcast against ``context_batch``.

    >>> layer = conditional_additive_coupling(4, context_dim=2, hidden_dims=(16,))
    >>> t = layer.condition(torch.randn(2))
    >>> x = torch.randn(10, 4)
    >>> torch.allclose(t.inv(t(x)), x, atol=1e-6)
    True
    """

    def condition(self, context: torch.Tensor) -> AdditiveCoupling:
        return _ConditionedAdditiveCoupling(self, self._check_context(context))


class ConditionalAffineCoupling(_ConditionalCoupling):
    r"""RealNVP's affine coupling with a context :math:`c` (see :class:`AffineCoupling`).

    .. math::

        &y^A = x^A,\quad y^B = e^{s(x^A, c)} \odot x^B + t(x^A, c); \\
        &x^B = (y^B - t(y^A, c)) \odot e^{-s(y^A, c)};\qquad
        \log|\det J| = \textstyle\sum_i s_i(x^A, c),

    with the log-scale soft-bounded by ``scale_bound`` and the shift clamped by
    ``shift_bound`` as in :class:`AffineCoupling`.

    :param mask: boolean tensor, ``True`` on the conditioning part A.
    :param conditioner: module called as ``conditioner(x_a, context)`` returning shift
        and raw log-scale of :math:`x^B` stacked along the partitioned dimension.
    :param int context_dim: size of the context vector.
    :param event_shape: the event shape; defaults to ``mask.shape``.
    :param float scale_bound: the soft bound on :math:`|s|` (default 2 as for
        :class:`AffineCoupling`, ``None`` for none).
    :param float shift_bound: the bound on :math:`|t|` (default 8 as for
        :class:`AffineCoupling`, ``None`` for none).

    >>> import pyro.distributions as dist
    >>> layer = conditional_affine_coupling(3, context_dim=2, hidden_dims=(8,))
    >>> d = dist.ConditionalTransformedDistribution(dist.Normal(torch.zeros(3), 1.0).to_event(1), [layer])
    >>> d.condition(torch.randn(5, 2)).log_prob(torch.randn(5, 3)).shape
    torch.Size([5])
    """

    def __init__(
        self,
        mask: torch.Tensor,
        conditioner: nn.Module,
        context_dim: int,
        event_shape: Optional[Sequence[int]] = None,
        scale_bound: Optional[float] = 2.0,
        shift_bound: Optional[float] = 8.0,
    ):
        super().__init__(mask, conditioner, context_dim, event_shape)
        self.scale_bound = check_bound(scale_bound, "scale_bound", type(self).__name__)
        self.shift_bound = check_bound(shift_bound, "shift_bound", type(self).__name__)

    def condition(self, context: torch.Tensor) -> AffineCoupling:
        return _ConditionedAffineCoupling(self, self._check_context(context))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale_bound={self.scale_bound}, shift_bound={self.shift_bound}"


# ------------------------------------------------------------------------- helpers
def vector_mask(input_dim: int, mask: Union[str, torch.Tensor] = "half", parity: int = 0) -> torch.Tensor:
    """A mask for vectors of size ``input_dim`` by name, ``"half"`` (:func:`half_mask`) or
    ``"alternating"`` (:func:`alternating_mask`), with the given ``parity``. A tensor is
    the mask of parity 0 and its complement that of parity 1, so that the builders'
    alternating layers transform every coordinate with a custom mask too. Shape
    ``(input_dim,)``, ``True`` on the conditioning part A.

    >>> vector_mask(4, "alternating", parity=1).tolist()
    [False, True, False, True]
    >>> vector_mask(3, torch.tensor([True, True, False]), parity=1).tolist()
    [False, False, True]
    """
    return _vector_mask(input_dim, mask, parity, "vector_mask")


def _vector_mask(input_dim, mask, parity, owner: str) -> torch.Tensor:
    """:func:`vector_mask`, with ``owner`` (the function the user called) named in errors."""
    input_dim = check_count(input_dim, "input_dim", owner, minimum=2)
    if isinstance(mask, str):
        makers = {"half": half_mask, "alternating": alternating_mask}
        if mask not in makers:
            raise ValueError(
                f"{owner}: unknown mask {mask!r}; expected one of {sorted(makers)} or a bool tensor"
            )
        return makers[mask](input_dim, parity)
    m = _tensor_mask(mask, parity, owner)
    if m.shape != (input_dim,):
        raise ValueError(
            f"{owner}: a vector mask must have shape ({input_dim},) for input_dim={input_dim}, "
            f"got {tuple(m.shape)}"
        )
    return m


def _tensor_mask(mask, parity: int, owner: str) -> torch.Tensor:
    """A user's mask as a boolean tensor (complemented for ``parity`` 1), which must both
    condition on something and transform something."""
    m = bool_mask(mask, owner)
    if parity % 2:
        m = ~m
    if m.all() or not m.any():
        kind = (
            "conditions on every coordinate and transforms none" if m.all() else "transforms every coordinate"
        )
        raise ValueError(
            f"{owner}: a mask must have both True (conditioning) and False (transformed) entries; "
            f"this one (parity={parity}) {kind}"
        )
    return m


def image_mask(
    shape: Sequence[int], mask: Union[str, torch.Tensor] = "checkerboard", parity: int = 0
) -> torch.Tensor:
    """A mask for images of shape ``(C, H, W)`` by name: ``"checkerboard"`` (shape
    ``(1, H, W)``, the same pattern in every channel) or ``"channel"`` (shape
    ``(C, 1, 1)``, the first or second half of the channels). A tensor, broadcastable to
    ``(C, H, W)``, is the mask of parity 0 and its complement that of parity 1.

    >>> image_mask((2, 2, 2), "checkerboard", parity=1)[0].tolist()
    [[False, True], [True, False]]
    >>> image_mask((4, 2, 2), "channel").flatten().tolist()
    [True, True, False, False]
    """
    return _image_mask(shape, mask, parity, "image_mask")


def _image_mask(shape, mask, parity, owner: str) -> torch.Tensor:
    """:func:`image_mask`, with ``owner`` (the function the user called) named in errors."""
    shape = _image_shape(shape, owner)
    if isinstance(mask, str):
        if mask == "checkerboard":
            if shape[1] < 2 or shape[2] < 2:
                raise ValueError(
                    f"{owner}: a checkerboard mask needs H >= 2 and W >= 2, got image shape {shape}"
                )
            return checkerboard_mask(shape[1], shape[2], parity)
        if mask == "channel":
            if shape[0] < 2:
                raise ValueError(
                    f"{owner}: a channel mask needs at least 2 channels, got image shape {shape}"
                )
            return channel_mask(shape[0], parity)
        raise ValueError(
            f"{owner}: unknown image mask {mask!r}; expected 'checkerboard', 'channel' or a bool tensor"
        )
    m = _tensor_mask(mask, parity, owner)
    if m.dim() != 3 or any(a not in (1, b) for a, b in zip(m.shape, shape, strict=True)):
        raise ValueError(
            f"{owner}: an image mask must broadcast to the image shape {shape}, got shape {tuple(m.shape)}"
        )
    return m


def _relu_in_place() -> nn.Module:
    return nn.ReLU(inplace=True)


#: the conditioner networks of the vector couplings' ``conditioner`` keyword
CONDITIONERS = ("mlp", "residual")


def _mlp_conditioner(
    mask,
    num_params,
    hidden_dims,
    activation,
    context_dim=None,
    dropout=0.0,
    conditioner="mlp",
    builder="coupling",
):
    """An MLP (``conditioner="mlp"``) or a :class:`~pyro_flows.nn.ResidualMLP`
    (``"residual"``) from :math:`x^A` (and, with ``context_dim``, a context) to
    ``num_params`` parameters per coordinate of :math:`x^B`, with ``dropout``.
    ``builder`` (the public function being called) is named in argument errors."""
    hidden_dims = check_hidden_dims(hidden_dims, builder)
    if conditioner not in CONDITIONERS:
        raise ValueError(f"{builder}: conditioner must be one of {CONDITIONERS}, got {conditioner!r}")
    n_a = int(mask.sum())
    n_out = num_params * (mask.numel() - n_a)
    if conditioner == "residual":
        # no in-place activation here: a pre-activation's input feeds the skip connection
        if context_dim is None:
            return ResidualMLP(n_a, n_out, hidden_dims, activation, dropout=dropout)
        return ConditionalResidualMLP(n_a, context_dim, n_out, hidden_dims, activation, dropout=dropout)
    if activation is nn.ReLU:
        # Each ReLU follows a Linear whose output nothing else reads, so it can run in
        # place: same values and gradients, one large allocation less per hidden layer
        # (on CPU about a fifth of the conditioner's time for log_prob and sample).
        activation = _relu_in_place
    if context_dim is None:
        return MLP(n_a, n_out, hidden_dims, activation, dropout=dropout)
    return ConditionalMLP(n_a, context_dim, n_out, hidden_dims, activation, dropout=dropout)


def _resnet_conditioner(shape, mask, num_params, hidden_channels, num_blocks, batch_norm, builder="coupling"):
    """A :class:`~pyro_flows.nn.ResNet` from :math:`x^A` to ``num_params`` parameters per
    channel of :math:`x^B`; ``builder`` (the public function being called) is named in errors."""
    partition = make_partition(mask, shape, builder)
    if isinstance(partition, IndexPartition) and partition.dim == -3:
        # channel mask: the network sees the C_A conditioning channels only
        c_in, c_out = partition.sizes
    elif isinstance(partition, MaskPartition):
        # checkerboard mask: the network sees x * mask at full shape
        c_in = c_out = shape[0]
    else:
        raise ValueError(
            f"{builder}: image couplings take a mask over channels (C, 1, 1) or over pixels (1, H, W) "
            "with H, W >= 2; "
            f"got a mask of shape {tuple(mask.shape)} for images of shape {tuple(shape)}"
        )
    return ResNet(c_in, num_params * c_out, hidden_channels, num_blocks, batch_norm)


def additive_coupling(
    input_dim: int,
    hidden_dims: Sequence[int] = (256, 256),
    mask: Union[str, torch.Tensor] = "half",
    parity: int = 0,
    activation: Callable[[], nn.Module] = nn.ReLU,
) -> AdditiveCoupling:
    """One :class:`AdditiveCoupling` on vectors of size ``input_dim`` with an
    :class:`~pyro_flows.nn.MLP` conditioner (last layer zero: starts as the identity).

    >>> additive_coupling(6, hidden_dims=(32,), mask="alternating", parity=1).event_shape
    torch.Size([6])
    """
    m = _vector_mask(input_dim, mask, parity, "additive_coupling")
    return AdditiveCoupling(m, _mlp_conditioner(m, 1, hidden_dims, activation, builder="additive_coupling"))


def affine_coupling(
    input_dim: int,
    hidden_dims: Sequence[int] = (256, 256),
    mask: Union[str, torch.Tensor] = "half",
    parity: int = 0,
    activation: Callable[[], nn.Module] = nn.ReLU,
    scale_bound: Optional[float] = 2.0,
    shift_bound: Optional[float] = 8.0,
) -> AffineCoupling:
    """One :class:`AffineCoupling` on vectors of size ``input_dim`` with an
    :class:`~pyro_flows.nn.MLP` conditioner (last layer zero: starts as the identity).

    >>> layer = affine_coupling(2, hidden_dims=(8,))
    >>> x = torch.randn(3, 2)
    >>> torch.equal(layer(x), x)  # a new layer is the identity
    True
    """
    m = _vector_mask(input_dim, mask, parity, "affine_coupling")
    conditioner = _mlp_conditioner(m, 2, hidden_dims, activation, builder="affine_coupling")
    return AffineCoupling(m, conditioner, scale_bound=scale_bound, shift_bound=shift_bound)


def conditional_additive_coupling(
    input_dim: int,
    context_dim: int,
    hidden_dims: Sequence[int] = (256, 256),
    mask: Union[str, torch.Tensor] = "half",
    parity: int = 0,
    activation: Callable[[], nn.Module] = nn.ReLU,
) -> ConditionalAdditiveCoupling:
    """One :class:`ConditionalAdditiveCoupling` on vectors of size ``input_dim`` with a
    :class:`~pyro_flows.nn.ConditionalMLP` conditioner (last layer zero).

    >>> conditional_additive_coupling(4, 3, hidden_dims=(8,)).context_dim
    3
    """
    m = _vector_mask(input_dim, mask, parity, "conditional_additive_coupling")
    net = _mlp_conditioner(
        m, 1, hidden_dims, activation, context_dim, builder="conditional_additive_coupling"
    )
    return ConditionalAdditiveCoupling(m, net, context_dim)


def conditional_affine_coupling(
    input_dim: int,
    context_dim: int,
    hidden_dims: Sequence[int] = (256, 256),
    mask: Union[str, torch.Tensor] = "half",
    parity: int = 0,
    activation: Callable[[], nn.Module] = nn.ReLU,
    scale_bound: Optional[float] = 2.0,
    shift_bound: Optional[float] = 8.0,
) -> ConditionalAffineCoupling:
    """One :class:`ConditionalAffineCoupling` on vectors of size ``input_dim`` with a
    :class:`~pyro_flows.nn.ConditionalMLP` conditioner (last layer zero: every
    conditioned coupling starts as the identity); ``scale_bound`` and ``shift_bound`` as
    for :func:`affine_coupling`.

    >>> layer = conditional_affine_coupling(2, 1, hidden_dims=(8,))
    >>> x = torch.randn(3, 2)
    >>> torch.equal(layer.condition(torch.ones(1))(x), x)
    True
    """
    m = _vector_mask(input_dim, mask, parity, "conditional_affine_coupling")
    net = _mlp_conditioner(m, 2, hidden_dims, activation, context_dim, builder="conditional_affine_coupling")
    return ConditionalAffineCoupling(m, net, context_dim, scale_bound=scale_bound, shift_bound=shift_bound)


def image_affine_coupling(
    shape: Sequence[int],
    mask: Union[str, torch.Tensor] = "checkerboard",
    parity: int = 0,
    hidden_channels: int = 64,
    num_blocks: int = 4,
    batch_norm: bool = True,
    scale_bound: Optional[float] = 2.0,
    shift_bound: Optional[float] = 8.0,
) -> AffineCoupling:
    r"""One :class:`AffineCoupling` on images of shape ``(C, H, W)`` with a
    :class:`~pyro_flows.nn.ResNet` conditioner (output layer zero: starts as the identity).

    ``mask="checkerboard"`` conditions on the pixels where :math:`(i + j) \bmod 2 =`
    ``parity`` and transforms the others; ``mask="channel"`` conditions on the first
    (``parity=0``) or second half of the channels (Dinh et al., 2017, Sec. 3.4).
    ``scale_bound`` and ``shift_bound`` are those of :class:`AffineCoupling` (default 2
    and 8; ``None`` for no bound).

    >>> layer = image_affine_coupling((2, 4, 4), "channel", hidden_channels=8, num_blocks=1)
    >>> x = torch.randn(3, 2, 4, 4)
    >>> torch.equal(layer(x), x)  # a new layer is the identity
    True
    """
    builder = "image_affine_coupling"
    shape = _image_shape(shape, builder)
    m = _image_mask(shape, mask, parity, builder)
    conditioner = _resnet_conditioner(shape, m, 2, hidden_channels, num_blocks, batch_norm, builder)
    return AffineCoupling(m, conditioner, event_shape=shape, scale_bound=scale_bound, shift_bound=shift_bound)


def image_additive_coupling(
    shape: Sequence[int],
    mask: Union[str, torch.Tensor] = "checkerboard",
    parity: int = 0,
    hidden_channels: int = 64,
    num_blocks: int = 4,
    batch_norm: bool = True,
) -> AdditiveCoupling:
    """One :class:`AdditiveCoupling` on images of shape ``(C, H, W)`` with a
    :class:`~pyro_flows.nn.ResNet` conditioner; masks as in :func:`image_affine_coupling`.

    >>> image_additive_coupling((1, 4, 4), hidden_channels=8, num_blocks=1).event_shape
    torch.Size([1, 4, 4])
    """
    builder = "image_additive_coupling"
    shape = _image_shape(shape, builder)
    m = _image_mask(shape, mask, parity, builder)
    conditioner = _resnet_conditioner(shape, m, 1, hidden_channels, num_blocks, batch_norm, builder)
    return AdditiveCoupling(m, conditioner, event_shape=shape)
