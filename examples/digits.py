"""Train multi-scale RealNVP, Glow and a 64-D vector RealNVP on sklearn's 8x8 digits.

Each model gets the same wall-clock budget on the CPU, is scored on the held-out test
split in bits/dim (17 grey levels, uniform dequantization; see pyro_flows.metrics), and
writes a grid of samples and of reconstructions as PNG. Two independent-pixel baselines
fitted to the same training data are reported alongside.

    python -m examples.digits                 # ~2 minutes per model
    python -m examples.digits --seconds 30    # quicker
    python -m examples.digits --smoke         # a few steps, tiny models (used by the tests)
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import torch

import pyro_flows
from examples import OUTPUT_DIR
from pyro_flows import Flow, bits_per_dim
from pyro_flows.data import DIGITS_LEVELS, load_digits
from pyro_flows.transforms import Logit, MultiScale, dequantize

SHAPE = (1, 8, 8)
NUM_DIMS = 64


# ------------------------------------------------------------------------ models
def make_models(smoke: bool = False) -> dict:
    """The three flows, each ending in a :class:`Logit` so log_prob is a density on [0, 1]^D."""
    width = 8 if smoke else 32
    blocks = 1 if smoke else 2
    image = pyro_flows.real_nvp_image(SHAPE, num_scales=2, hidden_channels=width, num_blocks=blocks)
    glow = pyro_flows.glow(
        SHAPE, num_scales=2, steps_per_scale=2 if smoke else 4, hidden_channels=width, num_blocks=blocks
    )
    vector = pyro_flows.real_nvp(
        NUM_DIMS, num_layers=4 if smoke else 8, hidden_dims=(32,) if smoke else (256, 256)
    )
    return {
        "real_nvp_image": Flow([image, Logit(SHAPE)]),
        "glow": Flow([glow, Logit(SHAPE)]),
        "real_nvp_vector": Flow([vector, Logit((NUM_DIMS,))]),
    }


def as_event(model: Flow, x: torch.Tensor) -> torch.Tensor:
    """Images (N, 1, 8, 8) in the model's event shape (flattened for the vector flow)."""
    return x.reshape(x.shape[0], *model.event_shape)


# ------------------------------------------------------------------- train / eval
def learning_rate(
    lr: float, step: int, progress: float, schedule: str = "constant", warmup: int = 0
) -> float:
    """The learning rate of step ``step`` (from 0) at ``progress`` in [0, 1] of the budget:
    ``lr`` throughout (``"constant"``) or decayed to zero along half a cosine
    (``"cosine"``), times a linear warm-up over the first ``warmup`` steps."""
    factor = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if schedule == "cosine":
        factor *= 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    elif schedule != "constant":
        raise ValueError(f"unknown schedule {schedule!r}; expected 'constant' or 'cosine'")
    return lr * factor


