"""Neal's funnel in 10 dimensions: AutoNormal, AutoMultivariateNormal, AutoIAFNormal and
our AutoRealNVP against the exact marginal v ~ N(0, 3).

    v ~ N(0, 3),   x_i | v ~ N(0, exp(v / 2)),  i = 1..9.

The model has no data, so the posterior is the prior and log p(data) = 0: the ELBO is
minus KL(q || p). Writes ``funnel.png`` and ``funnel.md`` to ``--out``.

    python -m examples.funnel            # the full comparison (a few minutes on 1 core)
    python -m examples.funnel --smoke    # seconds
"""

import math

import pyro
import pyro.distributions as dist
import torch

from examples.guide_comparison import run


def funnel():
    v = pyro.sample("v", dist.Normal(0.0, 3.0))
    # unsqueeze: under vectorised particles v has a batch dimension
    pyro.sample("x", dist.Normal(torch.zeros(9), (v / 2).exp().unsqueeze(-1)).to_event(1))


# Exact moments: sd(x_i) = sqrt(E[exp(v)]) = exp(9 / 4).
EXACT = {
    "v": {"mean": 0.0, "sd": 3.0},
    "x": {"mean": torch.zeros(9), "sd": torch.full((9,), math.exp(9 / 4))},
}


def exact_samples(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    v = 3 * torch.randn(n, generator=g)
    return {"v": v, "x": (v / 2).exp().unsqueeze(-1) * torch.randn(n, 9, generator=g)}


def main(argv=None):
    return run(
        argv,
        name="funnel",
        doc=__doc__,
        model=funnel,
        reference=EXACT,
        hard=("v", 0),
        title="Neal's funnel (10-D)",
        note="ELBO and k-hat from 4000 importance weights; exact sd(v) = 3",
        reference_samples=exact_samples(4000),
        axes=(lambda s: s["v"], lambda s: s["x"][..., 0]),
        labels=("v", "x_1"),
    )


if __name__ == "__main__":
    main()
