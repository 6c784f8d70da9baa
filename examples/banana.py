"""A banana-shaped 2-D posterior, exact by construction:

    a ~ N(0, 2),   b | a ~ N(0.5 (a^2 - 4), 1),

so E[a] = E[b] = 0, sd(a) = 2 and sd(b) = sqrt(0.25 * 2 * 2^4 + 1) = 3. Compares
AutoNormal, AutoMultivariateNormal, AutoIAFNormal and AutoRealNVP; writes ``banana.png``
and ``banana.md`` to ``--out``.

    python -m examples.banana [--smoke]
"""

import argparse

import pyro
import pyro.distributions as dist
import torch

from examples.guide_comparison import (
    command_line,
    common_args,
    compare,
    describe_optimizer,
    scatter_figure,
    selected_guides,
    write_table,
)


def banana():
    a = pyro.sample("a", dist.Normal(0.0, 2.0))
    pyro.sample("b", dist.Normal(0.5 * (a.square() - 4.0), 1.0))


EXACT = {"a": {"mean": 0.0, "sd": 2.0}, "b": {"mean": 0.0, "sd": 3.0}}


def exact_samples(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    a = 2 * torch.randn(n, generator=g)
    return {"a": a, "b": 0.5 * (a.square() - 4) + torch.randn(n, generator=g)}


def main(argv=None):
    parser = common_args(argparse.ArgumentParser(description=__doc__), steps=1000, lr=0.01, particles=32)
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps = 5
    torch.manual_seed(args.seed)
    results = compare(
        banana, EXACT, ("b", 0), args.steps, args.lr, args.particles, selected_guides(args), args.seed
    )
    header = (
        f"Banana (2-D), {args.steps} steps, {describe_optimizer(args.lr, args.particles)}; exact "
        f"sd(b) = 3. Command: `{command_line('examples.banana', argv)}`"
    )
    print(write_table(results, args.out / f"banana{args.tag}.md", "b", header))
    scatter_figure(
        results,
        exact_samples(4000),
        lambda s: s["a"],
        lambda s: s["b"],
        args.out / f"banana{args.tag}.png",
        ("a", "b"),
    )
    return results


if __name__ == "__main__":
    main()
