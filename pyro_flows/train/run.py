"""The three jobs of the ``pyro-flows`` command as functions: :func:`fit_run`,
:func:`evaluate_run` and :func:`sample_run`.

A run folder holds ``config.toml`` (every resolved option), ``metrics.jsonl``,
``results.json``, ``checkpoint.pt`` (last state, for ``--resume``), ``best.pt`` (best
validation NLL, used by ``evaluate`` and ``sample``) and PNG plots.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import warnings
from typing import Callable, Optional

import torch

from ..data.registry import check_data_source, data_source, load_splits, resolve_data_paths
from ..data.splits import Splits
from ..metrics import bits_per_dim as unit_cube_bits_per_dim
from .checkpoint import CheckpointError, check_run_state, load_checkpoint
from .config import RunConfig, config_to_toml
from .distributed import fail_together, process_device, process_rank, setup, teardown
from .loop import (
    MetricsLog,
    _batch_geometry,
    fixed_model_noise,
    held_out_noise,
    json_safe,
    mean_and_standard_error,
    nll_per_point,
    read_metrics,
    train,
)
from .registry import build_model, check_flow_options, with_resolved_options
from .rundir import (
    RunLock,
    atomic_write_text,
    foreign_files,
    is_run_folder,
    locked_temporary,
    remove_run_files,
    remove_stale_temporaries,
    run_files,
)
from .stopping import RunInterrupted, RunTerminated, StopSignals

__all__ = [
    "fit_run",
    "evaluate_run",
    "sample_run",
    "resolve_device",
    "bits_per_dim",
    "RunInterrupted",
    "RunTerminated",
]


DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else as given (checked): the
    runs train on the CPU or CUDA GPUs only.

    >>> resolve_device("mps")
    Traceback (most recent call last):
    ...
    ValueError: --device mps: pyro-flows runs on cpu, cuda, cuda:N or auto, not on mps devices
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device must be cpu, cuda, cuda:N or auto, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(
            f"--device {name}: pyro-flows runs on cpu, cuda, cuda:N or auto, not on {device.type} devices"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(
            f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
        )
    return device


def bits_per_dim(nll_nats: float, dim: int, levels: int) -> float:
    r"""Bits per dimension of dequantized K-level data from the NLL (nats) of :math:`x + u`
    on the integer scale, which already includes the :math:`D \log K` of rescaling to
    [0, 1) (see :meth:`~pyro_flows.data.splits.Splits.nll_offset`):
    :math:`\mathrm{NLL} / (D \ln 2)`, computed with :func:`pyro_flows.bits_per_dim` from
    the unit-cube log-density.

    >>> round(bits_per_dim(64 * math.log(17), 64, 17), 4)   # uniform over 17 levels
    4.0875
    """
    unit_cube_log_prob = -(nll_nats - dim * math.log(levels))
    return float(unit_cube_bits_per_dim(unit_cube_log_prob, num_dims=dim, num_levels=levels))


def _data_state(splits: Splits) -> dict:
    return {
        "shift": splits.shift,
        "scale": splits.scale,
        "levels": splits.levels if splits.levels is not None else 0,
        "event_shape": list(splits.event_shape),
    }


def _echo(enabled: bool) -> Callable[[str], None]:
    return print if enabled else (lambda *_: None)


@contextlib.contextmanager
def _warnings_as_lines(show: bool):
    """The data's warnings (a header row that holds numbers, columns of few values) as
    ``warning:`` lines of the command's output on stderr (when ``show``: rank 0 of a run),
    not as a UserWarning with its source line from every process."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    if show:
        for warning in caught:
            print(f"warning: {warning.message}", file=sys.stderr)


