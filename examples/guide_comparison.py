"""Shared driver of the guide comparisons (funnel, banana, eight schools).

Fits each guide for the same number of SVI steps with the same optimiser and particles,
then reports, from one set of importance weights per guide: the ELBO (their mean), the
PSIS k-hat (ArviZ), posterior mean/sd errors against a reference, and time per step.
"""

from __future__ import annotations

import functools
import shlex
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal, AutoMultivariateNormal, AutoNormal

from examples import OUTPUT_DIR
from pyro_flows.infer import (
    AutoRealNVP,
    compare_moments,
    guide_samples,
    importance_log_weights,
    moments_table,
    psis_khat,
)

GUIDES = {
    "AutoNormal": AutoNormal,
    "AutoMultivariateNormal": AutoMultivariateNormal,
    "AutoIAFNormal": AutoIAFNormal,
    "AutoRealNVP (ours)": AutoRealNVP,
}


LR_DECAY = 0.1  # the learning rate falls geometrically to this fraction of its start
CLIP_NORM = 10.0  # ClippedAdam clamps each gradient element to +-CLIP_NORM


def optimizer(lr: float, steps: int, lr_decay: float = LR_DECAY):
    """The one optimiser every guide gets: Adam with element-wise gradient clipping and a
    learning rate decayed geometrically from ``lr`` to ``lr_decay * lr`` over ``steps``
    (``lr_decay=1``: a constant rate)."""
    return pyro.optim.ClippedAdam({"lr": lr, "lrd": lr_decay ** (1 / max(steps, 1)), "clip_norm": CLIP_NORM})


def describe_optimizer(lr: float, particles: int, lr_decay: float = LR_DECAY) -> str:
    return (
        f"ClippedAdam lr {lr} decayed to {lr_decay * lr:g}, clip {CLIP_NORM:g}, "
        f"Trace_ELBO with {particles} vectorised particles"
    )


