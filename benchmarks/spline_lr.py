"""The learning rate of ``--flow spline`` by data dimension, as a user meets it.

For each dimension ``D`` and rate, :func:`pyro_flows.train.fit` trains the default spline
flow with the defaults of ``pyro-flows fit`` (2000 steps of 256 points after a warm-up
of 100, the default dropout for the run's length, the weights of the best validation
NLL, the default training noise unless ``--noise`` is given) on 30,000 standardised points
of a curved Gaussian family,
and the held-out NLL of 5,000 new points (standardised with the training statistics) is
reported. The family: ``y = A z`` with ``z ~ N(0, I_D)`` and a fixed random ``A``
(entries ``N(0, 1/D)``), then every odd coordinate shifted by half the square of the even
one before it, a banana per pair; ``D = 6`` instead has a coordinate rounded to halves
(plus noise 0.01) and a log-normal one, as tabular data often do. Lower is better; the
rates of one dimension share data, batches and initial weights.

    OMP_NUM_THREADS=1 python -m benchmarks.spline_lr --dims 6 10 12 16 21 43 --lrs 3e-3 1e-2
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from . import report


def curved_gaussian(dim: int, n: int, seed: int) -> torch.Tensor:
    """``n`` points of the family above (``dim == 6``: the tabular-like variant)."""
    g = torch.Generator().manual_seed(seed)
    if dim == 6:
        x = torch.randn(n, 6, generator=g)
        x[:, 0] = torch.round(2 * x[:, 0]) / 2 + 0.01 * torch.randn(n, generator=g)
        x[:, 1] = torch.exp(x[:, 1])
        return x
    mixing = torch.randn(dim, dim, generator=torch.Generator().manual_seed(123)) / math.sqrt(dim)
    y = torch.randn(n, dim, generator=g) @ mixing.T
    y[:, 1::2] += 0.5 * y[:, 0 : 2 * (dim // 2) : 2] ** 2
    return y


def score(dim: int, lr: float, args) -> dict:
    from pyro_flows.train import fit

    train = curved_gaussian(dim, args.train, 0)
    mean, std = train.mean(0), train.std(0)
    test = (curved_gaussian(dim, args.test, 1) - mean) / std
    start = time.process_time()
    # the warm-up `--lr 0` gives the spline flow, at the rate given
    warmup = min(100, args.steps // 10)
    flow, _ = fit(
        (train - mean) / std,
        flow="spline",
        steps=args.steps,
        lr=lr,
        warmup_steps=warmup,
        noise=args.noise,
        dropout=args.dropout,
        quiet=True,
    )
    cpu = time.process_time() - start
    with torch.no_grad():
        nll, se = report.mean_se(-flow.log_prob(test).double())
    return {"dim": dim, "lr": lr, "nll": nll, "se": se, "cpu": cpu}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", type=int, nargs="+", default=[6, 10, 12, 16, 21, 43])
    p.add_argument("--lrs", type=float, nargs="+", default=[3e-3, 1e-2])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument(
        "--noise", type=float, default=-1.0, help="training noise (fit's --noise; negative: the default)"
    )
    p.add_argument(
        "--dropout",
        type=float,
        default=-1.0,
        help="conditioner dropout (fit's --dropout; negative: the default)",
    )
    p.add_argument("--train", type=int, default=30_000)
    p.add_argument("--test", type=int, default=5_000)
    p.add_argument("--out", default=str(report.RESULTS))
    p.add_argument("--stem", default="spline_lr")
    args = p.parse_args(argv)
    info, cmd = report.machine(), report.command()
    rows = []
    for dim in args.dims:
        for lr in args.lrs:
            rows.append(score(dim, lr, args))
            r = rows[-1]
            print(
                f"D={dim} lr {lr:g}: test NLL {r['nll']:.3f} ± {r['se']:.3f}, {r['cpu']:.0f} CPU s",
                flush=True,
            )
    table = report.markdown_table(
        ["D", *(f"lr {lr:g}" for lr in args.lrs), "best"],
        [
            [
                dim,
                *(f"{r['nll']:.3f} ± {r['se']:.3f}" for r in rows if r["dim"] == dim),
                f"{min((r for r in rows if r['dim'] == dim), key=lambda r: r['nll'])['lr']:g}",
            ]
            for dim in args.dims
        ],
    )
    markdown = "\n".join(
        [
            "# Spline flow: held-out NLL (nats) by learning rate and dimension",
            "",
            report.header(info, cmd),
            f"- settings: `pyro_flows.train.fit(flow='spline', steps={args.steps}, lr=LR, "
            f"warmup_steps={min(100, args.steps // 10)}, noise={args.noise}, dropout={args.dropout})`, otherwise "
            f"the defaults; {args.train} training / {args.test} test points of the curved Gaussian "
            "family (see benchmarks/spline_lr.py)",
            "",
            table,
            "",
        ]
    )
    report.publish(args.stem, markdown, {"info": info, "command": cmd, "rows": rows}, directory=args.out)


if __name__ == "__main__":
    main()
