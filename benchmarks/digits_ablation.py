"""Ablation on the 8x8 digits: learned split priors and variational dequantization, alone
and together, under the protocol of ``benchmarks/digits.py``.

Every model is trained by ``examples.digits.train`` (Adam lr 2e-3, batch 64, gradient
norm clipped at 100, the same batches and the same uniform noise for all from their own
seeded generator, the best validation state every 50 steps kept), either for ``--steps``
steps or for ``--cpu-seconds`` of CPU time (``time.process_time``, one thread, validation
included). Test scores on the 360 test images, each averaged over ``--draws`` noise draws
seeded alike for every model:

* **bound**: the dequantization bound in bits/dim, :math:`-(\\log p(y) - \\log q(u\\mid x))
  / (D \\log 2) + \\log_2 K` (:math:`q = 1` for uniform dequantization, Ho et al., 2019);
* **IW**: the importance-weighted estimate of :math:`-\\log_2 P(x) / D` with ``--iw``
  samples of the model's own dequantization distribution (uniform or learned).

Models: ``real_nvp_image((1, 8, 8), num_scales=2, hidden_channels=32, num_blocks=1)`` (the
better of our two image flows at this budget) with each combination of
``split_prior`` and dequantization, and ``glow`` (K = 4, width 32, 2 blocks) without and
with both.

The recipe and the sizes can be changed for every model of a run alike (``--schedule
cosine --warmup N``: the learning rate decayed to zero over the budget; ``--ema D``: an
exponential moving average of the weights is what is validated and scored;
``--coupling spline``, ``--hidden``, ``--blocks``, ``--alpha``; ``--deq-hidden``,
``--deq-couplings``, ``--deq-blocks`` for the variational dequantizer).

    OMP_NUM_THREADS=1 python -m benchmarks.digits_ablation                     # 1000 steps
    OMP_NUM_THREADS=1 python -m benchmarks.digits_ablation --cpu-seconds 170   # equal CPU time
    OMP_NUM_THREADS=1 python -m benchmarks.digits_ablation --smoke
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import pyro_flows
from examples.digits import NUM_DIMS, SHAPE, train
from pyro_flows import DequantizedFlow, Flow, VariationalDequantizer, bits_per_dim
from pyro_flows.data import DIGITS_LEVELS, load_digits
from pyro_flows.transforms import Logit

from . import report
from .contenders import set_validation

#: name -> (builder, split prior, dequantization)
MODELS = {
    "real_nvp_image": ("real_nvp_image", "fixed", "uniform"),
    "+ learned prior": ("real_nvp_image", "learned", "uniform"),
    "+ variational dequantization": ("real_nvp_image", "fixed", "variational"),
    "+ both": ("real_nvp_image", "learned", "variational"),
    "glow": ("glow", "fixed", "uniform"),
    "glow + both": ("glow", "learned", "variational"),
}


def build(name: str, smoke: bool, seed: int, args=None) -> DequantizedFlow:
    builder, prior, dequantization = MODELS[name]
    width = 8 if smoke else getattr(args, "hidden", 32)
    coupling = getattr(args, "coupling", "affine")
    torch.manual_seed(seed)
    if builder == "glow":
        flow = pyro_flows.glow(
            SHAPE,
            num_scales=2,
            steps_per_scale=1 if smoke else 4,
            hidden_channels=width,
            num_blocks=1 if smoke else 2,
            split_prior=prior,
            coupling=coupling,
        )
    else:
        flow = pyro_flows.real_nvp_image(
            SHAPE,
            num_scales=2,
            hidden_channels=width,
            num_blocks=getattr(args, "blocks", 1),
            split_prior=prior,
            coupling=coupling,
        )
    dequantizer = None
    if dequantization == "variational":
        dequantizer = VariationalDequantizer(
            SHAPE,
            DIGITS_LEVELS,
            hidden_channels=8 if smoke else getattr(args, "deq_hidden", 32),
            num_couplings=getattr(args, "deq_couplings", 4),
            num_blocks=getattr(args, "deq_blocks", 1),
        )
    return DequantizedFlow(
        Flow([flow, Logit(SHAPE, getattr(args, "alpha", 0.05))]), DIGITS_LEVELS, dequantizer
    )


@torch.no_grad()
def scores(model: DequantizedFlow, levels: torch.Tensor, draws: int, iw: int, seed: int) -> dict:
    """Per-image bound and importance-weighted bits/dim (float64), seeded alike for all."""
    model.eval()
    bound = torch.zeros(len(levels), dtype=torch.float64)
    with torch.random.fork_rng():
        for d in range(draws):
            torch.manual_seed(seed + d)
            bound += bits_per_dim(model.bound(levels), NUM_DIMS, DIGITS_LEVELS).double()
        torch.manual_seed(seed + draws)
        weighted = bits_per_dim(model.log_likelihood(levels, iw), NUM_DIMS, DIGITS_LEVELS).double()
    return {"bound": bound / draws, "iw": weighted}


def render(results: dict, info: dict, cmd: str, args) -> str:
    budget = f"{args.cpu_seconds:g} CPU-seconds" if math.isfinite(args.cpu_seconds) else f"{args.steps} steps"
    rows = []
    base = results.get("real_nvp_image")
    for name, r in results.items():
        rows.append(
            [
                name,
                f"{r['parameters']:,}",
                str(r["steps"]),
                f"{r['cpu_seconds']:.0f}",
                f"{r['bound']:.3f} ± {r['bound_se']:.3f}",
                f"{r['delta']:+.3f} ± {r['delta_se']:.3f}" if "delta" in r and r is not base else "-",
                f"{r['iw']:.3f}",
            ]
        )
    return "\n".join(
        [
            f"# Digits ablation: learned priors and variational dequantization ({budget} a model)",
            "",
            report.header(info, cmd),
            f"- settings: budget {budget}, Adam lr {args.lr} ({args.schedule} schedule, {args.warmup} warm-up "
            f"steps), batch {args.batch}, weight average {args.ema or 'none'}, the same batches for all, best "
            f"validation state every 50 steps kept; test bound over {args.draws} draws, importance-weighted "
            f"estimate with {args.iw} samples",
            f"- models: real_nvp_image width {args.hidden}, {args.blocks} residual block(s), {args.coupling} "
            f"couplings, Logit alpha {args.alpha}; variational dequantizer width {args.deq_hidden}, "
            f"{args.deq_couplings} couplings, {args.deq_blocks} residual block(s)",
            "",
            "Lower is better; ± is the standard error over the 360 test images (paired for the difference).",
            "",
            report.markdown_table(
                [
                    "model",
                    "parameters",
                    "steps",
                    "CPU s",
                    "test bound (bits/dim)",
                    "vs real_nvp_image",
                    "test IW",
                ],
                rows,
            ),
            "",
        ]
    )


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--cpu-seconds", type=float, default=math.inf, help="CPU-time budget instead of steps")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--schedule", default="constant", choices=["constant", "cosine"])
    p.add_argument("--warmup", type=int, default=0, help="linear learning-rate warm-up steps")
    p.add_argument("--ema", type=float, default=0.0, help="decay of the weight average (0: none)")
    p.add_argument("--hidden", type=int, default=32, help="conditioner width of the flow")
    p.add_argument("--blocks", type=int, default=1, help="residual blocks of real_nvp_image's conditioners")
    p.add_argument("--coupling", default="affine", choices=["affine", "spline"])
    p.add_argument("--alpha", type=float, default=0.05, help="Logit alpha")
    p.add_argument("--deq-hidden", type=int, default=32, help="width of the variational dequantizer")
    p.add_argument("--deq-couplings", type=int, default=4, help="couplings of the variational dequantizer")
    p.add_argument("--deq-blocks", type=int, default=1, help="residual blocks of the dequantizer's networks")
    p.add_argument("--draws", type=int, default=8, help="noise draws per test image for the bound")
    p.add_argument("--iw", type=int, default=64, help="samples of the importance-weighted estimate")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="4 steps, tiny models (used by the tests)")
    p.add_argument("--out", default=str(report.RESULTS))
    p.add_argument("--stem", default=None, help="file name stem (default digits_ablation[_cpu<seconds>])")
    args = p.parse_args(argv)
    if math.isfinite(args.cpu_seconds):
        args.steps = None
    if args.smoke:
        args.steps, args.draws, args.iw = 4, 2, 2
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    set_validation(["ours"], False)
    info, cmd = report.machine("cpu"), report.command()
    train_levels, validation_levels = load_digits("train"), load_digits("validation")
    test_levels = load_digits("test")
    results, per_image = {}, {}
    for name in args.models:
        model = build(name, args.smoke, args.seed, args)
        start = time.process_time()
        steps = train(
            model,
            train_levels,
            seconds=math.inf,
            max_steps=args.steps,
            cpu_seconds=args.cpu_seconds,
            batch_size=args.batch,
            lr=args.lr,
            seed=args.seed,
            validation=validation_levels,
            eval_every=2 if args.smoke else 50,
            schedule=args.schedule,
            warmup=args.warmup,
            ema=args.ema,
        )
        cpu = time.process_time() - start
        per_image[name] = scores(model, test_levels, args.draws, args.iw, seed=100)
        bound, bound_se = report.mean_se(per_image[name]["bound"])
        results[name] = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "steps": steps,
            "cpu_seconds": cpu,
            "bound": bound,
            "bound_se": bound_se,
            "iw": float(per_image[name]["iw"].mean()),
        }
        print(f"{name}: {results[name]}", flush=True)
    if "real_nvp_image" in results:
        for name in results:
            results[name]["delta"], results[name]["delta_se"] = report.mean_se(
                per_image[name]["bound"] - per_image["real_nvp_image"]["bound"]
            )
    markdown = render(results, info, cmd, args)
    stem = args.stem or (
        "digits_ablation" + (f"_cpu{args.cpu_seconds:g}" if math.isfinite(args.cpu_seconds) else "")
    )
    data = {"machine": info, "command": cmd, "settings": vars(args), "results": results}
    report.publish(stem, markdown, data, args.out)
    return data


if __name__ == "__main__":
    main()
