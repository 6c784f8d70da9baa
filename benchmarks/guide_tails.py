"""Where a flow guide's far tail comes from, layer by layer.

A flow guide trained by :mod:`benchmarks.guide_accuracy` can stop on a non-finite loss
while its loss was ordinary a step before: one of the 8 particles landed where the model's
log-density overflows. This script trains one guide under the same protocol (Trace_ELBO, 8
vectorized particles, plain Adam) until the loss turns non-finite or the steps run out,
and, for the parameters of the last two steps (the last finite loss and the one that was
not), pushes ``--draws`` base draws through the guide's transform one part at a time and
prints, after every part, quantiles of the absolute coordinates (50%, 99%, 99.99%) and
the largest.

    OMP_NUM_THREADS=1 python -m benchmarks.guide_tails --model eight_schools --guide AutoSplineFlow --lr 1e-2 --seed 1
"""

from __future__ import annotations

import argparse
import math

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

from .guide_accuracy import GUIDES, PARTICLES, _targets


def train_until_nonfinite(model, guide, lr: float, steps: int):
    """Train; return ``(states, losses, stop reason or None)``: ``states`` maps a step
    number to the parameters its loss was computed with, for the last two steps that ran;
    ``losses`` holds every step's loss."""
    elbo = Trace_ELBO(num_particles=PARTICLES, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), elbo)
    svi.step()
    store = pyro.get_param_store()
    states, losses = {}, []
    for step in range(1, steps):
        states = {**{k: v for k, v in states.items() if k == step - 1}}
        states[step] = {name: value.detach().clone() for name, value in store.items()}
        try:
            loss = svi.step()
        except (ValueError, RuntimeError) as e:
            return states, losses, f"{type(e).__name__} at step {step}"
        losses.append(loss)
        if not math.isfinite(loss):
            return states, losses, f"loss {loss} at step {step}"
    return states, losses, None


def layer_tails(guide, draws: int):
    """``[(part name, (50%, 99%, 99.99% quantiles of |x|), max |x|), ...]`` after each
    part of the guide's transform, for ``draws`` draws of its base distribution."""
    transform = guide.get_transform()
    parts = transform.parts if hasattr(transform, "parts") else [transform]
    rows = []
    with torch.no_grad():
        x = guide.get_base_dist().sample((draws,))
        for part in parts:
            x = part(x)
            size = x.abs().flatten().sort().values
            quantiles = tuple(
                float(size[min(len(size) - 1, int(q * len(size)))]) for q in (0.5, 0.99, 0.9999)
            )
            rows.append((type(part).__name__, quantiles, float(size[-1])))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="eight_schools", choices=("funnel", "eight_schools", "banana"))
    p.add_argument("--guide", default="AutoSplineFlow", choices=list(GUIDES))
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--draws", type=int, default=200_000)
    args = p.parse_args(argv)
    target = _targets()[args.model]
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    guide = GUIDES[args.guide](target["model"])
    states, losses, reason = train_until_nonfinite(target["model"], guide, args.lr, args.steps)
    print(f"{args.guide} on {args.model}, lr {args.lr}, seed {args.seed}: " + (reason or "finite to the end"))
    last = len(losses)
    marks = sorted({max(1, last - k) for k in (200, 100, 50, 20, 10, 5, 2, 1, 0)})
    print("loss at steps " + ", ".join(f"{m}: {losses[m - 1]:.4g}" for m in marks))
    store = pyro.get_param_store()
    tables = {}
    for step, params in sorted(states.items()):
        with torch.no_grad():
            for name, value in params.items():
                store[name].copy_(value)
        tables[step] = layer_tails(guide, args.draws)
        print(
            f"\nparameters step {step}'s loss was computed with; {args.draws} base draws; |x| after each part:"
        )
        print(f"{'':3} {'part':<18} {'50%':>10} {'99%':>10} {'99.99%':>10} {'max':>10}")
        for i, (name, quantiles, largest) in enumerate(tables[step]):
            print(f"{i:3d} {name:<18} " + " ".join(f"{q:10.4g}" for q in quantiles) + f" {largest:10.4g}")
    return tables


if __name__ == "__main__":
    main()
