"""Held-out bits/dim on the 8x8 digits: our image flows against normflows' multi-scale Glow.

Three models of the 17-level digits (1,257 training images) are trained with the same
budget and scored on the same 360 test images:

* ``glow``: :func:`pyro_flows.glow`, 2 scales of ``K`` steps (ResNet conditioners);
* ``real_nvp_image``: :func:`pyro_flows.real_nvp_image`, 2 scales;
* ``normflows_glow``: normflows' ``MultiscaleFlow`` of ``GlowBlock``\\ s (L = 2 levels,
  the same ``K``, ``Squeeze``/``Merge``, learned diagonal Gaussian bases, as in normflows'
  Glow example), its hidden width chosen so that its parameter count is the closest to
  our Glow's (its 3x3-1x1-3x3 conditioners are far lighter than our residual ones at the
  same width).

Everything around the models is shared: uniform dequantization to [0, 1] and the same
:class:`~pyro_flows.transforms.Logit` (alpha 0.05), part of our flows and applied, with
its log-determinant, around normflows' model, so every density is over the same
[0, 1]^64; the training loop of ``examples/digits.py`` (Adam, gradient clipping, the same
seed hence the very same dequantized batches, the same number of steps, early stopping on
the validation split every 50 steps); and the scoring: bits/dim of each test image,
averaged over several dequantization draws that are the same for every model, reported
as mean ± standard error over images, with the paired difference to normflows.

    OMP_NUM_THREADS=1 python -m benchmarks.digits              # ~5 minutes on one core
    OMP_NUM_THREADS=1 python -m benchmarks.digits --smoke      # a few steps, tiny models
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import torch
from torch import nn

import pyro_flows
from examples.digits import NUM_DIMS, SHAPE, as_event, gaussian_baseline, histogram_baseline, train
from pyro_flows import Flow, bits_per_dim
from pyro_flows.data import DIGITS_LEVELS, load_digits
from pyro_flows.transforms import Logit, dequantize

from . import report
from .contenders import set_validation

PEER = "normflows_glow"
# (full, smoke): Glow steps per scale, conditioner width and residual blocks; RealNVP
# width and blocks. One residual block keeps RealNVP's 16 couplings near Glow's size.
CONFIG = {
    False: {"steps_per_scale": 4, "hidden": 32, "glow_blocks": 2, "rnvp_blocks": 1},
    True: {"steps_per_scale": 1, "hidden": 8, "glow_blocks": 1, "rnvp_blocks": 1},
}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class NormflowsGlow(nn.Module):
    """normflows' multi-scale Glow (``L`` levels of ``K`` GlowBlocks) as a density on
    [0, 1]^D: our :class:`Logit` maps the data to R^D outside normflows' model, and its
    log-determinant is subtracted exactly as :class:`~pyro_flows.Flow` does for ours."""

    def __init__(self, steps_per_level: int, hidden_channels: int, num_levels: int = 2, alpha: float = 0.05):
        super().__init__()
        import normflows as nf

        c, h, w = SHAPE
        bases, levels, merges = [], [], []
        for i in range(num_levels):  # level 0 is the coarsest; sampling runs 0 -> L-1
            channels = c * 2 ** (num_levels + 1 - i)
            blocks = [
                nf.flows.GlowBlock(channels, hidden_channels, split_mode="channel", scale=True)
                for _ in range(steps_per_level)
            ]
            levels.append(blocks + [nf.flows.Squeeze()])
            if i == 0:
                latent = (channels, h // 2**num_levels, w // 2**num_levels)
            else:
                merges.append(nf.flows.Merge())
                latent = (c * 2 ** (num_levels - i), h // 2 ** (num_levels - i), w // 2 ** (num_levels - i))
            bases.append(nf.distributions.DiagGaussian(latent))
        self.flow = nf.MultiscaleFlow(bases, levels, merges, class_cond=False)
        self.logit = Logit(SHAPE, alpha)
        self.event_shape = torch.Size(SHAPE)
        self.hidden_channels = hidden_channels

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z = self.logit.inv(x)
        return self.flow.log_prob(z, None) - self.logit.log_abs_det_jacobian(z, x)


def matched_width(steps_per_level: int, target: int) -> int:
    """normflows' hidden width whose parameter count is closest to ``target``
    (the count grows with the width, so bisect)."""
    low, high = 1, 1024
    while high - low > 1:
        mid = (low + high) // 2
        if count(NormflowsGlow(steps_per_level, mid)) < target:
            low = mid
        else:
            high = mid
    return min((low, high), key=lambda h: abs(count(NormflowsGlow(steps_per_level, h)) - target))


def build_models(smoke: bool, seed: int) -> dict:
    cfg = CONFIG[smoke]
    k, hidden = cfg["steps_per_scale"], cfg["hidden"]
    torch.manual_seed(seed)
    glow = pyro_flows.glow(
        SHAPE, num_scales=2, steps_per_scale=k, hidden_channels=hidden, num_blocks=cfg["glow_blocks"]
    )
    models = {"glow": Flow([glow, Logit(SHAPE)])}
    torch.manual_seed(seed)
    rnvp = pyro_flows.real_nvp_image(
        SHAPE, num_scales=2, hidden_channels=hidden, num_blocks=cfg["rnvp_blocks"]
    )
    models["real_nvp_image"] = Flow([rnvp, Logit(SHAPE)])
    width = matched_width(k, count(models["glow"]))
    torch.manual_seed(seed)
    models[PEER] = NormflowsGlow(k, width)
    return models


@torch.no_grad()
def per_image_bits(model: nn.Module, levels: torch.Tensor, draws: int, seed: int) -> torch.Tensor:
    """Bits/dim of each image, averaged over ``draws`` dequantizations (seeds ``seed``,
    ``seed + 1``, ...: the same noise for every model)."""
    model.eval()
    total = torch.zeros(len(levels), dtype=torch.float64)
    for d in range(draws):
        y = dequantize(levels, DIGITS_LEVELS, generator=torch.Generator().manual_seed(seed + d))
        total += bits_per_dim(model.log_prob(as_event(model, y)), NUM_DIMS, DIGITS_LEVELS).double()
    return total / draws


def render(results: dict, baselines: dict, info: dict, cmd: str, args) -> str:
    rows = []
    for name, r in results.items():
        delta = "-" if name == PEER else f"{r['delta_vs_peer']:+.3f} ± {r['delta_se']:.3f}"
        rows.append(
            [
                name,
                f"{r['parameters']:,}",
                f"{r['test_bpd']:.3f} ± {r['test_se']:.3f}",
                delta,
                f"{r['train_bpd']:.3f}",
                f"{r['s_per_step'] * 1000:.0f}",
            ]
        )
    rows.append(["independent pixels (histogram)", "-", f"{baselines['histogram']:.3f}", "-", "-", "-"])
    rows.append(["independent pixels (Gaussian)", "-", f"{baselines['gaussian']:.3f}", "-", "-", "-"])
    header = ["model", "parameters", "test bits/dim", f"test - {PEER} (paired)", "train bits/dim", "ms/step"]
    cfg = CONFIG[args.smoke]
    lines = [
        "# Digits (8x8, 17 levels): held-out bits/dim at a matched training budget",
        "",
        report.header(info, cmd),
        f"- settings: {args.steps} Adam steps (lr {args.lr}, batch {args.batch}, gradient norm clipped at 100), "
        f"the same dequantized batches for all (seed {args.seed}), best validation state every "
        f"{args.eval_every} steps kept; Logit alpha 0.05 for all; test scored over {args.draws} "
        "dequantization draws shared by all models",
        f"- models: glow K={cfg['steps_per_scale']}, width {cfg['hidden']}, {cfg['glow_blocks']} residual "
        f"block(s); real_nvp_image width {cfg['hidden']}, {cfg['rnvp_blocks']} residual block(s); "
        f"{PEER} L=2, K={cfg['steps_per_scale']}, width {results[PEER]['hidden_channels']} "
        "(parameter count matched to glow)",
        "",
        "Lower is better. Test: mean ± standard error over the 360 test images; the paired column is "
        f"the per-image difference to {PEER} (negative: ahead). Train: the 1,257 training images, "
        "one draw. ms/step includes the validation scoring.",
        "",
        report.markdown_table(header, rows),
        "",
    ]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1000, help="Adam steps, the same for every model")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-every", type=int, default=50, help="validation scoring interval (early stopping)")
    p.add_argument("--draws", type=int, default=8, help="dequantization draws per test image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="4 steps, tiny models (used by the tests)")
    p.add_argument("--out", default=str(report.RESULTS))
    p.add_argument("--stem", default="digits_bpd")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.eval_every, args.draws = 4, 2, 2
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    set_validation(["ours", "normflows"], False)  # as in the speed benchmark: no per-layer checks
    warnings.filterwarnings("ignore", message="torch.lu is deprecated")  # inside normflows' 1x1 conv
    info, cmd = report.machine("cpu"), report.command()
    train_levels, test_levels = load_digits("train"), load_digits("test")
    validation_levels = load_digits("validation")
    baselines = {
        "histogram": histogram_baseline(train_levels, test_levels),
        "gaussian": gaussian_baseline(train_levels, test_levels),
    }
    models = build_models(args.smoke, args.seed)
    print("parameters: " + ", ".join(f"{name} {count(m):,}" for name, m in models.items()), flush=True)

    results, test_bits = {}, {}
    for name, model in models.items():
        start = time.perf_counter()
        steps = train(
            model,
            train_levels,
            seconds=math.inf,
            max_steps=args.steps,
            batch_size=args.batch,
            lr=args.lr,
            seed=args.seed,
            validation=validation_levels,
            eval_every=args.eval_every,
        )
        seconds = time.perf_counter() - start
        test_bits[name] = per_image_bits(model, test_levels, args.draws, seed=100)
        test_bpd, test_se = report.mean_se(test_bits[name])
        train_bpd, train_se = report.mean_se(per_image_bits(model, train_levels, 1, seed=200))
        results[name] = {
            "parameters": count(model),
            "steps": steps,
            "train_seconds": seconds,
            "s_per_step": seconds / steps,
            "test_bpd": test_bpd,
            "test_se": test_se,
            "train_bpd": train_bpd,
            "train_se": train_se,
        }
        if name == PEER:
            results[name]["hidden_channels"] = model.hidden_channels
        print(
            f"{name}: {count(model):,} parameters, {steps} steps in {seconds:.0f} s, "
            f"test {test_bpd:.3f} ± {test_se:.3f} bits/dim, train {train_bpd:.3f}",
            flush=True,
        )
    for name in results:
        results[name]["delta_vs_peer"], results[name]["delta_se"] = report.mean_se(
            test_bits[name] - test_bits[PEER]
        )

    markdown = render(results, baselines, info, cmd, args)
    data = {
        "machine": info,
        "command": cmd,
        "settings": vars(args),
        "config": CONFIG[args.smoke],
        "baselines": baselines,
        "results": results,
    }
    report.publish(args.stem, markdown, data, args.out)
    return data


if __name__ == "__main__":
    main()
