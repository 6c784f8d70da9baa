"""Train a flow on a tensor in memory: :func:`fit`, the Python shortcut to the training loop.

:func:`~pyro_flows.train.fit_run` (the ``pyro-flows fit`` command) reads a data set,
writes a run folder and checkpoints; :func:`fit` takes the data as a tensor, holds a
random part of it out for validation, trains with the same loop
(:func:`~pyro_flows.train.train`) and options (:class:`~pyro_flows.train.RunConfig`),
writes nothing and returns the trained flow with its validation history.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Iterator, List, Optional, Tuple

import torch

from ..data.splits import Splits
from .config import RunConfig, resolve_objective
from .loop import train
from .registry import build_model, check_flow_options, with_resolved_options
from .stopping import StopSignals

__all__ = ["fit", "FLOW_MATCHING_DEFAULTS", "with_flow_matching_defaults"]

#: the options an ffjord trained by flow matching gets unless given, from :func:`fit` and
#: from ``pyro-flows fit --flow ffjord`` (flow matching by default on continuous data)
#: alike: the velocity field 256-256-256 (the builder's default for that field), batches
#: of 512 and a learning rate of 3e-3 with a linear warm-up over the first 2% of the
#: steps (the recipe measured in ``docs/ffjord.md``)
FLOW_MATCHING_DEFAULTS = {
    "hidden_dims": (256, 256, 256),
    "batch_size": 512,
    "lr": 3e-3,
    "warmup_fraction": 0.02,
}


#: the ``--help`` group of each RunConfig field: fit() has no use for the data and output ones
_OPTION_GROUPS = {f.name: f.metadata.get("group") for f in dataclasses.fields(RunConfig)}


def with_flow_matching_defaults(options: dict, n_train: Optional[int] = None) -> dict:
    """``options`` (fields of :class:`~pyro_flows.train.RunConfig`) completed with
    :data:`FLOW_MATCHING_DEFAULTS` where they train an ffjord by flow matching and leave
    a field out; other options are returned unchanged. The warm-up is 2% of ``steps``
    (of the default 2000 when not given; none when ``epochs`` sets the length), and
    the batch is at most ``n_train`` points when that is known. An ``lr`` of 0 (the
    run's "pick the flow's rate") counts as not given.

    >>> with_flow_matching_defaults({"flow": "ffjord", "objective": "flow-matching", "steps": 500})["warmup_steps"]
    10
    >>> with_flow_matching_defaults({"flow": "spline", "steps": 500})
    {'flow': 'spline', 'steps': 500}
    """
    if options.get("flow") != "ffjord" or resolve_objective(options) != "flow-matching":
        return options
    options = dict(options)
    steps = options.get("steps", RunConfig.steps)
    for key, value in FLOW_MATCHING_DEFAULTS.items():
        if key == "warmup_fraction":
            if not options.get("epochs"):
                options.setdefault("warmup_steps", int(value * steps))
        elif key == "batch_size" and n_train is not None:
            options.setdefault(key, max(1, min(value, n_train)))
        elif key == "lr" and not options.get("lr"):  # lr 0, like none given, picks the flow's rate
            options["lr"] = value
        else:
            options.setdefault(key, value)
    return options


def fit(
    data: torch.Tensor,
    flow: str = "spline",
    objective: str = "auto",
    steps: int = 2000,
    val_fraction: float = 0.1,
    seed: int = 0,
    **options,
) -> Tuple[torch.nn.Module, List[dict]]:
    r"""Train a flow of the family ``flow`` on the rows of ``data`` and return it (in eval
    mode, with the weights of its best validation NLL) and the validation history.

    The data are used as given (in the flow's units: standardise them first if their
    scales differ much; a tensor that requires gradients is detached). A random
    ``val_fraction`` of the rows, drawn with ``seed``, is held out and scored every
    ``eval_every`` steps; the rest is trained on.

    :param data: ``(N, D)`` floating-point points; the flow is built in their dtype and on
        their device (unless ``dtype`` or ``device`` is given).
    :param str flow: a flow family of the ``pyro-flows`` command (``"spline"``, the
        default as for the command, ``"real_nvp"``, ``"ffjord"``, ...). ``"cdf"`` starts
        its mixture at the training points' quantiles and trains at a learning rate of
        5e-2 unless given (the 1-D recipe of ``docs/one-d.md``), as ``pyro-flows fit
        --flow cdf`` does.
    :param str objective: ``"likelihood"``, or ``"flow_matching"`` (also spelled
        ``"flow-matching"``) for ``flow="ffjord"``: the vector field is regressed on a
        probability path (:mod:`pyro_flows.train.flow_matching`) instead of solving the ODE
        at every step; the flow's ``log_prob`` and ``sample`` are unchanged. ``"auto"``
        (default): flow matching for an ffjord on continuous data with a normal base and
        no kinetic or Frobenius penalty, maximum likelihood otherwise
        (:func:`~pyro_flows.train.config.resolve_objective`).
    :param int steps: optimizer steps.
    :param float val_fraction: fraction of the rows held out for validation.
    :param int seed: seed of the split, the initial weights and the batches: the same
        ``seed`` gives the same fit. The fit draws from a fork of torch's global RNG
        (:func:`torch.random.fork_rng`) whose CPU generator, and on a CUDA device that
        device's generator, are seeded with ``seed``: the caller's global RNG is left as
        it was, and draws after the call are those it would have made without it. (A
        CUDA fit forks and seeds only its own device's generator; ``torch.manual_seed``
        would reseed every device's.)
    :param options: any other field of :class:`~pyro_flows.train.RunConfig`
        (``batch_size``, ``lr``, ``hidden_dims``, ``path``, ``eval_every``, ...), but not
        the data and output options (fit trains on the tensor it is given and writes
        nothing). ``batch_size`` defaults to the run default (256), or to the number of
        training points when they are fewer; a larger one given is refused. Flow
        matching an ffjord starts from :data:`FLOW_MATCHING_DEFAULTS` instead of the run
        defaults for the options it does not get. ``device`` (``"cpu"``, ``"cuda"``,
        ``"cuda:N"``, ``"auto"`` or a :class:`torch.device`) and ``dtype``
        (``"float32"``, ``"float64"`` or the torch dtype) move and cast the data, and so
        the flow, before training. ``threads`` (torch's CPU threads, 0 or not given:
        left as they are) applies for the duration of the fit; the caller's setting is
        restored after it.
    :returns: ``(flow, history)``: the trained :class:`~pyro_flows.Flow` and a list of
        ``{"step", "nll", "se", "best", ...}`` records, one per validation.
    :raises ~pyro_flows.train.RunInterrupted: on a first Ctrl-C while training (from the
        main thread, where Ctrl-C raises ``KeyboardInterrupt``): the step under way is
        finished, then this ``KeyboardInterrupt`` is raised holding the flow trained so far
        as ``model`` (in eval mode with the weights of its best validation so far, as at
        the end of training; before the first validation, those of that step), the
        ``history`` so far, ``step`` and ``total_steps``. In IPython or Jupyter:
        ``import sys; flow = sys.last_value.model``. A second Ctrl-C stops at once with a
        plain ``KeyboardInterrupt``. SIGTERM keeps the process's own handler (nothing is
        written, so there is nothing to resume).

    >>> import torch
    >>> from pyro_flows.data import make_moons
    >>> flow, history = fit(make_moons(600), flow="ffjord", objective="flow_matching",
    ...                     steps=20, hidden_dims=(16,), eval_every=10)
    >>> [r["step"] for r in history], flow.sample((3,)).shape
    ([10, 20], torch.Size([3, 2]))
    """
    if not isinstance(data, torch.Tensor) or not data.is_floating_point() or data.dim() != 2:
        raise ValueError(
            "fit: expected a floating-point tensor of shape (N, D), got "
            + (
                f"shape {tuple(data.shape)}, dtype {data.dtype}"
                if isinstance(data, torch.Tensor)
                else type(data).__name__
            )
        )
    unused = sorted(k for k in options if _OPTION_GROUPS.get(k) in ("data", "output") and k != "quiet")
    if unused:
        raise ValueError(
            f"fit: {', '.join(unused)} {'does' if len(unused) == 1 else 'do'} not apply here: fit trains on the "
            "data it is given, as they are, and writes nothing (standardise or dequantize them first; "
            "the pyro-flows command reads files and writes runs)"
        )
    if not 0 < val_fraction < 1:
        raise ValueError(f"fit: val_fraction must be in (0, 1), got {val_fraction}")
    options = dict(options)
    threads = _fit_threads(options.pop("threads", None))
    data = data.detach()  # the data are constants of the loss (they would keep a graph otherwise)
    if "device" in options:
        data = data.to(device=_fit_device(options.pop("device")))
    if "dtype" in options:
        data = data.to(dtype=_fit_dtype(options.pop("dtype")))
    dtype = {torch.float32: "float32", torch.float64: "float64"}.get(data.dtype)
    if dtype is None:
        raise ValueError(f"fit: expected float32 or float64 data, got {data.dtype}")
    if not bool(torch.isfinite(data).all()):
        raise ValueError("fit: the data hold NaN or infinite values")
    n_val = max(1, round(val_fraction * len(data)))
    n_train = len(data) - n_val
    if n_train < 1:
        raise ValueError(f"fit: {len(data)} points leave none to train on with val_fraction={val_fraction}")
    batch_given = "batch_size" in options
    options = with_flow_matching_defaults(
        {"flow": flow, "objective": objective, "steps": steps, **options}, n_train
    )
    for key in ("flow", "objective", "steps"):
        del options[key]
    if not batch_given:  # the run default, but no more than the training points
        options.setdefault("batch_size", max(1, min(RunConfig.batch_size, n_train)))
    options.setdefault("quiet", True)
    options.setdefault("plots", False)
    # val_fraction is fit's own (checked above): the run's data options (its test split) do not apply
    config = RunConfig(
        flow=flow,
        objective=objective,
        steps=steps,
        seed=seed,
        dtype=dtype,
        device=str(data.device),
        **({} if threads is None else {"threads": threads}),
        **options,
    )
    if config.batch_size > n_train:
        raise ValueError(
            f"fit: batch_size {config.batch_size} is larger than the {n_train} training points "
            f"({len(data)} rows less the {n_val} held out by val_fraction={val_fraction}); lower batch_size"
        )
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).to(data.device)
    val, train_x = data[order[:n_val]], data[order[n_val:]]
    # the loop never reads the test split; the validation points stand in for it
    splits = Splits("data", train_x, val, val, split_rule=f"random, seed {seed}")
    splits.check_spread()
    check_flow_options(config, splits.event_shape)
    config = with_resolved_options(config, splits)
    # Ctrl-C only: the loop hands the flow back on the exception (SIGTERM keeps its own way)
    with StopSignals(signals=(), writes=False) as stop, _seeded_rng(seed, data.device), _num_threads(threads):
        model = build_model(config, splits.event_shape).to(device=data.device, dtype=data.dtype)
        state = train(model, splits, config, None, stop=stop)
    return model, list(state.history)


@contextlib.contextmanager
def _seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Within: torch's global RNG forked (:func:`torch.random.fork_rng`, restored on exit)
    with the CPU generator seeded with ``seed`` as ``torch.manual_seed`` seeds it, and on
    a CUDA ``device`` that device's generator too (``torch.manual_seed`` seeds every
    CUDA device's with the same value, so the fit draws exactly what it drew when it
    called it; the other devices' generators are neither forked nor touched)."""
    cuda = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


@contextlib.contextmanager
def _num_threads(threads: Optional[int]) -> Iterator[None]:
    """Within: ``threads`` CPU threads for torch's operations (none given or 0: as they are)."""
    if not threads:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _fit_threads(threads) -> Optional[int]:
    """``threads=`` of :func:`fit`, checked: ``None`` (not given) or a count from 0 (leave
    torch's setting) to the CPUs of the machine."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(
            f"fit: threads must be an integer >= 0 (0: torch's setting as it is), got {threads!r}"
        )
    cpus = os.cpu_count() or 1
    if threads > cpus:
        raise ValueError(
            f"fit: threads={threads} is more than the {cpus} CPUs of this machine; use at most {cpus}"
        )
    return threads


def _fit_device(device) -> torch.device:
    """``device=`` of :func:`fit`: a name or a :class:`torch.device`, resolved as the
    ``--device`` of ``pyro-flows fit`` (``auto``: CUDA when present)."""
    from .run import resolve_device

    if not isinstance(device, (str, torch.device)):
        raise ValueError(f"fit: device must be a string or a torch.device, got {type(device).__name__}")
    try:
        return resolve_device(str(device))
    except ValueError as err:
        raise ValueError(f"fit: {str(err).replace('--device ', 'device=')}") from None


def _fit_dtype(dtype) -> torch.dtype:
    """``dtype=`` of :func:`fit`: ``"float32"``, ``"float64"`` or the torch dtype."""
    dtypes = {"float32": torch.float32, "float64": torch.float64}
    if isinstance(dtype, torch.dtype) and dtype in dtypes.values():
        return dtype
    if isinstance(dtype, str) and dtype in dtypes:
        return dtypes[dtype]
    raise ValueError(f"fit: dtype must be float32 or float64 (a name or the torch dtype), got {dtype!r}")
