"""Eight schools, centered parameterisation (Rubin, 1981; the classic funnel in the wild):

    mu ~ N(0, 5),  tau ~ HalfCauchy(5),  theta_j ~ N(mu, tau),  y_j ~ N(theta_j, sigma_j).

The reference is exact up to quadrature: integrating theta out, y_j | mu, tau ~
N(mu, sqrt(sigma_j^2 + tau^2)), so p(mu, log tau | y) is evaluated on a fine grid, and
theta | mu, tau, y is Gaussian. Compares AutoNormal, AutoMultivariateNormal,
AutoIAFNormal and AutoRealNVP on the hard parameter tau; writes ``eight_schools.png``
and ``eight_schools.md`` to ``--out``.

    python -m examples.eight_schools [--smoke]
"""

import pyro
import pyro.distributions as dist
import torch

from examples.guide_comparison import run

Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(y=Y, sigma=SIGMA):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", len(y)):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def _posterior_grid(y, sigma):
    """The posterior of (mu, log tau), theta integrated out, on a grid: the grid's axes,
    its mesh and the normalized mass of each point."""
    mu = torch.linspace(-30, 45, 751, dtype=torch.float64)
    log_tau = torch.linspace(-9, 5, 701, dtype=torch.float64)
    m, lt = torch.meshgrid(mu, log_tau, indexing="ij")
    log_p = (
        dist.Normal(0.0, 5.0).log_prob(m) + dist.HalfCauchy(5.0).log_prob(lt.exp()) + lt
    )  # + log|d tau/d log tau|
    scale = (sigma.square() + lt.exp().unsqueeze(-1).square()).sqrt()
    log_p = log_p + dist.Normal(m.unsqueeze(-1), scale).log_prob(y).sum(-1)
    w = (log_p - log_p.max()).exp()
    return mu, log_tau, m, lt, w / w.sum()


def log_tau_cdf(values, y=Y, sigma=SIGMA) -> torch.Tensor:
    """Exact posterior P(log tau <= v) for each v of ``values`` (quadrature: each grid
    point's mass spread over its cell, interpolated linearly between the points)."""
    _, log_tau, _, _, w = _posterior_grid(y.double(), sigma.double())
    mass = w.sum(0)
    cdf = mass.cumsum(0) - mass / 2  # at the points, the middles of their cells
    v = torch.as_tensor(values, dtype=torch.float64).clamp(log_tau[0], log_tau[-1])
    i = torch.searchsorted(log_tau, v).clamp(1, len(log_tau) - 1)
    frac = (v - log_tau[i - 1]) / (log_tau[i] - log_tau[i - 1])
    return cdf[i - 1] + frac * (cdf[i] - cdf[i - 1])


def quadrature_reference(n_draws=4000, seed=1, y=Y, sigma=SIGMA):
    """Exact moments (grid over mu and log tau) and exact posterior draws."""
    y, sigma = y.double(), sigma.double()
    mu, log_tau, m, lt, w = _posterior_grid(y, sigma)
    tau = lt.exp()
    # theta_j | mu, tau, y: precision-weighted average of y_j and mu
    prec = 1 / sigma.square() + 1 / tau.unsqueeze(-1).square()
    t_mean = (y / sigma.square() + m.unsqueeze(-1) / tau.unsqueeze(-1).square()) / prec
    t_var = 1 / prec
    wt = w.unsqueeze(-1)
    theta_mean = (wt * t_mean).sum((0, 1))
    theta_sd = ((wt * (t_var + t_mean.square())).sum((0, 1)) - theta_mean.square()).sqrt()

    def moments(v):
        mean = (w * v).sum()
        return {"mean": mean, "sd": ((w * v.square()).sum() - mean.square()).sqrt()}

    exact = {"mu": moments(m), "tau": moments(tau), "theta": {"mean": theta_mean, "sd": theta_sd}}
    g = torch.Generator().manual_seed(seed)
    idx = torch.multinomial(w.reshape(-1), n_draws, replacement=True, generator=g)
    dm, dl = mu[1] - mu[0], log_tau[1] - log_tau[0]
    mu_s = m.reshape(-1)[idx] + dm * (torch.rand(n_draws, generator=g, dtype=torch.float64) - 0.5)
    tau_s = (lt.reshape(-1)[idx] + dl * (torch.rand(n_draws, generator=g, dtype=torch.float64) - 0.5)).exp()
    prec_s = 1 / sigma.square() + 1 / tau_s.unsqueeze(-1).square()
    mean_s = (y / sigma.square() + mu_s.unsqueeze(-1) / tau_s.unsqueeze(-1).square()) / prec_s
    theta_s = mean_s + prec_s.rsqrt() * torch.randn(n_draws, len(y), generator=g, dtype=torch.float64)
    return exact, {"mu": mu_s.float(), "tau": tau_s.float(), "theta": theta_s.float()}


def main(argv=None):
    exact, draws = quadrature_reference()
    tau = f"E[tau] = {exact['tau']['mean']:.3f}, sd(tau) = {exact['tau']['sd']:.3f}"
    print(f"exact (quadrature): {tau}")
    return run(
        argv,
        name="eight_schools",
        doc=__doc__,
        model=eight_schools,
        reference=exact,
        hard=("tau", 0),
        title="Eight schools (centered)",
        note=f"reference by quadrature: {tau}",
        reference_samples=draws,
        axes=(lambda s: s["tau"].log(), lambda s: s["theta"][..., 0]),
        labels=("log tau", "theta_1"),
    )


if __name__ == "__main__":
    main()
