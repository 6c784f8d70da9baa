"""Matched RealNVP models from each library, behind one small interface.

Every contender is the same architecture: ``num_layers`` affine couplings whose
partitions alternate between the two halves of the vector (first half conditions the
second, then the reverse), each conditioner an MLP ``D/2 -> 256 -> 256 -> 2 * D/2`` with
ReLU, and a standard Normal base. Only what each library does around the networks
differs (how it splits, bounds the scale, sums log-dets, composes layers), which is what
the speed benchmark measures. Peers that are not installed are skipped.

>>> c = build("ours", 4, num_layers=2, hidden_dims=(8,))
>>> c.log_prob(torch.zeros(3, 4)).shape
torch.Size([3])
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

#: peers in table order; "ours" is pyro_flows.real_nvp
NAMES = ("ours", "pyro", "nflows", "normflows", "zuko")
#: the Python package each contender needs
PACKAGES = {
    "ours": "pyro_flows",
    "pyro": "pyro",
    "nflows": "nflows",
    "normflows": "normflows",
    "zuko": "zuko",
}


@dataclass
class Contender:
    """A model under test: its parameters (``module``), ``log_prob(x)`` with shape
    ``(n,)`` and ``sample(n)`` with shape ``(n, D)``."""

    name: str
    module: nn.Module
    log_prob: Callable[[torch.Tensor], torch.Tensor]
    sample: Callable[[int], torch.Tensor]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad)


def available(names: Sequence[str] = NAMES) -> list:
    """The contenders among ``names`` whose library can be imported here."""
    return [n for n in names if importlib.util.find_spec(PACKAGES[n]) is not None]


def set_validation(names: Sequence[str], enabled: bool) -> None:
    """Import the libraries of ``names``, then set distribution validation for all.

    Importing changes the global setting: ``import pyro`` turns torch's distribution
    validation on and ``import zuko`` turns it off. So import everything first and
    set it once, for everyone, afterwards.
    """
    for name in names:
        importlib.import_module(PACKAGES[name])
    torch.distributions.Distribution.set_default_validate_args(enabled)
    if importlib.util.find_spec("pyro") is not None:
        import pyro

        pyro.enable_validation(enabled)


def build(name: str, dim: int, num_layers: int = 8, hidden_dims: Sequence[int] = (256, 256)) -> Contender:
    """The matched model of library ``name`` on vectors of size ``dim`` (even)."""
    if dim % 2:
        raise ValueError(f"the matched half/half partitions need an even dim, got {dim}")
    builders = {"ours": _ours, "pyro": _pyro, "nflows": _nflows, "normflows": _normflows, "zuko": _zuko}
    if name not in builders:
        raise ValueError(f"unknown contender {name!r}; expected one of {NAMES}")
    return builders[name](dim, num_layers, tuple(hidden_dims))


def _ours(dim, num_layers, hidden_dims):
    import pyro_flows

    flow = pyro_flows.Flow(pyro_flows.real_nvp(dim, num_layers=num_layers, hidden_dims=hidden_dims))
    return Contender("ours", flow, flow.log_prob, lambda n: flow.sample((n,)))


def _pyro(dim, num_layers, hidden_dims):
    import pyro.distributions as dist
    from pyro.distributions.transforms import AffineCoupling, Permute
    from pyro.nn import DenseNN

    half = dim // 2
    couplings = nn.ModuleList(
        AffineCoupling(half, DenseNN(half, list(hidden_dims), param_dims=[dim - half, dim - half]))
        for _ in range(num_layers)
    )
    couplings.register_buffer("flip", torch.arange(dim - 1, -1, -1))
    parts_by_device = {}

    def distribution():
        # Permute is not a module, so build the parts once per device of the buffers.
        flip = couplings.flip
        if flip.device not in parts_by_device:
            parts = [couplings[0]]
            for coupling in couplings[1:]:
                # Flipping makes the next coupling condition on the other half.
                parts += [Permute(flip), coupling]
            parts_by_device[flip.device] = parts
        loc = torch.zeros(dim, device=flip.device)
        base = dist.Normal(loc, torch.ones_like(loc)).to_event(1)
        return dist.TransformedDistribution(base, parts_by_device[flip.device])

    def sample(n):
        with torch.no_grad():
            return distribution().sample((n,))

    return Contender("pyro", couplings, lambda x: distribution().log_prob(x), sample)


def _mlp(n_in, hidden_dims, n_out, in_place=False):
    sizes = [n_in, *hidden_dims, n_out]
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=in_place))
    return nn.Sequential(*layers)


class _IgnoreContext(nn.Sequential):
    """An MLP for nflows, which passes a ``context`` argument to every conditioner."""

    def forward(self, x, context=None):
        return super().forward(x)


def _nflows(dim, num_layers, hidden_dims):
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.transforms.base import CompositeTransform
    from nflows.transforms.coupling import AffineCouplingTransform

    half = dim // 2
    layers = []
    for i in range(num_layers):
        transformed = torch.arange(dim) >= half if i % 2 == 0 else torch.arange(dim) < half
        mask = transformed.float() * 2 - 1  # nflows: > 0 means transformed
        layers.append(
            AffineCouplingTransform(mask, lambda n_in, n_out: _IgnoreContext(*_mlp(n_in, hidden_dims, n_out)))
        )
    flow = Flow(CompositeTransform(layers), StandardNormal([dim]))

    def sample(n):
        with torch.no_grad():
            return flow.sample(n)

    return Contender("nflows", flow, flow.log_prob, sample)


def _normflows(dim, num_layers, hidden_dims):
    import normflows as nf

    half = dim // 2
    flows = [
        nf.flows.AffineCouplingBlock(
            nf.nets.MLP([half, *hidden_dims, 2 * (dim - half)], init_zeros=True),
            split_mode="channel" if i % 2 == 0 else "channel_inv",
        )
        for i in range(num_layers)
    ]
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), flows)

    def sample(n):
        with torch.no_grad():
            return model.sample(n)[0]

    return Contender("normflows", model, model.log_prob, sample)


def _zuko(dim, num_layers, hidden_dims):
    from zuko.distributions import DiagNormal
    from zuko.flows.coupling import GeneralCouplingTransform
    from zuko.lazy import Flow, UnconditionalDistribution

    half = dim // 2
    transforms = []
    for i in range(num_layers):
        constant = torch.arange(dim) < half if i % 2 == 0 else torch.arange(dim) >= half
        transforms.append(GeneralCouplingTransform(dim, mask=constant, hidden_features=hidden_dims))
    base = UnconditionalDistribution(DiagNormal, torch.zeros(dim), torch.ones(dim), buffer=True)
    flow = Flow(transforms, base)

    def sample(n):
        with torch.no_grad():
            return flow().sample((n,))

    return Contender("zuko", flow, lambda x: flow().log_prob(x), sample)


class ConditionerFloor(nn.Module):
    """The conditioner MLPs of a matched flow and nothing else: the work a coupling
    flow cannot avoid, in the fastest eager form we know (ReLU in place, which saves an
    allocation per hidden layer). ``forward(x)`` runs each network on the conditioning
    half of ``x`` and returns the sum of all outputs (a scalar to backpropagate)."""

    def __init__(self, dim: int, num_layers: int = 8, hidden_dims: Sequence[int] = (256, 256)):
        super().__init__()
        self.half = dim // 2
        self.nets = nn.ModuleList(
            _mlp(self.half, hidden_dims, 2 * (dim - self.half), in_place=True) for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_a = x[..., : self.half]
        return sum(net(x_a).sum() for net in self.nets)


# ------------------------------------------------------------------------------ density fit
# The fit benchmark compares each library's *best* flow for density estimation (its
# rational-quadratic neural spline flow) and its RealNVP, all with ``num_layers``
# transforms and conditioners of ``hidden_dims``, each library's own defaults otherwise.

#: fit contenders in table order
FIT_NAMES = (
    "ours",
    "ours_real_nvp",
    "zuko_nsf",
    "zuko_real_nvp",
    "nflows_nsf",
    "nflows_real_nvp",
    "normflows_nsf",
    "normflows_real_nvp",
)
#: variants of our spline flow for ablations: spline_flow keyword arguments
OUR_VARIANTS = {
    "ours": {},
    # the ablations behind docs/splines.md ran when the partitions on halves were the default
    "ours_no_act_norm": {"act_norm": False, "affine": False, "mask": "half"},
    "ours_no_act_norm_b5": {"act_norm": False, "affine": False, "tail_bound": 5.0, "mask": "half"},
    "ours_plain_spline": {"affine": False, "mask": "half"},
    "ours_plain_b5": {"affine": False, "tail_bound": 5.0, "mask": "half"},
    "ours_plain_linear": {"affine": False, "linear": True, "mask": "half"},
    "ours_linear": {"linear": True, "mask": "half"},
    # today's default with an LU linear layer between couplings
    "ours_lu": {"linear": True},
    "ours_bins4": {"num_bins": 4},
    "ours_bins8": {"num_bins": 8},
    "ours_bins16": {"num_bins": 16},
    "ours_bins32": {"num_bins": 32},
    "ours_half": {"mask": "half"},
    "ours_alternating": {"mask": "alternating"},
    "ours_mixed": {"mask": "mixed"},
    "ours_bins16_b5": {"num_bins": 16, "tail_bound": 5.0},
    "ours_b5": {"tail_bound": 5.0},
    "ours_elementwise": {"elementwise": True},
    "ours_mixed_elementwise": {"mask": "mixed", "elementwise": True},
    "ours_drop": {"dropout": 0.1},
    "ours_bins16_drop": {"num_bins": 16, "dropout": 0.1},
    "ours_drop2": {"dropout": 0.2},
    "ours_no_dropout": {"dropout": 0.0},
    # the defaults before 16 bins in 2-D and the recipe's dropout above 2-D
    "ours_8bins_nodrop": {"num_bins": 8, "dropout": 0.0},
    "ours_ar": {"autoregressive": True, "dropout": 0.0},
    # MADE conditioners with dropout (from the recipe unless set: fit's default for the data)
    "ours_ar_drop": {"autoregressive": True},
    "ours_ar_drop1": {"autoregressive": True, "dropout": 0.1},
    # residual conditioners: (128, 128) adds a 128x128 layer per conditioner; (96, 96) costs
    # about as much CPU time per step as the default MLP
    "ours_res": {"conditioner": "residual"},
    "ours_res96": {"conditioner": "residual", "hidden_dims": (96, 96)},
    "ours_res_bins8": {"conditioner": "residual", "num_bins": 8},
    # normflows' coupled spline without our ActNorms / conditional affine map, 8 bins
    "ours_res_bins8_plain": {"conditioner": "residual", "num_bins": 8, "affine": False},
    "ours_res_bins8_no_act_norm": {"conditioner": "residual", "num_bins": 8, "act_norm": False},
    "ours_res_bins8_bare": {"conditioner": "residual", "num_bins": 8, "affine": False, "act_norm": False},
    # the screen of the splines' interval in 2-D (docs/benchmarks.md): wider and deeper
    # conditioners, finer knots, other intervals (ours_b3: the 2-D default before [-2, 2])
    "ours_h256": {"hidden_dims": (256, 256)},
    "ours_h128x3": {"hidden_dims": (128, 128, 128)},
    "ours_no_affine": {"affine": False},
    "ours_bins24": {"num_bins": 24},
    "ours_b2": {"tail_bound": 2.0},
    "ours_b3": {"tail_bound": 3.0},
    "ours_b4": {"tail_bound": 4.0},
}
# Every variant but the default was screened while the splines took [-3, 3] in 2-D too;
# they keep that interval, so that their records reproduce (above 2-D it is the default).
for _options in (o for name, o in OUR_VARIANTS.items() if name != "ours"):
    _options.setdefault("tail_bound", 3.0)
FIT_PACKAGES = {name: "pyro_flows" for name in (*OUR_VARIANTS, "ours_real_nvp")}
for _lib in ("zuko", "nflows", "normflows"):
    FIT_PACKAGES.update({f"{_lib}_nsf": _lib, f"{_lib}_real_nvp": _lib})


def fit_available(names: Sequence[str]) -> list:
    """The fit contenders among ``names`` whose library can be imported here (a
    ``NAME+recipe`` contender needs NAME's)."""
    return [n for n in names if importlib.util.find_spec(FIT_PACKAGES[n.split("+")[0]]) is not None]


def build_fit(
    name: str, dim: int, num_layers: int = 8, hidden_dims: Sequence[int] = (128, 128), **spline_options
) -> Contender:
    """The density-fit contender ``name`` (see :data:`FIT_NAMES`, :data:`OUR_VARIANTS`);
    ``spline_options`` go to our spline flows' builder (under the variant's own)."""
    hidden_dims = tuple(hidden_dims)
    if name in OUR_VARIANTS:
        import pyro_flows

        flow = pyro_flows.Flow(
            pyro_flows.spline_flow(
                dim,
                num_layers=num_layers,
                **{"hidden_dims": hidden_dims, **spline_options, **OUR_VARIANTS[name]},
            )
        )
        return Contender(name, flow, flow.log_prob, lambda n: flow.sample((n,)))
    builders = {
        "ours_real_nvp": _ours,
        "zuko_nsf": _zuko_nsf,
        "zuko_real_nvp": _zuko_real_nvp,
        "nflows_nsf": _nflows_nsf,
        "nflows_real_nvp": _nflows,
        "normflows_nsf": _normflows_nsf,
        "normflows_real_nvp": _normflows,
    }
    if name not in builders:
        raise ValueError(f"unknown fit contender {name!r}; expected one of {FIT_NAMES + tuple(OUR_VARIANTS)}")
    contender = builders[name](dim, num_layers, hidden_dims)
    contender.name = name
    return contender


def _zuko_flow(name, flow):
    def sample(n):
        with torch.no_grad():
            return flow().sample((n,))

    return Contender(name, flow, lambda x: flow().log_prob(x), sample)


def _zuko_nsf(dim, num_layers, hidden_dims):
    """zuko's NSF: autoregressive (MADE conditioners) rational-quadratic splines, 8 bins on
    [-5, 5], the variable order reversed from one transform to the next (zuko's default,
    ``randperm=False``); sampling is sequential."""
    import zuko

    return _zuko_flow("zuko_nsf", zuko.flows.NSF(dim, transforms=num_layers, hidden_features=hidden_dims))


def _zuko_real_nvp(dim, num_layers, hidden_dims):
    import zuko

    flow = zuko.flows.RealNVP(dim, transforms=num_layers, hidden_features=hidden_dims)
    return _zuko_flow("zuko_real_nvp", flow)


def _nflows_nsf(dim, num_layers, hidden_dims):
    """nflows' rational-quadratic spline couplings (8 bins, linear tails at +-5) on
    alternating halves, with the matched MLP conditioners."""
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.transforms.base import CompositeTransform
    from nflows.transforms.coupling import PiecewiseRationalQuadraticCouplingTransform

    half = dim // 2
    layers = []
    for i in range(num_layers):
        transformed = torch.arange(dim) >= half if i % 2 == 0 else torch.arange(dim) < half
        layers.append(
            PiecewiseRationalQuadraticCouplingTransform(
                transformed.float() * 2 - 1,
                lambda n_in, n_out: _IgnoreContext(*_mlp(n_in, hidden_dims, n_out)),
                num_bins=8,
                tails="linear",
                tail_bound=5.0,
            )
        )
    flow = Flow(CompositeTransform(layers), StandardNormal([dim]))

    def sample(n):
        with torch.no_grad():
            return flow.sample(n)

    return Contender("nflows_nsf", flow, flow.log_prob, sample)


def _normflows_nsf(dim, num_layers, hidden_dims):
    """normflows' coupled rational-quadratic spline (8 bins, tails at +-3, its residual
    conditioner with one block of ``hidden_dims[0]`` units, i.e. two hidden layers)."""
    import normflows as nf

    flows = [
        nf.flows.CoupledRationalQuadraticSpline(dim, 1, hidden_dims[0], num_bins=8, reverse_mask=bool(i % 2))
        for i in range(num_layers)
    ]
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), flows)

    def sample(n):
        with torch.no_grad():
            return model.sample(n)[0]

    return Contender("normflows_nsf", model, model.log_prob, sample)