def fit_run(
    config: RunConfig,
    resume_dir: Optional[str] = None,
    on_step: Optional[Callable[[int], None]] = None,
    overwrite: bool = False,
    fit_batch_to_data: bool = False,
    resume_changes: Optional[dict] = None,
) -> dict:
    """Train the flow ``config`` describes, evaluate it on the test split, write the run
    folder ``config.out`` and return the results (also in ``results.json``).

    With ``resume_dir`` the run continues from ``resume_dir/checkpoint.pt`` with the
    configuration saved there (only ``config.quiet`` is taken from ``config``), writing
    to the same folder; ``resume_changes`` may set its ``device`` (a run can go on on
    another machine) and the new place of data that moved (``data``: a data file;
    ``data_dir``: the folder of a set read from one), which must hold the data the run
    was trained on (their SHA-256 is compared with the one the run saved). A folder
    that already holds a run is refused unless ``overwrite``, which deletes that run's
    files first (never the new run's data file, nor files in a folder that holds no run:
    a folder with files named as a run's that no run wrote is refused). The data, the options and the model are checked before the
    folder is touched, so a run refused for them leaves an existing run as it was and no
    half-made folder. While the run writes its folder, the folder is locked (an
    operating-system lock on ``DIR/.lock``, see ``pyro_flows.train.rundir``).

    ``fit_batch_to_data``: the batch size was not chosen but taken from the flow-matching
    defaults (512), so it is lowered to the number of training points when larger, as
    :func:`~pyro_flows.train.fit` does (``pyro-flows fit`` sets it).

    Sent SIGTERM or SIGUSR1 (a scheduler ending the job), it finishes the step it is in,
    writes ``checkpoint.pt`` at that step, prints the step and the command that continues
    the run (on stderr, from rank 0), and raises :class:`RunTerminated`, a ``SystemExit``
    of status 143 (SIGTERM) or 138 (SIGUSR1). Interrupted (Ctrl-C) in the training loop,
    it does the same (saying at once that a second Ctrl-C stops it there and then) and
    raises :class:`RunInterrupted`, a ``KeyboardInterrupt`` whose ``step`` is the step
    saved; a second Ctrl-C, or one outside the loop, raises it at once, saying whether
    there is a checkpoint to resume from. See the module ``pyro_flows.train.stopping``;
    its handlers are installed while the run runs only (from the main thread) and the
    previous ones restored.

    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> config = RunConfig(num_layers=2, hidden_dims=(8,), num_samples=300, batch_size=50, steps=4,
    ...                    eval_every=2, plots=False, quiet=True, out=out)
    >>> results = fit_run(config)
    >>> results["steps"], sorted(results["splits"].items())
    (4, [('test', 30), ('train', 240), ('val', 30)])
    """
    with StopSignals() as stop:
        try:
            return _fit_run(config, resume_dir, on_step, overwrite, fit_batch_to_data, resume_changes, stop)
        except (RunTerminated, RunInterrupted) as err:
            # every process stops; one says so (an interrupt that saved nothing: the caller says it)
            if process_rank() == 0 and (isinstance(err, RunTerminated) or err.step is not None):
                print(f"pyro-flows fit: {err}", file=sys.stderr, flush=True)
            raise


def _fit_run(
    config: RunConfig,
    resume_dir: Optional[str],
    on_step: Optional[Callable[[int], None]],
    overwrite: bool,
    fit_batch_to_data: bool,
    resume_changes: Optional[dict],
    stop: StopSignals,
) -> dict:
    """:func:`fit_run` with its stopping signals handled by ``stop``."""
    quiet = config.quiet
    if resume_dir is not None:
        # The saved options (device, dtype, threads) are needed before joining the
        # process group; the state itself is read again once the folder is locked.
        _, config = _load_run(resume_dir, "checkpoint.pt")
        config = _resume_options(config.replace(out=resume_dir, quiet=quiet), resume_changes or {})
    else:
        config = resolve_data_paths(config)
    threads = _threads(config.threads, resuming=resume_dir is not None)
    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(config.device)
    context = setup(device)
    device = process_device(device, context)
    echo = _echo(context.is_main and not config.quiet)
    started = time.perf_counter()
    run_dir = config.out
    lock = None
    claimed = False
    try:
        error = resume_state = best_state = saved_source = None
        created = not os.path.exists(run_dir)
        try:
            if resume_dir is not None:
                if context.is_main:
                    lock = _claim(run_dir, resume=True, overwrite=False)
                    claimed = True
                resume_state, _ = _load_run(resume_dir, "checkpoint.pt", resume=True)
                best_state = _best_to_resume(resume_state, resume_dir)
                saved_source = resume_state["data"].get("source")
                if saved_source and saved_source.get("kind") == "file":  # before reading it
                    check_data_source(saved_source, config, action="fit --resume")
            # A new run checks everything it can before touching the folder (and the run it
            # may replace): the data, the options, the model and the batches.
            torch.manual_seed(config.seed)
            with _warnings_as_lines(context.is_main):
                splits = load_splits(config)
                splits.check_spread()
            if resume_state is None:  # a resumed run keeps what it saved
                if fit_batch_to_data:
                    config = _fit_batch(config, len(splits.train), context.world_size)
                check_flow_options(config, splits.event_shape)
                config = with_resolved_options(config, splits)
            source = data_source(config, splits)
            if saved_source and saved_source.get("kind") == "folder":
                check_data_source(saved_source, config, splits, "fit --resume")
            dtype = DTYPES[config.dtype]
            flow = build_model(
                config, splits.event_shape, discrete=splits.levels is not None, levels=splits.levels
            )
            flow = flow.to(device=device, dtype=dtype)
            _batch_geometry(len(splits.train), config.batch_size, context)
            if config.objective == "flow-matching":
                from .flow_matching import FlowMatching, fm_options

                FlowMatching(flow, *fm_options(config))  # refuses a flow it cannot train
            if best_state is not None:
                _check_weights_fit(flow, best_state["model"], os.path.join(resume_dir, "best.pt"))
                _check_best_step(best_state, resume_state, os.path.join(resume_dir, "best.pt"))
                best_state = best_state["model"]
            if resume_dir is None and context.is_main:
                lock = _claim(run_dir, resume=False, overwrite=overwrite, keep=_inputs(config))
                claimed = True
        except Exception as err:  # every process stops, rank 0 reports (see fail_together)
            error = err
        try:
            fail_together(error, context)
        except Exception:
            if lock is not None:
                lock.release()
                lock = None
                _remove_if_unused(run_dir, created)
            raise
        if context.is_main:
            atomic_write_text(os.path.join(run_dir, "config.toml"), config_to_toml(config))
        echo(splits.describe())
        n_params = sum(p.numel() for p in flow.parameters())
        echo(
            f"{config.flow}: {n_params} parameters on {device} ({config.dtype}), {context.world_size} process(es)"
        )
        if resume_state is not None:
            echo(f"resuming {resume_dir} from step {resume_state['step']}")
        state = train(
            flow,
            splits,
            config,
            run_dir,
            device=device,
            context=context,
            resume_state=resume_state,
            best_model_state=best_state,
            on_step=on_step,
            data_state={**_data_state(splits), "source": source},
            started=started,
            stop=stop,
        )
        try:
            score = _score(flow, splits, splits.test, "test", config.seed, device, dtype)
        except ValueError as err:
            raise ValueError(
                f"{err}; the trained model is kept in {os.path.join(run_dir, 'best.pt')} (score it on other data "
                "with `pyro-flows evaluate --data`)"
            ) from None
        results = {f"test_{key}": value for key, value in score.items()}
        if hasattr(getattr(flow, "transform", None), "nfe"):
            results["test_nfe"] = flow.transform.nfe  # ODE flows: evaluations of the field per solve
        results.update(
            flow=config.flow,
            objective=config.objective,
            data=splits.name,
            splits=splits.sizes(),
            split_rule=splits.split_rule,
            best_val_nll=state.best_val_nll,
            best_step=state.best_step,
            steps=state.step,
            stopped_early=state.stopped_early,
            parameters=n_params,
            device=str(device),
            processes=context.world_size,
            # over every process of the run: those before a --resume up to their last checkpoint
            seconds=round(_seconds_before(resume_state) + time.perf_counter() - started, 2),
        )
        if context.is_main:
            MetricsLog(os.path.join(run_dir, "metrics.jsonl"), keep_until_step=state.step).write(
                split="test", step=state.step, nll=results["test_nll"], se=results["test_nll_se"]
            )
            atomic_write_text(
                os.path.join(run_dir, "results.json"),
                json.dumps(json_safe(results), indent=2, allow_nan=False),
            )
            if config.plots:
                results["plots"] = write_plots(flow, splits, config, run_dir)
        echo(_summary(results))
        echo(f"wrote {run_dir}: {', '.join(run_files(run_dir))}")
        return results
    except KeyboardInterrupt as err:
        if isinstance(err, RunInterrupted) and err.step is not None:
            raise  # from the loop, which saved the step it stopped after
        resumable = claimed and os.path.exists(os.path.join(run_dir, "checkpoint.pt"))
        raise RunInterrupted(run_dir, started=claimed, resumable=resumable) from None
    except RunTerminated as err:  # from the loop with its step, or from a signal outside it
        resumable = claimed and os.path.exists(os.path.join(run_dir, "checkpoint.pt"))
        raise err.where(run_dir, started=claimed, resumable=resumable) from None
    finally:
        if lock is not None:
            lock.release()
        teardown(context)


