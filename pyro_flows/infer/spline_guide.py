"""A neural-spline flow guide for Pyro's stochastic variational inference."""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
from pyro.distributions.torch_transform import ComposeTransformModule
from pyro.infer.autoguide.initialization import init_to_median
from torch import nn

from ..transforms.coupling import affine_coupling
from ..transforms.linear import InvertibleLinear, LocScale, LUWeight, Permutation
from ..transforms.spline import ElementwiseSpline, SplineCoupling, spline_coupling
from .guides import AutoRealNVP, _default_hidden_dims, _stack_conditioners

__all__ = ["AutoSplineFlow", "guide_spline_flow"]

_LAYERS = ("spline", "affine")


class _SoftBounded(nn.Module):
    """``bound * tanh(net(x) / bound)``: the conditioner's outputs, soft-bounded (zero stays
    zero, so an identity start stays one)."""

    def __init__(self, net: nn.Module, bound: float):
        super().__init__()
        self.net = net
        self.bound = float(bound)

    def forward(self, x):
        return self.bound * torch.tanh(self.net(x) / self.bound)


def _layer_kinds(layers, num_layers: int) -> list:
    if layers == "mix":
        return ["affine" if i % 2 == 0 else "spline" for i in range(num_layers)]
    if isinstance(layers, str):
        layers = [layers] * num_layers
    kinds = list(layers)
    bad = [k for k in kinds if k not in _LAYERS]
    if bad or not kinds:
        raise ValueError(f"layers must be 'spline', 'affine', 'mix' or a list of those, got {layers!r}")
    return kinds


def _seeded_linear(latent_dim: int, seed: int) -> InvertibleLinear:
    """An :class:`InvertibleLinear` map whose fixed permutation and signs (buffers, not in
    Pyro's parameter store) come from ``seed``, as :class:`Permutation`'s do: a guide
    rebuilt and loaded from a saved store has the same map. The global random stream is
    left as it was."""
    with torch.random.fork_rng(devices=[]):  # InvertibleLinear draws its own rotation on the CPU
        layer = InvertibleLinear(latent_dim)
    layer.weight = LUWeight(latent_dim, generator=torch.Generator().manual_seed(seed))
    return layer


def guide_spline_flow(
    latent_dim: int,
    num_layers: int = 8,
    hidden_dims: Optional[Sequence[int]] = None,
    layers="mix",
    num_bins: int = 8,
    tail_bound: float = 4.0,
    spline_affine: bool = True,
    scale_bound: Optional[float] = 4.0,
    linear: bool = False,
    permute: bool = True,
    activation: Callable[[], nn.Module] = nn.ReLU,
    seed: int = 0,
    shift_bound: Optional[float] = None,
) -> ComposeTransformModule:
    """The couplings of :class:`AutoSplineFlow`, in the sampling direction: optionally an
    LU-parameterized :class:`~pyro_flows.transforms.InvertibleLinear` map first, then
    ``num_layers`` couplings with half masks of alternating parity, each a
    rational-quadratic :class:`~pyro_flows.transforms.SplineCoupling` (``"spline"``) or an
    :class:`~pyro_flows.transforms.AffineCoupling` (``"affine"``) as ``layers`` says, with a
    fixed :class:`~pyro_flows.transforms.Permutation` before each pair when ``permute``.
    Every coupling starts as the identity. The linear map's fixed factors are drawn from
    ``seed``, so that the parameter store alone restores the guide.

    With one latent dimension there is nothing to couple: each ``"spline"`` layer is an
    unconditional :class:`~pyro_flows.transforms.ElementwiseSpline` (also the identity at
    the start) and the ``"affine"`` layers and the linear map, affine maps of one
    coordinate that the guide's location and scale already are, are left out.

    >>> flow = guide_spline_flow(4, num_layers=2, hidden_dims=(8,), layers="mix")
    >>> [type(p).__name__ for p in flow.parts]
    ['AffineCoupling', 'SplineCoupling']
    """
    kinds = _layer_kinds(layers, num_layers)
    if latent_dim < 2:
        # one coordinate: the splines without a conditioner
        return ComposeTransformModule(
            [ElementwiseSpline(latent_dim, num_bins, tail_bound) for kind in kinds if kind == "spline"]
        )
    hidden_dims = _default_hidden_dims(latent_dim) if hidden_dims is None else tuple(hidden_dims)
    parts = [_seeded_linear(latent_dim, seed)] if linear else []
    for i, kind in enumerate(kinds):
        if permute and i % 2 == 0 and i > 0:
            parts.append(Permutation(latent_dim, seed=seed + i))
        if kind == "spline":
            layer = spline_coupling(
                latent_dim,
                hidden_dims,
                "half",
                i % 2,
                num_bins=num_bins,
                tail_bound=tail_bound,
                activation=activation,
                affine=spline_affine,
            )
        else:
            layer = affine_coupling(
                latent_dim, hidden_dims, "half", i % 2, activation, scale_bound, shift_bound
            )
        parts.append(layer)
    return ComposeTransformModule(parts)


