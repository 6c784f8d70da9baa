"""The options of a training run: one table that the command line, TOML config files and
saved runs all share.

Each option is a field of :class:`RunConfig` with its default and help text, so
``pyro-flows fit --help``, a ``config.toml`` and the ``config.toml`` a run writes beside
its results can never disagree about names or defaults.

>>> cfg = RunConfig(steps=10)
>>> cfg.flow, cfg.steps, cfg.hidden_dims
('spline', 10, (128, 128))
>>> RunConfig.from_dict(cfg.to_dict()) == cfg
True
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Tuple

__all__ = ["RunConfig", "GROUPS", "config_to_toml", "read_toml", "resolve_objective"]


def _opt(default, help: str, group: str, choices=None, metavar=None):
    return field(
        default=default, metadata={"help": help, "group": group, "choices": choices, "metavar": metavar}
    )


#: the most points ``--plot-samples`` may ask for (they are drawn at once)
MAX_PLOT_SAMPLES = 1_000_000

#: option groups in the order ``--help`` shows them
GROUPS = ("model", "data", "training", "output")


@dataclass(frozen=True)
class RunConfig:
    """Every option of ``pyro-flows fit`` (see ``docs/cli.md``), checked on construction.

    >>> RunConfig(flow="nice", hidden_dims="64,64").hidden_dims
    (64, 64)
    >>> RunConfig(batch_size=0)
    Traceback (most recent call last):
    ...
    ValueError: --batch-size must be >= 1, got 0
    """

    # model
    flow: str = _opt("spline", "flow family to train", "model")
    num_layers: int = _opt(8, "coupling layers (vector flows: nice, real_nvp, spline)", "model")
    hidden_dims: Tuple[int, ...] = _opt(
        (128, 128), "hidden sizes of each conditioner network, comma separated", "model", metavar="H1,H2,..."
    )
    batch_norm: bool = _opt(False, "RealNVP batch norm between couplings (real_nvp)", "model")
    num_bins: int = _opt(
        0,
        "bins per spline (spline); 0 picks 16 for 2-D data, 8 above; the run saves the number it used",
        "model",
    )
    tail_bound: float = _opt(
        0.0,
        "the splines act on [-B, B] of the standardised data (spline); 0 picks 2 for 2-D data, 3 above; "
        "the run saves the bound it used",
        "model",
        metavar="B",
    )
    dropout: float = _opt(
        -1.0,
        "dropout in the conditioners while training (spline); negative picks none up to 10 dimensions "
        "and, above, none up to 10 passes over the training set, then 0.02 more per pass up to 0.2; "
        "the run saves the rate it used",
        "model",
    )
    base: str = _opt("normal", "base distribution", "model", choices=("normal", "uniform", "beta"))
    num_scales: int = _opt(2, "scales of the multi-scale image flows (real_nvp_image, glow)", "model")
    steps_per_scale: int = _opt(4, "flow steps per scale (glow)", "model")
    hidden_channels: int = _opt(32, "channels of the convolutional conditioners (image flows)", "model")
    num_blocks: int = _opt(2, "residual blocks per convolutional conditioner (image flows)", "model")
    coupling: str = _opt(
        "affine",
        "coupling of the image flows (real_nvp_image, glow): affine as in the papers, or "
        "rational-quadratic spline (the closest fit on the digits, at about twice the time per step)",
        "model",
        choices=("affine", "spline"),
    )
    num_components: int = _opt(8, "mixture components per coordinate (cdf)", "model")
    logit_alpha: float = _opt(
        0.05,
        "for discrete data, model logit(alpha + (1 - 2 alpha) y) of the dequantized y in [0, 1) "
        "(RealNVP's preprocessing, inside the flow so NLLs stay in data units); 0 turns it off",
        "model",
    )
    kinetic_weight: float = _opt(0.0, "weight of the kinetic-energy regulariser (ffjord)", "model")
    frobenius_weight: float = _opt(0.0, "weight of the Jacobian-Frobenius regulariser (ffjord)", "model")
    # data
    data: str = _opt(
        "moons",
        "a built-in data set (moons, circles, 8gaussians, checkerboard, 2spirals, pinwheel, rings, digits), "
        "a MAF-paper set read from --data-dir (power, gas, hepmass, miniboone, bsds300), "
        "mnist/cifar10 from a torchvision folder in --data-dir, or a path to a .npy, .npz or .csv file",
        "data",
    )
    data_dir: str = _opt("", "folder holding the MAF-paper or torchvision data", "data", metavar="DIR")
    num_samples: int = _opt(10000, "points drawn from a built-in 2-D toy set (before splitting)", "data")
    val_fraction: float = _opt(0.1, "fraction held out for validation (sets without a fixed split)", "data")
    test_fraction: float = _opt(0.1, "fraction held out for testing (sets without a fixed split)", "data")
    levels: int = _opt(
        0,
        "treat a data file as discrete with this many values 0..K-1 (e.g. 256 for 8-bit images): "
        "dequantize in training and report bits/dim; 0 means continuous",
        "data",
        metavar="K",
    )
    dequantization: str = _opt(
        "uniform",
        "noise that makes discrete data continuous: uniform, or variational (a conditional flow "
        "q(u | x) trained with the model on the variational bound, Ho et al. 2019; image data)",
        "data",
        choices=("uniform", "variational"),
    )
    standardize: bool = _opt(
        True,
        "shift and scale tabular files by the training mean and std (NLL reported in data units)",
        "data",
    )
    # training
    objective: str = _opt(
        "auto",
        "training objective: maximum likelihood, or flow matching of an ffjord's vector field "
        "(Lipman et al. 2023; Tong et al. 2023): no ODE solve per step, the held-out NLL is still "
        "computed through the ODE; auto: flow matching for an ffjord on continuous data with a "
        "normal base and no kinetic or Frobenius penalty, maximum likelihood otherwise",
        "training",
        choices=("auto", "likelihood", "flow-matching"),
    )
    path: str = _opt(
        "ot",
        "flow matching: pair data and base samples by minibatch optimal transport (ot) or independently",
        "training",
        choices=("ot", "independent"),
    )
    fm_sigma: float = _opt(0.0, "flow matching: noise level sigma of the probability path", "training")
    fm_ot_block: int = _opt(
        128,
        "flow matching, --path ot: rows per exact assignment (the batch is paired in blocks of this "
        "many; 0 pairs the whole batch at once, which costs O(batch^3))",
        "training",
    )
    fm_time_exponent: float = _opt(
        1.0,
        "flow matching: train at times t = u^a, u uniform; a > 1 puts more of them near the data",
        "training",
    )
    field: str = _opt(
        "auto",
        "ffjord: the network of the vector field, concat-squash layers or an MLP on a Fourier "
        "embedding of t (velocity); auto takes velocity for flow matching, concat-squash otherwise",
        "model",
        choices=("auto", "concat-squash", "velocity"),
    )
    state_features: int = _opt(
        -1,
        "ffjord, velocity field: random Fourier features of the state z the field reads besides z "
        "(sharp densities fit much faster); negative: 128 on data of 1 or 2 dimensions, none above; 0: none",
        "model",
    )
    state_frequency: float = _opt(
        1.0,
        "ffjord, velocity field: sd of the random frequencies of --state-features, in cycles per unit "
        "of the (standardized) data",
        "model",
    )
    steps: int = _opt(2000, "optimizer steps (ignored when --epochs is set)", "training")
    epochs: int = _opt(0, "passes over the training set; 0 uses --steps", "training")
    batch_size: int = _opt(256, "global batch size (split across processes under torchrun)", "training")
    lr: float = _opt(
        0.0,
        "Adam learning rate; 0 picks the flow's: for spline 2e-2 on data of 3 to 10 dimensions and 3e-3 "
        "otherwise, after a linear warm-up over min(100, steps/10) steps; 5e-2 for cdf; 1e-3 for the others (an ffjord trained by flow matching: 3e-3 after a "
        "warm-up over steps/50, with --hidden-dims 256,256,256 and --batch-size 512 unless given)",
        "training",
    )
    schedule: str = _opt(
        "cosine", "learning-rate schedule after warm-up", "training", choices=("constant", "cosine")
    )
    warmup_steps: int = _opt(0, "steps of linear learning-rate warm-up", "training")
    weight_decay: float = _opt(0.0, "Adam weight decay", "training")
    noise: float = _opt(
        -1.0,
        "Gaussian noise added to each training batch of vector data, in units of each coordinate's "
        "standard deviation over the training points and scaled like the learning rate by its schedule "
        "(the last steps see the data as they are); negative picks 0.05 for --flow spline on 3 to 10 "
        "dimensions and none otherwise; the run saves the level it used",
        "training",
        metavar="S",
    )
    grad_clip: float = _opt(5.0, "clip the gradient norm to this value; 0 disables clipping", "training")
    ema: float = _opt(
        0.0,
        "evaluate, keep and sample the exponential moving average of the weights with this decay "
        "(e.g. 0.999; warmed up as min(decay, (1 + t) / (10 + t)) after t steps); 0 turns it off",
        "training",
    )
    eval_every: int = _opt(200, "steps between validation NLL evaluations (and checkpoints)", "training")
    patience: int = _opt(
        10,
        "stop after this many evaluations without a better validation NLL; 0 never stops early",
        "training",
    )
    seed: int = _opt(0, "seed of the data split, the initial weights and the batch order", "training")
    device: str = _opt("auto", "cpu, cuda, cuda:N, or auto (CUDA when present)", "training")
    dtype: str = _opt("float32", "floating-point precision", "training", choices=("float32", "float64"))
    threads: int = _opt(
        1,
        "CPU threads per process for torch's operations (0: torch's default). One is fastest for "
        "coupling layers of a few hundred units and never stalls on a busy machine; raise it for "
        "large image models",
        "training",
    )
    # output
    out: str = _opt("outputs", "folder for the run's results, plots and checkpoints", "output", metavar="DIR")
    plot_samples: int = _opt(2000, "samples drawn for the plots (at most 1000000)", "output")
    plots: bool = _opt(True, "write PNG plots", "output")
    quiet: bool = _opt(False, "no progress bar or summary lines", "output")

    def __post_init__(self):
        hd = self.hidden_dims
        if isinstance(hd, str):
            hd = _parse_ints(hd, "hidden_dims")
        object.__setattr__(self, "hidden_dims", tuple(int(h) for h in hd))
        # "flow_matching": the Python spelling of --objective flow-matching
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        object.__setattr__(self, "objective", resolve_objective(values))
        self.validate()

    def validate(self) -> None:
        """Raise a ``ValueError`` naming the option and the value that is out of range."""
        positive = ("num_layers", "num_scales", "steps_per_scale", "hidden_channels", "num_samples", "steps")
        positive += ("num_blocks", "num_components")
        positive += ("batch_size", "eval_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{_flag(name)} must be >= 1, got {getattr(self, name)}")
        for name in (
            "epochs",
            "warmup_steps",
            "patience",
            "plot_samples",
            "levels",
            "threads",
            "fm_ot_block",
            "num_bins",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"--{_flag(name)} must be >= 0, got {getattr(self, name)}")
        if not math.isfinite(self.noise):
            raise ValueError(f"--noise must be a finite number (negative for the default), got {self.noise}")
        if not (math.isfinite(self.state_frequency) and self.state_frequency > 0):
            raise ValueError(f"--state-frequency must be a positive number, got {self.state_frequency}")
        if self.levels == 1:
            raise ValueError(
                "--levels must be 0 (continuous data) or at least 2 (discrete values 0..K-1), got 1"
            )
        if self.plot_samples > MAX_PLOT_SAMPLES:
            raise ValueError(
                f"--plot-samples must be at most {MAX_PLOT_SAMPLES} (more points than a plot can show), "
                f"got {self.plot_samples}"
            )
        if not 0 <= self.logit_alpha < 0.5:
            raise ValueError(f"--logit-alpha must be in [0, 0.5), got {self.logit_alpha}")
        if self.objective == "flow-matching" and self.flow != "ffjord":
            raise ValueError(
                f"--objective flow-matching trains a continuous flow: use --flow ffjord, got --flow {self.flow}"
            )
        if not (math.isfinite(self.tail_bound) and self.tail_bound >= 0):
            raise ValueError(
                f"--tail-bound must be a finite number >= 0 (0 for the flow's default), got {self.tail_bound}"
            )
        if not (math.isfinite(self.dropout) and self.dropout < 1):
            raise ValueError(
                f"--dropout must be below 1 (negative for the flow's default), got {self.dropout}"
            )
        if not 0 <= self.ema < 1:
            raise ValueError(f"--ema must be in [0, 1) (0 turns averaging off), got {self.ema}")
        if not (math.isfinite(self.fm_time_exponent) and self.fm_time_exponent > 0):
            raise ValueError(f"--fm-time-exponent must be a finite number > 0, got {self.fm_time_exponent}")
        for name in ("lr", "grad_clip", "weight_decay", "kinetic_weight", "frobenius_weight", "fm_sigma"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"--{_flag(name)} must be a finite number {'> 0' if name == 'lr' else '>= 0'}, got {value}"
                    + (" (or 0 for the flow's default)" if name == "lr" else "")
                )
        if not (
            0 < self.val_fraction < 1
            and 0 < self.test_fraction < 1
            and self.val_fraction + self.test_fraction < 1
        ):
            raise ValueError(
                "--val-fraction and --test-fraction must be in (0, 1) with a sum below 1, got "
                f"{self.val_fraction} and {self.test_fraction}"
            )
        if not self.hidden_dims or any(h < 1 for h in self.hidden_dims):
            shown = ",".join(map(str, self.hidden_dims)) or "nothing"
            raise ValueError(
                f"--hidden-dims must be one or more positive integers such as 128,128, got {shown}"
            )
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(
                    f"--{_flag(f.name)} must be one of {', '.join(choices)}, got {getattr(self, f.name)!r}"
                )

    def to_dict(self) -> Dict[str, Any]:
        """Plain values (lists for tuples), as written to ``config.toml`` and checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Dict[str, Any], source: str = "config") -> "RunConfig":
        """Build from a mapping (TOML table, saved config); unknown keys are an error."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"{source}: unknown option(s) {', '.join(unknown)}; known: {', '.join(names)}")
        typed = {}
        for key, value in values.items():
            typed[key] = _coerce(names[key], value, source)
        return cls(**typed)

    @classmethod
    def from_saved(cls, values: Dict[str, Any], source: str = "config") -> "RunConfig":
        """Build from the options a run saved: an option the run predates takes the value
        that run was trained with (``SAVED_BEFORE`` in this module), not today's default."""
        return cls.from_dict({**SAVED_BEFORE, **values}, source)

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)


