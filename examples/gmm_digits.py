"""A Gaussian mixture in 64 dimensions (lecture, Concept 10.2): 8x8 digits.

A GMM samples by picking a centre and adding Gaussian noise, so its samples look like
data only if its centres already do. This example fits GMMs with increasing numbers of
components and a RealNVP to dequantized 8x8 digits (scikit-learn's ``load_digits``,
64-D), reports held-out NLL in bits per dimension, and draws samples of each.

    python examples/gmm_digits.py            # writes docs/img/gmm_digits.png
    python examples/gmm_digits.py --smoke --out /tmp/x
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

from pyro_flows import Flow, GaussianMixture, real_nvp  # noqa: E402


def digits(seed: int = 0):
    """Dequantized digits in (0, 1)^64: (pixel + U(0, 1)) / 17; a seeded train/test split."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.tensor(load_digits().data, dtype=torch.float64)
    x = (pixels + torch.rand(pixels.shape, generator=g, dtype=torch.float64)) / 17.0
    order = torch.randperm(len(x), generator=g)
    return x[order[:1500]], x[order[1500:]]


def bits_per_dim(model, x) -> float:
    with torch.no_grad():
        return (-model.log_prob(x).mean() / (64 * math.log(2))).item()


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "img"))
    parser.add_argument("--components", type=int, nargs="+", default=[1, 10, 40])
    parser.add_argument("--nvp-steps", type=int, default=3000)
    parser.add_argument("--smoke", action="store_true", help="tiny run (for tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.components, args.nvp_steps = [2], 3
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    train_x, test_x = digits()
    results, samples = {}, {}
    for k in args.components:
        gmm = GaussianMixture(k, dim=64, covariance="full").double().fit_em(train_x, reg_covar=1e-3)
        results[f"GMM K={k} (train)"] = bits_per_dim(gmm, train_x)
        results[f"GMM K={k}"] = bits_per_dim(gmm, test_x)
        samples[f"GMM, K={k}"] = gmm.sample((10,))
    # RealNVP on logit-free (0, 1) data with a normal base: standardise first (an affine
    # map with a known log-determinant, added back below)
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-3)
    flow = Flow(real_nvp(64, num_layers=8, hidden_dims=(256, 256), mask="alternating")).double()
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    standard = (train_x - mean) / std
    for _ in range(args.nvp_steps):
        batch = standard[torch.randint(len(standard), (128,), generator=g)]
        loss = -flow.log_prob(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    log_det = std.log().sum()
    with torch.no_grad():
        for name, x in (("RealNVP (train)", train_x), ("RealNVP", test_x)):
            lp = flow.log_prob((x - mean) / std) - log_det
            results[name] = (-lp.mean() / (64 * math.log(2))).item()
        samples["RealNVP"] = flow.sample((10,)) * std + mean
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
