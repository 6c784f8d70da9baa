"""Held-out fit of matched RealNVP flows across libraries on 2-D toy targets.

Every library's model (see :mod:`benchmarks.contenders`) is trained with the same
optimizer (Adam), learning rate, number of steps and the very same mini-batches drawn
from a fixed training set, then scored on a separate test set. Reported: the test
negative log-likelihood (nats per point, with its standard error) and, where the true
entropy :math:`H(p)` is known (checkerboard exactly, 8 Gaussians by Monte Carlo with
the exact mixture density), the gap :math:`\\mathrm{NLL} - H(p)`, an estimate of
:math:`\\mathrm{KL}(p \\,\\|\\, q)` (zero for a perfect model, up to test-set noise). The
Gaussian row is the maximum-likelihood Gaussian, the baseline every flow should beat.

    OMP_NUM_THREADS=1 python -m benchmarks.fit --steps 1000
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from . import report
from .contenders import NAMES, available, build, set_validation
from .toy_targets import TARGETS

GAUSSIAN = "gaussian"


def gaussian_nll(train: torch.Tensor, test: torch.Tensor):
    """Test NLL of the maximum-likelihood Gaussian fitted to ``train``."""
    mean = train.double().mean(0)
    cov = torch.cov(train.double().T)
    d = torch.distributions.MultivariateNormal(mean, cov)
    return report.mean_se(-d.log_prob(test.double()))


def fit_one(name, train, test, args):
    torch.manual_seed(args.seed)
    contender = build(name, 2, args.layers, args.hidden)
    optimizer = torch.optim.Adam(contender.module.parameters(), lr=args.lr)
    batches = torch.Generator().manual_seed(args.seed)  # the same batches for everyone
    start = time.perf_counter()
    contender.module.train()
    for _ in range(args.steps):
        x = train[torch.randint(len(train), (args.batch,), generator=batches)]
        optimizer.zero_grad(set_to_none=True)
        loss = -contender.log_prob(x).mean()
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    contender.module.eval()
    with torch.no_grad():
        nll = torch.cat([-contender.log_prob(chunk.clone()) for chunk in test.split(5000)])
    mean, se = report.mean_se(nll)
    return {"nll": mean, "se": se, "train_seconds": seconds, "final_train_loss": float(loss.detach())}


def render(results, names, info, cmd, args) -> str:
    cols = [GAUSSIAN, *names]
    rows = []
    for target, res in results.items():
        entropy = res["entropy"]
        row = [target, "-" if entropy is None else f"{entropy:.3f}"]
        for n in cols:
            r = res["by_name"][n]
            cell = f"{r['nll']:.3f} ± {r['se']:.3f}"
            if entropy is not None and math.isfinite(r["nll"]):
                cell += f" (gap {r['nll'] - entropy:.3f})"
            row.append(cell)
        rows.append(row)
    lines = [
        f"# Fit: held-out NLL (nats/point) of matched RealNVP ({args.layers} affine couplings, MLP "
        f"{'-'.join(map(str, args.hidden))}, ReLU)",
        "",
        report.header(info, cmd),
        f"- settings: Adam lr {args.lr}, {args.steps} steps of batch {args.batch}, identical batches for "
        f"all, {args.train} training / {args.test} test points, each library's own initialisation",
        "",
        "Lower is better; `gap` = NLL - true entropy H(p) estimates KL(p || model).",
        "",
        report.markdown_table(["target", "H(p)", *cols], rows),
        "",
    ]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    p.add_argument("--libs", nargs="+", default=list(NAMES), choices=NAMES)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train", type=int, default=20_000)
    p.add_argument("--test", type=int, default=20_000)
    p.add_argument("--entropy-samples", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--validate", action="store_true", help="turn distribution validation on for all")
    p.add_argument("--out", default=str(report.RESULTS))
    p.add_argument("--stem", default="fit_toy2d")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    names = available(args.libs)
    set_validation(names, args.validate)
    info, cmd = report.machine("cpu"), report.command()
    results = {}
    for target_name in args.targets:
        target = TARGETS[target_name]
        train = target.sample(args.train, seed=2 * args.seed)
        test = target.sample(args.test, seed=2 * args.seed + 1)
        entropy, entropy_se = target.entropy(args.entropy_samples)
        by_name = {}
        mean, se = gaussian_nll(train, test)
        by_name[GAUSSIAN] = {"nll": mean, "se": se}
        for name in names:
            by_name[name] = fit_one(name, train, test, args)
            print(f"{target_name} {name}: NLL {by_name[name]['nll']:.3f}", flush=True)
        results[target_name] = {"entropy": entropy, "entropy_se": entropy_se, "by_name": by_name}
    markdown = render(results, names, info, cmd, args)
    data = {"machine": info, "command": cmd, "settings": vars(args), "results": results}
    report.publish(args.stem, markdown, data, args.out)
    return data


if __name__ == "__main__":
    main()