def fit(model, make_guide, steps: int, lr: float, particles: int, seed: int = 0, lr_decay: float = LR_DECAY):
    """Train one guide; returns it, the seconds per step and the loss trace."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = make_guide(model)
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(model, guide, optimizer(lr, steps, lr_decay), elbo)
    svi.step()  # builds the guide's parameters; not timed
    losses = []
    start = time.perf_counter()
    for _ in range(steps - 1):
        losses.append(svi.step())
    return guide, (time.perf_counter() - start) / max(steps - 1, 1), losses


def evaluate(model, guide, reference, hard, num_particles: int = 4000, num_samples: int = 4000):
    """ELBO, k-hat and moment errors of a trained guide; ``hard`` names the site (and
    coordinate) whose mean/sd errors are reported, e.g. ``("v", 0)``."""
    log_weights = importance_log_weights(model, guide, num_particles=num_particles, max_plate_nesting=1)
    samples = guide_samples(model, guide, num_samples)
    rows = compare_moments(samples, reference)
    site, index = hard
    row = next(r for r in rows if r["site"] == site and r["index"] == index)
    return {
        "elbo": float(log_weights.mean()),
        "khat": psis_khat(model, guide, log_weights=log_weights),
        "mean_err": row["mean_error"],
        "sd": row["sd"],
        "sd_rel_err": row["sd_rel_error"],
        "samples": samples,
    }


def compare(model, reference, hard, steps, lr, particles, guides=None, seed=0, lr_decay=LR_DECAY):
    """Fit and evaluate every guide; returns ``{name: metrics}``."""
    results = {}
    for name, make in (guides or GUIDES).items():
        guide, seconds, losses = fit(model, make, steps, lr, particles, seed, lr_decay)
        with torch.no_grad():
            metrics = evaluate(model, guide, reference, hard)
        metrics["ms_per_step"] = 1000 * seconds
        metrics["losses"] = losses
        results[name] = metrics
        print(
            f"{name:24s} ELBO {metrics['elbo']:8.3f}  k-hat {metrics['khat']:5.2f}  "
            f"|mean err| {metrics['mean_err']:.3f}  sd {metrics['sd']:.3f} ({100 * metrics['sd_rel_err']:+.1f}%)  "
            f"{metrics['ms_per_step']:.1f} ms/step",
            flush=True,
        )
    return results


def write_table(results, path: Path, hard_label: str, header: str) -> str:
    rows = [
        {
            "guide": name,
            "ELBO": m["elbo"],
            "k-hat": m["khat"],
            f"mean error {hard_label}": m["mean_err"],
            f"sd {hard_label}": m["sd"],
            f"sd rel. error {hard_label}": m["sd_rel_err"],
            "ms/step": m["ms_per_step"],
        }
        for name, m in results.items()
    ]
    text = f"{header}\n\n{moments_table(rows, digits=3)}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def scatter_figure(results, reference_samples, x_site, y_site, path: Path, labels=("", ""), transform=None):
    """One panel per guide: guide samples of two coordinates over the reference's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def coords(samples):
        x, y = x_site(samples), y_site(samples)
        return x.reshape(-1).numpy(), y.reshape(-1).numpy()

    # Two panels per row, so that the figure stays legible at the width of a docs page.
    ncols = min(2, len(results))
    nrows = -(-len(results) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(5 * ncols, 4.2 * nrows), sharex=True, sharey=True, squeeze=False
    )
    for ax in axes.flat[len(results) :]:
        ax.set_visible(False)
    rx, ry = coords(reference_samples)
    for ax, (name, m) in zip(axes.flat, results.items(), strict=False):
        ax.scatter(rx[:2000], ry[:2000], s=3, alpha=0.3, color="grey", label="reference")
        gx, gy = coords(m["samples"])
        ax.scatter(gx[:2000], gy[:2000], s=3, alpha=0.3, color="C0", label="guide")
        ax.set_title(f"{name}\nELBO {m['elbo']:.2f}, k-hat {m['khat']:.2f}", fontsize=13)
        ax.tick_params(labelsize=11)
    for ax in axes[-1]:
        ax.set_xlabel(labels[0], fontsize=12)
    for ax in axes[:, 0]:
        ax.set_ylabel(labels[1], fontsize=12)
    axes[0, 0].legend(loc="upper left", fontsize=11, markerscale=5)
    lo, hi = rx.min(), rx.max()
    axes[0, 0].set_xlim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def command_line(module: str, argv=None) -> str:
    """The command that reproduces this run, with the arguments it was given."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python -m", module, *map(shlex.quote, argv)])


def common_args(parser, steps, lr, particles):
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument(
        "--lr-decay", type=float, default=LR_DECAY, help="final learning rate / initial (1: constant)"
    )
    parser.add_argument("--particles", type=int, default=particles)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUTPUT_DIR, help="folder for the figure and the table")
    parser.add_argument(
        "--smoke", action="store_true", help="a few steps of each guide, to check the script runs"
    )
    parser.add_argument("--guides", default=None, help="comma-separated subset of: " + ", ".join(GUIDES))
    parser.add_argument("--flow-kwargs", default="{}", help="JSON keyword arguments of AutoRealNVP")
    parser.add_argument("--tag", default="", help="suffix of the output file names")
    return parser


def run(
    argv,
    *,
    name: str,
    doc: str,
    model,
    reference: dict,
    hard: tuple,
    title: str,
    note: str,
    reference_samples: dict,
    axes: tuple,
    labels: tuple,
    steps: int = 2000,
):
    """The whole comparison behind one example's ``main``: parse ``argv``, fit and
    evaluate every selected guide, write ``<name><tag>.md`` (table headed by ``title``,
    the optimiser, ``note`` and the command) and ``<name><tag>.png`` (``axes``: two
    functions of a sample dict, drawn against ``reference_samples``)."""
    import argparse

    args = common_args(
        argparse.ArgumentParser(description=doc), steps=steps, lr=0.01, particles=32
    ).parse_args(argv)
    if args.smoke:
        args.steps = 5
    torch.manual_seed(args.seed)
    results = compare(
        model,
        reference,
        hard,
        args.steps,
        args.lr,
        args.particles,
        selected_guides(args),
        args.seed,
        args.lr_decay,
    )
    header = (
        f"{title}, {args.steps} steps, {describe_optimizer(args.lr, args.particles, args.lr_decay)}; {note}. "
        f"Command: `{command_line(f'examples.{name}', argv)}`"
    )
    print(write_table(results, args.out / f"{name}{args.tag}.md", hard[0], header))
    scatter_figure(results, reference_samples, *axes, args.out / f"{name}{args.tag}.png", labels=labels)
    return results


def selected_guides(args):
    """The guides chosen on the command line (all by default; tiny ones with --smoke)."""
    import json

    guides = dict(smoke_guides() if args.smoke else GUIDES)
    kwargs = json.loads(args.flow_kwargs)
    if kwargs:
        guides["AutoRealNVP (ours)"] = functools.partial(AutoRealNVP, **kwargs)
    if args.guides:
        wanted = [g.strip() for g in args.guides.split(",")]
        guides = {k: v for k, v in guides.items() if any(k.startswith(w) for w in wanted)}
    return guides


def smoke_guides():
    small = functools.partial(AutoRealNVP, num_layers=2, hidden_dims=(8,))
    return {**{k: v for k, v in GUIDES.items() if k != "AutoRealNVP (ours)"}, "AutoRealNVP (ours)": small}


__all__ = [
    "GUIDES",
    "optimizer",
    "describe_optimizer",
    "fit",
    "evaluate",
    "compare",
    "write_table",
    "scatter_figure",
    "common_args",
    "dist",
]
