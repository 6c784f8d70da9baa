"""Tutorial: an amortized posterior for a simulator (neural posterior estimation,
Papamakarios & Murray, 2016; Greenberg et al., 2019).

The simulator is the two-moons model of the SBI benchmark (Lueckmann et al., 2021):
theta ~ U(-1, 1)^2, and x is a noisy point on a half circle shifted by a function of
theta that forgets the sign of theta_1 + theta_2, so every x has a posterior with two
thin crescents. We never write the likelihood down for fitting: we only simulate.

1. ``fit_posterior(simulator, prior, num_simulations)`` draws theta from the prior, runs
   the simulator once on the batch and trains a conditional RealNVP q(theta | x) on the
   pairs (z-scored internally). The prior is a box: the flow is fit to theta itself,
   draws outside the box are rejected and ``log_prob`` is renormalized by the flow's
   mass inside it.
2. The result is amortized: ``posterior.sample(x, n)`` and ``posterior.log_prob(theta, x)``
   work for any observation x without retraining.
3. We check it against the exact posterior (the likelihood has a closed form here, so a
   fine grid gives a reference) by the classifier two-sample test (C2ST, 0.5 is perfect)
   and KL(p || q).

Writes ``sbi_posterior.png`` and ``sbi_posterior.md`` to ``--out``.

    python -m examples.sbi_posterior            # a few minutes on one core
    python -m examples.sbi_posterior --smoke    # seconds
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.sbi import TwoMoonsReference, c2st, two_moons, two_moons_prior
from examples import OUTPUT_DIR
from examples.guide_comparison import command_line
from pyro_flows.infer import fit_posterior


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--simulations", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUTPUT_DIR)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    fit_options = {"max_epochs": 2} if args.smoke else {}
    num_simulations = 300 if args.smoke else args.simulations
    draws = 200 if args.smoke else 1000

    # 1. fit: theta ~ prior, x = simulator(theta), maximise log q(theta | x)
    prior = two_moons_prior()
    posterior = fit_posterior(two_moons, prior, num_simulations, seed=args.seed, **fit_options)
    h = posterior.history
    print(f"trained {h['epochs']} epochs in {h['seconds']:.1f} s (best held-out epoch {h['best_epoch']})")

    # 2. amortized: two observations, no retraining in between
    observations = torch.tensor([[0.0, 0.0], [0.2, -0.1]])
    rows, panels = [], []
    for x_obs in observations:
        samples = posterior.sample(x_obs, draws)
        reference = TwoMoonsReference(x_obs)
        exact = reference.sample(draws)
        with torch.no_grad():
            kl = float((reference.log_prob(exact) - posterior.log_prob(exact, x_obs)).mean())
        accuracy = c2st(exact, samples)
        rows.append(f"| ({x_obs[0]:.1f}, {x_obs[1]:.1f}) | {accuracy:.3f} | {kl:.3f} |")
        panels.append((x_obs, samples, exact))
        print(f"x = {x_obs.tolist()}: C2ST {accuracy:.3f}, KL(p || q) {kl:.3f}")

    # 3. write the table and the figure
    table = "\n".join(["| x | C2ST | KL(p \\|\\| q) |", "|---|---|---|", *rows])
    text = (
        f"Two moons, {num_simulations} simulations, {h['epochs']} epochs, {h['seconds']:.0f} s. "
        f"Command: `{command_line('examples.sbi_posterior', argv)}`\n\n{table}\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sbi_posterior.md").write_text(text)
    figure(panels, args.out / "sbi_posterior.png")
    print(text)


def figure(panels, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for ax, (x_obs, samples, exact) in zip(axes[0], panels, strict=True):
        ax.scatter(*samples.T.numpy(), s=2, alpha=0.3, color="C0", label="q(theta | x)")
        # the exact draws on top: the crescents are thin, and would hide under q's
        ax.scatter(*exact.T.numpy(), s=1, alpha=0.3, color="black", label="exact (grid)")
        ax.set(xlim=(-1, 1), ylim=(-1, 1), xlabel="theta_1", ylabel="theta_2")
        ax.set_title(f"x = ({x_obs[0]:.1f}, {x_obs[1]:.1f})", fontsize=9)
    axes[0][0].legend(loc="lower left", fontsize=7, markerscale=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
