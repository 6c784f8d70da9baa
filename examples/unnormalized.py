"""Why a density model must be normalized.

Model the density as p_theta(x) = exp(f_theta(x)) with a small network f_theta and
maximise the log-likelihood sum_i f_theta(X_i) *without* normalizing. Nothing stops the
network from raising f everywhere: the objective grows without bound and the "density"
integrates to ever larger numbers. The same network with the normalizing constant
log Z(theta) = log int exp(f_theta) (by quadrature, possible in 1-D only) converges to a
proper density, the point of flows being to get this normalization for free in any
dimension.

    python -m examples.unnormalized            # writes outputs/examples/unnormalized.png
    python -m examples.unnormalized --smoke --out /tmp/x
"""

from __future__ import annotations

import argparse
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from examples import OUTPUT_DIR  # noqa: E402
from pyro_flows.data import make_bimodal  # noqa: E402

GRID = torch.linspace(-8.0, 12.0, 2001, dtype=torch.float64)


def network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)).double()


def log_normalizer(f: nn.Module) -> torch.Tensor:
    """log int exp f(x) dx over the grid (trapezoid rule in log space)."""
    values = f(GRID.unsqueeze(-1)).squeeze(-1)
    step = GRID[1] - GRID[0]
    ends = torch.logsumexp(values[[0, -1]], 0) - math.log(2)
    return torch.logsumexp(torch.cat([values[1:-1], ends.view(1)]), 0) + torch.log(step)


def train(data: torch.Tensor, normalize: bool, steps: int, lr: float = 1e-2):
    f = network()
    optimizer = torch.optim.Adam(f.parameters(), lr=lr)
    objective, mass = [], []
    for _ in range(steps):
        log_lik = f(data.unsqueeze(-1)).mean()
        log_z = log_normalizer(f)
        loss = -(log_lik - log_z) if normalize else -log_lik
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        objective.append(float((log_lik - (log_z if normalize else 0.0)).detach()))
        mass.append(float(log_z.detach()))
    return f, objective, mass


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(OUTPUT_DIR), help="folder for the PNGs")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--smoke", action="store_true", help="tiny run (for tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps = 30
    os.makedirs(args.out, exist_ok=True)
    data = make_bimodal(500, seed=0)
    f_raw, obj_raw, mass_raw = train(data, normalize=False, steps=args.steps)
    f_norm, obj_norm, mass_norm = train(data, normalize=True, steps=args.steps)
    print(
        f"unnormalized: 'log-likelihood' {obj_raw[0]:.2f} -> {obj_raw[-1]:.2f}, "
        f"log int exp f = {mass_raw[-1]:.2f} (should be 0)"
    )
    print(f"normalized:   log-likelihood {obj_norm[0]:.2f} -> {obj_norm[-1]:.2f}")

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(obj_raw, label="without normalization")
    axes[0].plot(obj_norm, label="normalized")
    axes[0].set(title="training objective (mean log-likelihood)", xlabel="step")
    axes[0].legend()
    axes[1].plot(mass_raw, label=r"$\log\int e^{f_\theta}$, unnormalized")
    axes[1].plot(mass_norm, label=r"$\log\int e^{f_\theta}$, normalized (subtracted)")
    axes[1].set(title="total 'probability' mass (log)", xlabel="step")
    axes[1].legend()
    with torch.no_grad():
        raw = f_raw(GRID.unsqueeze(-1)).squeeze(-1).exp()
        normalized = (f_norm(GRID.unsqueeze(-1)).squeeze(-1) - log_normalizer(f_norm)).exp()
    axes[2].hist(data.numpy(), bins=60, density=True, alpha=0.4, label="data")
    axes[2].plot(GRID, normalized, "C1", label="normalized model")
    axes[2].plot(GRID, raw / raw.max() * normalized.max(), "C0--", label="unnormalized (rescaled)")
    axes[2].set(title="learned densities", xlabel="x")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(args.out, "unnormalized.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print("wrote", path)
    return {"unnormalized": obj_raw, "normalized": obj_norm, "log_mass": mass_raw}


if __name__ == "__main__":
    main()
