"""A banana-shaped 2-D posterior, exact by construction:

    a ~ N(0, 2),   b | a ~ N(0.5 (a^2 - 4), 1),

so E[a] = E[b] = 0, sd(a) = 2 and sd(b) = sqrt(0.25 * 2 * 2^4 + 1) = 3. Compares
AutoNormal, AutoMultivariateNormal, AutoIAFNormal and AutoRealNVP; writes ``banana.png``
and ``banana.md`` to ``--out``.

    python -m examples.banana [--smoke]
"""

import pyro
import pyro.distributions as dist
import torch

from examples.guide_comparison import run


def banana():
    a = pyro.sample("a", dist.Normal(0.0, 2.0))
    pyro.sample("b", dist.Normal(0.5 * (a.square() - 4.0), 1.0))


EXACT = {"a": {"mean": 0.0, "sd": 2.0}, "b": {"mean": 0.0, "sd": 3.0}}


def exact_samples(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    a = 2 * torch.randn(n, generator=g)
    return {"a": a, "b": 0.5 * (a.square() - 4) + torch.randn(n, generator=g)}


def main(argv=None):
    return run(
        argv,
        name="banana",
        doc=__doc__,
        model=banana,
        reference=EXACT,
        hard=("b", 0),
        title="Banana (2-D)",
        note="exact sd(b) = 3",
        reference_samples=exact_samples(4000),
        axes=(lambda s: s["a"], lambda s: s["b"]),
        labels=("a", "b"),
        steps=1000,
    )


if __name__ == "__main__":
    main()
