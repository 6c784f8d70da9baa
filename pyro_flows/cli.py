"""The ``pyro-flows`` command: ``fit``, ``evaluate`` and ``sample``.

``pyro-flows fit`` with no arguments trains ``spline`` (a neural spline flow) on two moons
on the CPU in about a minute, prints the held-out NLL and writes ``outputs/``. Every
``fit`` option can also come from a TOML file (``--config run.toml``; command-line
options win), and each run writes its full resolved configuration to
``OUT/config.toml``. See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from typing import List, Optional

from .train.config import GROUPS, RunConfig, read_toml

__all__ = ["main", "build_parser"]


def _fit_options(parser: argparse.ArgumentParser) -> None:
    groups = {g: parser.add_argument_group(f"{g} options") for g in GROUPS}
    for f in dataclasses.fields(RunConfig):
        meta = f.metadata
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        shown = "none" if shown == "" else shown
        help_text = f"{meta['help']} (default: {shown})"
        kwargs = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        elif type(default) in (int, float) and not meta.get("choices"):
            kwargs["metavar"] = "N" if isinstance(default, int) else "X"
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, tuple):
            kwargs["type"] = str
        else:
            kwargs["type"] = type(default)
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
        if f.name == "flow":
            from .train.registry import flow_names

            kwargs["choices"] = flow_names()
        groups[meta["group"]].add_argument(flag, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pyro-flows`` (also used to render ``docs/cli.md``)."""
    parser = argparse.ArgumentParser(
        prog="pyro-flows",
        description="Train, evaluate and sample normalizing flows (pyro-flows).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `pyro-flows fit` with no arguments for the built-in two-moons example.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{fit,evaluate,sample}")
    fit = sub.add_parser(
        "fit",
        help="train a flow (maximum likelihood, or flow matching for ffjord)",
        description="Train a flow (by maximum likelihood; an ffjord on continuous data with a normal base "
        "and no penalty by flow matching, unless --objective likelihood); print the test NLL and write OUT/ (config.toml, metrics.jsonl, results.json, checkpoint.pt, best.pt, PNG plots).",
    )
    fit.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="TOML file with any of the options below (named as here without dashes, e.g. "
        "batch_size = 128); command-line options override it (default: none)",
    )
    fit.add_argument(
        "--resume",
        metavar="DIR",
        default=None,
        help="continue the run in DIR from its checkpoint.pt with its saved options; only --quiet, --device, "
        "and --data or --data-dir giving the new place of the run's data, may be added (default: start a new run)",
    )
    fit.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (its files are deleted first); without it, a folder "
        "holding a run is refused (default: refuse)",
    )
    _fit_options(fit)

    ev = sub.add_parser(
        "evaluate",
        help="held-out NLL (and bits/dim) of a saved run",
        description="Score a run's best model: mean NLL in nats per point with its standard error, and "
        "bits/dim for discrete data.",
    )
    ev.add_argument("run", metavar="DIR", help="a run folder written by `pyro-flows fit`")
    ev.add_argument(
        "--split",
        choices=("test", "val", "train", "all"),
        default="test",
        help="which split; all = every point (default: test)",
    )
    ev.add_argument(
        "--data",
        default=None,
        help="score another data set or file of the same shape instead (default: the run's data)",
    )
    ev.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    ev.add_argument("--json", action="store_true", help="print the result as JSON (default: a sentence)")

    sa = sub.add_parser(
        "sample",
        help="draw samples from a saved run",
        description="Draw samples (in data units) from a run's best model into a .npy file; image "
        "runs also get a PNG grid beside it.",
    )
    sa.add_argument("run", metavar="DIR", help="a run folder written by `pyro-flows fit`")
    sa.add_argument("-n", "--num-samples", type=int, default=1000, help="how many samples (default: 1000)")
    sa.add_argument(
        "-o",
        "--output",
        default=None,
        help="the .npy file to write, replaced if it exists; never the run's own data file (default: DIR/samples.npy)",
    )
    sa.add_argument("--seed", type=int, default=0, help="seed of the sampler, 0 to 2**64 - 1 (default: 0)")
    sa.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    return parser


#: the options ``fit --resume`` accepts besides ``--quiet``: the device (the run may go on on
#: another machine) and the new place of its data, which must be the data it was trained on
RESUME_OPTIONS = ("device", "data", "data_dir")


