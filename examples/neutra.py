"""NeuTra HMC (Hoffman et al., 2019) against plain NUTS, centered and non-centered, on
Neal's funnel (10-D) and eight schools.

For each model and seed:

* **NUTS, centered**: the model as written.
* **NUTS, non-centered**: Pyro's ``LocScaleReparam`` on the funnel's ``x`` and the
  schools' ``theta`` (x = exp(v / 2) * x', theta = mu + tau * theta').
* **NeuTra**: an ``AutoRealNVP`` guide trained with SVI (the protocol of
  ``examples/guide_comparison.py``), then NUTS in its latent space
  (:func:`pyro_flows.infer.neutra_mcmc`).

Every sampler is one chain of ``--warmup`` + ``--samples`` NUTS iterations with Pyro's
defaults (max tree depth 10, target acceptance 0.8, diagonal mass matrix). Reported: the
divergences after warmup, the bulk ESS (ArviZ) of the hard parameter (v, tau) and the
smallest bulk ESS over every model coordinate, ESS per second of sampling (warmup
included) and per second including the guide's training, and the posterior mean and sd
of the hard parameter against the exact values (funnel: v ~ N(0, 3); eight schools: the
quadrature reference of ``examples/eight_schools.py``). Writes ``neutra.md`` and
``neutra.json`` to ``--out``.

    python -m examples.neutra                 # the table in docs/inference.md
    python -m examples.neutra --smoke         # seconds
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyro
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS
from pyro.infer.reparam import LocScaleReparam

from examples import OUTPUT_DIR
from examples.eight_schools import eight_schools, quadrature_reference
from examples.funnel import funnel
from examples.guide_comparison import command_line, fit
from pyro_flows.infer import AutoRealNVP, moments_table, neutra_mcmc

MODELS = {
    # name: (model, the site to non-center, the hard site, the non-centered site's
    # value from its decentered draws: loc + scale * decentered)
    "funnel": (funnel, "x", "v", lambda s: (s["v"] / 2).exp().unsqueeze(-1) * s["x_decentered"]),
    "eight_schools": (
        eight_schools,
        "theta",
        "tau",
        lambda s: s["mu"].unsqueeze(-1) + s["tau"].unsqueeze(-1) * s["theta_decentered"],
    ),
}


def exact_moments(name: str) -> tuple:
    if name == "funnel":
        return 0.0, 3.0
    exact, _ = quadrature_reference(n_draws=10)
    return float(exact["tau"]["mean"]), float(exact["tau"]["sd"])


def ess(samples: dict, hard: str) -> dict:
    """Bulk ESS of the hard site and the smallest bulk ESS over every coordinate."""
    import arviz as az

    posterior = {k: v.detach().double().numpy().reshape(1, v.shape[0], -1) for k, v in samples.items()}
    bulk = az.ess(az.from_dict(posterior=posterior), method="bulk")
    tail = az.ess(az.from_dict(posterior={hard: posterior[hard]}), method="tail")
    return {
        "ess_hard": float(bulk[hard].values.min()),
        "ess_tail_hard": float(tail[hard].values.min()),
        "ess_min": float(min(bulk[k].values.min() for k in posterior)),
    }


def run_nuts(model, site, recenter, noncentered: bool, args, seed: int):
    """Plain NUTS on the model, non-centering ``site`` if asked; samples of the original sites."""
    sampled = poutine.reparam(model, config={site: LocScaleReparam(0.0)}) if noncentered else model
    pyro.set_rng_seed(seed)
    kernel = NUTS(sampled, jit_compile=args.jit, ignore_jit_warnings=True)
    mcmc = MCMC(kernel, num_samples=args.samples, warmup_steps=args.warmup, disable_progbar=True)
    start = time.perf_counter()
    mcmc.run()
    seconds = time.perf_counter() - start
    samples = mcmc.get_samples()
    if noncentered:  # the centered site is deterministic given the decentered one
        samples = {**samples, site: recenter(samples)}
        del samples[f"{site}_decentered"]
    divergences = sum(len(v) for v in mcmc.diagnostics()["divergences"].values())
    return samples, seconds, divergences


def run_neutra(model, args, seed: int):
    make = lambda m: AutoRealNVP(m, **args.flow_kwargs)  # noqa: E731 - the library's defaults unless set
    guide, seconds_per_step, _ = fit(model, make, args.steps, args.lr, args.particles, seed)
    train_seconds = seconds_per_step * args.steps
    result = neutra_mcmc(
        model,
        guide,
        num_samples=args.samples,
        warmup_steps=args.warmup,
        seed=seed,
        jit_compile=args.jit,
        ignore_jit_warnings=True,
    )
    return result.samples, result.seconds, result.divergences, train_seconds


def compare(name: str, args, seed: int) -> list:
    model, site, hard, recenter = MODELS[name]
    mean, sd = exact_moments(name)
    runs = {}
    for method in args.methods:
        train = 0.0
        if method == "NeuTra":
            samples, seconds, divergences, train = run_neutra(model, args, seed)
        else:
            samples, seconds, divergences = run_nuts(
                model, site, recenter, method == "NUTS non-centered", args, seed
            )
        runs[method] = (samples, seconds, divergences, train)
    rows = []
    for method, (samples, seconds, divergences, train) in runs.items():
        values = samples[hard].reshape(-1)
        row = {
            "model": name,
            "seed": seed,
            "method": method,
            "divergences": divergences,
            **ess(samples, hard),
            "sampling s": seconds,
            "training s": train,
            f"mean {hard}": float(values.mean()),
            f"sd {hard}": float(values.std()),
            "exact mean": mean,
            "exact sd": sd,
        }
        row["min ESS/s"] = row["ess_min"] / seconds
        row["min ESS/s incl. training"] = row["ess_min"] / (seconds + train)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(rows: list) -> str:
    out = []
    for r in rows:
        hard = "v" if r["model"] == "funnel" else "tau"
        out.append(
            {
                "model": r["model"],
                "seed": r["seed"],
                "sampler": r["method"],
                "divergences": r["divergences"],
                "site": hard,
                "ESS of site (bulk / tail)": f"{r['ess_hard']:.0f} / {r['ess_tail_hard']:.0f}",
                "min ESS": f"{r['ess_min']:.0f}",
                "s (train + sample)": f"{r['training s']:.0f} + {r['sampling s']:.0f}",
                "min ESS/s": f"{r['min ESS/s']:.2f}",
                "min ESS/s incl. training": f"{r['min ESS/s incl. training']:.2f}",
                "mean of site (exact)": f"{r[f'mean {hard}']:.2f} ({r['exact mean']:.2f})",
                # the error in Monte Carlo standard errors, sd / sqrt(ESS): beyond 2-3 a bias
                "error / MCSE": f"{(r[f'mean {hard}'] - r['exact mean']) / (r[f'sd {hard}'] / r['ess_hard'] ** 0.5):+.1f}",
                "sd of site (exact)": f"{r[f'sd {hard}']:.2f} ({r['exact sd']:.2f})",
            }
        )
    return moments_table(out)


def table_from_log(path: Path) -> str:
    """The table of a run's JSON lines (one per sampler), e.g. of an unfinished run's log."""
    lines = [line for line in Path(path).read_text().splitlines() if line.startswith("{")]
    return table([json.loads(line) for line in lines])


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="funnel,eight_schools")
    parser.add_argument("--methods", default="NUTS centered,NUTS non-centered,NeuTra")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--steps", type=int, default=2000, help="SVI steps of the NeuTra guide")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--particles", type=int, default=32)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--jit", action="store_true", help="Pyro's jit_compile for every sampler")
    parser.add_argument(
        "--flow-kwargs",
        type=json.loads,
        default={},
        help="JSON keyword arguments of the NeuTra guide (AutoRealNVP)",
    )
    parser.add_argument("--out", type=Path, default=OUTPUT_DIR)
    parser.add_argument("--smoke", action="store_true", help="a few iterations of everything")
    args = parser.parse_args(argv)
    if args.smoke:
        args.warmup, args.samples, args.steps = 10, 10, 5
    args.methods = [m.strip() for m in args.methods.split(",")]
    torch.set_num_threads(1)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in args.models.split(","):
            rows.extend(compare(name.strip(), args, seed))
    header = (
        f"NeuTra HMC against NUTS, one chain of {args.warmup} warmup + {args.samples} draws; "
        f"NeuTra guide: AutoRealNVP, {args.steps} SVI steps. Command: `{command_line('examples.neutra', argv)}`"
    )
    text = f"{header}\n\n{table(rows)}\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "neutra.md").write_text(text)
    (args.out / "neutra.json").write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
