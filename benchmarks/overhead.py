"""Per-call overhead at a small batch, where the networks cost little and what each
library does around them (Python, checks, copies) shows; a proxy for GPU behaviour,
where the arithmetic is fast and the per-layer overhead is what remains.

Reports the *minimum* over many interleaved calls (the minimum is the least disturbed
by other load), in microseconds, for ``log_prob`` without gradients and a training step.

    OMP_NUM_THREADS=1 python -m benchmarks.overhead --dim 16 --batch 64
"""

from __future__ import annotations

import argparse
import time

import torch

from .contenders import NAMES, available, build, set_validation


def measure(dim: int, batch: int, calls: int, names, layers: int, hidden) -> dict:
    x = torch.randn(batch, dim)
    steps = {}
    for name in names:
        torch.manual_seed(0)
        contender = build(name, dim, layers, hidden)
        optimizer = torch.optim.Adam(contender.module.parameters(), lr=1e-4)

        @torch.no_grad()
        def log_prob(contender=contender):
            contender.log_prob(x.clone())

        def train(contender=contender, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            (-contender.log_prob(x.clone()).mean()).backward()
            optimizer.step()

        steps[name] = {"log_prob": log_prob, "train": train}
    best = {name: {op: float("inf") for op in ("log_prob", "train")} for name in names}
    for _ in range(calls):
        for op in ("log_prob", "train"):
            for name in names:
                start = time.perf_counter()
                steps[name][op]()
                best[name][op] = min(best[name][op], time.perf_counter() - start)
    return {name: {op: 1e6 * t for op, t in ops.items()} for name, ops in best.items()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    p.add_argument("--libs", nargs="+", default=list(NAMES), choices=NAMES)
    p.add_argument("--validate", action="store_true")
    args = p.parse_args(argv)
    names = available(args.libs)
    set_validation(names, args.validate)
    result = measure(args.dim, args.batch, args.calls, names, args.layers, args.hidden)
    print(f"min over {args.calls} calls, dim {args.dim}, batch {args.batch}, validation {args.validate} (µs)")
    for name, ops in result.items():
        print(f"{name:>10}: log_prob {ops['log_prob']:8.0f}   train {ops['train']:8.0f}")
    return result


if __name__ == "__main__":
    main()