def _threads(threads: int, resuming: bool) -> int:
    """``--threads``, bounded by the CPUs of this machine (torch crashes on absurd counts).
    A resumed run started on a larger machine gets this machine's CPUs."""
    cpus = os.cpu_count() or 1
    if threads > cpus:
        if resuming:
            return cpus
        raise ValueError(
            f"--threads {threads} is more than the {cpus} CPUs of this machine; use at most {cpus}"
        )
    return threads


def _seconds_before(resume_state: Optional[dict]) -> float:
    """The seconds a resumed run had taken up to its checkpoint (0 for a new run)."""
    if resume_state is None:
        return 0.0
    return float(resume_state.get("trainer", {}).get("seconds", 0.0))


def _fit_batch(config: RunConfig, n_train: int, world_size: int) -> RunConfig:
    """``config`` with a batch no larger than the ``n_train`` training points (a multiple
    of the number of processes)."""
    if config.batch_size <= n_train:
        return config
    return config.replace(batch_size=max(world_size, n_train - n_train % world_size))


def _inputs(config: RunConfig) -> list:
    """The files a new run reads that could lie in its folder: ``--overwrite`` keeps them."""
    from ..data.registry import is_data_file

    return [config.data] if is_data_file(config.data) else []


def _resume_options(config: RunConfig, changes: dict) -> RunConfig:
    """The saved ``config`` of a resumed run with the options ``fit --resume`` accepts:
    ``device``, and the new place of data that moved (``data`` for a data file,
    ``data_dir`` for a set read from a folder); the data themselves are compared with
    the run's record of them before training goes on."""
    from ..data.registry import IMAGE_DATASETS, MAF_DATASETS, is_data_file

    if changes.get("device") is not None:
        config = config.replace(device=changes["device"])
    data, data_dir = changes.get("data"), changes.get("data_dir")
    if data is not None:
        if not is_data_file(config.data):
            if data.lower() != config.data.lower():
                raise ValueError(
                    f"--data {data}: the run was trained on the data set {config.data}, and fit --resume goes on "
                    "with the run's own data (--data gives the new place of a data file that moved)"
                )
        elif not is_data_file(data):
            raise ValueError(
                f"--data {data}: the run was trained on the data file {config.data}; with fit --resume, "
                "--data gives the new place of that file (with the same contents)"
            )
        else:
            config = config.replace(data=data)
    if data_dir is not None:
        if config.data.lower() not in MAF_DATASETS + IMAGE_DATASETS[1:]:
            raise ValueError(
                f"--data-dir {data_dir}: the run's data ({config.data}) are not read from a folder; with "
                "fit --resume, --data-dir gives the new place of the folder of such a set"
            )
        config = config.replace(data_dir=data_dir)
    return resolve_data_paths(config)


