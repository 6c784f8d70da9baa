"""Step time of :class:`~pyro_flows.infer.AutoSplineFlow` and
:class:`~pyro_flows.infer.AutoRealNVP` (default settings, path gradients on) under
``Trace_ELBO``, ``JitTrace_ELBO`` and ``JitTraceGraph_ELBO``, with the JIT gain (eager CPU
time per step over JIT CPU time per step) of each, on Neal's funnel (10-D) and centered
eight schools.

Every step is 8 vectorized particles and plain Adam (lr 1e-3). The steps of all the
(guide, ELBO) pairs of a model alternate in one process, so slow drifts of a shared
machine hit them alike; the table gives the median CPU time (``time.process_time``) of
each. The first step of each pair (setup, tracing) is not timed.

    OMP_NUM_THREADS=1 python -m benchmarks.guide_jit            # a few minutes on 1 core
    OMP_NUM_THREADS=1 python -m benchmarks.guide_jit --smoke    # seconds
"""

from __future__ import annotations

import argparse

import pyro
import torch
from pyro.infer import SVI, JitTrace_ELBO, JitTraceGraph_ELBO, Trace_ELBO

from examples.eight_schools import eight_schools
from examples.funnel import funnel
from pyro_flows.infer import AutoRealNVP, AutoSplineFlow

from . import report
from .guide_speed import interleaved

MODELS = {"funnel": funnel, "eight_schools": eight_schools}
GUIDES = {"AutoSplineFlow": AutoSplineFlow, "AutoRealNVP": AutoRealNVP}
ELBOS = {"Trace_ELBO": Trace_ELBO, "JitTrace_ELBO": JitTrace_ELBO, "JitTraceGraph_ELBO": JitTraceGraph_ELBO}
PARTICLES = 8


def make_step(model, guide_cls, elbo_cls, seed: int = 0, **guide_kwargs):
    """A step function of a fresh guide with its own parameter names (``create_plates``
    unused; the prefix keeps the guides apart in the one parameter store)."""
    pyro.set_rng_seed(seed)
    guide = guide_cls(model, **guide_kwargs)
    guide._pyro_name = f"{guide_cls.__name__}_{elbo_cls.__name__}"
    elbo = elbo_cls(num_particles=PARTICLES, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), elbo)
    svi.step()  # setup and tracing, not timed
    return svi.step


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=100, help="timed steps per guide and ELBO")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--smoke", action="store_true", help="a few steps of small guides, for tests")
    p.add_argument("--out", default=str(report.RESULTS))
    p.add_argument("--stem", default="guide_jit")
    args = p.parse_args(argv)
    kwargs = {}
    if args.smoke:
        args.reps, args.warmup = 2, 1
        kwargs = {"num_layers": 2, "hidden_dims": (8,)}
    torch.set_num_threads(1)
    info, cmd = report.machine(), report.command()
    results, rows = {}, []
    for model_name in args.models:
        pyro.clear_param_store()
        steps = {
            (g, e): make_step(MODELS[model_name], GUIDES[g], ELBOS[e], **kwargs)
            for g in GUIDES
            for e in ELBOS
        }
        medians = interleaved(steps, args.reps, args.warmup)
        results[model_name] = {}
        for g in GUIDES:
            eager = medians[(g, "Trace_ELBO")]
            results[model_name][g] = {
                e: {"cpu_ms": 1e3 * medians[(g, e)], "gain": eager / medians[(g, e)]} for e in ELBOS
            }
            r = results[model_name][g]
            rows.append(
                [
                    model_name,
                    g,
                    f"{r['Trace_ELBO']['cpu_ms']:.2f}",
                    f"{r['JitTrace_ELBO']['cpu_ms']:.2f} ({r['JitTrace_ELBO']['gain']:.2f}x)",
                    f"{r['JitTraceGraph_ELBO']['cpu_ms']:.2f} ({r['JitTraceGraph_ELBO']['gain']:.2f}x)",
                ]
            )
    table = report.markdown_table(
        ["model", "guide", "Trace_ELBO ms", "JitTrace_ELBO ms (gain)", "JitTraceGraph_ELBO ms (gain)"], rows
    )
    markdown = (
        f"# Flow-guide step time under the JIT ELBOs (median CPU ms, {args.reps} interleaved steps)\n\n"
        f"{report.header(info, cmd)}\n\n{table}\n"
    )
    data = {"machine": info, "command": cmd, "particles": PARTICLES, "reps": args.reps, "results": results}
    report.publish(args.stem, markdown, data, args.out)
    return data


if __name__ == "__main__":
    main()
