"""A VAE on scikit-learn's 8x8 digits with a conditional-flow encoder and a flow prior,
against the same VAE with a Normal encoder and a N(0, I) prior.

    x in [0, 1]^64 (pixel intensities / 16),   p(x | z) = prod ContinuousBernoulli(decoder(z)),
    flow VAE:   q(z | x) = Normal(mu(x), sigma(x)) pushed through conditional RealNVP(context = h(x)),
                p(z)     = RealNVP prior (learned, registered with pyro.module)
    baseline:   q(z | x) = Normal(mu(x), sigma(x)),  p(z) = N(0, I)

Both share the encoder trunk, decoder, optimiser, epochs and seed. Reports the test ELBO
per digit (higher is better) and writes ``vae_digits.md`` and ``vae_digits.png``.

    python -m examples.vae_digits            # a few minutes on one core
    python -m examples.vae_digits --smoke    # seconds
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from sklearn.datasets import load_digits
from torch import nn

import pyro_flows
from examples import OUTPUT_DIR
from examples.guide_comparison import command_line
from pyro_flows.infer import moments_table


def digits(seed=0, test_fraction=0.2):
    x = torch.tensor(load_digits().data, dtype=torch.float32) / 16.0
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(test_fraction * len(x))
    return x[perm[n_test:]], x[perm[:n_test]]


class Encoder(nn.Module):
    """x -> features h(x) (the flow's context) and the Normal base's loc and scale."""

    def __init__(self, z_dim, hidden=128, context_dim=32):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, context_dim), nn.ReLU()
        )
        self.loc_scale = nn.Linear(context_dim, 2 * z_dim)

    def forward(self, x):
        h = self.trunk(x)
        loc, raw = self.loc_scale(h).chunk(2, -1)
        return h, loc, nn.functional.softplus(raw) + 1e-4


class VAE(nn.Module):
    def __init__(self, z_dim=8, flows=True, hidden=128, context_dim=32, num_layers=4):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = Encoder(z_dim, hidden, context_dim)
        self.decoder = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, 64))
        self.flows = flows
        if flows:
            self.posterior_flow = pyro_flows.conditional_real_nvp(z_dim, context_dim, num_layers, (64,))
            self.prior_flow = pyro_flows.real_nvp(z_dim, num_layers, (64,))

    def prior(self, like):
        base = dist.Normal(like.new_zeros(self.z_dim), 1.0).to_event(1)
        return dist.TransformedDistribution(base, [self.prior_flow]) if self.flows else base

    def model(self, x):
        pyro.module("decoder", self.decoder)
        if self.flows:
            pyro.module("prior_flow", self.prior_flow)  # a learnable prior
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", self.prior(x))
            logits = self.decoder(z)
            pyro.sample("x", dist.ContinuousBernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        h, loc, scale = self.encoder(x)
        q = dist.Normal(loc, scale).to_event(1)
        if self.flows:
            pyro.module("posterior_flow", self.posterior_flow)
            q = dist.ConditionalTransformedDistribution(q, [self.posterior_flow]).condition(h)
        with pyro.plate("data", len(x)):
            pyro.sample("z", q)


@torch.no_grad()
def test_elbo(vae, x, particles=32):
    """Per-digit ELBO on held-out data (nats), averaged over ``particles`` draws."""
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    return -elbo.loss(vae.model, vae.guide, x) / len(x)


def train(vae, x_train, epochs, batch_size=100, lr=2e-3, seed=0):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO(max_plate_nesting=1))
    history = []
    start = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(x_train))
        total = sum(svi.step(x_train[perm[i : i + batch_size]]) for i in range(0, len(x_train), batch_size))
        history.append(-total / len(x_train))
    return history, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--z-dim", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUTPUT_DIR, help="folder for the figure and the table")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    x_train, x_test = digits(args.seed)
    if args.smoke:
        args.epochs, x_train, x_test = 1, x_train[:200], x_test[:50]
    rows, histories = [], {}
    for name, flows in (("Normal guide, N(0, I) prior", False), ("flow guide + flow prior (ours)", True)):
        torch.manual_seed(args.seed)
        vae = VAE(args.z_dim, flows)
        history, seconds = train(vae, x_train, args.epochs, seed=args.seed)
        histories[name] = history
        pyro.set_rng_seed(args.seed + 1)
        elbo = test_elbo(vae, x_test)
        rows.append(
            {
                "model": name,
                "train ELBO": history[-1],
                "test ELBO": elbo,
                "seconds": seconds,
                "parameters": sum(p.numel() for p in vae.parameters()),
            }
        )
        print(
            f"{name:32s} train ELBO {history[-1]:8.2f}  test ELBO {elbo:8.2f}  ({seconds:.0f} s)", flush=True
        )
    header = (
        f"VAE on sklearn digits (64-D, {len(x_train)} train / {len(x_test)} test), z_dim {args.z_dim}, "
        f"{args.epochs} epochs, Adam 2e-3, batch 100; ELBO in nats per digit (ContinuousBernoulli likelihood, "
        f"higher is better), test ELBO with 32 particles. Command: `{command_line('examples.vae_digits', argv)}`"
    )
    text = f"{header}\n\n{moments_table(rows, digits=2)}\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"vae_digits{'_smoke' if args.smoke else ''}.md").write_text(text)
    print(text)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, history in histories.items():
        ax.plot(range(1, len(history) + 1), history, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("train ELBO per digit")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / f"vae_digits{'_smoke' if args.smoke else ''}.png", dpi=110)
    return rows


if __name__ == "__main__":
    main()