def _best_to_resume(resume_state: dict, run_dir: str) -> Optional[dict]:
    """The ``best.pt`` a resumed run carries on with (``None``: the checkpoint's own
    weights, or their average, are the best so far and the loop takes them from it).

    ``best.pt`` must hold the model of the step the checkpoint names as the best, else
    the run would report that step's validation NLL for other weights: one missing
    (while the best step is an earlier one) or of another step is refused. One written
    by an evaluation after the checkpoint (the run stopped between the two writes) is
    taken: the resumed run repeats that evaluation. Its weights are checked against the
    model by :func:`_check_weights_fit`, then its step by :func:`_check_best_step`. A
    checkpoint written before the first evaluation (the run was stopped by a signal,
    see ``pyro_flows.train.stopping``) has no best model yet (best step -1): the
    first evaluation of the resumed run sets it."""
    step, best_step = resume_state["step"], resume_state["trainer"]["best_step"]
    path = os.path.join(run_dir, "best.pt")
    if not os.path.exists(path):
        if best_step == step or best_step < 0:
            return None
        raise CheckpointError(
            f"{path} is missing: the run's best model (step {best_step}) is kept only there, and checkpoint.pt "
            f"holds the weights of step {step}; put the run's best.pt back to resume it"
        )
    best, _ = _load_run(run_dir, "best.pt")
    return best


def _check_best_step(best: dict, resume_state: dict, path: str) -> None:
    """Refuse a ``best.pt`` that is not the best model of the checkpoint ``resume_state``
    (see :func:`_best_to_resume`): one of another step, or one whose validation history
    differs from the checkpoint's (another run's)."""
    step, best_step = resume_state["step"], resume_state["trainer"]["best_step"]
    if best["step"] != best_step and best["step"] <= step:
        raise CheckpointError(
            f"{path} holds the model of step {best['step']}, but the run's checkpoint.pt (step {step}) names "
            f"step {best_step} as the best: it is not this run's best model; put the run's own best.pt back to "
            "resume it"
        )
    # A best.pt of the right step may still be another run's (copied from the folder of a run
    # of the same model): the validations both files record must agree on the steps they share.
    trainer = best.get("trainer")
    history = trainer.get("history") if isinstance(trainer, dict) else None
    history = [r if isinstance(r, dict) else {} for r in history] if isinstance(history, list) else None
    saved = resume_state["trainer"]["history"]
    shared = min(len(history), len(saved)) if isinstance(history, list) else 0
    if shared and json_safe(history[:shared]) != json_safe(saved[:shared]):  # NaN-free: a single point's se
        differs = next(k for k in range(shared) if json_safe(history[k]) != json_safe(saved[k]))
        raise CheckpointError(
            f"{path} holds a model of step {best['step']}, but its validations differ from those the run's "
            f"checkpoint.pt records (at step {saved[differs].get('step')}: NLL {history[differs].get('nll')}, "
            f"not {saved[differs].get('nll')}): it is not this run's best model; put the run's own best.pt back "
            "to resume it"
        )


def _check_weights_fit(flow: torch.nn.Module, weights: dict, path: str) -> None:
    """Raise a :class:`CheckpointError` unless ``weights`` have the names and shapes of
    ``flow``'s (the best model of a resumed run is loaded into it at the end)."""
    expected = flow.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = [
        f"{name} of shape {tuple(weights[name].shape)}, not {tuple(expected[name].shape)}"
        for name in expected
        if name in weights and tuple(weights[name].shape) != tuple(expected[name].shape)
    ]
    if missing or unexpected or shapes:
        what = shapes[:1] or [f"no {missing[0]}" if missing else f"an unknown {unexpected[0]}"]
        raise CheckpointError(
            f"{path} does not fit the model of the run's checkpoint.pt ({what[0]}): it is not this run's best "
            "model; put the run's own best.pt back to resume"
        )