def _given_options(args: argparse.Namespace) -> dict:
    """The options the TOML file and the command line give (the command line wins)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig) if hasattr(args, f.name)}
    values = {}
    if args.config:
        values.update(read_toml(args.config))
    values.update(given)
    if args.config:
        # name the file in errors of its keys and values (the command line's are typed and
        # known); checked with the options that override it, so a file that needs them
        # (--flow ffjord for its objective) is not refused on its own
        RunConfig.from_dict(values, source=args.config)
    return values


def resolve_fit_config(args: argparse.Namespace) -> RunConfig:
    """Defaults, then the TOML file, then the command line."""
    from .train.fit import with_flow_matching_defaults

    # an ffjord trained by flow matching gets the same recipe as from the Python API
    values = with_flow_matching_defaults(_given_options(args))
    return RunConfig.from_dict(values, source="options")


def _batch_is_a_default(args: argparse.Namespace, config: RunConfig) -> bool:
    """Whether the batch size of ``config`` is flow matching's default (512), which the
    run lowers to the training points as :func:`pyro_flows.train.fit` does."""
    from .train.fit import FLOW_MATCHING_DEFAULTS

    return (
        "batch_size" not in _given_options(args)
        and config.flow == "ffjord"
        and config.objective == "flow-matching"
        and config.batch_size == FLOW_MATCHING_DEFAULTS["batch_size"]
    )


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``pyro-flows`` / ``python -m pyro_flows``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from .train.checkpoint import CheckpointError
    from .train.loop import NonFiniteLossError
    from .train.stopping import RunTerminated

    try:
        if args.command == "fit":
            from .train.run import fit_run

            if args.resume:
                extra = [f.name for f in dataclasses.fields(RunConfig) if hasattr(args, f.name)]
                extra = [name for name in extra if name != "quiet" and name not in RESUME_OPTIONS]
                if args.overwrite:
                    raise ValueError("fit --resume continues the run in its folder; drop --overwrite")
                if args.config or extra:
                    raise ValueError(
                        "fit --resume continues a run with its saved options; drop "
                        + ", ".join(
                            ["--config"] * bool(args.config) + ["--" + e.replace("_", "-") for e in extra]
                        )
                        + " (only --quiet, --device, and --data or --data-dir for data that moved, may be given)"
                    )
                changes = {name: getattr(args, name) for name in RESUME_OPTIONS if hasattr(args, name)}
                fit_run(_resume_config(args), resume_dir=args.resume, resume_changes=changes)
            else:
                config = resolve_fit_config(args)
                fit_run(config, overwrite=args.overwrite, fit_batch_to_data=_batch_is_a_default(args, config))
        elif args.command == "evaluate":
            import json

            from .train.run import evaluate_run

            result = evaluate_run(
                args.run, split=args.split, data=args.data, device=args.device, quiet=args.json
            )
            if args.json:
                from .train.loop import json_safe

                print(json.dumps(json_safe(result), allow_nan=False))  # a missing standard error is null
        elif args.command == "sample":
            from .train.run import sample_run

            with _terminate_as_exit():  # so a killed sample removes its partial file
                sample_run(args.run, args.num_samples, out=args.output, seed=args.seed, device=args.device)
    except RunTerminated as err:
        # SIGTERM or SIGUSR1: fit_run saved the step, said so and how to go on (it prints
        # that for Python callers too); the status is 128 + the signal's number
        return err.code
    except NonFiniteLossError as err:
        _report(f"pyro-flows {args.command}: {err}")
        return 3
    except (ValueError, CheckpointError, OSError) as err:
        _report(f"pyro-flows {args.command}: error: {err}")
        return 1
    except (MemoryError, RuntimeError) as err:
        if not _out_of_memory(err):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        _report(
            f"pyro-flows {args.command}: error: out of memory ({first}); ask for less: a smaller "
            + ("--num-samples" if args.command == "sample" else "--batch-size, --num-samples or model")
        )
        return 1
    except KeyboardInterrupt as err:
        from .train.stopping import RunInterrupted

        if not isinstance(err, RunInterrupted):
            _report(f"pyro-flows {args.command}: interrupted")
        elif err.step is None:  # stopped at once: what the folder holds, what to run next
            _report(f"pyro-flows {args.command}: {err}")
        # else the first Ctrl-C in the loop: fit_run saved the step and said so
        return 130
    return 0


class _Terminated(SystemExit):
    """SIGTERM, raised as an exception so that ``finally`` blocks run."""


class _terminate_as_exit:
    """Within the block (in the main thread), SIGTERM raises :class:`_Terminated` (exit
    status 143) instead of killing the process on the spot, so partial files are removed."""

    def __enter__(self):
        self.previous = None
        try:
            self.previous = signal.signal(signal.SIGTERM, self._raise)
        except (ValueError, OSError):  # not the main thread: leave the default
            pass
        return self

    @staticmethod
    def _raise(signum, frame):
        raise _Terminated(128 + signum)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure (Python's, torch's CPU allocator or CUDA's)."""
    if isinstance(err, MemoryError):
        return True
    text = str(err)
    return "out of memory" in text or "can't allocate memory" in text


def _report(message: str) -> None:
    """An error on stderr, from one process only: under ``torchrun`` every process stops
    with the same exit status (see :func:`~pyro_flows.train.distributed.fail_together`)
    and rank 0 alone prints the reason."""
    from .train.distributed import process_rank

    if process_rank() == 0:
        print(message, file=sys.stderr)


def _resume_config(args) -> RunConfig:
    # Only --quiet may change on resume; fit_run reads the rest from the checkpoint.
    return RunConfig(quiet=getattr(args, "quiet", False))
