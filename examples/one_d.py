"""1-D flows pictured: a CDF flow to three bases, and inverse-CDF sampling, as PNG files.

A mixture-CDF flow is fitted by maximum likelihood to a bimodal data set, then used with
three bases. For each base the figure shows the data histogram with the learned density,
the learned map x -> z = G^{-1}(F(x)), and the histogram of z = f(X) over the data against
the base density: Uniform(0, 1), Beta(5, 5) and N(0, 1). A fourth figure shows
inverse-CDF sampling.

    python -m examples.one_d                          # writes outputs/examples/one_d_*.png
    python -m examples.one_d --smoke --out /tmp/x     # seconds, for the tests
"""

from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402

from examples import OUTPUT_DIR  # noqa: E402
from pyro_flows import Flow, GaussianMixture, cdf_flow, inverse_cdf_sample  # noqa: E402
from pyro_flows.data import make_bimodal  # noqa: E402

BASES = {
    "uniform": ("Uniform([0, 1])", stats.uniform()),
    "beta": ("Beta(5, 5)", stats.beta(5, 5)),
    "normal": ("N(0, 1)", stats.norm()),
}


def fit(data: torch.Tensor, num_components: int, steps: int, lr: float = 0.05) -> Flow:
    """Maximum likelihood for a CDF flow (full batch Adam)."""
    flow = Flow(cdf_flow(num_components)).double()
    flow.transform.mixture.init_from_data(data)
    optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
    for _ in range(steps):
        loss = -flow.log_prob(data).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return flow


def with_base(fitted: Flow, base: str, num_components: int) -> Flow:
    """The same learned F with another base: only G^{-1} changes."""
    flow = Flow(cdf_flow(num_components, base=base)).double()
    flow.transform.mixture.load_state_dict(fitted.transform.mixture.state_dict())
    return flow


@torch.no_grad()
def to_latent(flow: Flow, x: torch.Tensor) -> torch.Tensor:
    return flow.transform.inv(x)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(OUTPUT_DIR), help="folder for the PNGs")
    parser.add_argument("--components", type=int, default=5)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--smoke", action="store_true", help="tiny run (for tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.n = 10, 300
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)

    data, held_out = make_bimodal(args.n, seed=0), make_bimodal(args.n, seed=1)
    fitted = fit(data, args.components, args.steps)
    gmm = GaussianMixture(args.components).double().fit_em(data)
    with torch.no_grad():
        flow_nll = -fitted.log_prob(held_out).mean().item()
        gmm_nll = -gmm.log_prob(held_out).mean().item()
    print(f"held-out NLL (nats): CDF flow {flow_nll:.4f}, EM GMM {gmm_nll:.4f} (K={args.components})")

    grid = torch.linspace(-4.5, 9.0, 1000, dtype=torch.float64)
    with torch.no_grad():
        density = fitted.log_prob(grid).exp()
    written = []
    for base, (label, reference) in BASES.items():
        flow = with_base(fitted, base, args.components)
        z_grid, z_data = to_latent(flow, grid), to_latent(flow, data)
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        axes[0].hist(data.numpy(), bins=80, density=True, alpha=0.5, label="data")
        axes[0].plot(grid, density, "C3", label="learned density")
        axes[0].set(title="data and learned density", xlabel="x")
        axes[0].legend()
        axes[1].plot(grid, z_grid, "C2")
        axes[1].set(title=r"learned flow $z = f_\theta(x)$", xlabel="x", ylabel="z")
        axes[2].hist(z_data.numpy(), bins=60, density=True, alpha=0.5, label="z = f(x), x in data")
        zz = torch.linspace(float(z_data.min()), float(z_data.max()), 400)
        axes[2].plot(zz, reference.pdf(zz.numpy()), "k", label=label)
        axes[2].set(title=f"latent against the base {label}", xlabel="z")
        axes[2].legend()
        fig.tight_layout()
        path = os.path.join(args.out, f"one_d_{base}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
        ks = stats.kstest(z_data.numpy(), reference.cdf)
        print(f"{label:>16}: KS statistic of the latent vs the base {ks.statistic:.4f} (p = {ks.pvalue:.3f})")

    samples = inverse_cdf_sample(fitted, args.n, torch.Generator().manual_seed(1))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    with torch.no_grad():
        cdf = fitted.transform.mixture.inv(grid)
    u = torch.rand(12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x_u = fitted.transform.mixture(u).detach()
    axes[0].plot(grid, cdf, "C0", label=r"learned $F_\theta$")
    for ui, xi in zip(u.tolist(), x_u.tolist(), strict=True):
        axes[0].plot([grid[0], xi, xi], [ui, ui, 0], "C1", lw=0.7)
    axes[0].set(title=r"inverse-CDF sampling $X = F_\theta^{-1}(U)$", xlabel="x", ylabel="u")
    axes[1].hist(samples.numpy(), bins=80, density=True, alpha=0.5, label="samples")
    axes[1].plot(grid, density, "C3", label="learned density")
    axes[1].legend()
    axes[1].set(title="samples from the fitted flow", xlabel="x")
    fig.tight_layout()
    path = os.path.join(args.out, "one_d_inverse_cdf.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    written.append(path)
    print("wrote", ", ".join(written))
    return {"flow_nll": flow_nll, "gmm_nll": gmm_nll, "files": written}


if __name__ == "__main__":
    main()
