"""Flow matching with and without the velocity field's state features, beyond 2-D.

The random Fourier features of the state (``pyro_flows.nn.VelocityNet``,
``state_features``) cut the KL gap of flow matching several times on the 2-D targets
(``benchmarks/ffjord_fm.py``). This checks them on the 10-D targets of the density-fit
benchmark, with the defaults of ``pyro_flows.train.fit(data, flow="ffjord",
objective="flow_matching", steps=...)`` and only ``state_features`` changed: 20,000
training points (10% of them held out by ``fit``), the KL gap (held-out NLL through the
ODE, exact trace, minus the true entropy) on 1,000 test points, and the CPU seconds of
training (one thread, validation included). ``--objectives likelihood flow_matching``
also trains the same ffjord by maximum likelihood with the defaults of
``fit(data, flow="ffjord", objective="likelihood", steps=...)``, so the two objectives
compare as a user of ``fit`` meets them (same steps, each with its own recipe).

    OMP_NUM_THREADS=1 python -m benchmarks.ffjord_fm_dims --targets mixture10 banana10
    OMP_NUM_THREADS=1 python -m benchmarks.ffjord_fm_dims --targets mixture10 --objectives likelihood flow_matching --features -1
"""

from __future__ import annotations

import argparse
import time

import torch

from pyro_flows.train import fit

from . import report
from .toy_targets import TARGETS


def run(
    target: str,
    features: int,
    steps: int,
    seed: int,
    entropy: float,
    test_points: int = 1000,
    train_points: int = 20000,
    objective: str = "flow_matching",
) -> dict:
    """One run of ``fit``; ``features`` < 0 leaves the field's default, and maximum
    likelihood (whose concat-squash field has no state features) ignores it."""
    tg = TARGETS[target]
    train = tg.sample(train_points, seed=seed).float()
    test = tg.sample(test_points, seed=seed + 1).float()
    start = time.process_time()
    options = {} if objective == "likelihood" else {"state_features": features}
    flow, _ = fit(
        train, flow="ffjord", objective=objective, steps=steps, eval_every=steps, seed=seed, **options
    )
    cpu = time.process_time() - start
    with torch.no_grad():
        nll = -flow.log_prob(test)
    mean, se = report.mean_se(nll.double())
    return {
        "target": target,
        "objective": objective,
        "state_features": None if objective == "likelihood" else features,
        "steps": steps,
        "seed": seed,
        "cpu_s": cpu,
        "nll": mean,
        "se": se,
        "gap": mean - entropy,
    }


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", nargs="+", default=["mixture10", "banana10"], choices=list(TARGETS))
    p.add_argument(
        "--features",
        nargs="+",
        type=int,
        default=[0, 128],
        help="state features of the field; -1: its default",
    )
    p.add_argument(
        "--objectives", nargs="+", default=["flow_matching"], choices=["flow_matching", "likelihood"]
    )
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=20000, help="training points (10%% held out by fit)")
    p.add_argument("--test", type=int, default=1000, help="test points")
    p.add_argument("--entropy-samples", type=int, default=100_000)
    p.add_argument("--stem", default="ffjord_fm_dims")
    p.add_argument("--out", default=str(report.RESULTS))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for target in args.targets:
        entropy, _ = TARGETS[target].entropy(args.entropy_samples)
        for objective in args.objectives:
            for features in args.features if objective == "flow_matching" else [None]:
                row = run(target, features, args.steps, args.seed, entropy, args.test, args.train, objective)
                print(row, flush=True)
                rows.append(row)
    info, cmd = report.machine(), report.command()
    table = report.markdown_table(
        ["target", "objective", "state features", "steps", "CPU-s", "held-out NLL", "KL gap"],
        [
            [
                r["target"],
                r["objective"].replace("_", " "),
                "-"
                if r["state_features"] is None
                else ("default" if r["state_features"] < 0 else r["state_features"]),
                r["steps"],
                f"{r['cpu_s']:.1f}",
                f"{r['nll']:.3f} ± {r['se']:.3f}",
                f"{r['gap']:.3f}",
            ]
            for r in rows
        ],
    )
    markdown = "\n".join(
        [
            "# FFJORD on 10-D targets: flow matching with and without state features, and maximum likelihood",
            "",
            report.header(info, cmd),
            "",
            table,
            "",
        ]
    )
    report.write(args.stem, markdown, {"info": info, "command": cmd, "rows": rows}, directory=args.out)
    return rows


if __name__ == "__main__":
    main()
