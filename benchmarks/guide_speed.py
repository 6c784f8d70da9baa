"""Step time of an SVI step with :class:`~pyro_flows.infer.AutoRealNVP` (default settings)
against Pyro's :class:`~pyro.infer.autoguide.AutoIAFNormal` (Germain et al., 2015; Kingma
et al., 2016), on Neal's funnel (10-D; Neal, 2003) and centered eight schools (Rubin, 1981),
and with ``--models ... banana`` on the 2-D banana of the accuracy benchmark.

Both guides take the same step: 8 vectorized particles, plain Adam (lr 1e-3). The steps of
the two guides alternate in one process, so slow drifts of the machine hit both alike;
the table reports the median step time of each (CPU seconds of this process, one torch
thread: other jobs on a shared machine do not count) and their ratio. The same is repeated
under ``JitTrace_ELBO`` and, with fewer steps, ``JitTraceGraph_ELBO``, with the JIT gain
(eager median over JIT median) per guide. ``--floor`` adds Pyro's ``AutoNormal`` (a step
with no flow at all: the model, Pyro's tracing and Adam) and the number of top-level ATen
operators one step of each guide dispatches, the count an eager step pays per-call
overhead on. ``--compile-flow`` runs the flow's fused couplings (forward with the score
pass, and inverse) through ``torch.compile`` (inductor; eager ELBO only; compiled during
the warm-up steps), the rest of the step (the model, Pyro's tracing, Adam) as it is.

    OMP_NUM_THREADS=1 python -m benchmarks.guide_speed            # about two minutes
    OMP_NUM_THREADS=1 python -m benchmarks.guide_speed --smoke    # seconds
    OMP_NUM_THREADS=1 python -m benchmarks.guide_speed --elbos Trace_ELBO --num-layers 4 --stem guide_speed_layers4
    OMP_NUM_THREADS=1 python -m benchmarks.guide_speed --elbos Trace_ELBO --floor --stem guide_speed_floor
    OMP_NUM_THREADS=1 python -m benchmarks.guide_speed --elbos Trace_ELBO --floor --compile-flow --stem guide_speed_compiled
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import pyro
import torch
from pyro.infer import SVI, JitTrace_ELBO, JitTraceGraph_ELBO, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal, AutoNormal
from torch.profiler import ProfilerActivity, profile

from examples.banana import banana
from examples.eight_schools import eight_schools
from examples.funnel import funnel
from pyro_flows.infer import AutoRealNVP
from pyro_flows.infer.fused import _FusedCouplings

from . import report

MODELS = {"funnel": funnel, "eight_schools": eight_schools, "banana": banana}
GUIDES = {"AutoRealNVP": AutoRealNVP, "AutoIAFNormal": AutoIAFNormal}
#: the step without a flow, timed with ``--floor``
FLOOR = {"AutoNormal": AutoNormal}
ELBOS = {"Trace_ELBO": Trace_ELBO, "JitTrace_ELBO": JitTrace_ELBO, "JitTraceGraph_ELBO": JitTraceGraph_ELBO}
PARTICLES = 8
#: the name of ``AutoRealNVP`` with its couplings compiled (``--compile-flow``)
COMPILED = "AutoRealNVP, compiled"


def make_step(
    model,
    guide_name: str,
    elbo_name: str,
    seed: int = 0,
    num_layers=None,
    flow_kwargs=None,
    compile_flow: bool = False,
):
    """One SVI step of a fresh guide, with its own optimizer (parameter names differ
    between the guides, so both live in the one parameter store); ``num_layers``: the
    couplings of AutoRealNVP (default: its own default), ``flow_kwargs``: its other
    options, ``compile_flow``: its fused couplings through ``torch.compile`` (one step
    is taken here to build them)."""
    pyro.set_rng_seed(seed)
    options = {}
    if guide_name == "AutoRealNVP":
        options = dict(flow_kwargs or {})
        if num_layers:
            options["num_layers"] = num_layers
    guide = {**GUIDES, **FLOOR}[guide_name](model, **options)
    elbo = ELBOS[elbo_name](num_particles=PARTICLES, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), elbo)
    if compile_flow:
        if guide_name != "AutoRealNVP" or elbo_name != "Trace_ELBO":
            raise ValueError(
                f"compile_flow times AutoRealNVP's eager step, not {guide_name} under {elbo_name}"
            )
        svi.step()  # builds the flow
        compile_fused(guide)
    return svi.step


def compile_fused(guide) -> None:
    """Route each fused-coupling transform of ``guide`` through ``torch.compile`` (on the
    instance: other guides keep the eager methods)."""
    fused = [part for part in guide.transform.parts if isinstance(part, _FusedCouplings)]
    if not fused:
        raise ValueError("the guide has no fused couplings to compile")
    for part in fused:
        part._forward = torch.compile(part._forward, dynamic=False)
        part._inverse_and_ladj = torch.compile(part._inverse_and_ladj, dynamic=False)


def interleaved(steps: dict, reps: int, warmup: int) -> dict:
    """Median CPU seconds per step of each callable, the callables alternating step by step."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            start = time.process_time()
            step()
            times[name].append(time.process_time() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def count_ops(step) -> int:
    """Top-level ATen operators dispatched by one call of ``step`` (those not called from
    inside another ATen operator): what an eager step pays Python and dispatcher overhead on."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    aten = [e for e in prof.events() if e.name.startswith("aten::")]
    return sum(1 for e in aten if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))


def measure(
    model_name: str,
    elbo_name: str,
    reps: int,
    warmup: int,
    num_layers=None,
    flow_kwargs=None,
    floor: bool = False,
    compile_flow: bool = False,
) -> tuple:
    """Medians of the guides whose first step runs, the error of those whose does not
    (Pyro 1.9's ``JitTrace_ELBO`` stops ``AutoIAFNormal`` with an ``AssertionError``),
    and, with ``floor``, the operator count of each step. With ``compile_flow`` the
    compiled guide (:data:`COMPILED`) joins the interleaving."""
    pyro.clear_param_store()
    model = MODELS[model_name]
    steps, errors = {}, {}
    names = [*GUIDES, *(FLOOR if floor else ()), *((COMPILED,) if compile_flow else ())]
    for name in names:
        step = make_step(
            model,
            "AutoRealNVP" if name == COMPILED else name,
            elbo_name,
            num_layers=num_layers,
            flow_kwargs=flow_kwargs,
            compile_flow=name == COMPILED,
        )
        try:
            step()
        except Exception as error:  # reported in the table, not hidden
            errors[name] = f"{type(error).__name__} in the first step"
        else:
            steps[name] = step
    medians = interleaved(steps, reps, warmup)
    ops = {name: count_ops(step) for name, step in steps.items()} if floor else {}
    return medians, errors, ops


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=300, help="timed steps per guide and setting")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--graph-reps", type=int, default=60, help="timed steps under JitTraceGraph_ELBO")
    p.add_argument("--models", nargs="+", default=["funnel", "eight_schools"], choices=list(MODELS))
    p.add_argument("--elbos", nargs="+", default=list(ELBOS), choices=list(ELBOS))
    p.add_argument(
        "--num-layers", type=int, default=None, help="AutoRealNVP's couplings (default: its default)"
    )
    p.add_argument("--flow-kwargs", type=json.loads, default={}, help="JSON keyword arguments of AutoRealNVP")
    p.add_argument(
        "--floor",
        action="store_true",
        help="also time AutoNormal and count each step's top-level ATen operators",
    )
    p.add_argument(
        "--compile-flow",
        action="store_true",
        help="also time AutoRealNVP with its fused couplings through torch.compile (eager ELBO rows)",
    )
    p.add_argument("--smoke", action="store_true", help="a few steps, for tests")
    p.add_argument("--out", default=str(report.RESULTS))
    p.add_argument("--stem", default="guide_speed")
    args = p.parse_args(argv)
    if args.smoke:
        args.reps, args.warmup, args.graph_reps = 3, 2, 2
    torch.set_num_threads(1)
    info = report.machine()
    cmd = report.command()
    results = {}
    for model_name in args.models:
        results[model_name] = {}
        for elbo_name in args.elbos:
            reps = args.graph_reps if elbo_name == "JitTraceGraph_ELBO" else args.reps
            medians, errors, ops = measure(
                model_name,
                elbo_name,
                reps,
                args.warmup,
                args.num_layers,
                args.flow_kwargs,
                args.floor,
                compile_flow=args.compile_flow and elbo_name == "Trace_ELBO",
            )
            ms = {name: 1e3 * t for name, t in medians.items()}
            both = all(name in ms for name in GUIDES)
            results[model_name][elbo_name] = {
                "median_ms": ms,
                "errors": errors,
                "ratio": ms["AutoRealNVP"] / ms["AutoIAFNormal"] if both else None,
                "compiled_ratio": ms[COMPILED] / ms["AutoIAFNormal"]
                if COMPILED in ms and "AutoIAFNormal" in ms
                else None,
                "reps": reps,
                "aten_ops": ops,
            }
        eager = results[model_name].get("Trace_ELBO", {}).get("median_ms", {})
        for elbo_name in ("JitTrace_ELBO", "JitTraceGraph_ELBO"):
            if elbo_name not in results[model_name]:
                continue
            row = results[model_name][elbo_name]
            row["jit_gain"] = {name: eager[name] / t for name, t in row["median_ms"].items() if name in eager}
    rows = []
    for model_name, by_elbo in results.items():
        for elbo_name, row in by_elbo.items():
            ms, gain = row["median_ms"], row.get("jit_gain", {})

            def cell(name, row=row, ms=ms):
                return f"{ms[name]:.2f}" if name in ms else f"fails ({row['errors'][name]})"

            def gain_cell(name, gain=gain):
                return f"{gain[name]:.2f}x" if name in gain else "-"

            cells = [
                model_name,
                elbo_name,
                row["reps"],
                cell("AutoRealNVP"),
                cell("AutoIAFNormal"),
                "-" if row["ratio"] is None else f"{row['ratio']:.2f}x",
                ""
                if elbo_name == "Trace_ELBO"
                else f"{gain_cell('AutoRealNVP')} / {gain_cell('AutoIAFNormal')}",
            ]
            if args.floor:
                ops = row["aten_ops"]
                counts = " / ".join(str(ops.get(name, "-")) for name in [*GUIDES, *FLOOR])
                cells += [cell("AutoNormal"), counts]
            if args.compile_flow:
                compiled = row["compiled_ratio"]
                cells += [
                    cell(COMPILED) if COMPILED in ms or COMPILED in row["errors"] else "",
                    "" if compiled is None else f"{compiled:.2f}x",
                    str(row["aten_ops"].get(COMPILED, "")),
                ]
            rows.append(cells)
    header = [
        "model",
        "ELBO",
        "steps",
        "AutoRealNVP ms",
        "AutoIAFNormal ms",
        "ratio",
        "JIT gain (RealNVP / IAF)",
    ]
    if args.floor:
        header += ["AutoNormal ms", "ATen ops per step (RealNVP / IAF / Normal)"]
    if args.compile_flow:
        header += ["compiled ms", "compiled ratio", "compiled ATen ops"]
    table = report.markdown_table(header, rows)
    markdown = f"# Guide step time\n\n{report.header(info, cmd)}\n\n{table}\n"
    data = {
        "machine": info,
        "command": cmd,
        "particles": PARTICLES,
        "num_layers": args.num_layers,
        "flow_kwargs": args.flow_kwargs,
        "compile_flow": args.compile_flow,
        "results": results,
    }
    report.publish(args.stem, markdown, data, args.out)
    return data


if __name__ == "__main__":
    main()
