"""Which part of the posterior a trained flow guide misses: the tails of the hard
coordinate (``v`` of the funnel, ``log tau`` of eight schools, centered or not), whose marginals
are exact (Normal(0, 3) for ``v``; quadrature for ``log tau``).

Each guide is trained with the protocol of :mod:`benchmarks.guide_accuracy` (Trace_ELBO,
8 vectorized particles, plain Adam, 3000 steps by default). Then, from ``--draws`` draws
of the guide, with :math:`a` and :math:`b` the guide's own 10% and 90% quantiles of the
coordinate:

* the exact posterior mass below :math:`a` and above :math:`b` (10% each for a guide
  with the right marginal);
* the share of the self-normalized importance weight that the draws below :math:`a`
  and above :math:`b` carry: the same quantity as seen by importance sampling, which
  is what PSIS k-hat scores.

A guide that misses the funnel's neck puts its lowest tenth where the posterior has more
than a tenth of its mass.

    OMP_NUM_THREADS=1 python -m benchmarks.guide_coverage
    OMP_NUM_THREADS=1 python -m benchmarks.guide_coverage --smoke
"""

from __future__ import annotations

import argparse
import json

import torch
from pyro.infer.importance import vectorized_importance_weights

from examples.eight_schools import log_tau_cdf
from pyro_flows.infer import psis_khat

from . import report
from .guide_accuracy import GUIDES, _targets, run_one


def _funnel_v_cdf(v):
    return torch.distributions.Normal(0.0, 3.0).cdf(torch.as_tensor(v).double())


#: the hard coordinate of each model (of its target's ``site``): its name, how it is read
#: from the site's value, and its exact posterior CDF
COORDINATES = {
    "funnel": ("v", lambda v: v, _funnel_v_cdf),
    "eight_schools": ("log tau", torch.log, log_tau_cdf),
    "eight_schools_noncentered": ("log tau", torch.log, log_tau_cdf),
}


def coverage(target: dict, guide, model_name: str, draws: int) -> dict:
    """Tail masses of the hard coordinate under the posterior and under the guide's
    importance weights, at the guide's 10% and 90% quantiles (and the k-hat of these
    draws' weights, ``khat_draws``)."""
    _, read, cdf = COORDINATES[model_name]
    with torch.no_grad():
        log_w, model_trace, _ = vectorized_importance_weights(
            target["model"], guide, num_samples=draws, max_plate_nesting=1, normalized=False
        )
    values = read(model_trace.nodes[target["site"]]["value"].reshape(draws, -1)[:, 0].double())
    log_w = log_w.detach().double()
    w = (log_w - log_w.max()).exp()
    w = w / w.sum()
    low, high = (float(q) for q in torch.quantile(values, torch.tensor([0.1, 0.9], dtype=torch.float64)))
    return {
        "draws": draws,
        "q10": low,
        "q90": high,
        "exact_below": float(cdf([low])[0]),
        "exact_above": 1.0 - float(cdf([high])[0]),
        "weight_below": float(w[values <= low].sum()),
        "weight_above": float(w[values >= high].sum()),
        "khat_draws": float(psis_khat(target["model"], guide, log_weights=log_w.float())),
    }


def table(rows: list) -> str:
    lines = []
    for r in rows:
        coordinate = COORDINATES[r["model"]][0]
        if "q10" not in r:  # a run that went non-finite: no tails to show, but counted
            where = "" if r.get("stopped_at") is None else f" at step {r['stopped_at']}"
            lines.append([r["model"], r["guide"], f"{r['lr']:g}", r["seed"], f"non-finite{where}", *[""] * 7])
            continue
        lines.append(
            [
                r["model"],
                r["guide"],
                f"{r['lr']:g}",
                r["seed"],
                f"{r['khat']:.2f}",
                f"{r['kl']:.3f}",
                f"{coordinate} < {r['q10']:.2f}",
                f"{r['exact_below']:.3f}",
                f"{r['weight_below']:.3f}",
                f"{coordinate} > {r['q90']:.2f}",
                f"{r['exact_above']:.3f}",
                f"{r['weight_above']:.3f}",
            ]
        )
    return report.markdown_table(
        [
            "model",
            "guide",
            "lr",
            "seed",
            "k-hat",
            "KL",
            "guide's lowest tenth",
            "posterior mass there",
            "importance weight there",
            "guide's highest tenth",
            "posterior mass there",
            "importance weight there",
        ],
        lines,
    )


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(COORDINATES), choices=list(COORDINATES))
    p.add_argument("--guides", nargs="+", default=["AutoRealNVP", "AutoIAFNormal"], choices=list(GUIDES))
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--draws", type=int, default=20000, help="guide draws for the tail masses")
    p.add_argument("--kwargs", default="{}", help="JSON keyword arguments of the flow guides")
    p.add_argument(
        "--label",
        default=None,
        help="name of the guide setting in the table (default: the guide); beside a flow guide, "
        "AutoIAFNormal, which takes no --kwargs, keeps its own name",
    )
    p.add_argument("--smoke", action="store_true", help="a few steps of small guides, for tests")
    p.add_argument("--out", default=str(report.RESULTS))
    p.add_argument("--stem", default="guide_coverage")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.smoke:
        args.steps, args.seeds, args.draws = 3, [0], 500
    targets = _targets()
    rows = []
    for model in args.models:
        for guide_name in args.guides:
            kwargs = {} if guide_name == "AutoIAFNormal" else json.loads(args.kwargs)
            if args.smoke:
                kwargs = (
                    {"hidden_dim": [20]}
                    if guide_name == "AutoIAFNormal"
                    else {"num_layers": 2, "hidden_dims": [8]}
                )
            for seed in args.seeds:

                def inspect(target, guide, model=model):
                    return coverage(target, guide, model, args.draws)

                result = run_one(
                    targets[model], guide_name, kwargs, args.lr, seed, args.steps, inspect=inspect
                )
                row = {
                    "model": model,
                    # --label names the setting of --kwargs, which AutoIAFNormal never takes
                    "guide": guide_name
                    if not args.label or (guide_name == "AutoIAFNormal" and args.guides != ["AutoIAFNormal"])
                    else args.label,
                    "kwargs": kwargs,
                    "lr": args.lr,
                    "seed": seed,
                    "steps": args.steps,
                    **result,
                }
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "error"}), flush=True)
    info = report.machine()
    cmd = report.command()
    markdown = (
        f"# Where flow guides miss the posterior: tails of the hard coordinate\n\n{report.header(info, cmd)}\n"
        f"- {args.steps} steps, lr {args.lr:g}; {args.draws} guide draws per run\n\n{table(rows)}\n"
    )
    report.publish(args.stem, markdown, {"machine": info, "command": cmd, "rows": rows}, args.out)
    return rows


if __name__ == "__main__":
    main()
