"""Compare FFJORD with RealNVP on 2-D toy data: held-out NLL, training time and NFE.

Both flows are trained by maximum likelihood with Adam for the same number of steps on
the same batches; a Gaussian fitted to the training set is the baseline. NFE is the
number of evaluations of FFJORD's dynamics network per solve (at the last training step,
and when scoring the test set in eval mode with the exact trace); RealNVP has none.
``ffjord_reg`` adds the kinetic-energy and Jacobian-Frobenius penalties of Finlay et al.
(2020) with weight ``--reg-weight`` to the loss, which should keep the NFE down.

    python -m examples.ffjord_vs_realnvp            # the table in docs/ffjord.md
    python -m examples.ffjord_vs_realnvp --smoke    # a few steps, for the tests
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Callable, Dict, List, Optional

import pyro.distributions as dist
import torch

import pyro_flows
from pyro_flows.data import make_moons


# Small generators for the other toy sets (only moons is built into pyro_flows.data).
def make_circles(n: int, noise: float = 0.05, seed: int = 0) -> torch.Tensor:
    """Two concentric rings (radii 1 and 0.5), scaled to roughly unit variance."""
    g = torch.Generator().manual_seed(seed)
    angle = 2 * math.pi * torch.rand(n, generator=g)
    radius = torch.where(torch.arange(n) % 2 == 0, 1.0, 0.5)
    x = radius.unsqueeze(-1) * torch.stack([angle.cos(), angle.sin()], -1)
    return (x + noise * torch.randn(n, 2, generator=g)) / 0.55


def make_eight_gaussians(n: int, scale: float = 0.1, seed: int = 0) -> torch.Tensor:
    """Eight small Gaussians evenly spaced on the unit circle, scaled to unit variance."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 8, (n,), generator=g)
    centres = torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], -1)
    return (centres + scale * torch.randn(n, 2, generator=g)) / 0.72


DATASETS: Dict[str, Callable[..., torch.Tensor]] = {
    "moons": make_moons,
    "circles": make_circles,
    "8gaussians": make_eight_gaussians,
}


def standard_normal(dim: int = 2) -> dist.Distribution:
    return dist.Normal(torch.zeros(dim), torch.ones(dim)).to_event(1)


def train_flow(flow, train: torch.Tensor, steps: int, batch_size: int, lr: float, seed: int) -> float:
    """Maximum likelihood with Adam; returns the wall-clock training time in seconds."""
    d = dist.TransformedDistribution(standard_normal(), [flow])
    optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    g = torch.Generator().manual_seed(seed)
    flow.train()
    start = time.perf_counter()
    for _ in range(steps):
        batch = train[torch.randint(0, len(train), (batch_size,), generator=g)]
        optimizer.zero_grad()
        loss = -d.log_prob(batch).mean()
        # FFJORD's kinetic-energy / Jacobian-norm penalty of this solve (0 if unused)
        loss = loss + getattr(flow, "regularization", 0.0)
        loss.backward()
        optimizer.step()
        schedule.step()
    return time.perf_counter() - start


@torch.no_grad()
def held_out_nll(flow, test: torch.Tensor) -> float:
    flow.eval()
    return -dist.TransformedDistribution(standard_normal(), [flow]).log_prob(test).mean().item()


def compare(name: str, args) -> List[dict]:
    make = DATASETS[name]
    train, test = make(args.n_train, seed=args.seed), make(args.n_test, seed=args.seed + 1)
    gaussian = dist.MultivariateNormal(train.mean(0), torch.cov(train.T))
    rows = [dict(dataset=name, model="gaussian", test_nll=-gaussian.log_prob(test).mean().item())]

    torch.manual_seed(args.seed)
    real_nvp = pyro_flows.real_nvp(2, num_layers=args.realnvp_layers, hidden_dims=args.hidden_dims)
    seconds = train_flow(real_nvp, train, args.steps, args.batch_size, args.lr, args.seed)
    rows.append(dict(dataset=name, model="real_nvp", test_nll=held_out_nll(real_nvp, test), train_s=seconds))

    for model, weight in [("ffjord", 0.0), ("ffjord_reg", args.reg_weight)]:
        torch.manual_seed(args.seed)
        ffjord = pyro_flows.ffjord(
            2,
            hidden_dims=args.hidden_dims,
            activation="tanh",
            rtol=args.tol,
            atol=args.tol,
            adjoint=args.adjoint,
            kinetic_weight=weight,
            frobenius_weight=weight,
        )
        seconds = train_flow(ffjord, train, args.steps, args.batch_size, args.lr, args.seed)
        train_nfe = ffjord.nfe
        nll = held_out_nll(ffjord, test)
        rows.append(
            dict(
                dataset=name,
                model=model,
                test_nll=nll,
                train_s=seconds,
                nfe_train=train_nfe,
                nfe_test=ffjord.nfe,
            )
        )
    print(format_table(rows), file=sys.stderr, flush=True)  # progress
    return rows


def format_table(rows: List[dict]) -> str:
    def cell(row, key, fmt):
        return fmt.format(row[key]) if key in row else "-"

    lines = [
        "| data | model | held-out NLL (nats) | train time (s) | nfe (last train step / test) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        nfe = f"{row['nfe_train']} / {row['nfe_test']}" if "nfe_train" in row else "-"
        lines.append(
            f"| {row['dataset']} | {row['model']} | {cell(row, 'test_nll', '{:.3f}')} | "
            f"{cell(row, 'train_s', '{:.1f}')} | {nfe} |"
        )
    return "\n".join(lines)


def parse_args(argv: Optional[List[str]] = None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--hidden-dims", type=int, nargs="+", default=[32, 32])
    parser.add_argument("--realnvp-layers", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--tol", type=float, default=1e-4, help="FFJORD rtol = atol")
    parser.add_argument(
        "--reg-weight", type=float, default=0.01, help="kinetic and Frobenius weight of the ffjord_reg model"
    )
    parser.add_argument("--adjoint", action="store_true", help="train FFJORD with the adjoint method")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few tiny steps (for the tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.datasets = args.datasets[:1]
        args.steps, args.batch_size, args.n_train, args.n_test = 2, 32, 64, 64
        args.hidden_dims, args.realnvp_layers, args.tol = [8], 2, 1e-3
    return args


def main(argv: Optional[List[str]] = None) -> List[dict]:
    args = parse_args(argv)
    rows = []
    for name in args.datasets:
        rows += compare(name, args)
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main()
