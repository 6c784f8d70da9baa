"""Flows by name: what ``pyro-flows fit --flow NAME`` builds.

Each entry holds the builder of the transform, the event shapes it handles and how the
run options map to the builder's arguments.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

from ..builders import cdf_flow, ffjord, glow, nice, real_nvp, real_nvp_image, spline_flow
from ..builders.vector import _default_spline_bins, _default_tail_bound
from ..flow import Flow
from ..nn.velocity import default_state_features
from ..transforms.preprocess import logit
from .loop import SPLINE_FAST_MAX_DIM

__all__ = [
    "FlowEntry",
    "FLOWS",
    "build_model",
    "check_flow_options",
    "check_objective_options",
    "flow_names",
    "spline_dropout",
    "training_noise",
    "with_resolved_options",
    "with_training_dropout",
]


#: the conditioner dropout ``--flow spline`` trains with above 10 dimensions: none up to
#: ``DROPOUT_FROM`` passes over the training set, then ``DROPOUT_SLOPE`` more per pass, up
#: to ``DROPOUT_MAX`` (see ``spline_dropout``)
DROPOUT_FROM, DROPOUT_SLOPE, DROPOUT_MAX = 10.0, 0.02, 0.2


def spline_dropout(dropout: float, input_dim: int, passes: Optional[float] = None) -> float:
    """The conditioner dropout ``--flow spline`` trains with: ``dropout`` when it is 0 or
    more; else none up to 10 dimensions (from 3 to 10 the training noise of
    :func:`training_noise` regularises instead) and, above, a rate that grows with the
    number of ``passes`` the run makes over its training set: 0 up to 10 passes, then
    0.02 per pass up to 0.2 (from 20 passes on).

    Dropout pays where the training points are sparse for the flow and it sees them many
    times, and costs fit where it does not (KL gaps on the 10-D targets of
    docs/benchmarks.md, 50,000 training points: after 3000 steps of 512, 31 passes, the
    mixture reaches 0.070 with 0.2 against 0.236 without; after 800 steps, 8 passes, the
    banana reaches 0.061 without against 0.086 with 0.2, three seeds). In 2-D it costs
    sharpness (checkerboard after 800 steps: 0.050 without, 0.065 with 0.1).

    ``passes=None`` (a run saved when the rate depended on the dimension only) gives 0.2
    above 2-D.

    >>> spline_dropout(-1.0, 2, 40.0), spline_dropout(-1.0, 10, 31.0), spline_dropout(-1.0, 20, 8.0)
    (0.0, 0.0, 0.0)
    >>> spline_dropout(-1.0, 20, 15.0), spline_dropout(-1.0, 20, 31.0), spline_dropout(-1.0, 10)
    (0.1, 0.2, 0.2)
    >>> spline_dropout(0.05, 10, 31.0)
    0.05
    """
    if dropout >= 0:
        return dropout
    if input_dim <= 2:
        return 0.0
    if passes is None:
        return DROPOUT_MAX
    if input_dim <= SPLINE_FAST_MAX_DIM:
        return 0.0
    return round(min(DROPOUT_MAX, DROPOUT_SLOPE * max(0.0, passes - DROPOUT_FROM)), 4)


#: the training noise ``--noise`` picks for ``--flow spline`` on 3 to 10 dimensions
SPLINE_NOISE = 0.05


def training_noise(noise: float, flow: str, input_dim: int) -> float:
    """The Gaussian noise (in units of each coordinate's standard deviation over the
    training points, scaled like the learning rate by its schedule) that a run adds to its
    training batches: ``noise`` when it is 0 or more; else 0.05 for ``spline`` on 3 to 10
    dimensions and none otherwise.

    The noise smooths the training points, so a flow cannot fit them one by one; with it
    the spline flow also takes a higher rate (see :func:`~pyro_flows.train.loop.learning_rate`).
    It fades with the rate, so the last steps fit the data as they are: a column rounded
    to halves, whose spikes are far narrower than 0.05 of its spread, kept its fit that
    way (``benchmarks/spline_lr.py``, 6 dimensions: held-out NLL 6.469 nats at 2e-2,
    against 6.523 for the earlier default, dropout at 1e-2). See docs/benchmarks.md,
    "Training noise in 10-D", for the 10-D targets.

    >>> training_noise(-1.0, "spline", 10), training_noise(-1.0, "spline", 2), training_noise(-1.0, "spline", 20)
    (0.05, 0.0, 0.0)
    >>> training_noise(-1.0, "real_nvp", 10), training_noise(0.1, "real_nvp", 2)
    (0.0, 0.1)
    """
    if noise >= 0:
        return noise
    return SPLINE_NOISE if flow == "spline" and 2 < input_dim <= SPLINE_FAST_MAX_DIM else 0.0


#: model options every flow reads (through :func:`build_model`, not its builder's arguments)
READ_BY_EVERY_FLOW = ("flow", "base", "logit_alpha")


class _Reads:
    """A stand-in for a config that records which options are read."""

    def __init__(self, config):
        self._config, self.names = config, set()

    def __getattr__(self, name):
        self.names.add(name)
        return getattr(self._config, name)


def check_flow_options(config, event_shape) -> None:
    """Refuse model options of a new run that its flow would ignore: a run trained
    otherwise than asked reports numbers for a model nobody chose. An option counts as
    read when the flow's builder arguments (:class:`FlowEntry`) use it for data of
    ``event_shape``; options left at their defaults pass.

    >>> from pyro_flows.train.config import RunConfig
    >>> check_flow_options(RunConfig(flow="spline", batch_norm=True), (2,))
    Traceback (most recent call last):
    ...
    ValueError: --batch-norm does not apply to --flow spline (it reads --num-layers, --hidden-dims, --num-bins, --tail-bound, --dropout)
    >>> check_flow_options(RunConfig(flow="real_nvp", batch_norm=True), (2,))

    The training objective's options are checked the same way: the penalties of an
    ffjord regularize maximum likelihood's ODE solves, which flow matching does not make,
    and the flow-matching options mean nothing to maximum likelihood.

    >>> check_flow_options(RunConfig(flow="spline", path="independent"), (2,))
    Traceback (most recent call last):
    ...
    ValueError: --path independent applies to flow matching (--flow ffjord --objective flow-matching); this run trains by maximum likelihood and would ignore it: drop it
    """
    check_objective_options(config)
    if config.flow not in FLOWS:
        return  # build_model names the problem
    entry = FLOWS[config.flow]
    entry.check_shape(tuple(event_shape))
    entry.check_requirements()  # a missing package first: it is what stops the run
    reads = _Reads(config)
    entry.arguments(reads, tuple(event_shape))
    fields = dataclasses.fields(config)
    used = ", ".join(f"--{f.name.replace('_', '-')}" for f in fields if f.name in reads.names) or "none"
    for f in fields:
        if f.metadata.get("group") != "model" or f.name in READ_BY_EVERY_FLOW or f.name in reads.names:
            continue
        if getattr(config, f.name) != f.default:
            raise ValueError(
                f"--{f.name.replace('_', '-')} does not apply to --flow {config.flow} (it reads {used})"
            )


#: options only flow matching reads, and those only maximum likelihood reads (of an ffjord)
FLOW_MATCHING_OPTIONS = ("path", "fm_sigma", "fm_ot_block", "fm_time_exponent")
LIKELIHOOD_OPTIONS = ("kinetic_weight", "frobenius_weight")


def check_objective_options(config) -> None:
    """Refuse options of a new run that its training objective would ignore (those left
    at their defaults pass), and flow matching where it cannot train: on discrete data
    or with a base other than the standard normal its probability path starts from."""
    fields = {f.name: f for f in dataclasses.fields(config)}

    def given(name):
        return getattr(config, name) != fields[name].default

    def flag(name):
        return f"--{name.replace('_', '-')} {getattr(config, name)}"

    if config.objective == "flow-matching":
        penalties = [flag(name) for name in LIKELIHOOD_OPTIONS if given(name)]
        if penalties:
            raise ValueError(
                f"{' and '.join(penalties)} regularize{'s' if len(penalties) == 1 else ''} the ODE solves of "
                "maximum likelihood; flow matching solves no ODE in training and would ignore "
                f"{'it' if len(penalties) == 1 else 'them'}: drop {'it' if len(penalties) == 1 else 'them'}, "
                "or train by maximum likelihood with --objective likelihood"
            )
        if config.base != "normal":
            raise ValueError(
                f"--objective flow-matching regresses the field on paths from a standard normal base, so it "
                f"cannot train with --base {config.base}: use --base normal, or --objective likelihood"
            )
        from ..data.registry import IMAGE_DATASETS

        if config.levels or str(config.data).lower() in IMAGE_DATASETS:
            what = f"--levels {config.levels}" if config.levels else f"--data {config.data}"
            raise ValueError(
                f"--objective flow-matching models continuous data, but {what} makes them discrete "
                "(dequantized): use --objective likelihood"
            )
    else:
        unused = [flag(name) for name in FLOW_MATCHING_OPTIONS if given(name)]
        if unused:
            raise ValueError(
                f"{', '.join(unused)} appl{'ies' if len(unused) == 1 else 'y'} to flow matching (--flow ffjord "
                "--objective flow-matching); this run trains by maximum likelihood and would ignore "
                f"{'it' if len(unused) == 1 else 'them'}: drop {'it' if len(unused) == 1 else 'them'}"
            )


def with_training_dropout(config, splits):
    """``config`` with a negative ``dropout`` of ``--flow spline`` replaced by the rate
    ``spline_dropout`` picks for a run of ``config``'s length on ``splits`` (a
    ``pyro_flows.data.Splits``); the run saves it, so that evaluating, sampling and
    resuming rebuild the same network. Other flows and given rates pass unchanged.

    >>> from pyro_flows.data import Splits
    >>> from pyro_flows.train.config import RunConfig
    >>> x = torch.randn(1200, 12)
    >>> splits = Splits("normal", x[:1000], x[1000:1100], x[1100:])
    >>> config = RunConfig(flow="spline", batch_size=100)
    >>> [with_training_dropout(config.replace(steps=n), splits).dropout for n in (80, 150, 300)]
    [0.0, 0.1, 0.2]
    """
    if config.flow != "spline" or config.dropout >= 0:
        return config
    passes = config.epochs if config.epochs else config.steps * config.batch_size / max(1, len(splits.train))
    input_dim = splits.event_shape[0] if len(splits.event_shape) == 1 else 0
    return config.replace(dropout=float(spline_dropout(config.dropout, input_dim, passes)))


def with_resolved_options(config, splits):
    """``config`` with every option of ``--flow spline`` that picks its value by the data
    (``num_bins`` and ``tail_bound`` at 0, a negative ``dropout``; for every flow a
    negative ``noise``, see :func:`training_noise`; for an ffjord's velocity field a
    negative ``state_features``) replaced by the value picked (see
    :func:`with_training_dropout`). The run saves them, so a later change of a
    default does not change the network that ``evaluate``, ``sample`` and ``--resume``
    rebuild from it.

    >>> from pyro_flows.data import Splits
    >>> from pyro_flows.train.config import RunConfig
    >>> x = torch.randn(1200, 2)
    >>> splits = Splits("normal", x[:1000], x[1000:1100], x[1100:])
    >>> c = with_resolved_options(RunConfig(flow="spline"), splits)
    >>> c.num_bins, c.tail_bound, c.dropout, c.noise
    (16, 2.0, 0.0, 0.0)
    >>> fm = RunConfig(flow="ffjord", objective="flow-matching")
    >>> with_resolved_options(fm, splits).state_features, with_resolved_options(fm.replace(field="concat-squash"), splits).state_features
    (128, -1)
    """
    config = with_training_dropout(config, splits)
    vector = len(splits.event_shape) == 1
    if config.noise > 0 and not vector:
        raise ValueError(
            f"--noise applies to vector data; {splits.name} has points of shape {tuple(splits.event_shape)}"
        )
    config = config.replace(
        noise=training_noise(config.noise, config.flow, splits.event_shape[0] if vector else 0)
    )
    if config.flow == "ffjord" and ffjord_field(config) == "velocity" and config.state_features < 0:
        config = config.replace(state_features=default_state_features(splits.event_shape[0]))
    if config.flow != "spline" or not vector:
        return config
    input_dim = splits.event_shape[0]
    return config.replace(
        num_bins=config.num_bins or _default_spline_bins(input_dim),
        tail_bound=config.tail_bound or _default_tail_bound(input_dim),
    )


@dataclass(frozen=True)
class FlowEntry:
    """One selectable flow: its builder, the event shapes it handles and how the run
    options map to the builder's arguments."""

    name: str
    builder: Callable
    #: "vector" (D,), "image" (C, H, W) or "any" (elementwise or ODE flows on vectors)
    kind: str
    arguments: Callable
    summary: str
    #: optional packages the flow needs at run time, with the hint that installs them
    requires: Tuple[Tuple[str, str], ...] = ()
    #: the fewest coordinates of a vector it models (couplings split them in two)
    min_dim: int = 1

    def check_requirements(self) -> None:
        """Raise a ``ValueError`` naming the missing package and how to install it."""
        for package, hint in self.requires:
            try:
                importlib.import_module(package)
            except ImportError:
                raise ValueError(
                    f"--flow {self.name} needs {package}, which is not installed; {hint}"
                ) from None

    def check_shape(self, shape: Tuple[int, ...]) -> None:
        """Raise a ``ValueError`` unless points of ``shape`` suit this flow's ``kind``."""
        if self.kind == "vector" and len(shape) != 1:
            raise ValueError(
                f"--flow {self.name} models vectors, but the data has points of shape {shape}; "
                "use real_nvp_image or glow for images"
            )
        if self.kind == "vector" and shape[0] < self.min_dim:
            raise ValueError(
                f"--flow {self.name} models vectors of at least {self.min_dim} dimensions (its couplings split "
                f"the coordinates), but the data has {shape[0]}; use --flow cdf for 1-D data"
            )
        if self.kind == "image" and len(shape) != 3:
            raise ValueError(
                f"--flow {self.name} models images (C, H, W), but the data has points of shape {shape}"
            )


