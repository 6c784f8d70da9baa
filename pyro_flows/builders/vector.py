"""Whole flows for vectors: NICE, RealNVP and the neural spline flow."""

from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence, Union

import torch
from pyro.distributions.torch_transform import ComposeTransformModule
from torch import nn

from ..transforms._arguments import (
    _is_int,
    check_bound,
    check_count,
    check_flag,
    check_hidden_dims,
    check_positive_finite,
)
from ..transforms.autoregressive import spline_autoregressive
from ..transforms.coupling import CONDITIONERS, additive_coupling, affine_coupling
from ..transforms.linear import InvertibleLinear, Scaling
from ..transforms.normalization import ActNorm, real_nvp_batch_norm
from ..transforms.spline import ElementwiseSpline, spline_coupling

__all__ = ["nice", "real_nvp", "spline_flow", "VectorFlow"]


class VectorFlow(ComposeTransformModule):
    r"""A composed flow on vectors that remembers its event shape (for :class:`~pyro_flows.Flow`).

    A :class:`~pyro.distributions.torch_transform.ComposeTransformModule` of ``parts``
    (base side first), :math:`\log|\det J| = \sum_k \log|\det J_k|`.

    :param parts: the transforms, in Pyro's order (base side first).
    :param event_shape: the event shape, ``(D,)``.
    :param int cache_size: as for :class:`~pyro.distributions.torch_transform.ComposeTransformModule`.

    >>> flow = VectorFlow([Scaling((3,))], (3,))
    >>> flow.event_shape, flow(torch.zeros(2, 3)).shape
    (torch.Size([3]), torch.Size([2, 3]))
    """

    def __init__(self, parts, event_shape, cache_size: int = 0):
        super().__init__(parts, cache_size=cache_size)
        self.event_shape = torch.Size(event_shape)

    # the parts as nn.Module prints them (numbered and indented), not torch's one-line join
    __repr__ = nn.Module.__repr__


def _check_input_dim(input_dim: int, name: str) -> int:
    """``input_dim`` as an int (an integral type such as ``numpy.int64`` is accepted, a bool
    or a float is not) of at least 2, else a ``ValueError`` naming ``name``."""
    if not _is_int(input_dim):
        raise ValueError(f"{name}: input_dim must be an integer >= 2, got {input_dim!r}")
    if input_dim < 2:
        raise ValueError(
            f"{name} needs input_dim >= 2 to split coordinates between coupling layers, got "
            f"{input_dim!r}; for scalars use the 1-D flows (pyro_flows.transforms.MixtureCDF)"
        )
    return int(input_dim)


def _warn_single_coupling(name: str, num_layers: int, remedy: str = "") -> None:
    """One coupling passes the half it conditions on through unchanged, so the flow cannot
    bend the marginal of those coordinates: worth a warning from a whole-flow builder (a
    single layer stays available, e.g. to compose by hand)."""
    if num_layers == 1:
        warnings.warn(
            f"{name}: with num_layers=1 the single coupling does not transform the coordinates it "
            f"conditions on, so the flow cannot bend their marginal; use num_layers >= 2 (the "
            f"partitions alternate, so every coordinate is transformed){remedy}",
            UserWarning,
            stacklevel=3,
        )


def nice(
    input_dim: int,
    num_layers: int = 4,
    hidden_dims: Sequence[int] = (256, 256),
    mask: Union[str, torch.Tensor] = "half",
    activation: Callable[[], nn.Module] = nn.ReLU,
) -> VectorFlow:
    r"""NICE (Dinh et al., 2015): ``num_layers`` additive couplings
    with alternating partitions and a diagonal :class:`~pyro_flows.transforms.Scaling`
    next to the base, :math:`\log|\det J| = \sum_i s_i`.

    Returns one :class:`~pyro.distributions.TransformModule`, so
    ``functools.partial(nice, num_layers=...)`` can serve as Pyro's
    ``AutoNormalizingFlow(model, init_transform_fn)``.

    >>> import pyro.distributions as dist
    >>> flow = nice(4, num_layers=2, hidden_dims=(16,))
    >>> d = dist.TransformedDistribution(dist.Normal(torch.zeros(4), 1.0).to_event(1), [flow])
    >>> d.log_prob(torch.zeros(3, 4)).shape
    torch.Size([3])
    """
    input_dim = _check_input_dim(input_dim, "nice")
    check_count(num_layers, "num_layers", "nice")
    hidden_dims = check_hidden_dims(hidden_dims, "nice")
    _warn_single_coupling("nice", num_layers)
    parts = [Scaling((input_dim,))]
    parts += [additive_coupling(input_dim, hidden_dims, mask, i % 2, activation) for i in range(num_layers)]
    return VectorFlow(parts, (input_dim,))