#: what a run saved before an option existed was trained with (its default then)
SAVED_BEFORE = {
    "num_bins": 8,
    "dropout": 0.0,
    "tail_bound": 3.0,
    "noise": 0.0,
    "state_features": 0,
    "objective": "likelihood",
    # flow matching first trained the concat-squash field and paired whole batches
    "field": "concat-squash",
    "fm_ot_block": 0,
}


def resolve_objective(options: Dict[str, Any]) -> str:
    """The training objective of a run's options: ``"auto"`` (the default) is flow
    matching for an ffjord on continuous data (``levels`` 0, not a built-in image set)
    with a normal base and no kinetic or Frobenius penalty (those regularize maximum
    likelihood's solves), and maximum likelihood for everything else. Flow matching
    reaches maximum likelihood's held-out NLL in a fifth of its CPU time or less on three
    of the four 2-D targets of ``docs/ffjord.md``, and on its 10-D targets ends 8.6 and
    14.6 times closer after the same steps in an eighth to a tenth of the time. A given
    objective is returned as it is (``flow_matching`` spelled ``flow-matching``).

    >>> resolve_objective({"flow": "ffjord"}), resolve_objective({"flow": "ffjord", "kinetic_weight": 0.01})
    ('flow-matching', 'likelihood')
    >>> resolve_objective({"flow": "spline"}), resolve_objective({"flow": "ffjord", "objective": "likelihood"})
    ('likelihood', 'likelihood')
    """
    objective = str(options.get("objective", "auto")).replace("_", "-")
    if objective != "auto":
        return objective

    def option(name):
        return options.get(name, getattr(RunConfig, name))

    from ..data.registry import IMAGE_DATASETS  # discrete images: their levels come with the set

    continuous = option("levels") == 0 and str(option("data")).lower() not in IMAGE_DATASETS
    continuous_ffjord = option("flow") == "ffjord" and continuous and option("base") == "normal"
    penalized = option("kinetic_weight") > 0 or option("frobenius_weight") > 0
    return "flow-matching" if continuous_ffjord and not penalized else "likelihood"


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _parse_ints(text: str, name: str) -> Tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise ValueError(
            f"--{_flag(name)} expects comma-separated integers such as 128,128, got {text!r}"
        ) from None


