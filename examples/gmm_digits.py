"""A Gaussian mixture in 64 dimensions: 8x8 digits.

A GMM samples by picking a centre and adding Gaussian noise, so its samples look like
data only if its centres already do. This example fits GMMs with increasing numbers of
components and a RealNVP to dequantized 8x8 digits (scikit-learn's ``load_digits``,
64-D), reports held-out NLL in bits per dimension, and draws samples of each.

    python -m examples.gmm_digits            # writes outputs/examples/gmm_digits.png
    python -m examples.gmm_digits --smoke --out /tmp/x
"""

from __future__ import annotations

import argparse
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from examples import OUTPUT_DIR  # noqa: E402
from pyro_flows import Flow, GaussianMixture, real_nvp  # noqa: E402


def digits(seed: int = 0):
    """Dequantized digits in (0, 1)^64: (pixel + U(0, 1)) / 17; a seeded train/test split."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.tensor(load_digits().data, dtype=torch.float64)
    x = (pixels + torch.rand(pixels.shape, generator=g, dtype=torch.float64)) / 17.0
    order = torch.randperm(len(x), generator=g)
    return x[order[:1500]], x[order[1500:]]


ALPHA = 0.05


def to_logit(x):
    """y = logit(a + (1 - 2a) x) and log|dy/dx| summed over the 64 pixels."""
    p = ALPHA + (1 - 2 * ALPHA) * x
    log_det = (math.log(1 - 2 * ALPHA) - torch.log(p) - torch.log1p(-p)).sum(-1)
    return torch.logit(p), log_det


def from_logit(y):
    return (torch.sigmoid(y) - ALPHA) / (1 - 2 * ALPHA)


def bits_per_dim(log_prob: torch.Tensor, reduce=torch.mean) -> float:
    return (-reduce(log_prob) / (64 * math.log(2))).item()


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(OUTPUT_DIR), help="folder for the PNGs")
    parser.add_argument("--components", type=int, nargs="+", default=[1, 10, 40])
    # 1500 images overfit a RealNVP quickly: held-out NLL is best after ~400-700 steps
    # of batch 128 and degrades after (see docs/one-d.md), hence the short default
    parser.add_argument("--nvp-steps", type=int, default=500)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--smoke", action="store_true", help="tiny run (for tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.components, args.nvp_steps, args.layers, args.hidden = [2], 3, 2, 8
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    train_x, test_x = digits()
    results, samples = {}, {}
    for k in args.components:
        gmm = GaussianMixture(k, dim=64, covariance="full").double().fit_em(train_x, reg_covar=1e-3)
        with torch.no_grad():
            results[f"GMM K={k} (train)"] = bits_per_dim(gmm.log_prob(train_x))
            results[f"GMM K={k}"] = bits_per_dim(gmm.log_prob(test_x))
            results[f"GMM K={k} (test median)"] = bits_per_dim(gmm.log_prob(test_x), torch.median)
        samples[f"GMM, K={k}"] = gmm.sample((10,))
    # RealNVP works in logit space, y = logit(a + (1 - 2a) x), as in Dinh et al. (2017):
    # bounded pixels become unbounded coordinates; the map's log-determinant is added back
    # so that the NLL is of x, comparable with the GMM's.
    flow = Flow(
        real_nvp(64, num_layers=args.layers, hidden_dims=(args.hidden, args.hidden), mask="alternating")
    )
    flow = flow.double()
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(1)
    train_y = to_logit(train_x)[0]
    for _ in range(args.nvp_steps):
        batch = train_y[torch.randint(len(train_y), (128,), generator=g)]
        loss = -flow.log_prob(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        for name, x in (("RealNVP (train)", train_x), ("RealNVP", test_x)):
            y, log_det = to_logit(x)
            results[name] = bits_per_dim(flow.log_prob(y) + log_det)
        results["RealNVP (test median)"] = bits_per_dim(
            flow.log_prob(to_logit(test_x)[0]) + to_logit(test_x)[1], torch.median
        )
        samples["RealNVP"] = from_logit(flow.sample((10,)))
    print("bits per dimension (lower is better):")
    for name, value in results.items():
        print(f"  {name:<22} {value:8.3f}")

    rows = {"data": test_x[:10], **samples}
    fig, axes = plt.subplots(len(rows), 10, figsize=(10, 1.1 * len(rows) + 0.4))
    for r, (name, images) in enumerate(rows.items()):
        for c in range(10):
            ax = axes[r, c]
            ax.imshow(images[c].clamp(0, 1).view(8, 8).numpy(), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    fig.tight_layout()
    path = os.path.join(args.out, "gmm_digits.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print("wrote", path)
    return results


if __name__ == "__main__":
    main()
