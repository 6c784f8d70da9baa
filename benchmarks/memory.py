"""Peak memory and time of a training step as a Glow gets deeper, with and without
memory saving (invertible backpropagation, :mod:`pyro_flows.transforms.recompute`).

Each configuration (steps of flow per scale x memory saving) runs in a fresh Python
process, so that nothing from an earlier configuration is counted: the process builds
``glow(shape, num_scales=3, steps_per_scale=K)`` and an Adam optimizer, runs one
untimed training step (``-log_prob`` of a batch of dequantized images, ``backward``,
Adam; it allocates the optimizer state), records its resident memory, and then runs
``--steps`` more. The peak is the process's high-water resident memory
(``ru_maxrss``) minus the resident memory before the timed steps: the memory a training
step needs on top of the model, its gradients and its optimizer state (which grow with
the number of parameters in any case; gradients are zeroed, not freed, and Adam updates
one tensor at a time, so that the step's own memory is what is measured). ``MALLOC_MMAP_THRESHOLD_`` is fixed so
that large buffers are returned to the system when freed (glibc's default threshold
grows, which would keep freed activations resident). Time is CPU time per step
(``time.process_time``, one thread).

With ``--context-dim k`` the flow is the class-conditional Glow
(``glow(..., context_dim=k, split_prior="learned")``) and every batch comes with one-hot
labels of ``k`` classes.

    OMP_NUM_THREADS=1 python -m benchmarks.memory                # 3x32x32, batch 64, K = 2, 4, 8
    OMP_NUM_THREADS=1 python -m benchmarks.memory --context-dim 10   # class-conditional
    OMP_NUM_THREADS=1 python -m benchmarks.memory --smoke        # tiny, for the tests
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from . import report

DEPTHS = (2, 4, 8)


def resident_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_resident_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(args) -> dict:
    import pyro_flows

    torch.set_num_threads(1)
    torch.manual_seed(0)
    flow = pyro_flows.glow(
        tuple(args.shape),
        num_scales=args.num_scales,
        steps_per_scale=args.depth,
        hidden_channels=args.hidden,
        num_blocks=1,
        memory_saving=args.saving,
        **(dict(context_dim=args.context_dim, split_prior="learned") if args.context_dim else {}),
    )
    if args.context_dim:
        import pyro.distributions as dist

        base = dist.Normal(torch.zeros(args.shape), torch.ones(args.shape)).to_event(3)
        conditional = dist.ConditionalTransformedDistribution(base, [flow])
        model = torch.nn.ModuleList([flow])  # the parameters
        labels = torch.eye(args.context_dim)[torch.arange(args.batch) % args.context_dim]

        def log_prob(x):
            return conditional.condition(labels).log_prob(x)

    else:
        model = pyro_flows.Flow(flow)
        log_prob = model.log_prob
    # foreach=False: the multi-tensor update allocates temporaries the size of all the
    # parameters, memory that grows with depth whatever the backward pass does
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, foreach=False)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.rand(args.batch, *args.shape, generator=generator) for _ in range(2)]

    def step(x):
        optimizer.zero_grad(set_to_none=False)  # gradients live with the model, as Adam's state
        loss = -log_prob(x).mean()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    step(batches[0].clone())  # allocates gradients and Adam's state
    before = resident_mib()
    start = time.process_time()
    for i in range(args.steps):
        loss = step(batches[i % 2].clone())
    seconds = (time.process_time() - start) / args.steps
    return {
        "depth": args.depth,
        "memory_saving": args.saving,
        "context_dim": args.context_dim,
        "couplings": args.depth * args.num_scales,
        "parameters": sum(p.numel() for p in model.parameters()),
        "resident_before_mib": before,
        "peak_step_mib": peak_resident_mib() - before,
        "s_per_step": seconds,
        "loss": loss,
    }


def run_fresh(args, depth: int, saving: bool) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.memory", "--worker", "--depth", str(depth)]
    cmd += ["--shape", *map(str, args.shape), "--batch", str(args.batch), "--hidden", str(args.hidden)]
    cmd += ["--num-scales", str(args.num_scales), "--steps", str(args.steps)]
    cmd += ["--context-dim", str(args.context_dim)]
    if saving:
        cmd.append("--saving")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def render(rows, info, cmd, args) -> str:
    by = {(r["depth"], r["memory_saving"]): r for r in rows}
    first = min(args.depths)
    table = []
    for depth in args.depths:
        plain, saving = by[(depth, False)], by[(depth, True)]
        table.append(
            [
                f"{depth} ({plain['couplings']} couplings)",
                f"{plain['peak_step_mib']:.0f}",
                f"{plain['peak_step_mib'] / by[(first, False)]['peak_step_mib']:.2f}x",
                f"{saving['peak_step_mib']:.0f}",
                f"{saving['peak_step_mib'] / by[(first, True)]['peak_step_mib']:.2f}x",
                f"{plain['s_per_step']:.2f}",
                f"{saving['s_per_step']:.2f}",
                f"{saving['s_per_step'] / plain['s_per_step']:.2f}x",
            ]
        )
    shape = "x".join(map(str, args.shape))
    which = f"class-conditional Glow ({args.context_dim} classes)" if args.context_dim else "Glow"
    extra = f", context_dim={args.context_dim}, split_prior='learned'" if args.context_dim else ""
    return "\n".join(
        [
            f"# Training-step memory of {which} at {shape}, batch {args.batch}, as it gets deeper",
            "",
            report.header(info, cmd),
            f"- settings: glow({tuple(args.shape)}, num_scales={args.num_scales}, steps_per_scale=K, "
            f"hidden_channels={args.hidden}, num_blocks=1{extra}), Adam; peak = high-water resident memory of a "
            f"fresh process during {args.steps} training steps minus its resident memory before them; "
            "CPU seconds per step, one thread",
            "",
            report.markdown_table(
                [
                    "K per scale",
                    "peak MiB",
                    "growth",
                    "peak MiB, memory saving",
                    "growth",
                    "s/step",
                    "s/step, memory saving",
                    "time ratio",
                ],
                table,
            ),
            "",
        ]
    )


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", type=int, nargs=3, default=[3, 32, 32])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--hidden", type=int, default=64, help="conditioner width")
    p.add_argument("--num-scales", type=int, default=3)
    p.add_argument("--depths", type=int, nargs="+", default=list(DEPTHS), help="steps of flow per scale")
    p.add_argument("--steps", type=int, default=3, help="measured training steps per configuration")
    p.add_argument("--context-dim", type=int, default=0, help="class-conditional Glow with this many classes")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, in this process (used by the tests)")
    p.add_argument("--out", default=str(report.RESULTS))
    p.add_argument("--stem", default=None, help="file name stem (default memory_cpu[_conditional])")
    # one configuration, in this process (what the driver runs in fresh processes)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--depth", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--saving", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.stem is None:
        args.stem = "memory_cpu_conditional" if args.context_dim else "memory_cpu"
    if args.smoke:
        args.shape, args.batch, args.hidden, args.num_scales = [1, 8, 8], 4, 4, 2
        args.depths, args.steps = [1, 2], 1
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return {}
    info, cmd = report.machine("cpu"), report.command()
    rows = []
    for depth in args.depths:
        for saving in (False, True):
            if args.smoke:  # in this process: the smoke run checks the script, not the memory
                rows.append(worker(argparse.Namespace(**{**vars(args), "depth": depth, "saving": saving})))
            else:
                rows.append(run_fresh(args, depth, saving))
            print(rows[-1], flush=True)
    markdown = render(rows, info, cmd, args)
    data = {"machine": info, "command": cmd, "settings": vars(args), "results": rows}
    report.publish(args.stem, markdown, data, args.out)
    return data


if __name__ == "__main__":
    main()
