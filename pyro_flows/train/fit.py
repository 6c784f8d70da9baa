"""Train a flow on a tensor in memory: :func:`fit`, the Python shortcut to the training loop.

:func:`~pyro_flows.train.fit_run` (the ``pyro-flows fit`` command) reads a data set,
writes a run folder and checkpoints; :func:`fit` takes the data as a tensor, holds a
random part of it out for validation, trains with the same loop
(:func:`~pyro_flows.train.train`) and options (:class:`~pyro_flows.train.RunConfig`),
writes nothing and returns the trained flow with its validation history.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

import torch

from ..data.splits import Splits
from .config import RunConfig, resolve_objective
from .loop import train
from .registry import build_model, check_flow_options, with_resolved_options

__all__ = ["fit", "FLOW_MATCHING_DEFAULTS", "with_flow_matching_defaults"]

#: the options an ffjord trained by flow matching gets unless given, from :func:`fit` and
#: from ``pyro-flows fit --flow ffjord --objective flow-matching`` alike: the velocity field
#: 256-256-256 (the builder's default for that field), batches of 512 and a learning rate
#: of 3e-3 with a linear warm-up over the first 2% of the steps (the recipe measured in
#: ``docs/ffjord.md``)
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
    the batch is at most ``n_train`` points when that is known.

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
    scales differ much). A random ``val_fraction`` of the rows, drawn with ``seed``, is
    held out and scored every ``eval_every`` steps; the rest is trained on.

    :param data: ``(N, D)`` floating-point points; the flow is built in their dtype.
    :param str flow: a flow family of the ``pyro-flows`` command (``"spline"``, the
        default as for the command, ``"real_nvp"``, ``"ffjord"``, ...).
    :param str objective: ``"likelihood"``, or ``"flow_matching"`` (also spelled
        ``"flow-matching"``) for ``flow="ffjord"``: the vector field is regressed on a
        probability path (:mod:`pyro_flows.train.flow_matching`) instead of solving the ODE
        at every step; the flow's ``log_prob`` and ``sample`` are unchanged. ``"auto"``
        (default): flow matching for an ffjord on continuous data with a normal base and
        no kinetic or Frobenius penalty, maximum likelihood otherwise
        (:func:`~pyro_flows.train.config.resolve_objective`).
    :param int steps: optimizer steps.
    :param float val_fraction: fraction of the rows held out for validation.
    :param int seed: seed of the split, the initial weights and the batches.
    :param options: any other field of :class:`~pyro_flows.train.RunConfig`
        (``batch_size``, ``lr``, ``hidden_dims``, ``path``, ``eval_every``, ...). Flow
        matching an ffjord starts from :data:`FLOW_MATCHING_DEFAULTS` instead of the
        run defaults for the options it does not get.
    :returns: ``(flow, history)``: the trained :class:`~pyro_flows.Flow` and a list of
        ``{"step", "nll", "se", "best", ...}`` records, one per validation.

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
    if not bool(torch.isfinite(data).all()):
        raise ValueError("fit: the data hold NaN or infinite values")
    n_train = len(data) - max(1, round(val_fraction * len(data)))
    options = with_flow_matching_defaults(
        {"flow": flow, "objective": objective, "steps": steps, **options}, n_train
    )
    for key in ("flow", "objective", "steps"):
        del options[key]
    options.setdefault("quiet", True)
    options.setdefault("plots", False)
    dtype = {torch.float32: "float32", torch.float64: "float64"}.get(data.dtype)
    if dtype is None:
        raise ValueError(f"fit: expected float32 or float64 data, got {data.dtype}")
    config = RunConfig(
        flow=flow,
        objective=objective,
        steps=steps,
        seed=seed,
        dtype=dtype,
        device=str(data.device),
        val_fraction=val_fraction,
        **options,
    )
    n_val = max(1, round(val_fraction * len(data)))
    if len(data) - n_val < 1:
        raise ValueError(f"fit: {len(data)} points leave none to train on with val_fraction={val_fraction}")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).to(data.device)
    val, train_x = data[order[:n_val]], data[order[n_val:]]
    # the loop never reads the test split; the validation points stand in for it
    splits = Splits("data", train_x, val, val, split_rule=f"random, seed {seed}")
    splits.check_spread()
    check_flow_options(config, splits.event_shape)
    config = with_resolved_options(config, splits)
    torch.manual_seed(seed)
    model = build_model(config, splits.event_shape).to(device=data.device, dtype=data.dtype)
    state = train(model, splits, config, None)
    return model, list(state.history)