def _claim(run_dir: str, resume: bool, overwrite: bool, keep=()) -> RunLock:
    """Create and lock the run folder; refuse a fresh run over an existing one unless
    ``overwrite`` (which deletes the old run's files, under the lock, except those in
    ``keep``), and over files named as a run's that no run wrote; remove the temporary
    files of a killed write."""
    _prepare_out(run_dir)
    lock = RunLock(run_dir).acquire()
    try:
        if resume:
            remove_stale_temporaries(run_dir)
            return lock
        foreign = foreign_files(run_dir)
        if foreign:
            they = "it" if len(foreign) == 1 else "them"
            raise ValueError(
                f"--out {run_dir} holds {', '.join(foreign)}, which no pyro-flows run wrote there (the folder has "
                f"no run's config.toml); a run in it would overwrite {they} or take {they} for its own: move "
                f"{they} elsewhere, or choose another --out"
            )
        existing = run_files(run_dir)
        if existing and not overwrite and "checkpoint.pt" not in existing:
            raise ValueError(
                f"--out {run_dir} holds a run that stopped before its first checkpoint "
                f"({', '.join(existing)}), which cannot be resumed; start it again with --overwrite, "
                "or choose another --out"
            )
        if existing and not overwrite:
            raise ValueError(
                f"--out {run_dir} already holds a run ({', '.join(existing)}); continue it with "
                f"`pyro-flows fit --resume {run_dir}`, replace it with --overwrite, or choose another --out"
            )
        remove_run_files(run_dir, keep=keep)
    except BaseException:
        lock.release()
        raise
    return lock


def _remove_if_unused(run_dir: str, created: bool) -> None:
    """Remove a folder this run created if the run failed before writing anything to it."""
    if created and os.path.isdir(run_dir) and not os.listdir(run_dir):
        try:
            os.rmdir(run_dir)
        except OSError:
            pass


def _prepare_out(run_dir: str) -> None:
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ValueError(f"--out {run_dir} exists and is not a folder")
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create the output folder {run_dir}: {err.strerror}") from None


def _score(flow, splits: Splits, x: torch.Tensor, split: str, seed: int, device, dtype) -> dict:
    """Mean NLL (nats per point) of the data-unit points ``x`` of ``split`` with its
    standard error, plus bits/dim for discrete data (dequantization noise fixed by
    ``seed`` and ``split``): what ``fit`` reports on the test split and ``evaluate`` on any."""
    x = splits.prepare(
        x.to(device=device, dtype=splits.input_dtype(dtype)),
        generator=held_out_noise(seed, split, device),
        dtype=dtype,
    )
    with _solver_errors(f"scoring the {split} split"), fixed_model_noise(flow, seed, split, device):
        per_point = nll_per_point(flow, x) + splits.nll_offset()
    bad = ~torch.isfinite(per_point)
    if bool(bad.any()):
        first = int(bad.nonzero()[0])
        raise ValueError(
            f"scoring the {split} split: the NLL of {int(bad.sum())} of its {len(per_point)} points is "
            f"{float(per_point[first])} (first: point {first}), so there is no mean NLL to report; check those "
            "points (they may lie outside the model's support)"
        )
    nll, se = mean_and_standard_error(per_point)
    out = {"nll": nll, "nll_se": se}
    if splits.levels:
        out["bits_per_dim"] = bits_per_dim(nll, splits.dim, splits.levels)
        out["bits_per_dim_se"] = se / (splits.dim * math.log(2))
    return out


@contextlib.contextmanager
def _solver_errors(what: str):
    """FFJORD's ODE solver giving up (``AssertionError: underflow in dt``) as a
    ``ValueError`` that says what failed; other assertion errors pass through."""
    try:
        yield
    except AssertionError as err:
        if "underflow in dt" not in str(err):
            raise
        raise ValueError(
            f"{what}: the ODE solver failed (its step size underflowed: the learned dynamics are too stiff "
            "at these points, for instance far outside the training data)"
        ) from None


def _pm(se: float) -> str:
    """`` ± 0.0123``, or for a single point (no standard error) a note saying so."""
    return f" ± {se:.4f}" if math.isfinite(se) else " (one point: no standard error)"


def _summary(results: dict) -> str:
    line = (
        f"test NLL: {results['test_nll']:.4f}{_pm(results['test_nll_se'])} nats per point "
        f"({results['splits']['test']} test points; best validation NLL {results['best_val_nll']:.4f} "
        f"at step {results['best_step']})"
    )
    if "test_bits_per_dim" in results:
        line += f"\ntest bits/dim: {results['test_bits_per_dim']:.4f}{_pm(results['test_bits_per_dim_se'])}"
    return line