def real_nvp(
    input_dim: int,
    num_layers: int = 8,
    hidden_dims: Sequence[int] = (256, 256),
    batch_norm: bool = False,
    mask: Union[str, torch.Tensor] = "half",
    activation: Callable[[], nn.Module] = nn.ReLU,
    scale_bound: Optional[float] = 2.0,
    momentum: float = 0.1,
    shift_bound: Optional[float] = 8.0,
) -> VectorFlow:
    r"""RealNVP for vectors (Dinh et al., 2017): ``num_layers`` affine
    couplings whose partitions alternate (``mask="half"`` or ``"alternating"``), with a
    :class:`~pyro_flows.transforms.RealNVPBatchNorm` between consecutive couplings when
    ``batch_norm=True``.

    .. math::

        \log p(x) = \log p_Z(z) + \sum_{k} \textstyle\sum_i s^{(k)}_i
        \;(-\tfrac12 \textstyle\sum_i \log(\tilde\sigma_i^2+\varepsilon) \text{ per batch norm}).

    Every coupling starts as the identity, so a new flow is its base distribution.
    Returns one :class:`~pyro.distributions.TransformModule` (usable with
    ``functools.partial`` as Pyro's ``AutoNormalizingFlow`` ``init_transform_fn``).

    :param int input_dim: dimension :math:`D \ge 2`.
    :param int num_layers: number of coupling layers.
    :param hidden_dims: hidden sizes of each conditioner MLP.
    :param bool batch_norm: insert RealNVP batch norm between couplings.
    :param mask: ``"half"``, ``"alternating"`` or a boolean tensor of shape ``(input_dim,)``;
        parities alternate layer to layer (a tensor on even layers, its complement on odd).
    :param scale_bound: soft bound on each log-scale (see
        :class:`~pyro_flows.transforms.AffineCoupling`).
    :param float momentum: batch-norm momentum (weight of the new batch).
    :param shift_bound: bound on each shift (default 8, in the units of standardized data,
        as for :func:`~pyro_flows.transforms.affine_coupling` and
        :func:`~pyro_flows.conditional_real_nvp`; ``None`` for none, e.g. for data far from
        the origin that is not standardized).

    With ``num_layers=1`` the single coupling leaves half of the coordinates as they are
    (a ``UserWarning`` says so).

    >>> import pyro.distributions as dist
    >>> flow = real_nvp(2, num_layers=4, hidden_dims=(32, 32), batch_norm=True)
    >>> d = dist.TransformedDistribution(dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1), [flow])
    >>> d.sample((7,)).shape
    torch.Size([7, 2])
    """
    input_dim = _check_input_dim(input_dim, "real_nvp")
    check_count(num_layers, "num_layers", "real_nvp")
    hidden_dims = check_hidden_dims(hidden_dims, "real_nvp")
    check_flag(batch_norm, "batch_norm", "real_nvp")
    check_bound(scale_bound, "scale_bound", "real_nvp")
    check_bound(shift_bound, "shift_bound", "real_nvp")
    _warn_single_coupling("real_nvp", num_layers)
    parts = []
    for i in range(num_layers):
        if batch_norm and i > 0:
            parts.append(real_nvp_batch_norm(input_dim, momentum=momentum))
        parts.append(
            affine_coupling(input_dim, hidden_dims, mask, i % 2, activation, scale_bound, shift_bound)
        )
    return VectorFlow(parts, (input_dim,))


def _default_spline_bins(input_dim: int) -> int:
    """The bins of :func:`spline_flow` by default: 16 for 2-D data, 8 above."""
    return 16 if input_dim == 2 else 8


def _default_tail_bound(input_dim: int) -> float:
    """The interval :math:`[-B, B]` of :func:`spline_flow`'s splines by default: 2 for 2-D
    data, 3 above."""
    return 2.0 if input_dim == 2 else 3.0