FLOWS = {
    e.name: e
    for e in [
        FlowEntry(
            "nice",
            nice,
            "vector",
            lambda c, s: dict(input_dim=s[0], num_layers=c.num_layers, hidden_dims=c.hidden_dims),
            "NICE additive couplings",
            min_dim=2,
        ),
        FlowEntry(
            "real_nvp",
            real_nvp,
            "vector",
            lambda c, s: dict(
                input_dim=s[0],
                num_layers=c.num_layers,
                hidden_dims=c.hidden_dims,
                batch_norm=c.batch_norm,
            ),
            "RealNVP affine couplings",
            min_dim=2,
        ),
        FlowEntry(
            "spline",
            spline_flow,
            "vector",
            lambda c, s: dict(
                input_dim=s[0],
                num_layers=c.num_layers,
                hidden_dims=c.hidden_dims,
                num_bins=c.num_bins or None,
                tail_bound=c.tail_bound or None,
                dropout=spline_dropout(c.dropout, s[0]),
            ),
            "rational-quadratic spline couplings with ActNorm (neural spline flow)",
            min_dim=2,
        ),
        FlowEntry(
            "real_nvp_image",
            real_nvp_image,
            "image",
            lambda c, s: dict(
                shape=s,
                num_scales=c.num_scales,
                hidden_channels=c.hidden_channels,
                num_blocks=c.num_blocks,
                batch_norm=c.batch_norm,
                coupling=getattr(c, "coupling", "affine"),
            ),
            "multi-scale RealNVP for images",
        ),
        FlowEntry(
            "glow",
            glow,
            "image",
            lambda c, s: dict(
                shape=s,
                num_scales=c.num_scales,
                steps_per_scale=c.steps_per_scale,
                hidden_channels=c.hidden_channels,
                num_blocks=c.num_blocks,
                coupling=getattr(c, "coupling", "affine"),
            ),
            "Glow",
        ),
        FlowEntry(
            "ffjord",
            ffjord,
            "vector",
            lambda c, s: dict(
                input_dim=s[0],
                hidden_dims=c.hidden_dims,
                kinetic_weight=c.kinetic_weight,
                frobenius_weight=c.frobenius_weight,
                field=ffjord_field(c),
                **_state_feature_arguments(c),
            ),
            "continuous-time FFJORD",
            requires=(
                (
                    "torchdiffeq",
                    "install it with `pip install torchdiffeq` (in a source checkout of pyro-flows: "
                    '`pip install -e ".[ode]"`)',
                ),
            ),
        ),
        FlowEntry(
            "cdf",
            cdf_flow,
            "any",
            lambda c, s: dict(num_components=c.num_components, base=c.base, event_shape=s),
            "the 1-D mixture-CDF flow (coordinatewise)",
        ),
    ]
}