def write_plots(flow, splits: Splits, config: RunConfig, run_dir: str) -> list:
    """The run's PNGs: NLL curves always; data | samples | density for 2-D data;
    histogram and density for 1-D data; a sample grid for images."""
    from .. import plot

    paths = []
    title = f"{config.flow} on {splits.name}"
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(metrics_path):
        # Discrete data (images) are compared in bits per dimension, as in the literature.
        unit, scale = (
            ("bits/dim", 1 / (splits.dim * math.log(2))) if splits.levels else ("nats per point", 1.0)
        )
        paths.append(
            plot.plot_nll_curves(
                read_metrics(metrics_path), os.path.join(run_dir, "nll_curves.png"), title, unit, scale
            )
        )
    param = next(flow.parameters())
    torch.manual_seed(config.seed + 4)
    n = config.plot_samples
    shape = tuple(splits.event_shape)
    if n and shape in ((2,), (1,)):
        samples = splits.to_data_units(flow.sample((n,))).cpu()
        offset = splits.nll_offset()

        def log_density(x):
            x = x.to(device=param.device, dtype=splits.input_dtype(param.dtype))
            # discrete data: the density of the dequantized data at x itself (prepare would
            # add dequantization noise, drawing the density at random points near the grid)
            y = x / splits.scale.to(x) if splits.levels else splits.prepare(x, dtype=param.dtype)
            return (nll_per_point(flow, y) * -1 - offset).cpu()

        data = splits.test if len(splits.test) >= n else torch.cat([splits.test, splits.train])[:n]
        if shape == (2,):
            paths.append(
                plot.plot_2d(data, samples, log_density, os.path.join(run_dir, "samples.png"), title)
            )
        else:
            paths.append(
                plot.plot_1d(data, log_density, os.path.join(run_dir, "density.png"), title, samples)
            )
    elif n and len(shape) == 3:
        images = _unit_range(splits.to_data_units(flow.sample((min(n, 64),))), splits.levels)
        paths.append(plot.plot_image_grid(images.cpu(), os.path.join(run_dir, "samples.png"), title))
    return paths


def _unit_range(x: torch.Tensor, levels: Optional[int]) -> torch.Tensor:
    """Images in data units -> [0, 1] for display. Discrete data (``levels`` values) are
    shown at the level of the cell each sample lies in, ``floor(x)`` in 0 .. K - 1 (a
    sample in [k, k + 1) is level k, as ``sample`` documents; ``x / (K - 1)`` would show
    it up to one level brighter); other data as they are."""
    if levels:
        return x.floor().clamp(0, levels - 1) / (levels - 1)
    return x.clamp(0, 1)


