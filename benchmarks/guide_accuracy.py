"""Accuracy of flow guides under plain Adam: KL(q || p), PSIS k-hat and the spread of the
hard coordinate on Neal's funnel (10-D; Neal, 2003), centered eight schools (Rubin, 1981)
and a 2-D banana, for Pyro's :class:`~pyro.infer.autoguide.AutoIAFNormal`,
:class:`~pyro_flows.infer.AutoRealNVP` and :class:`~pyro_flows.infer.AutoSplineFlow`.

One protocol for every guide: ``Trace_ELBO`` with 8 vectorized particles, plain Adam at a
constant learning rate, 3000 steps, then 4000 importance weights
:math:`\\log w = \\log p(x, \\theta) - \\log q(\\theta)`, :math:`\\theta \\sim q`, give

.. math::

    \\mathrm{KL}(q \\,\\|\\, p(\\cdot \\mid x)) = \\log p(x) - \\mathbb E_q[\\log w],

with :math:`\\log p(x)` exact: 0 for the funnel and the banana (no data: the posterior is
the normalized prior) and, for eight schools, a quadrature over :math:`(\\mu, \\log\\tau)`
with :math:`\\theta` integrated out in closed form (:func:`eight_schools_log_evidence`).
k-hat is ArviZ's PSIS shape from the same weights; "sd" is the guide's standard deviation
of ``v`` (funnel, exact 3), ``tau`` (eight schools, exact by quadrature) or ``b`` (banana,
exact 3) from 4000 guide draws. Runs whose loss became NaN or infinite are counted.

Each finished run is appended to a JSON-lines file (``--runs``), and runs already there
are skipped: a sweep can be stopped, resumed or split across processes; ``--table``
rebuilds the summary (mean and standard error over seeds) from that file.

    OMP_NUM_THREADS=1 python -m benchmarks.guide_accuracy                 # the full sweep (hours on 1 core)
    OMP_NUM_THREADS=1 python -m benchmarks.guide_accuracy --smoke         # seconds
    python -m benchmarks.guide_accuracy --table                           # summary of what ran
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import time
from pathlib import Path
from typing import Optional

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal
from pyro.infer.reparam import AutoReparam, LocScaleReparam

from examples.banana import banana
from examples.eight_schools import SIGMA, Y, eight_schools, quadrature_reference
from examples.funnel import funnel
from pyro_flows.infer import (
    AutoRealNVP,
    AutoSplineFlow,
    ParameterAverage,
    guide_samples,
    importance_log_weights,
    psis_khat,
)

from . import report

PARTICLES = 8
EVAL_PARTICLES = 4000


def eight_schools_log_evidence(y=Y, sigma=SIGMA) -> float:
    """:math:`\\log p(y)` of centered eight schools by quadrature: with :math:`\\theta`
    integrated out, :math:`y_j \\mid \\mu, \\tau \\sim N(\\mu, \\sqrt{\\sigma_j^2 + \\tau^2})`,
    and the remaining 2-D integral is a midpoint sum over :math:`\\mu \\in [-30, 45]`,
    :math:`\\log\\tau \\in [-9, 5]` (the grid of the example's reference; the mass outside
    is below :math:`10^{-6}` of the total)."""
    y, sigma = y.double(), sigma.double()
    mu = torch.linspace(-30, 45, 1501, dtype=torch.float64)
    log_tau = torch.linspace(-9, 5, 1401, dtype=torch.float64)
    m, lt = torch.meshgrid(mu, log_tau, indexing="ij")
    tau = lt.exp()
    log_p = dist.Normal(0.0, 5.0).log_prob(m) + dist.HalfCauchy(5.0).log_prob(tau) + lt
    scale = (sigma.square() + tau.unsqueeze(-1).square()).sqrt()
    log_p = log_p + dist.Normal(m.unsqueeze(-1), scale).log_prob(y).sum(-1)
    cell = (mu[1] - mu[0]) * (log_tau[1] - log_tau[0])
    return float(torch.logsumexp(log_p.reshape(-1), 0) + cell.log())


@functools.lru_cache(maxsize=None)
def _eight_schools_references() -> tuple:
    """The quadratures behind the eight-schools targets, computed once per process (about
    6 s): the exact sd of tau and log p(y), with the schools' standard errors and with a
    tenth of them."""
    return (
        float(quadrature_reference(n_draws=1)[0]["tau"]["sd"]),
        eight_schools_log_evidence(),
        float(quadrature_reference(n_draws=1, sigma=SIGMA / 10)[0]["tau"]["sd"]),
        eight_schools_log_evidence(sigma=SIGMA / 10),
    )


def _targets() -> dict:
    """The three models, eight schools with ten times smaller standard errors, and the funnel and eight schools twice more in other
    coordinates: ``*_noncentered`` (Pyro's ``LocScaleReparam`` on ``x`` / ``theta``) and
    ``*_autoreparam`` (Pyro's ``AutoReparam``: each location-scale site's centeredness
    learnt along with the guide, started at one half; Gorinova, Moore and Hoffman, 2020).
    The same posterior and evidence, so KL, k-hat and sd compare with the centered ones."""
    exact_tau_sd, log_z, informative_tau_sd, informative_log_z = _eight_schools_references()
    targets = {
        "funnel": {"model": funnel, "log_z": 0.0, "site": "v", "sd": 3.0},
        "eight_schools": {
            "model": eight_schools,
            "log_z": log_z,
            "site": "tau",
            "sd": exact_tau_sd,
        },
        "banana": {"model": banana, "log_z": 0.0, "site": "b", "sd": 3.0},
        # the schools measured ten times more precisely: the data pin each theta_j, where
        # the centered coordinates are the natural ones
        "eight_schools_informative": {
            "model": functools.partial(eight_schools, sigma=SIGMA / 10),
            "log_z": informative_log_z,
            "site": "tau",
            "sd": informative_tau_sd,
        },
    }
    group_sites = {"funnel": "x", "eight_schools": "theta"}
    for name, site in group_sites.items():
        model = targets[name]["model"]
        targets[f"{name}_noncentered"] = {
            **targets[name],
            "model": poutine.reparam(model, config={site: LocScaleReparam(0.0)}),
        }
    for name in group_sites:
        model = targets[name]["model"]
        targets[f"{name}_autoreparam"] = {
            **targets[name],
            "model": poutine.reparam(model, config=AutoReparam()),
        }
    return targets


GUIDES = {"AutoIAFNormal": AutoIAFNormal, "AutoRealNVP": AutoRealNVP, "AutoSplineFlow": AutoSplineFlow}


def score(target: dict, guide) -> dict:
    """KL, k-hat and the sd of the hard coordinate of a trained guide."""
    model = target["model"]
    with torch.no_grad():
        log_w = importance_log_weights(model, guide, num_particles=EVAL_PARTICLES, max_plate_nesting=1)
        samples = guide_samples(model, guide, EVAL_PARTICLES)
        if target["site"] not in samples:  # deterministic under a reparameterization
            samples = guide_samples(model, guide, EVAL_PARTICLES, sites=[target["site"]])
    kl = target["log_z"] - float(log_w.mean())
    khat = psis_khat(model, guide, log_weights=log_w)
    sd = float(samples[target["site"]].reshape(EVAL_PARTICLES, -1)[:, 0].std())
    return {"kl": kl, "khat": float(khat), "sd": sd}


def khat_redraws(count: int):
    """An ``inspect`` for :func:`run_one`: the k-hat of the trained guide from ``count``
    more sets of :data:`EVAL_PARTICLES` importance weights, each drawn from its own seed
    (``1000 + i``) on a forked random stream, so the run's other scores are unchanged.
    How much one evaluation's k-hat moves for the same guide."""

    if count < 1:
        raise ValueError(f"khat_redraws needs a number of evaluations of at least 1, got {count}")

    def inspect(target: dict, guide) -> dict:
        values = []
        for i in range(count):
            with torch.random.fork_rng(), torch.no_grad():
                torch.manual_seed(1000 + i)
                values.append(
                    float(
                        psis_khat(target["model"], guide, num_particles=EVAL_PARTICLES, max_plate_nesting=1)
                    )
                )
        return {"khat_redraws": values}

    return inspect


def run_one(
    target: dict,
    guide_name: str,
    kwargs: dict,
    lr: float,
    seed: int,
    steps: int,
    average_last: int = 0,
    inspect=None,
    score_every: int = 0,
    clip_norm: Optional[float] = None,
) -> dict:
    """Fit one guide and score it; a run whose loss turns non-finite (or whose step raises)
    stops there and is scored as NaN. With ``average_last``, the mean of the parameters over
    the last that many steps (:class:`~pyro_flows.infer.ParameterAverage`) is scored too,
    as ``avg_kl``, ``avg_khat`` and ``avg_sd``. ``inspect(target, guide)``, if given, runs
    on a finished, finite guide after the scores, and its dict joins the result. With
    ``score_every``, the guide is also scored after every that many steps, into
    ``trajectory``; those scores draw from a forked random stream, so the run itself (and
    its final scores) are those of the run without them, and their time is not counted.
    With ``clip_norm``, Pyro's ``ClippedAdam`` (every gradient element clamped to
    :math:`\\pm` ``clip_norm`` before its Adam step; no learning-rate decay) replaces plain Adam."""
    if score_every < 0:
        raise ValueError(f"score_every must be a number of steps (0: none), got {score_every}")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be a positive number, got {clip_norm}")
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model = target["model"]
    guide = GUIDES[guide_name](model, **kwargs)
    elbo = Trace_ELBO(num_particles=PARTICLES, vectorize_particles=True, max_plate_nesting=1)
    optimizer = (
        pyro.optim.Adam({"lr": lr})
        if clip_norm is None
        else pyro.optim.ClippedAdam({"lr": lr, "clip_norm": clip_norm})
    )
    svi = SVI(model, guide, optimizer, elbo)
    nonfinite, error, stopped_at = 0, None, None
    start = time.process_time()
    svi.step()  # a setting that cannot run fails here, loudly
    average = ParameterAverage()
    trajectory, scoring = [], 0.0
    for step in range(1, steps):
        try:
            loss = svi.step()
        except (ValueError, RuntimeError) as e:  # validation of a NaN parameter, typically
            nonfinite, error, stopped_at = nonfinite + 1, f"{type(e).__name__}: {str(e)[:120]}", step
            break
        if not math.isfinite(loss):
            nonfinite, stopped_at = nonfinite + 1, step
            break
        if step >= steps - average_last:
            average.update()
        if score_every and (step + 1) % score_every == 0:
            begin = time.process_time()
            with torch.random.fork_rng():
                trajectory.append({"step": step + 1, **score(target, guide)})
            scoring += time.process_time() - begin
            print(
                f"  step {step + 1}: "
                + ", ".join(f"{k} {v:.3f}" for k, v in trajectory[-1].items() if k != "step")
            )
    taken = steps if stopped_at is None else stopped_at + 1
    cpu_ms = 1e3 * (time.process_time() - start - scoring) / taken
    out = {"nonfinite": nonfinite, "error": error, "stopped_at": stopped_at, "cpu_ms_per_step": cpu_ms}
    if score_every:
        out["trajectory"] = trajectory
    if nonfinite:
        nan = {"kl": math.nan, "khat": math.nan, "sd": math.nan}
        averaged = {f"avg_{k}": v for k, v in nan.items()} if average_last else {}
        return {**out, **nan, **averaged, "average_last": average_last}
    out.update(score(target, guide))
    if inspect is not None:
        out.update(inspect(target, guide))
    if average_last:
        with average.applied():
            out.update({f"avg_{k}": v for k, v in score(target, guide).items()})
        out["average_last"] = average_last
    return out


def _key(row: dict) -> tuple:
    # the guide too: two guides run under one label are two runs, not one run done twice
    return (row["model"], row.get("guide"), row["label"], row["lr"], row["seed"], row["steps"])


def read_runs(path: Path) -> list:
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _cell(values, digits=2) -> str:
    """Mean ± standard error over the seeds whose run stayed finite, and how many did not."""
    values = torch.tensor(values, dtype=torch.float64)
    finite = values[torch.isfinite(values)]
    bad = len(values) - len(finite)
    note = f" (NaN in {bad}/{len(values)})" if bad else ""
    if len(finite) == 0:
        return f"NaN{note}"
    if len(finite) == 1:
        return f"{float(finite):.{digits}f}{note}"
    mean, se = report.mean_se(finite)
    return f"{mean:.{digits}f} ± {se:.{digits}f}{note}"


def _with_averages(rows: list) -> list:
    """The runs, plus each run's averaged parameters as a run of its own label."""
    out = list(rows)
    for row in rows:
        if "avg_kl" in row:
            scores = {k: row[f"avg_{k}"] for k in ("kl", "khat", "sd")}
            out.append({**row, **scores, "label": f"{row['label']} + iterate average"})
    return out


def table(rows: list, targets: dict) -> str:
    groups: dict = {}
    for row in _with_averages(rows):
        # one row per guide: the seeds of two guides under one label are not one sample
        key = (row["model"], row["label"], row["lr"], row["steps"], row.get("guide", ""))
        groups.setdefault(key, []).append(row)
    order = {name: i for i, name in enumerate(targets)}
    lines = []
    for (model, label, lr, steps, _), runs in sorted(
        groups.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1], -kv[0][2], kv[0][4])
    ):
        runs = sorted(runs, key=lambda r: r["seed"])
        lines.append(
            [
                model,
                label,
                f"{lr:g}",
                steps,
                ",".join(str(r["seed"]) for r in runs),
                _cell([r["kl"] for r in runs], 3),
                _cell([r["khat"] for r in runs]),
                _cell([r["sd"] for r in runs]),
                f"{targets[model]['sd']:.2f}" if model in targets else "",
                sum(r["nonfinite"] > 0 for r in runs),
                f"{sum(r['cpu_ms_per_step'] for r in runs) / len(runs):.1f}",
            ]
        )
    return report.markdown_table(
        [
            "model",
            "guide",
            "lr",
            "steps",
            "seeds",
            "KL",
            "k-hat",
            "sd",
            "exact sd",
            "NaN runs",
            "CPU ms/step",
        ],
        lines,
    )


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["funnel", "eight_schools", "banana"])
    p.add_argument("--guides", nargs="+", default=list(GUIDES), choices=list(GUIDES))
    p.add_argument("--kwargs", default="{}", help="JSON keyword arguments of the guide (flow guides only)")
    p.add_argument(
        "--label",
        default=None,
        help="name of the guide setting in the table (default: the guide); beside a flow guide, "
        "AutoIAFNormal, which takes no --kwargs, keeps its own name",
    )
    p.add_argument("--lrs", nargs="+", type=float, default=[1e-2, 3e-3])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument(
        "--average-last",
        type=int,
        default=1000,
        help="also score the parameters averaged over the last N steps (0: no)",
    )
    p.add_argument(
        "--score-every",
        type=int,
        default=0,
        help="also score each run after every N steps (a forked random stream: the run is unchanged)",
    )
    p.add_argument(
        "--clip-norm",
        type=float,
        default=None,
        help="train with Pyro's ClippedAdam (gradient elements clamped to +-clip_norm) instead of plain Adam "
        "(default label: the guide's name with ', ClippedAdam <norm>')",
    )
    p.add_argument(
        "--khat-redraws",
        type=int,
        default=0,
        help="also score each trained guide's k-hat from N more sets of importance weights (its spread "
        "between evaluations of the same guide)",
    )
    p.add_argument("--runs", default=str(report.RESULTS / "guide_accuracy_runs.jsonl"))
    p.add_argument("--table", action="store_true", help="only summarize the runs file")
    p.add_argument("--smoke", action="store_true", help="a few steps of small guides, for tests")
    p.add_argument("--out", default=str(report.RESULTS))
    p.add_argument("--stem", default="guide_accuracy")
    args = p.parse_args(argv)
    if args.khat_redraws < 0:
        p.error(f"--khat-redraws must be a number of evaluations (0: none), got {args.khat_redraws}")
    torch.set_num_threads(1)
    kwargs = json.loads(args.kwargs)
    if args.smoke:
        args.steps, args.seeds, args.lrs, args.average_last = 3, [0], [1e-2], 2
        kwargs = {"num_layers": 2, "hidden_dims": [8]}
        args.runs = str(Path(args.out) / f"{args.stem}_smoke_runs.jsonl")
        Path(args.runs).unlink(missing_ok=True)
    targets = _targets()
    runs_path = Path(args.runs)
    runs_path.parent.mkdir(parents=True, exist_ok=True)
    done = {_key(r) for r in read_runs(runs_path)}
    cmd = report.command()
    if not args.table:
        for model in args.models:
            for guide_name in args.guides:
                guide_kwargs = {} if guide_name == "AutoIAFNormal" and not args.smoke else kwargs
                if guide_name == "AutoIAFNormal" and args.smoke:
                    guide_kwargs = {"hidden_dim": [20]}
                label = (
                    guide_name if args.clip_norm is None else f"{guide_name}, ClippedAdam {args.clip_norm:g}"
                )
                # --label names the setting of --kwargs, which AutoIAFNormal never takes: beside
                # a flow guide it keeps its own name (its runs would otherwise be read, and
                # resumed, as the flow guide's)
                if args.label and (guide_name != "AutoIAFNormal" or args.guides == ["AutoIAFNormal"]):
                    label = args.label
                for lr in args.lrs:
                    for seed in args.seeds:
                        key = (model, guide_name, label, lr, seed, args.steps)
                        if key in done:
                            continue
                        result = run_one(
                            targets[model],
                            guide_name,
                            guide_kwargs,
                            lr,
                            seed,
                            args.steps,
                            args.average_last,
                            inspect=khat_redraws(args.khat_redraws) if args.khat_redraws else None,
                            score_every=args.score_every,
                            clip_norm=args.clip_norm,
                        )
                        row = {
                            "model": model,
                            "guide": guide_name,
                            "label": label,
                            "kwargs": guide_kwargs,
                            "lr": lr,
                            "seed": seed,
                            "steps": args.steps,
                            "command": cmd,
                            **({} if args.clip_norm is None else {"clip_norm": args.clip_norm}),
                            **result,
                        }
                        with runs_path.open("a") as f:
                            f.write(json.dumps(row) + "\n")
                        print(
                            f"{model:13s} {label:28s} lr {lr:g} seed {seed}: KL {result['kl']:.3f} "
                            f"k-hat {result['khat']:.2f} sd {result['sd']:.2f} "
                            f"({result['cpu_ms_per_step']:.1f} ms/step, non-finite {result['nonfinite']})",
                            flush=True,
                        )
                        if "khat_redraws" in result:
                            redraws = result["khat_redraws"]
                            print(
                                f"  k-hat of {len(redraws)} more evaluations: median "
                                f"{statistics.median(redraws):.2f}, range {min(redraws):.2f}-{max(redraws):.2f}, "
                                f"over 0.5 in {sum(k > 0.5 for k in redraws)}",
                                flush=True,
                            )
    rows = read_runs(runs_path)
    info = report.machine()
    log_z = f"log p(y) of eight schools by quadrature: {targets['eight_schools']['log_z']:.4f}"
    markdown = (
        f"# Guide accuracy under plain Adam\n\n{report.header(info, cmd)}\n"
        f"- runs file: `{runs_path.name}`; {log_z}\n\n{table(rows, targets)}\n"
    )
    report.publish(args.stem, markdown, {"machine": info, "command": cmd, "runs": rows}, args.out)
    return rows


if __name__ == "__main__":
    main()
