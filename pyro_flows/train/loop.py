r"""Training a flow by maximum likelihood or flow matching: the loop behind ``pyro-flows fit``.

Each step draws a batch :math:`x_{1..B}` (preprocessed by the data's
:meth:`~pyro_flows.data.splits.Splits.prepare`), minimises the mean negative
log-likelihood :math:`-\frac1B\sum_b \log p_\theta(x_b)` (with
``objective="flow-matching"``, an ffjord's flow-matching loss instead, see
:mod:`pyro_flows.train.flow_matching`) with Adam, a warm-up then
constant or cosine learning rate, and gradient-norm clipping. With ``ema`` the weights
that are evaluated, kept and sampled are an exponential moving average of the trained
ones (:class:`~pyro_flows.train.averaging.WeightAverage`). Every ``eval_every`` steps
the validation NLL (eval mode, no gradients) decides whether the model is the best so
far (kept in memory and in ``best.pt``) and whether to stop early; the full training state
(with the average) then goes to ``checkpoint.pt`` so ``fit --resume`` can continue exactly
where it was.

Batch order is a function of ``(seed, epoch)`` only (a ``DistributedSampler``), and
the checkpoint holds the generator states, so an interrupted and resumed run on CPU
ends with the same parameters, bit for bit, as an uninterrupted one.

**Loss guard.** A NaN or infinite loss or gradient norm stops the run *before* the
optimizer applies it, with :class:`NonFiniteLossError` naming the step; the checkpoint
of the last evaluation (all finite) is left untouched. So does an ODE solver that gives
up on the batch (FFJORD's ``underflow in dt``), and a non-finite validation NLL stops the
run at the step whose parameters were evaluated.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional, Tuple

import pyro
import torch
from torch import nn

from .averaging import WeightAverage
from .checkpoint import CheckpointError, capture_rng, restore_rng, save_checkpoint
from .distributed import (
    SINGLE,
    DistContext,
    all_reduce_mean,
    fail_together,
    gather_objects,
    initialize_consistently,
    separate_random_streams,
    sync_buffers,
    waits_for_data,
    wrap_model,
)
from .rundir import atomic_write_text

__all__ = [
    "NonFiniteLossError",
    "LoopState",
    "NegativeLogLikelihood",
    "train",
    "nll_per_point",
    "mean_and_standard_error",
    "lr_factor",
    "learning_rate",
    "MetricsLog",
    "held_out_noise",
    "fixed_model_noise",
    "json_safe",
    "init_mixtures_from_data",
]


class NonFiniteLossError(RuntimeError):
    """The loss or its gradient became NaN or infinite; the run stopped.

    ``pyro-flows fit`` reports it and exits with status 3:

    >>> issubclass(NonFiniteLossError, RuntimeError)
    True
    """


@dataclass
class LoopState:
    """Progress and early-stopping state (saved in every checkpoint)."""

    step: int = 0
    best_val_nll: float = math.inf
    best_step: int = -1
    bad_evals: int = 0
    stopped_early: bool = False
    total_steps: int = 0
    history: List[dict] = field(default_factory=list)
    #: the logged running mean of the training loss (kept so that a resumed run logs the same)
    running_loss: Optional[float] = None
    #: wall-clock seconds the run has taken up to this state, summed over its processes
    #: (an interrupted process counts up to its last checkpoint)
    seconds: float = 0.0


class NegativeLogLikelihood(nn.Module):
    """``x -> (-log p(x) per point, penalty)``: the module DDP wraps, so its forward is
    the whole computation whose gradients are synchronised.

    The penalty is the sum of the ``regularization`` of every submodule that
    ``regularizes`` (FFJORD's kinetic-energy and Jacobian-Frobenius terms), else 0.
    """

    def __init__(self, flow: nn.Module):
        super().__init__()
        self.flow = flow

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        nll = -self.flow.log_prob(x)
        penalty = torch.zeros((), dtype=nll.dtype, device=nll.device)
        for module in self.flow.modules():
            if getattr(module, "regularizes", False):
                penalty = penalty + module.regularization
        return nll, penalty


#: ``--lr 0`` (the default): each flow's learning rate and the most warm-up steps (at most a
#: tenth of the run); flows not listed get ``DEFAULT_LR`` (1e-3) without warm-up. The
#: mixture-CDF flow (``cdf``, a few parameters per coordinate, started at the data's
#: quantiles by :func:`init_mixtures_from_data`) takes 5e-2, the rate of the 1-D recipe
#: of ``docs/one-d.md``: on ``make_bimodal(4000)`` with 5 components, 2000 steps of 256
#: (10% held out), the test NLL on 4000 other points is 1.3945 / 1.3947 / 1.3964 for seeds
#: 0 / 1 / 2, against 1.3958 / 1.3963 / 1.3971 for EM on the same training points, and
#: 1.3957 / 1.4026 / 1.3970 at 1e-2 and 1.4277 (seed 0) at 1e-3
FLOW_LEARNING_RATES = {"spline": (3e-3, 100), "cdf": (5e-2, 0)}
DEFAULT_LR = 1e-3
#: ``--lr 0`` for ``--flow spline`` on data of 3 to ``SPLINE_FAST_MAX_DIM`` dimensions (see
#: :func:`learning_rate`)
SPLINE_FAST_LR, SPLINE_FAST_MAX_DIM = 2e-2, 10


def learning_rate(config, total_steps: int, input_dim: Optional[int] = None) -> Tuple[float, int]:
    """The base learning rate and warm-up steps of a run: ``config.lr`` and
    ``config.warmup_steps`` as given, or with ``lr == 0`` the flow's (see
    :data:`~pyro_flows.train.loop.FLOW_LEARNING_RATES`); for ``spline`` on vectors of
    ``3 <= input_dim <= 10``, ``SPLINE_FAST_LR`` (2e-2), which goes with the training
    noise those runs get (:func:`~pyro_flows.train.registry.training_noise`).

    The spline rates were measured (docs/benchmarks.md): in 2-D 3e-3 beats 5e-3 (rings
    after 800 steps, KL gap 0.167 against 0.186); on the 10-D targets 1e-2 beats 3e-3 (the
    mixture after 800 steps 0.103 / 0.140 against 0.146 / 0.192, seeds 0 / 2, and after
    3000 steps 0.046 against 0.070; the banana after 800 steps 0.050 against 0.061 over
    three seeds), and with the training noise 2e-2 beats 1e-2 (the banana after 3000
    steps with the noise held constant 0.031 / 0.048 against 0.059 / 0.077, seeds 0 / 1;
    with dropout instead, 2e-2 loses: 0.112 / 0.137 against 0.078 / 0.106); with the command's defaults on
    curved Gaussian data (``benchmarks/spline_lr.py``) 1e-2 is level or better than 3e-3
    up to 10 dimensions and worse from 12 on. A resumed run keeps the rate its checkpoint
    saved. The ``cdf`` flow takes 5e-2 (see :data:`FLOW_LEARNING_RATES`).

    >>> from pyro_flows.train import RunConfig
    >>> learning_rate(RunConfig(flow="spline"), 2000), learning_rate(RunConfig(flow="real_nvp"), 2000)
    ((0.003, 100), (0.001, 0))
    >>> learning_rate(RunConfig(flow="cdf"), 2000)
    (0.05, 0)
    >>> [learning_rate(RunConfig(flow="spline"), 800, input_dim=d) for d in (10, 43)]
    [(0.02, 80), (0.003, 80)]
    >>> learning_rate(RunConfig(flow="spline", lr=1e-2, warmup_steps=5), 2000)
    (0.01, 5)
    """
    if config.lr > 0:
        return config.lr, config.warmup_steps
    lr, warmup = FLOW_LEARNING_RATES.get(config.flow, (DEFAULT_LR, 0))
    if config.flow == "spline" and input_dim is not None and 2 < input_dim <= SPLINE_FAST_MAX_DIM:
        lr = SPLINE_FAST_LR
    return lr, max(config.warmup_steps, min(warmup, total_steps // 10))


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate before optimizer step ``step`` (0-based).

    >>> [round(lr_factor(s, 10, 2, "cosine"), 3) for s in (0, 1, 2, 6, 9)]
    [0.5, 1.0, 1.0, 0.5, 0.038]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def nll_per_point(flow: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """``-log p(x)`` for every point of ``x`` in eval mode without gradients (float64)."""
    was_training = flow.training
    flow.eval()
    try:
        with torch.no_grad(), pyro.validation_enabled(False):
            parts = [-flow.log_prob(x[i : i + batch_size]).double() for i in range(0, len(x), batch_size)]
    finally:
        flow.train(was_training)
    return torch.cat(parts)


def mean_and_standard_error(values: torch.Tensor) -> Tuple[float, float]:
    """Mean and its standard error ``std / sqrt(n)``.

    >>> mean_and_standard_error(torch.tensor([1.0, 3.0]))
    (2.0, 1.0)
    """
    n = values.numel()
    mean = float(values.mean())
    se = float(values.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return mean, se


class MetricsLog:
    """Metrics as JSON lines (one object per event), written by the main process only.

    Resuming (``keep_until_step``) drops what the interrupted run logged after its
    checkpoint, its test score (written again at the end) and a last line torn by the
    interruption; the file is rewritten through
    a temporary file and a rename, so a second interruption cannot empty it.
    """

    def __init__(self, path: Optional[str], keep_until_step: Optional[int] = None):
        self.path = path
        if path is None:
            return
        if keep_until_step is not None and os.path.exists(path):
            # the test score is written once, at the end: the resumed run writes its own
            kept = [
                r
                for r in read_metrics(path, drop_torn_line=True)
                if r.get("step", 0) <= keep_until_step and r.get("split") != "test"
            ]
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        elif keep_until_step is None:
            open(path, "w").close()

    def write(self, **record) -> None:
        """Append ``record`` as one JSON line; a NaN or infinite number (the standard
        error of a single point) is written as ``null``, never as invalid JSON."""
        if self.path is None:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(json_safe(record), allow_nan=False) + "\n")


def json_safe(value):
    """``value`` with every NaN or infinite float (in dicts and lists) replaced by ``None``,
    so ``json.dumps(..., allow_nan=False)`` writes valid JSON.

    >>> json_safe({"nll": 1.5, "se": float("nan"), "steps": [1, float("inf")]})
    {'nll': 1.5, 'se': None, 'steps': [1, None]}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def read_metrics(path: str, drop_torn_line: bool = False) -> List[dict]:
    """The records of a ``metrics.jsonl`` file.

    A last line cut short (the process was killed while appending it) is dropped with
    ``drop_torn_line``; otherwise, and for a bad line anywhere else, a ``ValueError``
    names the file and the line.
    """
    with open(path) as fh:
        lines = [(n, line) for n, line in enumerate(fh, start=1) if line.strip()]
    records = []
    for k, (n, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if drop_torn_line and k == len(lines) - 1:
                break
            raise ValueError(
                f"{path}: line {n} is not a JSON record ({err.msg}); the metrics file is damaged"
                + ("" if k < len(lines) - 1 else " (its last line was cut short)")
            ) from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {n} is not a JSON object; the metrics file is damaged")
        records.append(record)
    return records


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, unit="step", disable=not enabled, dynamic_ncols=True, leave=False
    )