def _load_run(run_dir: str, which: str = "best.pt", resume: bool = False):
    """A run's checkpoint ``which``, validated (with the training state when ``resume``),
    and the run's options."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ValueError(f"{run_dir} is a file, not a run folder (pass the --out folder of a fit run)")
    if not os.path.isdir(run_dir):
        raise ValueError(f"run folder {run_dir} does not exist (pass the --out folder of a fit run)")
    path = os.path.join(run_dir, which)
    if not os.path.exists(path):
        holder = RunLock.holder(run_dir)
        if holder is not None:  # a fit is writing it and has not reached its first evaluation
            raise CheckpointError(
                f"{run_dir} has no {which} yet: its run is still in progress (pid {holder}) and has not written "
                "its first checkpoint (one is written at every evaluation, see --eval-every); try again later"
            )
        if which == "best.pt" and os.path.exists(os.path.join(run_dir, "checkpoint.pt")):
            # stopped by a signal before its first evaluation, with a checkpoint of that step
            raise CheckpointError(
                f"{run_dir} has no {which} yet: the run was stopped before its first evaluation (see --eval-every); "
                f"continue it with `pyro-flows fit --resume {run_dir}`"
            )
        if is_run_folder(run_dir):  # started, then stopped before its first checkpoint
            raise CheckpointError(
                f"{run_dir} has no {which}: the run stopped before its first checkpoint; start it again "
                f"with `pyro-flows fit --config {os.path.join(run_dir, 'config.toml')} --out {run_dir} --overwrite`"
            )
        raise CheckpointError(f"{run_dir} has no {which}; is it the output folder of `pyro-flows fit`?")
    state = load_checkpoint(path)
    check_run_state(state, path, resume=resume)
    config = RunConfig.from_saved(state["config"], source=path)
    return state, config


def _restore_flow(state: dict, config: RunConfig, device: torch.device, event_shape) -> torch.nn.Module:
    discrete = bool(state["data"].get("levels"))
    flow = build_model(config, event_shape, discrete=discrete, levels=state["data"].get("levels"))
    flow = flow.to(device=device, dtype=DTYPES[config.dtype])
    try:
        flow.load_state_dict(state["model"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"the checkpoint's weights do not fit the {config.flow} it describes: {err}"
        ) from None
    return flow.eval()


def evaluate_run(
    run_dir: str, split: str = "test", data: Optional[str] = None, device: str = "auto", quiet: bool = False
) -> dict:
    """Held-out NLL (nats, with its standard error) of a run's best model on ``split``,
    and bits/dim for discrete data. ``data`` scores another data set or file of the same
    shape (``split="all"`` scores every point of it).

    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> _ = fit_run(RunConfig(num_layers=2, hidden_dims=(8,), num_samples=300, batch_size=50, steps=2,
    ...                       eval_every=2, plots=False, quiet=True, out=out))
    >>> result = evaluate_run(out, split="val", quiet=True)
    >>> result["split"], result["points"]
    ('val', 30)
    """
    from ..data.registry import is_data_file

    state, config = _load_run(run_dir)
    saved = state["data"]
    if data is not None:
        # a file scored by a discrete run is checked for its levels (a run on digits,
        # mnist or cifar10 saved them with its data, not in its options); a built-in set
        # comes with its own, compared with the run's below
        config = config.replace(data=data, levels=saved["levels"] if is_data_file(data) else 0)
    source = saved.get("source") if data is None else None
    if source and source.get("kind") == "file":  # before reading: a changed file may not even load
        check_data_source(source, config, action="evaluate")
    torch.manual_seed(config.seed)
    every_point = None
    with _warnings_as_lines(True):
        if data is not None and split == "all" and is_data_file(data):
            # nothing to split, so a file of a few points is scored too
            splits, every_point = _every_point(config.data, config.levels)
        else:
            splits = load_splits(config)
    if source and source.get("kind") == "folder":
        check_data_source(source, config, splits, action="evaluate")
    if list(splits.event_shape) != list(saved["event_shape"]):
        raise ValueError(
            f"{splits.name} has points of shape {tuple(splits.event_shape)}, but the run was trained on points "
            f"of shape {tuple(saved['event_shape'])}"
        )
    if (splits.levels or 0) != (saved["levels"] or 0):
        trained = f"data of {saved['levels']} levels" if saved["levels"] else "continuous data"
        held = f"discrete data of {splits.levels} levels" if splits.levels else "continuous data"
        raise ValueError(f"{splits.name} holds {held}, but the run was trained on {trained}")
    # Score in the units the model was trained in: the run's own preprocessing.
    splits.shift, splits.scale, splits.levels = saved["shift"], saved["scale"], saved["levels"] or None
    dev = resolve_device(device)
    flow = _restore_flow(state, config, dev, splits.event_shape)
    dtype = DTYPES[config.dtype]
    if every_point is not None:
        x = every_point
    elif split == "all":
        x = torch.cat([splits.train, splits.val, splits.test])
    elif split in ("train", "val", "test"):
        x = getattr(splits, split)
    else:
        raise ValueError(f"split must be train, val, test or all, got {split!r}")
    score = _score(flow, splits, x, split, config.seed, dev, dtype)
    out = {"run": run_dir, "data": splits.name, "split": split, "points": len(x), **score}
    if not quiet:
        nll, se = score["nll"], score["nll_se"]
        line = f"{split} NLL: {nll:.4f}{_pm(se)} nats per point ({len(x)} points of {splits.name})"
        if splits.levels:
            line += f"; bits/dim {out['bits_per_dim']:.4f}{_pm(out['bits_per_dim_se'])}"
        print(line)
    return out


def _every_point(path: str, levels: int):
    """The points of the data file ``path`` in the file's order, unsplit (``evaluate
    --split all``), checked as a run's data are (finite rows; with ``levels``, integers
    ``0..levels-1``), and :class:`Splits` of them that carry their name, shape and levels."""
    import numpy as np

    from ..data.tabular import check_discrete, check_finite_rows, load_array

    arrays = load_array(path)
    for key, x in arrays.items():
        where = path if key == "data" else f"{path} [{key}]"
        check_finite_rows(x, where, path if path.lower().endswith(".csv") else None)
        if x.shape[1:] != arrays.get("train", x).shape[1:]:
            raise ValueError(
                f"data file {path}: {key} rows have {tuple(x.shape[1:])} columns, train rows "
                f"{tuple(arrays['train'].shape[1:])}"
            )
    x = torch.from_numpy(np.concatenate(list(arrays.values())))
    if levels:
        check_discrete(x, levels, path)
    name = os.path.basename(path)
    return Splits(name, x, x[:1], x[:1], levels=levels or None, split_rule="every point"), x


#: the most points drawn at once by ``sample`` (and at most ~1M values per batch), so
#: memory stays bounded however many samples are asked for
SAMPLE_BATCH = 65536


def sample_run(
    run_dir: str,
    num_samples: int,
    out: Optional[str] = None,
    seed: int = 0,
    device: str = "auto",
    quiet: bool = False,
) -> dict:
    """Draw ``num_samples`` points (data units; discrete data on their integer scale in
    the cells [0, K) of their K levels, see ``_in_cells``) from a run's best model
    into a ``.npy`` file, plus a PNG grid of the first 64 for images
    (``<output>_grid.png``, so the ``samples.png`` that ``fit`` wrote stays).

    Points are drawn in batches and written straight into the file (a memory-mapped
    ``.npy`` written beside it and renamed into place when complete, replacing a file of
    that name), so memory does not grow with ``num_samples``; a request that would not fit
    on the disk is refused before anything is drawn, and so is an ``out`` that is the
    run's own data file. Samples holding a NaN or infinite value (an inverse that
    overflowed) are written as drawn, counted in the result's ``"non_finite"`` and named
    in a ``warning:`` line on stderr.

    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> _ = fit_run(RunConfig(num_layers=2, hidden_dims=(8,), num_samples=300, batch_size=50, steps=2,
    ...                       eval_every=2, plots=False, quiet=True, out=out))
    >>> sample_run(out, 5, quiet=True)["shape"]
    [5, 2]
    """
    import shutil

    import numpy as np

    if num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {num_samples}")
    if not 0 <= seed < 2**64:  # torch takes a seed modulo 2**64: -1 would draw what 2**64 - 1 draws
        raise ValueError(f"--seed must be an integer from 0 to 2**64 - 1, got {seed}")
    out = out or os.path.join(run_dir, "samples.npy")
    if not out.endswith(".npy"):
        raise ValueError(f"--output must end in .npy, got {out}")
    state, config = _load_run(run_dir)
    data = state["data"]
    _check_not_the_data(out, data.get("source"))
    event_shape = torch.Size(data["event_shape"])
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    if is_run_folder(folder):  # the .npy temporaries a killed sample left there (not a live one's)
        remove_stale_temporaries(folder, suffixes=(".npy",))
    needed = num_samples * math.prod(event_shape) * 8 + 4096  # float64 values and the header
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise ValueError(
            f"--num-samples {num_samples}: {num_samples} points of shape {tuple(event_shape)} in float64 need "
            f"{_size(needed)} on disk, but {folder} has {_size(free)} free; draw fewer samples or write "
            "them elsewhere with --output"
        )
    splits = Splits(
        config.data,
        torch.zeros((1, *event_shape)),
        torch.zeros((1, *event_shape)),
        torch.zeros((1, *event_shape)),
        levels=data["levels"] or None,
        shift=data["shift"],
        scale=data["scale"],
    )
    dev = resolve_device(device)
    flow = _restore_flow(state, config, dev, event_shape)
    torch.manual_seed(seed)
    batch = max(1, min(SAMPLE_BATCH, (1 << 20) // max(1, math.prod(event_shape))))
    # held locked while it is written, so a later cleanup tells it from a killed sample's
    held, tmp = locked_temporary(folder, ".npy")
    first = None
    non_finite, first_bad = 0, None
    try:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float64, shape=(num_samples, *event_shape))
        with torch.no_grad():
            for start in range(0, num_samples, batch):
                n = min(batch, num_samples - start)
                with _solver_errors("sampling"):
                    part = _in_cells(splits.to_data_units(flow.sample((n,))), splits.levels).cpu()
                array[start : start + n] = part.double().numpy()
                bad = ~torch.isfinite(part.reshape(n, -1)).all(-1)
                if bool(bad.any()):
                    non_finite += int(bad.sum())
                    first_bad = first_bad if first_bad is not None else start + int(bad.nonzero()[0])
                if first is None:
                    first = part[:64]
        array.flush()
        del array
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        held.close()
    result = {"samples": out, "shape": [num_samples, *event_shape], "non_finite": non_finite}
    if non_finite:
        print(
            f"warning: {non_finite} of the {num_samples} samples written to {out} hold a NaN or infinite value "
            f"(first: sample {first_bad}); the model's inverse overflowed there. They are kept as drawn: "
            "leave them out (numpy: x[np.isfinite(x).reshape(len(x), -1).all(1)]) or draw from a better model",
            file=sys.stderr,
        )
    if len(event_shape) == 3:
        from .. import plot

        grid = out[: -len(".npy")] + "_grid.png"
        result["grid"] = plot.plot_image_grid(_unit_range(first, splits.levels), grid)
    if not quiet:
        print(
            f"wrote {num_samples} samples of shape {tuple(event_shape)} to {out}"
            + (f" and a grid to {result['grid']}" if "grid" in result else "")
        )
    return result


def _check_not_the_data(out: str, source: Optional[dict]) -> None:
    """Refuse to write samples over the data file the run was trained on (``source``, as
    :func:`~pyro_flows.data.registry.data_source` recorded it)."""
    if not source or source.get("kind") != "file":
        return
    path = source.get("path")
    if path and os.path.exists(path) and os.path.exists(out) and os.path.samefile(out, path):
        raise ValueError(
            f"--output {out} is the data file the run was trained on; sampling would replace it. "
            "Write the samples to another file"
        )


def _in_cells(x: torch.Tensor, levels: Optional[int]) -> torch.Tensor:
    """Samples of discrete data (``levels`` values) moved into [0, K), the cells of the
    levels, as :meth:`~pyro_flows.DequantizedFlow.sample` does for a learned dequantizer:
    a flow ending in the logit preprocessing samples about (-0.056 K, 1.056 K) for alpha
    0.05, and a value outside would be no point of a cell (``floor`` would give level -1
    or K). Below 0 goes to 0, from K on to the largest value below K in ``x``'s dtype
    (whose level is K - 1); continuous data pass unchanged."""
    if not levels:
        return x
    top = torch.nextafter(torch.tensor(float(levels), dtype=x.dtype), torch.zeros((), dtype=x.dtype))
    return x.clamp(0.0, float(top))


def _size(num_bytes: float) -> str:
    """``1.6e10`` -> ``'16.0 GB'``."""
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if num_bytes < 1000 or unit == "TB":
            return f"{num_bytes:.0f} {unit}" if unit == "bytes" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1000
