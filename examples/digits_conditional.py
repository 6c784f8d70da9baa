"""Class-conditional Glow on sklearn's 8x8 digits: one sample grid per class.

The flow is ``glow((1, 8, 8), num_scales=2, context_dim=10, split_prior="learned")``: every
coupling's conditioner and every learned prior also sees the one-hot label (Kingma &
Dhariwal, 2018, class-conditional Glow). It is trained by maximum likelihood on uniformly
dequantized training images with their labels, scored on the test images given their
labels (bits/dim), and used to draw ten samples of each class, at temperature ``T``
(base noise scaled by ``T``, as in the Glow paper), into a PNG.

    OMP_NUM_THREADS=1 python -m examples.digits_conditional            # a few minutes
    OMP_NUM_THREADS=1 python -m examples.digits_conditional --smoke    # a few steps
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyro.distributions as dist
import torch

import pyro_flows
from examples import OUTPUT_DIR
from pyro_flows import bits_per_dim
from pyro_flows.data import DIGITS_LEVELS, load_digit_labels, load_digits
from pyro_flows.transforms import Logit, dequantize

SHAPE = (1, 8, 8)
NUM_CLASSES = 10


def make_model(smoke: bool = False):
    """The conditional flow (ending in the logit preprocessing) and its distribution."""
    flow = pyro_flows.glow(
        SHAPE,
        num_scales=2,
        steps_per_scale=1 if smoke else 4,
        hidden_channels=8 if smoke else 32,
        num_blocks=1,
        split_prior="learned",
        context_dim=NUM_CLASSES,
    )
    logit = Logit(SHAPE)
    base = dist.Normal(torch.zeros(SHAPE), torch.ones(SHAPE)).to_event(3)
    return flow, dist.ConditionalTransformedDistribution(base, [flow, logit])


def one_hot(labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, NUM_CLASSES).to(torch.get_default_dtype())


def train(flow, model, levels, labels, steps: int, batch_size: int = 64, lr: float = 2e-3, seed: int = 0):
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
    flow.train()
    for _ in range(steps):
        idx = torch.randint(len(levels), (batch_size,))
        x = dequantize(levels[idx], DIGITS_LEVELS)
        loss = -model.condition(one_hot(labels[idx])).log_prob(x).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 100.0)
        optimizer.step()
    flow.eval()


@torch.no_grad()
def test_bits_per_dim(flow, model, levels, labels, seed: int = 1) -> float:
    flow.eval()
    y = dequantize(levels, DIGITS_LEVELS, generator=torch.Generator().manual_seed(seed))
    log_prob = model.condition(one_hot(labels)).log_prob(y)
    return float(bits_per_dim(log_prob, 64, DIGITS_LEVELS).mean())


@torch.no_grad()
def class_samples(flow, per_class: int = 10, temperature: float = 0.7, seed: int = 0) -> torch.Tensor:
    """``(10, per_class, 8, 8)`` samples in [0, 1], row ``k`` given label ``k``."""
    torch.manual_seed(seed)
    labels = one_hot(torch.arange(NUM_CLASSES).repeat_interleave(per_class))
    u = temperature * torch.randn(len(labels), *SHAPE)
    x = Logit(SHAPE)(flow.condition(labels)(u))
    return x.reshape(NUM_CLASSES, per_class, 8, 8).clamp(0, 1)


def save_grid(images: torch.Tensor, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = images.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.6, rows * 0.6 + 0.4), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            axes[r][c].imshow(images[r, c].cpu().numpy(), cmap="gray_r", vmin=0, vmax=1)
            axes[r][c].axis("off")
    fig.suptitle(title, fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--smoke", action="store_true", help="a few steps with a tiny model")
    parser.add_argument("--out", type=Path, default=OUTPUT_DIR, help="folder for the PNG")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    flow, model = make_model(args.smoke)
    levels, labels = load_digits("train"), load_digit_labels("train")
    start = time.process_time()
    steps = 4 if args.smoke else args.steps
    train(flow, model, levels, labels, steps=steps, seed=args.seed)
    seconds = time.process_time() - start
    test = test_bits_per_dim(flow, model, load_digits("test"), load_digit_labels("test"))
    samples = class_samples(flow, temperature=args.temperature, seed=args.seed)
    path = args.out / "glow_class_conditional_samples.png"
    save_grid(samples, path, f"class-conditional Glow: row k given label k (T = {args.temperature})")
    print(
        f"class-conditional glow: {args.steps} steps in {seconds:.0f} CPU-s, test {test:.3f} bits/dim; {path}"
    )
    return {"test_bits_per_dim": test, "cpu_seconds": seconds, "steps": steps, "samples": str(path)}


if __name__ == "__main__":
    main()
