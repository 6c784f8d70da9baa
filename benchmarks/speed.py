"""Speed of matched RealNVP flows across libraries, as ratios.

For each dimension, every contender (see :mod:`benchmarks.contenders`) and the
conditioner floor (the same MLPs with no flow around them) are timed on

* ``train``: ``-log_prob`` of a batch, ``backward``, one Adam step;
* ``log_prob``: log-density of ``--points`` points without gradients;
* ``sample``: ``--points`` samples without gradients.

Repetitions are interleaved (each repetition times every contender once per operation,
in an order rotated from one repetition to the next) so that load from other processes
hits everyone alike; medians are reported as ratios to the floor and to the fastest
peer. Every call gets a fresh copy of its input: Pyro-style transforms cache on input
identity, and re-scoring the same tensor would time a cache lookup.

Distribution argument validation (torch's flag, which Pyro's ``TransformedDistribution``,
zuko's distributions and our finiteness checks all read) is off for everyone unless
``--validate``. It is set after every library is imported, because importing changes it
(``import pyro`` turns it on, ``import zuko`` off).

    OMP_NUM_THREADS=1 python -m benchmarks.speed --dims 2 16 64 --device cpu
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List

import torch

from . import report
from .contenders import NAMES, ConditionerFloor, available, build, set_validation

OPS = ("train", "log_prob", "sample")
FLOOR = "floor"
COMPILED = "ours_compiled"


class Task:
    """One timed operation: ``setup()`` runs untimed, ``run(setup())`` is timed."""

    def __init__(self, setup: Callable, run: Callable):
        self.setup, self.run = setup, run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_task(task: Task, device: torch.device) -> float:
    """Seconds of one ``run``: CPU time of this process on the CPU (other jobs on a shared
    machine do not count; one torch thread, so it is the run's own time), wall time on a
    GPU (where the process waits for the device)."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    args = task.setup()
    _sync(device)
    start = clock()
    task.run(args)
    _sync(device)
    return clock() - start


def contender_tasks(contender, x_train, x_eval, points, lr) -> Dict[str, Task]:
    optimizer = torch.optim.Adam(contender.module.parameters(), lr=lr)

    def train(x):
        optimizer.zero_grad(set_to_none=True)
        loss = -contender.log_prob(x).mean()
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def log_prob(x):
        contender.log_prob(x)

    return {
        "train": Task(x_train.clone, train),
        "log_prob": Task(x_eval.clone, log_prob),
        "sample": Task(lambda: None, lambda _: contender.sample(points)),
    }


def floor_tasks(floor: ConditionerFloor, x_train, x_eval, lr) -> Dict[str, Task]:
    optimizer = torch.optim.Adam(floor.parameters(), lr=lr)

    def train(x):
        optimizer.zero_grad(set_to_none=True)
        floor(x).backward()  # the input requires grad, as inside a flow
        optimizer.step()

    @torch.no_grad()
    def forward(x):
        floor(x)

    evaluation = Task(x_eval.clone, forward)
    return {
        "train": Task(lambda: x_train.clone().requires_grad_(), train),
        "log_prob": evaluation,
        "sample": evaluation,
    }


def bench_dim(dim: int, names: List[str], args, device: torch.device) -> dict:
    torch.manual_seed(0)
    x_train = torch.randn(args.batch, dim, device=device)
    x_eval = torch.randn(args.points, dim, device=device)
    tasks, params = {}, {}
    for name in names:
        torch.manual_seed(0)
        contender = build(name, dim, args.layers, args.hidden)
        contender.module.to(device)
        params[name] = contender.num_parameters()
        tasks[name] = contender_tasks(contender, x_train, x_eval, args.points, args.lr)
        if name == "ours" and args.compile:
            compiled = torch.compile(contender.log_prob)

            @torch.no_grad()
            def compiled_log_prob(x, compiled=compiled):
                compiled(x)

            tasks[COMPILED] = {"log_prob": Task(x_eval.clone, compiled_log_prob)}
    floor = ConditionerFloor(dim, args.layers, args.hidden).to(device)
    params[FLOOR] = sum(p.numel() for p in floor.parameters())
    tasks[FLOOR] = floor_tasks(floor, x_train, x_eval, args.lr)
    print(f"dim {dim}: trainable parameters " + ", ".join(f"{k} {v}" for k, v in params.items()), flush=True)

    if torch.distributions.Distribution._validate_args != args.validate:
        raise RuntimeError("distribution validation changed while building the models")
    compile_s = None
    if COMPILED in tasks:
        # Compilation (and the recompile for a new input tensor) happen here, untimed.
        start = time.perf_counter()
        for _ in range(2):
            time_task(tasks[COMPILED]["log_prob"], device)
        compile_s = time.perf_counter() - start
        # The first torch.compile turns distribution validation off globally: set it again.
        set_validation(names, args.validate)

    entries = list(tasks)
    times = {op: {name: [] for name in entries if op in tasks[name]} for op in OPS}
    for rep in range(args.warmup + args.reps):
        shift = rep % len(entries)
        order = entries[shift:] + entries[:shift]
        for op in OPS:
            for name in order:
                if op in tasks[name]:
                    elapsed = time_task(tasks[name][op], device)
                    if rep >= args.warmup:
                        times[op][name].append(elapsed)
    return {"parameters": params, "compile_s": compile_s, "summary": summarize(times)}


def _quartiles(values):
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def summarize(times: dict) -> dict:
    """Medians and quartiles, absolute and as *paired* ratios: a ratio is formed within
    each repetition (whose timings are seconds apart) and then the median is taken over
    repetitions, which cancels most of the slow drift of a shared machine's load."""
    out = {}
    for op, by_name in times.items():

        def paired(a, b, by_name=by_name):
            return _quartiles([x / y for x, y in zip(by_name[a], by_name[b], strict=True)])

        to_floor = {name: paired(name, FLOOR) for name in by_name}
        peers = [n for n in by_name if n not in ("ours", COMPILED, FLOOR)]
        fastest = min(peers, key=lambda n: to_floor[n][1]) if peers else None
        rows = {}
        for name, t in by_name.items():
            q1, median, q3 = _quartiles(t)
            row = {"median_ms": 1e3 * median, "q1_ms": 1e3 * q1, "q3_ms": 1e3 * q3, "reps": len(t)}
            row["to_floor"] = to_floor[name][1]
            row["to_floor_iqr"] = [to_floor[name][0], to_floor[name][2]]
            if fastest:
                q1, median, q3 = paired(name, fastest)
                row["to_fastest_peer"], row["to_fastest_peer_iqr"] = median, [q1, q3]
            else:
                row["to_fastest_peer"], row["to_fastest_peer_iqr"] = None, None
            rows[name] = row
        out[op] = {"fastest_peer": fastest, "by_name": rows}
    return out


def verdict(row: dict) -> str:
    """``ahead``/``behind`` when the interquartile range of the paired ratio to the
    fastest peer lies entirely below/above 1, else ``tie`` (within noise)."""
    q1, q3 = row["to_fastest_peer_iqr"]
    return "ahead" if q3 < 1 else "behind" if q1 > 1 else "tie"


def render(results: dict, names: List[str], info: dict, cmd: str, args) -> str:
    lines = [
        f"# Speed: matched RealNVP ({args.layers} affine couplings, conditioner MLP "
        f"{'-'.join(map(str, args.hidden))}, ReLU, half/half alternating partitions, Normal base)",
        "",
        report.header(info, cmd),
        f"- settings: train batch {args.batch}, log_prob/sample {args.points} points, Adam lr {args.lr}, "
        f"{args.reps} interleaved repetitions after {args.warmup} warm-up, validation "
        f"{'on' if args.validate else 'off'} for every library",
        "",
        "Cells are the median over repetitions of time / conditioner-floor time in the same repetition "
        "(the floor: the same 8 MLPs alone with ReLU in place; forward, and for `train` backward with input gradients plus "
        "the Adam step). `ours / fastest peer` is the median paired ratio with its interquartile range; "
        "< 1 means we are faster; `tie` when the range contains 1 (within the noise of a shared machine).",
        "",
    ]
    cols = names + ([COMPILED] if args.compile else [])
    for op in OPS:
        lines += [f"## {op}", ""]
        rows = []
        for dim, res in results.items():
            summary = res["summary"][op]
            by = summary["by_name"]
            fastest = summary["fastest_peer"]
            row = [dim, f"{by[FLOOR]['median_ms']:.1f}"]
            row += [f"{by[n]['to_floor']:.2f}" if n in by else "" for n in cols]
            ours = by.get("ours")
            if ours is not None and ours["to_fastest_peer"] is not None:
                q1, q3 = ours["to_fastest_peer_iqr"]
                row += [fastest, f"{ours['to_fastest_peer']:.3f} [{q1:.2f}, {q3:.2f}] {verdict(ours)}"]
            else:
                row += [fastest or "-", "-"]
            if COMPILED in by:
                row.append(f"{by['ours']['median_ms'] / by[COMPILED]['median_ms']:.2f}x")
            rows.append(row)
        head = ["D", "floor (ms)", *cols, "fastest peer", "ours / fastest peer [IQR]"]
        if any(COMPILED in res["summary"][op]["by_name"] for res in results.values()):
            head.append("compile gain")
        lines += [report.markdown_table(head, rows), ""]
    lines += ["## Parameters (trainable)", ""]
    lines += [
        report.markdown_table(
            ["D", *names, FLOOR],
            [
                [d, *(r["parameters"].get(n, "") for n in names), r["parameters"][FLOOR]]
                for d, r in results.items()
            ],
        ),
        "",
    ]
    if args.compile:
        comp = ", ".join(f"D={d}: {r['compile_s']:.0f} s" for d, r in results.items())
        lines += [f"`torch.compile` of our `log_prob` (first two calls, untimed above): {comp}.", ""]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dims", type=int, nargs="+", default=[2, 16, 64])
    p.add_argument("--device", default="cpu")
    p.add_argument("--libs", nargs="+", default=list(NAMES), choices=NAMES, help="contenders (if installed)")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--points", type=int, default=10_000)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--validate", action="store_true", help="turn distribution validation on for all")
    p.add_argument("--out", default=str(report.RESULTS), help="directory for the .md and .json results")
    p.add_argument("--stem", default=None, help="file name stem (default speed_<device>)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    names = available(args.libs)
    set_validation(names, args.validate)
    missing = sorted(set(args.libs) - set(names))
    if missing:
        print(f"not installed, skipped: {', '.join(missing)}")
    info, cmd = report.machine(args.device), report.command()
    results = {dim: bench_dim(dim, names, args, device) for dim in args.dims}
    markdown = render(results, names, info, cmd, args)
    data = {"machine": info, "command": cmd, "settings": vars(args), "results": results}
    stem = args.stem or f"speed_{device.type}"
    report.publish(stem, markdown, data, args.out)
    return data


if __name__ == "__main__":
    main()