class AutoSplineFlow(AutoRealNVP):
    r"""A neural-spline-flow guide over all continuous latent variables of a model.

    The posterior over the unconstrained latent vector :math:`\theta` is

    .. math::

        \theta = \mu + \sigma \odot g(z), \qquad z \sim \mathcal N(0, I),

    with :math:`g` a stack of couplings (:func:`guide_spline_flow`): rational-quadratic
    spline couplings (Durkan et al., 2019), each followed, by default, by a conditional
    shift and soft-bounded scale (``spline_affine``), or affine couplings, or a mix. It
    starts as the identity, :math:`\mu` at the model's initial point (``init_loc_fn``) and
    :math:`\sigma` at ``init_scale``: with ``noncentered=False``, before training it equals
    an :class:`~pyro.infer.autoguide.AutoNormal` started the same way.

    It shares the machinery of :class:`~pyro_flows.infer.AutoRealNVP`: path gradients
    (on by default), (partially) non-centered coordinates (``noncentered="auto"`` by
    default), the parameter store, vectorized particles, ``Predictive``, the JIT ELBOs
    and NeuTra through :func:`~pyro_flows.infer.neutra_mcmc` (Pyro's plain
    :class:`~pyro.infer.reparam.NeuTraReparam` only with ``noncentered=False``).

    A spline is the identity outside :math:`[-B, B]` (``tail_bound``); the splines act on
    the standardized scale (before :math:`\mu + \sigma \cdot`), where :math:`B = 4` holds
    all but :math:`6 \cdot 10^{-5}` of the base's mass per coordinate. A model with one
    latent dimension gets unconditional splines (see :func:`guide_spline_flow`), not a
    plain normal.

    :param callable model: a Pyro model.
    :param int num_layers: number of couplings.
    :param hidden_dims: conditioner hidden sizes; default two layers of
        ``max(64, 4 * latent_dim)``.
    :param layers: ``"mix"`` (the default: affine and spline couplings alternating,
        affine first), ``"spline"``, ``"affine"`` or a list of those per layer.
    :param int num_bins: bins per spline.
    :param float tail_bound: :math:`B`.
    :param bool spline_affine: spline couplings with a conditional shift and scale.
    :param float scale_bound: soft bound of the affine couplings' log-scales.
    :param bool linear: an LU-parameterized linear map applied to the base draw first.
    :param bool permute: fixed permutations between coupling pairs.
    :param float spline_bound: the spline couplings' conditioner outputs (the
        unnormalized bin widths, heights, derivatives and the shift and log-scale) are
        soft-bounded, :math:`b \tanh(u / b)` (``None``: unbounded). Default 3: without
        it, 4 of 9 runs at lr 1e-2 (funnel, eight schools, banana, 3 seeds; 8 particles,
        plain Adam) diverged or collapsed, an unbounded conditional shift amplifying the
        heavy tail of another layer's output; with it, 1 of 4 such runs still diverged.
        With ``input_bound`` as well (the default), none of 9 did (see docs/inference.md);
        the guide fits best at lr 3e-3.
    :param float shift_bound: if given, the soft bound of the affine couplings' shifts.
    :param float init_scale: initial :math:`\sigma`.
    :param callable init_loc_fn: per-site initialisation (default ``init_to_median``).
    :param bool path_gradient: the "sticking the landing" gradient, as in
        :class:`~pyro_flows.infer.AutoRealNVP` (set ``False`` for importance-weighted
        objectives).
    :param float input_bound: the conditioners read their inputs soft-clipped,
        :math:`b \tanh(x^A / b)`, as in :class:`~pyro_flows.infer.AutoRealNVP`
        (default 4; ``None``: as they are).
    :param noncentered: (partially) non-centered coordinates for the location-scale
        sites (``"auto"``, the default, ``True`` or ``"learn"``; ``False``: the model's
        own), as in :class:`~pyro_flows.infer.AutoRealNVP`.
    :param float flow_lr_scale: the conditioners' step relative to the learning rate, as
        in :class:`~pyro_flows.infer.AutoRealNVP` (default 1 here: the spline guide meets
        the accuracy goals at lr 1e-2 without it, see docs/inference.md).

    >>> import pyro, pyro.distributions as dist
    >>> def model():
    ...     pyro.sample("a", dist.Normal(0.0, 1.0))
    ...     pyro.sample("b", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    >>> guide = AutoSplineFlow(model, num_layers=2, hidden_dims=(8,))
    >>> sorted(guide())
    ['a', 'b']
    """

    def __init__(
        self,
        model,
        num_layers: int = 8,
        hidden_dims: Optional[Sequence[int]] = None,
        layers="mix",
        num_bins: int = 8,
        tail_bound: float = 4.0,
        spline_affine: bool = True,
        scale_bound: Optional[float] = 4.0,
        linear: bool = False,
        permute: bool = True,
        spline_bound: Optional[float] = 3.0,
        shift_bound: Optional[float] = None,
        init_scale: float = 1.0,
        init_loc_fn: Callable = init_to_median,
        activation: Callable[[], nn.Module] = nn.ReLU,
        path_gradient: Union[bool, str] = True,
        input_bound: Optional[float] = 4.0,
        noncentered: Union[bool, str] = "auto",
        flow_lr_scale: float = 1.0,
    ):
        _layer_kinds(layers, num_layers)  # fail early on a bad value
        super().__init__(
            model,
            num_layers=num_layers,
            hidden_dims=hidden_dims,
            scale_bound=scale_bound,
            permute=permute,
            init_scale=init_scale,
            init_loc_fn=init_loc_fn,
            activation=activation,
            path_gradient=path_gradient,
            input_bound=input_bound,
            noncentered=noncentered,
            flow_lr_scale=flow_lr_scale,
        )
        self.layers = layers
        self.num_bins = num_bins
        self.tail_bound = tail_bound
        self.spline_affine = spline_affine
        self.linear = linear
        self.spline_bound = spline_bound
        self.shift_bound = shift_bound

    def _setup_prototype(self, *args, **kwargs):
        self._setup_sites(*args, **kwargs)
        loc = self._init_loc()
        like = {"dtype": loc.dtype, "device": loc.device}
        couplings = guide_spline_flow(
            self.latent_dim,
            self.num_layers,
            self.hidden_dims,
            self.layers,
            self.num_bins,
            self.tail_bound,
            self.spline_affine,
            self.scale_bound,
            self.linear,
            self.permute,
            self.activation,
            shift_bound=self.shift_bound,
        ).to(**like)
        _stack_conditioners(couplings.parts, self.input_bound, self.flow_lr_scale)
        if self.spline_bound is not None:
            for part in couplings.parts:
                if isinstance(part, SplineCoupling):
                    part.conditioner = _SoftBounded(part.conditioner, self.spline_bound)
        loc_scale = LocScale(loc, self.init_scale).to(**like)
        self.transform = ComposeTransformModule([*couplings.parts, loc_scale])