def ffjord_field(config) -> str:
    """The network of an ffjord's field for a run: ``--field``, where ``auto`` is the
    Fourier-time MLP for flow matching and concat-squash layers for maximum likelihood."""
    field = getattr(config, "field", "auto")
    if field != "auto":
        return field
    return "velocity" if getattr(config, "objective", "likelihood") == "flow-matching" else "concat-squash"


def _state_feature_arguments(config) -> dict:
    """The velocity field's state features of an ffjord run (read, and so accepted by
    :func:`check_flow_options`, only for that field); a negative count is the builder's
    default, which :func:`with_resolved_options` writes into the run's config."""
    if ffjord_field(config) != "velocity":
        return {}
    count = config.state_features
    return dict(state_features=None if count < 0 else count, state_frequency=config.state_frequency)


def flow_names() -> Tuple[str, ...]:
    return tuple(FLOWS)


def build_model(config, event_shape, discrete: bool = False, levels: Optional[int] = None) -> Flow:
    """The :class:`~pyro_flows.Flow` (transform and base) a run configuration names.

    For ``discrete`` data (dequantized into [0, 1)) with ``config.logit_alpha > 0`` the
    flow ends in the logit preprocessing layer (data side), so the model's density is on
    [0, 1)^D and bits/dim follow from its ``log_prob`` directly. With
    ``config.dequantization == "variational"`` the flow comes with a learned noise
    distribution for data of ``levels`` values, in a :class:`~pyro_flows.DequantizedFlow`
    whose ``log_prob`` is the variational bound.

    >>> from pyro_flows.train.config import RunConfig
    >>> build_model(RunConfig(num_layers=2, hidden_dims=(8,)), (2,)).event_shape
    torch.Size([2])
    """
    if config.flow not in FLOWS:
        raise ValueError(f"unknown --flow {config.flow!r}; expected one of {', '.join(FLOWS)}")
    entry = FLOWS[config.flow]
    shape = tuple(event_shape)
    entry.check_shape(shape)
    entry.check_requirements()
    transform = entry.builder(**entry.arguments(config, shape))
    if discrete and config.logit_alpha > 0:
        transform = [transform, logit(tuple(event_shape), alpha=config.logit_alpha)]
    flow = Flow(transform, base=config.base, event_shape=torch.Size(event_shape))
    if getattr(config, "dequantization", "uniform") == "variational":
        return _variationally_dequantized(flow, config, shape, levels if discrete else None)
    return flow


def _variationally_dequantized(flow: Flow, config, shape, levels: Optional[int]):
    """``--dequantization variational``: the flow and a learned noise distribution, whose
    ``log_prob`` is the variational bound (see :class:`~pyro_flows.DequantizedFlow`)."""
    from ..dequantization import DequantizedFlow, VariationalDequantizer

    if not levels:
        raise ValueError(
            "--dequantization variational needs discrete data (digits, mnist, cifar10, or a file with --levels K)"
        )
    if len(shape) != 3:
        raise ValueError(
            f"--dequantization variational models images (C, H, W), but the data has points of shape {shape}"
        )
    dequantizer = VariationalDequantizer(shape, levels, hidden_channels=config.hidden_channels)
    return DequantizedFlow(flow, levels, dequantizer)
