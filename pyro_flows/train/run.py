"""The three jobs of the ``pyro-flows`` command as functions: :func:`fit_run`,
:func:`evaluate_run` and :func:`sample_run`.

A run folder holds ``config.toml`` (every resolved option), ``metrics.jsonl``,
``results.json``, ``checkpoint.pt`` (last state, for ``--resume``), ``best.pt`` (best
validation NLL, used by ``evaluate`` and ``sample``) and PNG plots.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Callable, Optional

import torch

from ..data.registry import load_splits
from ..data.splits import Splits
from ..metrics import bits_per_dim as unit_cube_bits_per_dim
from .checkpoint import CheckpointError, load_checkpoint
from .config import RunConfig, config_to_toml
from .distributed import process_device, setup, teardown
from .loop import MetricsLog, held_out_noise, mean_and_standard_error, nll_per_point, read_metrics, train
from .registry import build_model

__all__ = ["fit_run", "evaluate_run", "sample_run", "resolve_device", "bits_per_dim"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else as given (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device must be cpu, cuda, cuda:N or auto, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
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


def fit_run(
    config: RunConfig,
    resume_dir: Optional[str] = None,
    on_step: Optional[Callable[[int], None]] = None,
) -> dict:
    """Train the flow ``config`` describes, evaluate it on the test split, write the run
    folder ``config.out`` and return the results (also in ``results.json``).

    With ``resume_dir`` the run continues from ``resume_dir/checkpoint.pt`` with the
    configuration saved there (only ``config.quiet`` is taken from ``config``), writing
    to the same folder.

    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> config = RunConfig(num_layers=2, hidden_dims=(8,), num_samples=300, batch_size=50, steps=4,
    ...                    eval_every=2, plots=False, quiet=True, out=out)
    >>> results = fit_run(config)
    >>> results["steps"], sorted(results["splits"].items())
    (4, [('test', 30), ('train', 240), ('val', 30)])
    """
    resume_state = best_state = None
    quiet = config.quiet
    if resume_dir is not None:
        resume_state, config = _load_run(resume_dir, "checkpoint.pt")
        config = config.replace(out=resume_dir, quiet=quiet)
        best_path = os.path.join(resume_dir, "best.pt")
        best_state = load_checkpoint(best_path)["model"] if os.path.exists(best_path) else None
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    context = setup(device)
    device = process_device(device, context)
    echo = _echo(context.is_main and not config.quiet)
    started = time.perf_counter()
    try:
        torch.manual_seed(config.seed)
        splits = load_splits(config)
        dtype = DTYPES[config.dtype]
        flow = build_model(
            config, splits.event_shape, discrete=splits.levels is not None, levels=splits.levels
        )
        flow = flow.to(device=device, dtype=dtype)
        run_dir = config.out
        if context.is_main:
            _prepare_out(run_dir)
            with open(os.path.join(run_dir, "config.toml"), "w") as fh:
                fh.write(config_to_toml(config))
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
            data_state=_data_state(splits),
        )
        score = _score(flow, splits, splits.test, "test", config.seed, device, dtype)
        results = {f"test_{key}": value for key, value in score.items()}
        results.update(
            flow=config.flow,
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
            seconds=round(time.perf_counter() - started, 2),
        )
        if context.is_main:
            MetricsLog(os.path.join(run_dir, "metrics.jsonl"), keep_until_step=state.step).write(
                split="test", step=state.step, nll=results["test_nll"], se=results["test_nll_se"]
            )
            with open(os.path.join(run_dir, "results.json"), "w") as fh:
                json.dump(results, fh, indent=2)
            if config.plots:
                results["plots"] = write_plots(flow, splits, config, run_dir)
        echo(_summary(results))
        return results
    finally:
        teardown(context)


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
    x = splits.prepare(x.to(device=device, dtype=dtype), generator=held_out_noise(seed, split, device))
    nll, se = mean_and_standard_error(nll_per_point(flow, x) + splits.nll_offset())
    out = {"nll": nll, "nll_se": se}
    if splits.levels:
        out["bits_per_dim"] = bits_per_dim(nll, splits.dim, splits.levels)
        out["bits_per_dim_se"] = se / (splits.dim * math.log(2))
    return out


def _summary(results: dict) -> str:
    line = (
        f"test NLL: {results['test_nll']:.4f} ± {results['test_nll_se']:.4f} nats per point "
        f"({results['splits']['test']} test points; best validation NLL {results['best_val_nll']:.4f} "
        f"at step {results['best_step']})"
    )
    if "test_bits_per_dim" in results:
        line += f"\ntest bits/dim: {results['test_bits_per_dim']:.4f} ± {results['test_bits_per_dim_se']:.4f}"
    return line


def write_plots(flow, splits: Splits, config: RunConfig, run_dir: str) -> list:
    """The run's PNGs: NLL curves always; data | samples | density for 2-D data;
    histogram and density for 1-D data; a sample grid for images."""
    from .. import plot

    paths = []
    title = f"{config.flow} on {splits.name}"
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(metrics_path):
        paths.append(
            plot.plot_nll_curves(read_metrics(metrics_path), os.path.join(run_dir, "nll_curves.png"), title)
        )
    param = next(flow.parameters())
    torch.manual_seed(config.seed + 4)
    n = config.plot_samples
    shape = tuple(splits.event_shape)
    if n and shape in ((2,), (1,)):
        samples = splits.to_data_units(flow.sample((n,))).cpu()
        offset = splits.nll_offset()

        def log_density(x):
            y = splits.prepare(x.to(device=param.device, dtype=param.dtype))
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
    """Images in data units -> [0, 1] for display (``levels`` discrete values, else as is)."""
    top = (levels - 1) if levels else 1.0
    return (x / top).clamp(0, 1)


def _load_run(run_dir: str, which: str = "best.pt"):
    if not os.path.isdir(run_dir):
        raise ValueError(f"run folder {run_dir} does not exist (pass the --out folder of a fit run)")
    path = os.path.join(run_dir, which)
    if not os.path.exists(path):
        raise CheckpointError(f"{run_dir} has no {which}; is it the output folder of `pyro-flows fit`?")
    state = load_checkpoint(path)
    config = RunConfig.from_dict(state["config"], source=path)
    return state, config


def _restore_flow(state: dict, config: RunConfig, device: torch.device, event_shape) -> torch.nn.Module:
    discrete = bool(state["data"].get("levels"))
    flow = build_model(config, event_shape, discrete=discrete, levels=state["data"].get("levels"))
    flow = flow.to(device=device, dtype=DTYPES[config.dtype])
    try:
        flow.load_state_dict(state["model"])
    except RuntimeError as err:
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
    state, config = _load_run(run_dir)
    if data is not None:
        config = config.replace(data=data)
    torch.manual_seed(config.seed)
    splits = load_splits(config)
    saved = state["data"]
    if list(splits.event_shape) != list(saved["event_shape"]):
        raise ValueError(
            f"{splits.name} has points of shape {tuple(splits.event_shape)}, but the run was trained on points "
            f"of shape {tuple(saved['event_shape'])}"
        )
    # Score in the units the model was trained in: the run's own preprocessing.
    splits.shift, splits.scale, splits.levels = saved["shift"], saved["scale"], saved["levels"] or None
    dev = resolve_device(device)
    flow = _restore_flow(state, config, dev, splits.event_shape)
    dtype = DTYPES[config.dtype]
    if split == "all":
        x = torch.cat([splits.train, splits.val, splits.test])
    elif split in ("train", "val", "test"):
        x = getattr(splits, split)
    else:
        raise ValueError(f"split must be train, val, test or all, got {split!r}")
    score = _score(flow, splits, x, split, config.seed, dev, dtype)
    out = {"run": run_dir, "data": splits.name, "split": split, "points": len(x), **score}
    if not quiet:
        nll, se = score["nll"], score["nll_se"]
        line = f"{split} NLL: {nll:.4f} ± {se:.4f} nats per point ({len(x)} points of {splits.name})"
        if splits.levels:
            line += f"; bits/dim {out['bits_per_dim']:.4f} ± {out['bits_per_dim_se']:.4f}"
        print(line)
    return out


def sample_run(
    run_dir: str,
    num_samples: int,
    out: Optional[str] = None,
    seed: int = 0,
    device: str = "auto",
    quiet: bool = False,
) -> dict:
    """Draw ``num_samples`` points (data units) from a run's best model into a ``.npy``
    file, plus a PNG grid for images.

    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> _ = fit_run(RunConfig(num_layers=2, hidden_dims=(8,), num_samples=300, batch_size=50, steps=2,
    ...                       eval_every=2, plots=False, quiet=True, out=out))
    >>> sample_run(out, 5, quiet=True)["shape"]
    [5, 2]
    """
    import numpy as np

    if num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {num_samples}")
    out = out or os.path.join(run_dir, "samples.npy")
    if not out.endswith(".npy"):
        raise ValueError(f"--output must end in .npy, got {out}")
    state, config = _load_run(run_dir)
    data = state["data"]
    event_shape = torch.Size(data["event_shape"])
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
    samples = splits.to_data_units(flow.sample((num_samples,))).cpu()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    np.save(out, samples.double().numpy())
    result = {"samples": out, "shape": list(samples.shape)}
    if len(event_shape) == 3:
        from .. import plot

        grid = out[: -len(".npy")] + ".png"
        result["grid"] = plot.plot_image_grid(_unit_range(samples[:64], splits.levels), grid)
    if not quiet:
        print(
            f"wrote {num_samples} samples of shape {tuple(event_shape)} to {out}"
            + (f" and a grid to {result['grid']}" if "grid" in result else "")
        )
    return result