def spline_flow(
    input_dim: int,
    num_layers: int = 8,
    hidden_dims: Sequence[int] = (128, 128),
    num_bins: Optional[int] = None,
    tail_bound: Optional[float] = None,
    act_norm: bool = True,
    linear: bool = False,
    mask: Union[str, torch.Tensor] = "mixed",
    activation: Callable[[], nn.Module] = nn.ReLU,
    affine: bool = True,
    elementwise: bool = False,
    dropout: float = 0.0,
    autoregressive: bool = False,
    conditioner: str = "mlp",
) -> VectorFlow:
    r"""A neural spline flow (Durkan et al., 2019): ``num_layers`` rational-quadratic
    spline couplings (:class:`~pyro_flows.transforms.SplineCoupling`) whose partitions
    alternate, each preceded on the data side by an
    :class:`~pyro_flows.transforms.ActNorm` (Kingma & Dhariwal, 2018).

    .. math::

        \log p(x) = \log p_Z(z) - \textstyle\sum_k \left(\sum_i \log g'_{k,i} + \sum_i s_{k,i}\right),

    with :math:`g_{k,i}` the splines and :math:`s_k` the ActNorm log-scales.

    A spline is the identity outside :math:`[-B, B]` (``tail_bound``), so on its own it
    cannot move mass that lies out there: data whose coordinates reach 20 are fitted no
    better than by the base. The ActNorm layers fix this: the first scoring batch in train
    mode sets each to standardise its input (data-dependent initialisation), so every
    spline starts with its data inside its interval, and their scales and shifts keep
    learning afterwards. With ``act_norm=False`` the flow is a plain stack of spline
    couplings (standardise the data yourself). Measured on the 10-D banana of the
    benchmarks (800 steps): KL gap 21.5 nats without the ActNorms, 0.33 with them.

    Every coupling starts as the identity. Returns one
    :class:`~pyro.distributions.TransformModule`.

    :param int input_dim: dimension :math:`D \ge 2`.
    :param int num_layers: number of spline couplings. One coupling does not bend the half
        of the coordinates it conditions on (the ActNorm only shifts and scales them): a
        ``UserWarning`` says so, unless ``elementwise`` or ``autoregressive`` layers
        transform every coordinate.
    :param hidden_dims: hidden sizes of each conditioner MLP.
    :param int num_bins: bins :math:`K` per spline; by default 16 for :math:`D = 2`, where
        every coupling bends one coordinate and thin structure needs fine knots, and 8
        above, where more bins fitted worse (KL gap after 800 training steps, see
        docs/benchmarks.md: rings 0.164 with 8 bins, 0.053 with 16; 10-D mixture of
        Gaussians 0.146 with 8, 0.176 with 16).
    :param float tail_bound: the splines act on :math:`[-B, B]`; by default 2 for
        :math:`D = 2` and 3 above. The ActNorm before each coupling starts it on
        standardised data, so :math:`B` in standard deviations sets how finely the bins
        cut the data: in 2-D, :math:`B = 2` (16 bins of width 0.25) fitted the rings closer
        than :math:`B = 3` (KL gap after 3000 steps, three seeds, see docs/benchmarks.md:
        0.031 against 0.036), level on the other 2-D targets.
    :param bool act_norm: an ActNorm before every coupling (data side).
    :param bool linear: an LU-parameterised :class:`~pyro_flows.transforms.InvertibleLinear`
        between consecutive couplings, which mixes the coordinates of the two halves.
    :param mask: ``"half"``, ``"alternating"`` or ``"mixed"`` (two layers of ``"half"``, two
        of ``"alternating"``, and so on), or a boolean tensor (its complement on odd layers);
        parities alternate layer to layer. With ``"half"`` two neighbouring coordinates of the first half never condition
        each other directly; ``"alternating"`` pairs neighbours; ``"mixed"`` does both.
    :param bool elementwise: an :class:`~pyro_flows.transforms.ElementwiseSpline` (an
        unconditional spline per coordinate, knots learned directly) before each coupling,
        so that every layer transforms every coordinate.
    :param bool autoregressive: masked autoregressive spline layers
        (:class:`~pyro_flows.transforms.SplineAutoregressive`, :class:`~pyro_flows.nn.MADE`
        conditioners with ``hidden_dims``) instead of couplings, in the natural order and its
        reverse alternately (``mask`` is then unused). Every layer transforms every
        coordinate conditioned on all those before it; ``log_prob`` costs one network pass
        per layer, as with couplings, but ``sample`` costs ``input_dim`` passes per layer.
    :param bool affine: couplings with a conditional shift and scale around the spline (see
        :class:`~pyro_flows.transforms.SplineCoupling`): a conditional shift is what a
        banana-shaped target needs beyond the spline's interval. Measured at 800 steps
        (one seed, partitions on halves): KL gap 0.273 against 0.326 without on the 10-D banana of the
        benchmarks, 0.074 against 0.088 on the 8 Gaussians, level on the 10-D mixture
        (0.270 / 0.272), for 5% more CPU time per step.
    :param float dropout: dropout probability after each hidden layer of the conditioners
        (couplings' and MADEs'; train mode only), a regulariser against fitting the
        training points too closely.
    :param str conditioner: the couplings' conditioner networks: ``"mlp"``
        (:class:`~pyro_flows.nn.MLP`) or ``"residual"`` (:class:`~pyro_flows.nn.ResidualMLP`:
        an input layer, a pre-activation residual block of two layers per pair of equal
        consecutive ``hidden_dims``, an output layer; one hidden layer more than the MLP
        with the same ``hidden_dims``). Measured after 800 steps over three seeds (see
        docs/splines.md): level with the MLP in 2-D; with ``hidden_dims=(96, 96)``, at the
        MLP's CPU time, lower KL gaps on the 10-D mixture (0.165 against 0.175 on average)
        and banana (0.063 against 0.086), but after 3000 steps behind on the mixture
        (0.105 and 0.114 against 0.070 and 0.083, two seeds) and level on the banana.

    >>> import pyro_flows
    >>> flow = pyro_flows.Flow(spline_flow(2, num_layers=2, hidden_dims=(16,)))
    >>> x = torch.randn(5, 2) * 10
    >>> flow.log_prob(x).shape  # the first call in train mode initialises the ActNorms
    torch.Size([5])
    """
    input_dim = _check_input_dim(input_dim, "spline_flow")
    check_count(num_layers, "num_layers", "spline_flow")
    if num_bins is None:
        num_bins = _default_spline_bins(input_dim)
    check_count(num_bins, "num_bins", "spline_flow")
    hidden_dims = check_hidden_dims(hidden_dims, "spline_flow")
    flags = dict(act_norm=act_norm, linear=linear, affine=affine, elementwise=elementwise)
    for flag, value in dict(flags, autoregressive=autoregressive).items():
        check_flag(value, flag, "spline_flow")
    if tail_bound is None:
        tail_bound = _default_tail_bound(input_dim)
    check_positive_finite(tail_bound, "tail_bound", "spline_flow")
    if isinstance(mask, str) and mask not in ("half", "alternating", "mixed"):
        raise ValueError(
            f"spline_flow: mask must be 'half', 'alternating', 'mixed' or a tensor, got {mask!r}"
        )
    if conditioner not in CONDITIONERS:
        raise ValueError(f"spline_flow: conditioner must be one of {CONDITIONERS}, got {conditioner!r}")
    if autoregressive and conditioner != "mlp":
        raise ValueError(
            "spline_flow: the autoregressive layers have MADE conditioners; leave conditioner='mlp'"
        )
    if not (autoregressive or elementwise):
        _warn_single_coupling("spline_flow", num_layers, ", or elementwise=True or autoregressive=True")
    parts = []
    for i in range(num_layers):
        if linear and i > 0:
            parts.append(InvertibleLinear(input_dim))
        layer_mask = mask
        if isinstance(mask, str) and mask == "mixed":  # two "half" layers, two "alternating", ...
            layer_mask = "half" if (i // 2) % 2 == 0 else "alternating"
        if elementwise:
            parts.append(ElementwiseSpline(input_dim, num_bins, tail_bound))
        if autoregressive:
            order = list(range(input_dim))[:: -1 if i % 2 else 1]
            parts.append(
                spline_autoregressive(
                    input_dim, hidden_dims, num_bins, tail_bound, order, activation, affine, dropout=dropout
                )
            )
        else:
            parts.append(
                spline_coupling(
                    input_dim,
                    hidden_dims,
                    layer_mask,
                    i % 2,
                    num_bins,
                    tail_bound,
                    activation,
                    affine,
                    dropout=dropout,
                    conditioner=conditioner,
                )
            )
        if act_norm:
            parts.append(ActNorm(input_dim, event_dim=1))
    return VectorFlow(parts, (input_dim,))