class WeightAverage:
    """Exponential moving average of a model's parameters (buffers copied), with the usual
    warm-up of the decay, ``min(decay, (1 + t) / (10 + t))`` at update ``t``."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model, self.decay, self.updates = copy.deepcopy(model), decay, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for average, current in zip(self.model.parameters(), model.parameters(), strict=True):
            average.lerp_(current, 1.0 - decay)
        for average, current in zip(self.model.buffers(), model.buffers(), strict=True):
            average.copy_(current)
        self.updates += 1


def train(
    model: Flow,
    levels: torch.Tensor,
    seconds: float = 60.0,
    max_steps: int | None = None,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    validation: torch.Tensor | None = None,
    eval_every: int = 50,
    cpu_seconds: float = math.inf,
    schedule: str = "constant",
    warmup: int = 0,
    ema: float = 0.0,
) -> int:
    """Maximum likelihood on freshly dequantized batches for ``seconds`` of wall time,
    ``cpu_seconds`` of CPU time (``time.process_time``, validation included) or
    ``max_steps`` steps, whichever ends first. With ``validation`` levels, the model is
    scored on them every ``eval_every`` steps and the best state is restored at the end
    (early stopping: 1,257 training images are few for the larger flows). Batches and
    their noise come from their own generator seeded with ``seed``, so every model sees
    the same batches whatever randomness it draws itself (e.g. a variational
    dequantizer). ``schedule="cosine"`` decays the learning rate to zero over the step
    or CPU-time budget (whichever is further along), after a linear warm-up of
    ``warmup`` steps; ``ema > 0`` keeps an exponential moving average of the weights
    with that decay, which is what is validated and kept. Returns the number of steps
    taken."""
    torch.manual_seed(seed)
    batches = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    best, best_state, average = math.inf, None, None
    start, start_cpu, step = time.perf_counter(), time.process_time(), 0

    def progress() -> float:
        done = [(time.perf_counter() - start) / seconds, (time.process_time() - start_cpu) / cpu_seconds]
        if max_steps is not None:
            done.append(step / max_steps)
        return max(done)

    while progress() < 1.0:
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(lr, step, progress(), schedule, warmup)
        batch = levels[torch.randint(len(levels), (batch_size,), generator=batches)]
        x = as_event(model, dequantize(batch, DIGITS_LEVELS, generator=batches))
        loss = -model.log_prob(x).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
        optimizer.step()
        step += 1
        if ema > 0:
            # after the first step, so data-initialised layers (ActNorm) start initialised
            average = WeightAverage(model, ema) if average is None else average
            average.update(model)
        scored = model if average is None else average.model
        if validation is not None and step % eval_every == 0:
            score = test_bits_per_dim(scored, validation, seed=3)
            if score < best:
                best, best_state = score, copy.deepcopy(scored.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    elif average is not None:
        model.load_state_dict(average.model.state_dict())
    model.eval()
    return step


@torch.no_grad()
def test_bits_per_dim(model: Flow, levels: torch.Tensor, seed: int = 1) -> float:
    """Mean bits/dim of the levels under the model, dequantized once with a fixed seed
    (a variational dequantizer's own draws are seeded too, without touching the global
    random state)."""
    model.eval()
    y = dequantize(levels, DIGITS_LEVELS, generator=torch.Generator().manual_seed(seed))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        log_prob = model.log_prob(as_event(model, y))
    return float(bits_per_dim(log_prob, NUM_DIMS, DIGITS_LEVELS).mean())


def histogram_baseline(train_levels: torch.Tensor, test_levels: torch.Tensor) -> float:
    """Independent pixels, each a 17-bin histogram (Laplace-smoothed) of its training values.

    On dequantized data the histogram is a piecewise-constant density on [0, 1], so its
    bits/dim is the per-pixel categorical cross-entropy in bits (the log 17 terms cancel):
    the best any independent-pixel model of the dequantized data can do on its train set.
    """
    k = DIGITS_LEVELS
    idx = train_levels.flatten(1).long()
    counts = torch.zeros(NUM_DIMS, k, dtype=torch.float64)
    counts.scatter_add_(1, idx.T, torch.ones(idx.T.shape, dtype=torch.float64))
    probs = (counts + 1) / (counts.sum(1, keepdim=True) + k)
    log_p = probs.log().gather(1, test_levels.flatten(1).long().T).T.sum(1)
    return float((-log_p / (NUM_DIMS * math.log(2))).mean())


def gaussian_baseline(train_levels: torch.Tensor, test_levels: torch.Tensor, seed: int = 1) -> float:
    """Independent pixels, each a Gaussian fitted to its dequantized training values."""
    y_train = (
        dequantize(train_levels, DIGITS_LEVELS, generator=torch.Generator().manual_seed(0))
        .flatten(1)
        .double()
    )
    y_test = (
        dequantize(test_levels, DIGITS_LEVELS, generator=torch.Generator().manual_seed(seed))
        .flatten(1)
        .double()
    )
    normal = torch.distributions.Normal(y_train.mean(0), y_train.std(0))
    return float(bits_per_dim(normal.log_prob(y_test).sum(1), NUM_DIMS, DIGITS_LEVELS).mean())


# ------------------------------------------------------------------------ figures
@torch.no_grad()
def reconstructions(model: Flow, levels: torch.Tensor):
    """Rows: data, exact reconstructions x -> z -> x, and for multi-scale flows the
    reconstruction with the finest latent Z_1 replaced by its mode 0 (coarse scales only).
    Also returns the largest reconstruction error."""
    model.eval()
    x = as_event(model, dequantize(levels, DIGITS_LEVELS, generator=torch.Generator().manual_seed(2)))
    transform = model.transform
    z = transform.inv(x)
    exact = transform(z.clone())  # a new tensor: the caches are keyed on identity
    rows = [x, exact]
    flow, logit = transform.parts[0], transform.parts[1]
    if isinstance(flow, MultiScale):
        u = flow.inv(logit.inv(x)).clone()  # edited below: must not alias a cached tensor
        flow.latents(u)[0].zero_()  # latents() are views of u: this zeroes Z_1 in place
        rows.append(logit(flow(u)))
    error = float((exact - x).abs().max())
    return [r.reshape(-1, 8, 8) for r in rows], error


def save_grid(images: list, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(images), len(images[0])
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.6, rows * 0.6 + 0.4), squeeze=False)
    for r, row in enumerate(images):
        for c, img in enumerate(row):
            axes[r][c].imshow(img.clamp(0, 1).cpu().numpy(), cmap="gray_r", vmin=0, vmax=1)
            axes[r][c].axis("off")
    fig.suptitle(title, fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


# --------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=120.0, help="training time per model")
    parser.add_argument("--smoke", action="store_true", help="a few steps with tiny models")
    parser.add_argument("--out", type=Path, default=OUTPUT_DIR / "digits", help="folder for the PNGs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(args.seed)
    train_levels, test_levels = load_digits("train"), load_digits("test")
    validation_levels = load_digits("validation")
    results = {
        "histogram_baseline": histogram_baseline(train_levels, test_levels),
        "gaussian_baseline": gaussian_baseline(train_levels, test_levels),
    }
    print(
        f"independent-pixel baselines: histogram {results['histogram_baseline']:.3f} bits/dim, "
        f"Gaussian {results['gaussian_baseline']:.3f} bits/dim"
    )
    for name, model in make_models(args.smoke).items():
        steps = train(
            model,
            train_levels,
            seconds=math.inf if args.smoke else args.seconds,
            max_steps=4 if args.smoke else None,
            seed=args.seed,
            validation=validation_levels,
            eval_every=2 if args.smoke else 50,
        )
        bpd = test_bits_per_dim(model, test_levels)
        results[name] = bpd
        samples = model.sample((16,)).reshape(16, 8, 8)
        rows, error = reconstructions(model, test_levels[:16])
        save_grid([samples[:8], samples[8:]], args.out / f"{name}_samples.png", f"{name}: samples")
        save_grid(
            rows,
            args.out / f"{name}_reconstructions.png",
            f"{name}: data / x->z->x" + (" / Z1 = 0" if len(rows) > 2 else ""),
        )
        print(
            f"{name}: {steps} steps, test {bpd:.3f} bits/dim, "
            f"{sum(p.numel() for p in model.parameters())} parameters, max reconstruction error {error:.1e}"
        )
    return results


if __name__ == "__main__":
    main()