#: seconds between progress lines when the output is not a terminal (logs, batch jobs)
PROGRESS_SECONDS = 30.0


class _ProgressLines:
    """Progress as plain lines on stdout when stdout is not a terminal (a log file, a
    pipe, a batch job): one at the first evaluation, then one every
    :data:`PROGRESS_SECONDS` and one at the last step."""

    def __init__(self, total_steps: int, enabled: bool, metric: str = "train NLL"):
        self.total = total_steps
        self.enabled = enabled
        self.metric = metric  # what the running mean is of
        self.started = self.last = time.perf_counter()
        self.first_step = None
        self.pending_first = True

    def evaluated(self, state: LoopState) -> None:
        if self.enabled and self.pending_first:
            self.pending_first = False
            self.last = -math.inf  # print at this step

    def step(self, state: LoopState, running: float) -> None:
        if not self.enabled:
            return
        if self.first_step is None:
            self.first_step = state.step - 1
        now = time.perf_counter()
        final = state.step >= self.total or state.stopped_early
        if not final and now - self.last < PROGRESS_SECONDS:
            return
        self.last = now
        rate = (state.step - self.first_step) / max(1e-9, now - self.started)
        line = f"step {state.step}/{self.total}: {self.metric} {running:.4f} (running mean)"
        if state.history:
            last = state.history[-1]
            line += f", validation NLL {last['nll']:.4f} at step {last['step']}"
            line += f" (best {state.best_val_nll:.4f} at step {state.best_step})"
        line += f", {rate:.1f} steps/s"
        if not final and rate > 0:
            line += f", about {_duration((self.total - state.step) / rate)} left"
        print(line, flush=True)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    """``75`` -> ``'1 min 15 s'``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def train(
    flow: nn.Module,
    splits,
    config,
    run_dir: Optional[str],
    *,
    device: Optional[torch.device] = None,
    context: DistContext = SINGLE,
    resume_state: Optional[dict] = None,
    best_model_state: Optional[dict] = None,
    on_step: Optional[Callable[[int], None]] = None,
    data_state: Optional[dict] = None,
    started: Optional[float] = None,
    stop=None,
) -> LoopState:
    """Train ``flow`` on ``splits.train`` in place, by maximum likelihood or, with
    ``config.objective == "flow-matching"``, by flow matching
    (:class:`~pyro_flows.train.flow_matching.FlowMatching`).

    On return ``flow`` holds the parameters of the best validation NLL (their moving
    average when ``config.ema`` is set), in eval mode; so it does when ``stop`` stops the
    loop, as far as it got (before the first evaluation: those of the step it stopped after).

    :param flow: a :class:`~pyro_flows.Flow` on ``device`` in the run's dtype.
    :param splits: :class:`~pyro_flows.data.splits.Splits`.
    :param config: the run's :class:`~pyro_flows.train.config.RunConfig`.
    :param run_dir: where ``checkpoint.pt``, ``best.pt`` and ``metrics.jsonl`` go (main
        process only); ``None`` writes nothing.
    :param resume_state: a checkpoint from :func:`~pyro_flows.train.checkpoint.load_checkpoint`
        to continue from.
    :param on_step: called with the step count after each step (and its checkpoint).
    :param data_state: the preprocessing saved in checkpoints (see ``run.py``).
    :param started: ``time.perf_counter()`` when the process started the run (default:
        now); the checkpoints' ``seconds`` count from it, on top of the resumed state's.
    :param stop: a ``pyro_flows.train.stopping.StopSignals`` whose signals (SIGTERM,
        SIGUSR1, a first Ctrl-C), while the loop runs, stop it at the end of a step with a
        checkpoint of that step (under ``torchrun`` every process at the same step, see
        below).
    :raises NonFiniteLossError: on a NaN or infinite loss or gradient.
    :raises ~pyro_flows.train.run.RunTerminated: when ``stop`` received SIGTERM or SIGUSR1.
    :raises ~pyro_flows.train.run.RunInterrupted: when ``stop`` received Ctrl-C.

    >>> from pyro_flows.data import Splits, make_moons
    >>> from pyro_flows.train import RunConfig
    >>> from pyro_flows.train.registry import build_model
    >>> config = RunConfig(num_layers=2, hidden_dims=(8,), steps=4, batch_size=50, eval_every=2, quiet=True)
    >>> x = make_moons(300)
    >>> flow = build_model(config, (2,))
    >>> state = train(flow, Splits("moons", x[:200], x[200:250], x[250:]), config, None)
    >>> state.step, [r["step"] for r in state.history]
    (4, [2, 4])
    """
    dtype = next(flow.parameters()).dtype
    device = device if device is not None else next(flow.parameters()).device
    writes = run_dir is not None and context.is_main
    local_batch, steps_per_epoch = _batch_geometry(len(splits.train), config.batch_size, context)
    total_steps = config.epochs * steps_per_epoch if config.epochs else config.steps

    objective = None  # wrapped below, after any data-dependent initialisation
    if resume_state is None:
        # before the optimizer's, the average's and the best weights' first copy
        init_mixtures_from_data(flow, splits, config.seed, device, dtype)
    vector = len(splits.event_shape) == 1
    base_lr, warmup_steps = learning_rate(config, total_steps, splits.event_shape[0] if vector else None)
    optimizer = torch.optim.Adam(flow.parameters(), lr=base_lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup_steps, config.schedule)
    )
    clock = started if started is not None else time.perf_counter()
    state = LoopState(total_steps=total_steps)
    # The weights that are evaluated, kept as the best and sampled: the live ones, or their average.
    average = WeightAverage(flow, config.ema) if getattr(config, "ema", 0.0) > 0 else None
    best = copy.deepcopy(flow.state_dict())
    if resume_state is not None:
        state = _restore(flow, optimizer, scheduler, resume_state, average, context)
        if best_model_state is not None:
            best = best_model_state
        else:
            best = average.averaged_state_dict() if average is not None else copy.deepcopy(flow.state_dict())
    seconds_before = state.seconds

    # held as prepare wants them (float64 for standardized data), prepared as ``dtype``
    train_x = splits.train.to(device=device, dtype=splits.input_dtype(dtype))
    noise_sd = None
    if getattr(config, "noise", 0.0) > 0:  # in units of each coordinate's sd over the training points
        # dequantization noise (discrete data) from a generator of its own: drawn from the global
        # one, it would shift every later draw, differently in a resumed run (restored first)
        fixed = torch.Generator(device=device).manual_seed(config.seed)
        noise_sd = config.noise * splits.prepare(train_x, generator=fixed, dtype=dtype).std(0)
    offset = splits.nll_offset()
    val_x = splits.prepare(
        splits.val.to(device=device, dtype=splits.input_dtype(dtype)),
        generator=held_out_noise(config.seed, "val", device),
        dtype=dtype,
    )
    metrics = MetricsLog(
        os.path.join(run_dir, "metrics.jsonl") if writes else None,
        keep_until_step=state.step if resume_state is not None else None,
    )
    sampler = torch.utils.data.DistributedSampler(
        range(len(train_x)),
        num_replicas=context.world_size,
        rank=context.rank,
        shuffle=True,
        seed=config.seed,
        drop_last=True,
    )

    if context.distributed and resume_state is None:
        if waits_for_data(flow):
            # The global first batch (the processes' first local batches together), which
            # a single process would initialise its ActNorm layers from.
            whole = torch.utils.data.DistributedSampler(
                range(len(train_x)), num_replicas=1, rank=0, shuffle=True, seed=config.seed, drop_last=True
            )
            first = torch.tensor(list(iter(whole))[: config.batch_size], dtype=torch.long, device=device)
            initialize_consistently(flow, splits.prepare(train_x[first], dtype=dtype), context)
        separate_random_streams(context)
    flow_matching = getattr(config, "objective", "likelihood") == "flow-matching"
    if flow_matching:
        from .flow_matching import FlowMatching, fm_options

        objective = wrap_model(FlowMatching(flow, *fm_options(config)), context, device)
    else:
        objective = wrap_model(NegativeLogLikelihood(flow), context, device)
    # the training metric: the NLL, or the flow-matching loss (no NLL offset: not a density)
    train_key = "fm_loss" if flow_matching else "nll"

    def checkpoint_state(model=None, rng=None) -> dict:
        state.seconds = seconds_before + (time.perf_counter() - clock)
        snapshot = {
            "model": model if model is not None else flow.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": state.step,
            "trainer": asdict(state),
            "rng": rng if rng is not None else capture_rng(),
            "config": config.to_dict(),
            "data": data_state or {},
        }
        if average is not None:
            snapshot["ema"] = average.state_dict()
        return snapshot

    show = context.is_main and not config.quiet and sys.stderr.isatty()
    bar = _progress(total_steps, state.step, show)
    # Output going to a log or a pipe gets plain progress lines (a bar would be lost there).
    lines = _ProgressLines(
        total_steps,
        context.is_main and not config.quiet and not _is_terminal(sys.stdout),
        "flow-matching loss" if flow_matching else "train NLL",
    )
    postfix = {}
    running, started, started_step = state.running_loss, time.perf_counter(), state.step
    epoch_indices, epoch_of_indices = None, -1
    # the step of the last checkpoint.pt written completely, and a failed write of metrics
    # waiting for the next evaluation to stop every process (see below)
    saved_step = state.step if resume_state is not None else None
    write_failure = None

    def save_step(record: Optional[dict] = None, improved: bool = False) -> None:
        """Write this step's evaluation ``record`` to the metrics (if given), its model to
        ``best.pt`` (if ``improved``) and its state to ``checkpoint.pt``. A write that
        failed on rank 0 stops every process now, with its message, rather than leaving
        the others waiting in the next step's collectives."""
        nonlocal saved_step
        # Every process's generator state, so a resumed run draws what each would have.
        rngs = gather_objects(capture_rng(), context)
        failed, writing = write_failure, metrics.path
        try:
            if failed is None and record is not None:
                metrics.write(**record)
            if writes and failed is None:
                rng = {**rngs[0], "ranks": rngs} if context.distributed else rngs[0]
                snapshot = checkpoint_state(rng=rng)
                if improved:
                    # best.pt holds the evaluated weights (the average), which evaluate and sample use
                    best_snapshot = snapshot if average is None else checkpoint_state(best, rng)
                    writing = os.path.join(run_dir, "best.pt")
                    save_checkpoint(writing, best_snapshot)
                writing = os.path.join(run_dir, "checkpoint.pt")
                save_checkpoint(writing, snapshot)
                saved_step = state.step
        except OSError as err:  # a full disk, a lost mount: say what is kept and how to go on
            failed = _write_failure(err, writing, state, run_dir, saved_step)
        except Exception as err:
            failed = err
        fail_together(failed, context)

    def stopped() -> BaseException:
        """What a stopping signal raises after this step, with ``flow`` left as training
        leaves it (the best weights so far; before any evaluation, those it would evaluate
        now), for a caller that holds nothing else (``fit``, which writes no checkpoint)."""
        if state.history:
            flow.load_state_dict(best)
        elif average is not None:
            flow.load_state_dict(average.averaged_state_dict())
        flow.eval()
        return stop.stopped(run_dir, state.step, total_steps, model=flow, history=list(state.history))

    flow.train()
    # While the loop runs, a stopping signal is only recorded; the loop acts on it at the end of a step.
    deferring = stop.deferred() if stop is not None else contextlib.nullcontext()
    if stop is not None:
        stop.step = state.step + 1  # the step a signal now would stop the run after
    with deferring, contextlib.closing(bar):
        while state.step < total_steps and not state.stopped_early:
            epoch, within = divmod(state.step, steps_per_epoch)
            if epoch != epoch_of_indices:
                sampler.set_epoch(epoch)
                epoch_indices = torch.tensor(list(iter(sampler)), dtype=torch.long, device=device)
                epoch_of_indices = epoch
            idx = epoch_indices[within * local_batch : (within + 1) * local_batch]
            x = splits.prepare(train_x[idx], dtype=dtype)
            if noise_sd is not None:  # follows the rate's schedule: the last steps see the data as they are
                group = optimizer.param_groups[0]
                x = x + (group["lr"] / group["initial_lr"]) * noise_sd * torch.randn_like(x)

            # Validation off: a non-finite value inside the flow should reach the loss guard
            # below (which says what to do) rather than a support check deep in the base.
            solver_failure = None
            try:
                with pyro.validation_enabled(False):
                    nll, penalty = objective(x)
                    loss = nll.mean() + penalty
            except AssertionError as err:
                solver_failure = _solver_failure(err)
                # An infinite loss: every process learns of it from the reduction below,
                # so all of them stop at this step.
                nll = torch.full((1,), math.inf, dtype=dtype, device=device)
                penalty = torch.zeros((), dtype=dtype, device=device)
            # Mean NLL and penalty over all processes, for the guard and the log, and
            # whether any process was asked to stop: all learn it from the same reduction
            # and stop at the end of this step (see ``stop`` below).
            asked = nll.new_tensor(float(stop is not None and stop.requested))
            global_nll, global_penalty, global_asked = all_reduce_mean(
                torch.stack([nll.mean(), penalty, asked]).detach(), context
            )
            if stop is not None and context.distributed:
                # a signal from now on reaches the other processes with the next step's reduction
                stop.step = min(state.step + 2, total_steps)
            global_loss = global_nll + global_penalty
            if not bool(torch.isfinite(global_loss)):
                _stop(state, run_dir, solver_failure or f"the training loss is {float(global_loss)}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            max_norm = config.grad_clip if config.grad_clip > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(flow.parameters(), max_norm)
            if not bool(torch.isfinite(grad_norm)):
                _stop(
                    state, run_dir, f"the gradient norm is {float(grad_norm)} (loss {float(global_loss):.4g})"
                )
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            if average is not None:
                average.update()
            state.step += 1

            value = float(global_nll) + (0.0 if flow_matching else offset)
            running = value if running is None else 0.95 * running + 0.05 * value
            state.running_loss = running
            if (state.step % 10 == 0 or state.step == total_steps) and write_failure is None:
                rate = (state.step - started_step) / max(1e-9, time.perf_counter() - started)
                try:
                    metrics.write(
                        split="train",
                        step=state.step,
                        **{train_key: value, f"running_{train_key}": running},
                        penalty=float(global_penalty),
                        lr=lr,
                        grad_norm=float(grad_norm),
                        steps_per_s=rate,
                    )
                except OSError as err:
                    write_failure = _write_failure(err, metrics.path, state, run_dir, saved_step)
                    if not context.distributed:
                        raise write_failure from None
                    # under torchrun the others learn of it at the next evaluation (fail_together
                    # below): raised here, it would leave them waiting in this step's collectives
            if show:
                postfix["fm" if flow_matching else "nll"] = f"{running:.3f}"
                bar.set_postfix(postfix, refresh=False)
            bar.update(1)

            if state.step % config.eval_every == 0 or state.step == total_steps:
                sync_buffers(flow, context)
                try:
                    # the same noise of a learned dequantizer at every evaluation, as for the data's
                    with fixed_model_noise(flow, config.seed, "val", device):
                        if average is None:
                            val_nll, val_se = mean_and_standard_error(nll_per_point(flow, val_x) + offset)
                        else:
                            with average.applied():
                                val_nll, val_se = mean_and_standard_error(nll_per_point(flow, val_x) + offset)
                    solver_failure = None
                except AssertionError as err:
                    val_nll, val_se, solver_failure = math.inf, math.nan, _solver_failure(err)
                # Processes agree (the same parameters score the same points), except when
                # one solver failed: share the verdict.
                val_finite = float(
                    all_reduce_mean(torch.tensor(float(math.isfinite(val_nll)), device=device), context)
                )
                if val_finite < 1:
                    _stop(
                        state,
                        run_dir,
                        solver_failure or f"the validation NLL is {val_nll}",
                        updated=True,
                    )
                improved = val_nll < state.best_val_nll
                if improved:
                    state.best_val_nll, state.best_step, state.bad_evals = val_nll, state.step, 0
                    best = (
                        average.averaged_state_dict()
                        if average is not None
                        else copy.deepcopy(flow.state_dict())
                    )
                else:
                    state.bad_evals += 1
                if config.patience and state.bad_evals >= config.patience:
                    state.stopped_early = True
                if show:  # refresh now: fast runs may never reach tqdm's refresh interval
                    postfix["val"] = f"{val_nll:.3f}"
                    bar.set_postfix(postfix)
                record = dict(split="val", step=state.step, nll=val_nll, se=val_se, best=improved)
                if hasattr(getattr(flow, "transform", None), "nfe"):
                    record["nfe"] = flow.transform.nfe  # evaluations of the ODE's field in that solve
                state.history.append(record)
                save_step(record, improved)
                lines.evaluated(state)
            lines.step(state, running)
            if on_step is not None:
                on_step(state.step)
            # A stopping signal (SIGTERM, SIGUSR1, a first Ctrl-C): one process learns of it at
            # once, several from this step's reduction (so all stop here, even those that got none).
            if stop is not None and (float(global_asked) > 0 or (stop.requested and not context.distributed)):
                if not (state.step % config.eval_every == 0 or state.step == total_steps):
                    save_step()  # not checkpointed by an evaluation at this step: write its state now
                raise stopped()
            if stop is not None:
                stop.step = state.step + 1
        if stop is not None and stop.requested:
            # after the last reduction, while the last step ran (several processes): that step
            # ended the run and evaluated, and its checkpoint is written
            raise stopped()
    flow.load_state_dict(best)
    flow.eval()
    return state


def _restore(
    flow, optimizer, scheduler, resume_state: dict, average=None, context: DistContext = SINGLE
) -> LoopState:
    """Load a checkpoint's training state; anything that does not fit the run is a
    :class:`CheckpointError` naming the part."""
    parts = [
        ("model weights", lambda: flow.load_state_dict(resume_state["model"])),
        ("optimizer state", lambda: optimizer.load_state_dict(resume_state["optimizer"])),
        ("learning-rate schedule", lambda: scheduler.load_state_dict(resume_state["scheduler"])),
    ]
    if average is not None:
        if "ema" not in resume_state:
            raise CheckpointError("the run averages the weights (--ema) but the checkpoint holds no average")
        parts.append(("averaged weights", lambda: average.load_state_dict(resume_state["ema"])))
    for part, load in parts:
        try:
            load()
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(
                f"the checkpoint's {part} do not fit the run its options describe: {first}"
            ) from None
    try:
        state = LoopState(**resume_state["trainer"])
    except TypeError as err:
        raise CheckpointError(f"the checkpoint's trainer state is invalid: {err}") from None
    rng = resume_state["rng"]
    per_process = rng.get("ranks")
    if context.distributed and isinstance(per_process, list) and len(per_process) == context.world_size:
        restore_rng(per_process[context.rank])
    else:  # one process, or a run resumed on another number of processes
        restore_rng(rng)
        separate_random_streams(context)
    return state


def _solver_failure(err: AssertionError) -> str:
    """The loss guard's account of an ODE solver that gave up (FFJORD's adaptive solver
    shrinks its step until it underflows when the dynamics blow up); other assertion
    errors are not ours to explain and are raised again."""
    if "underflow in dt" not in str(err):
        raise err
    return (
        "the ODE solver failed (its step size underflowed: the learned dynamics became too stiff, which "
        "data with very large values cause; keep --standardize on)"
    )


def _write_failure(
    err: OSError, path: Optional[str], state: LoopState, run_dir: Optional[str], saved_step: Optional[int]
) -> OSError:
    """A failed write of the run's files (a full disk, a lost mount) as an ``OSError``
    that says which file and step, what the folder still holds and how to go on. The
    files are written atomically, so the one that failed is still the previous one."""
    reason = err.strerror or str(err) or type(err).__name__
    what = f"{reason} (writing {path or 'the run folder'} at step {state.step})"
    full = err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
    fix = "once there is space on the disk again" if full else "once the problem is fixed"
    if saved_step is not None:
        where = (
            f"the checkpoint of step {saved_step} in {os.path.join(run_dir, 'checkpoint.pt')} is complete and kept, "
            f"with the best model in {os.path.join(run_dir, 'best.pt')}; {fix}, continue the run with "
            f"`pyro-flows fit --resume {run_dir}`"
        )
    else:
        where = (
            "no checkpoint had been written yet (one is written at each evaluation, see --eval-every); "
            f"{fix}, start the run again with --out {run_dir} --overwrite"
        )
    failure = OSError(f"{what}; {where}")
    failure.errno = err.errno
    return failure


def _stop(state: LoopState, run_dir: Optional[str], what: str, updated: bool = False) -> None:
    if not run_dir:
        where = "nothing was written"
    elif state.history:
        where = (
            f"the last good checkpoint (step {state.history[-1]['step']}) is kept in "
            f"{os.path.join(run_dir, 'checkpoint.pt')}, the best model (step {state.best_step}) in "
            f"{os.path.join(run_dir, 'best.pt')}"
        )
    else:
        where = "no checkpoint had been written yet (one is written at each evaluation, see --eval-every)"
    if updated:  # found when evaluating the parameters step state.step produced
        at = f"stopped at step {state.step}: evaluating the parameters it produced, {what}"
    else:  # found before applying step state.step + 1
        at = f"stopped at step {state.step + 1}: {what}. Parameters were not updated with it"
    raise NonFiniteLossError(
        f"{at}; {where}. "
        "Try a lower --lr, a smaller --grad-clip, --dtype float64, or check the data for outliers."
    )


#: the offset of the seed of the model's own held-out noise (see :func:`held_out_noise`)
MODEL_NOISE_STREAM = 1 << 32


def held_out_noise(seed: int, split: str, device: torch.device, stream: int = 0) -> torch.Generator:
    """A generator for the dequantization noise of held-out data, fixed by the run's
    ``seed`` and the ``split`` (``seed + 3`` for test, ``seed + 2`` otherwise), so their
    NLLs are comparable from evaluation to evaluation and with ``evaluate``. ``stream`` 1
    is the generator of the noise the model draws itself (a learned dequantizer's base
    noise, see :func:`fixed_model_noise`), seeded ``MODEL_NOISE_STREAM`` higher."""
    offset = (3 if split == "test" else 2) + stream * MODEL_NOISE_STREAM
    return torch.Generator(device=device).manual_seed(seed + offset)


@contextlib.contextmanager
def fixed_model_noise(flow: nn.Module, seed: int, split: str, device: torch.device):
    """Within the block, a model that draws noise when it scores points (a
    :class:`~pyro_flows.DequantizedFlow`: ``--dequantization variational``) draws it from
    ``held_out_noise(seed, split, device, stream=1)``, so the held-out NLL is the same at
    every evaluation of the same weights, in ``fit`` and in ``evaluate`` alike; other
    models score as they are."""
    fixed = getattr(flow, "fixed_noise", None)
    if fixed is None:
        yield
        return
    with fixed(held_out_noise(seed, split, device, stream=1)):
        yield


#: the most training points :func:`init_mixtures_from_data` reads (evenly spaced in the set)
MIXTURE_INIT_POINTS = 100_000


@torch.no_grad()
def init_mixtures_from_data(
    flow: nn.Module, splits, seed: int, device: torch.device, dtype: torch.dtype
) -> bool:
    """Start the :class:`~pyro_flows.transforms.MixtureCDF` of a flow (``--flow cdf``)
    from the training points: its components at their quantiles
    (its ``init_from_data``), as the mixture sees them
    (prepared as for training, then through the flow's parts on the data side of the
    mixture, such as the logit layer of discrete data). At its constructor's fixed
    start, components at -2 to 2 whatever the data, gradient descent from a minibatch fit
    the 1-D bimodal data of ``docs/one-d.md`` far worse than EM does.

    Only a mixture still at that start is placed (a flow initialised or loaded by the
    caller keeps its weights), and only in a :class:`~pyro_flows.Flow` whose part on the
    data side of the others is the mixture or a :func:`~pyro_flows.cdf_flow`. At most
    ``MIXTURE_INIT_POINTS`` (100,000) training points are read, evenly spaced in the set;
    discrete data are dequantized with noise seeded by ``seed`` (the global RNG is not
    drawn from). Returns whether a mixture was placed.

    >>> import pyro_flows
    >>> from pyro_flows.data import Splits
    >>> x = torch.randn(1000, 1) * 3 + 10
    >>> flow = pyro_flows.Flow(pyro_flows.cdf_flow(4, event_shape=(1,)))
    >>> init_mixtures_from_data(flow, Splits("d", x, x[:10], x[:10]), 0, torch.device("cpu"), torch.float32)
    True
    >>> 7 < flow.transform.mixture.loc.mean().item() < 13
    True
    """
    from ..builders.cdf import CDFFlow
    from ..transforms.elementwise import MixtureCDF

    parts = flow._transforms() if hasattr(flow, "_transforms") else None
    if not parts or not any(isinstance(m, MixtureCDF) for m in flow.modules()):
        return False
    train_x = splits.train
    stride = -(-len(train_x) // MIXTURE_INIT_POINTS)
    train_x = train_x[::stride].to(device=device, dtype=splits.input_dtype(dtype))
    y = splits.prepare(train_x, generator=torch.Generator(device=device).manual_seed(seed), dtype=dtype)
    for part in reversed(parts):  # from the data side
        mixture = part.mixture if isinstance(part, CDFFlow) else part
        if isinstance(mixture, MixtureCDF):
            if not _at_constructor_start(mixture):
                return False
            mixture.init_from_data(y)
            return True
        if isinstance(part, nn.Module) and any(isinstance(m, MixtureCDF) for m in part.modules()):
            return False  # inside another part: where it sits, we cannot tell
        y = part.inv(y)
    return False


def _at_constructor_start(mixture) -> bool:
    """Whether a mixture's parameters are those its constructor gives (not yet trained,
    initialised or loaded)."""
    from ..transforms.elementwise import MixtureCDF

    fresh = MixtureCDF(mixture.event_shape, mixture.num_components, mixture.component)
    return all(
        torch.equal(
            getattr(mixture, name).detach().cpu(), getattr(fresh, name).to(getattr(mixture, name).dtype)
        )
        for name in ("logits", "loc", "log_scale")
    )


def _batch_geometry(n_train: int, batch_size: int, context: DistContext) -> Tuple[int, int]:
    if batch_size % context.world_size:
        raise ValueError(
            f"--batch-size {batch_size} must be divisible by the number of processes {context.world_size}"
        )
    local = batch_size // context.world_size
    steps_per_epoch = (n_train // context.world_size) // local
    if steps_per_epoch < 1:
        raise ValueError(
            f"--batch-size {batch_size} is larger than the {n_train} training points; lower --batch-size"
        )
    return local, steps_per_epoch