def _coerce(f: dataclasses.Field, value, source: str):
    default = f.default
    kind = type(default)
    if isinstance(default, tuple):
        if isinstance(value, str):
            return _parse_ints(value, f.name)
        if isinstance(value, (list, tuple)) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            return tuple(value)
    elif kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", tuple: "integers"}
    expected = names.get(kind, f"a {kind.__name__}")
    raise ValueError(f"{source}: option {f.name} expects {expected}, got {value!r}")


def read_toml(path) -> Dict[str, Any]:
    """Options from a TOML file: top-level keys, or a ``[fit]`` table, named as the
    long options without dashes (``batch_size = 128``)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ValueError(
                "reading a TOML config needs Python 3.11+ or the tomli package (pip install tomli)"
            ) from None
    try:
        with open(path, "rb") as fh:
            table = tomllib.load(fh)
    except FileNotFoundError:
        raise ValueError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"config file {path} is not valid TOML: {err}") from None
    if "fit" in table and isinstance(table["fit"], dict):
        rest = {k: v for k, v in table.items() if k != "fit"}
        table = {**rest, **table["fit"]}
    return {k.replace("-", "_"): v for k, v in table.items()}


def config_to_toml(config: RunConfig) -> str:
    """The resolved configuration as TOML, readable by ``pyro-flows fit --config``."""
    from .rundir import RUN_CONFIG_HEADER  # marks the folder as a run's (see rundir.is_run_folder)

    lines = [f"{RUN_CONFIG_HEADER} (pyro-flows fit --config this-file --out NEW)"]
    for key, value in config.to_dict().items():
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + "".join(_toml_char(c) for c in str(value)) + '"'


def _toml_char(c: str) -> str:
    # Control characters (a newline in a path) are not allowed raw in a TOML string, and
    # escaping everything outside ASCII keeps the file readable whatever encoding the
    # platform writes text files in (TOML files are UTF-8).
    if c in '"\\':
        return "\\" + c
    if " " <= c <= "~":
        return c
    code = ord(c)
    return f"\\u{code:04X}" if code <= 0xFFFF else f"\\U{code:08X}"
