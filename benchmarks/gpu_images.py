"""Training throughput of the image flows (3 x 32 x 32, batch 64) in float32 and bf16,
with and without memory saving.

Prepared for a GPU machine; nothing here needs one, but the numbers only mean something
on one. Each configuration (builder x precision x memory saving) times ``--steps`` training steps
(``-log_prob`` of a batch of dequantized images, ``backward``, Adam) after ``--warmup``
untimed ones, synchronizing the device around the timed loop, and reports images per
second and peak device memory. ``bf16`` wraps the forward pass in
``torch.autocast(dtype=torch.bfloat16)`` (parameters and optimizer stay float32). A
configuration that fails (e.g. an op without a bf16 kernel) is recorded with its error
instead of stopping the run. ``memory saving`` builds the flow with
``memory_saving=True`` (activations recomputed from outputs in the backward pass,
:mod:`pyro_flows.transforms.recompute`); peak memory is ``torch.cuda.max_memory_allocated``
over the timed steps.

    python -m benchmarks.gpu_images --device cuda
    python -m benchmarks.gpu_images --device cpu --smoke     # tiny sizes, any machine

The image builders (:func:`pyro_flows.real_nvp_image`, :func:`pyro_flows.glow`) are
imported when the script runs, so it can live next to a checkout that lacks them.
"""

from __future__ import annotations

import argparse
import time

import torch

from . import report
from .contenders import set_validation

BUILDERS = ("real_nvp_image", "glow")
PRECISIONS = ("float32", "bf16")
SAVING = ("off", "on")


def build_flow(builder: str, shape, device, memory_saving: bool = False, smoke: bool = False):
    import pyro_flows

    if not hasattr(pyro_flows, builder):
        raise RuntimeError(f"pyro_flows.{builder} is not in this checkout (merge the image flows first)")
    options = {"memory_saving": memory_saving}
    if smoke:
        options.update(num_scales=2, hidden_channels=4, num_blocks=1)
        if builder == "glow":
            options["steps_per_scale"] = 1
        else:
            options["conditioner_batch_norm"] = False
    return pyro_flows.Flow(getattr(pyro_flows, builder)(tuple(shape), **options)).to(device)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(builder: str, precision: str, args, device, memory_saving: bool = False) -> dict:
    torch.manual_seed(0)
    flow = build_flow(builder, args.shape, device, memory_saving, args.smoke)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-4)
    batches = [
        torch.rand(args.batch, *args.shape, device=device) for _ in range(4)
    ]  # dequantized pixels in [0, 1)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step(x):
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = -flow.log_prob(x).mean()
        loss.backward()
        optimizer.step()
        return loss

    for i in range(args.warmup):
        step(batches[i % len(batches)].clone())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    for i in range(args.steps):
        loss = step(batches[i % len(batches)].clone())
    _sync(device)
    seconds = time.perf_counter() - start
    out = {
        "images_per_s": args.batch * args.steps / seconds,
        "ms_per_step": 1e3 * seconds / args.steps,
        "final_loss": float(loss.detach()),
        "parameters": sum(p.numel() for p in flow.parameters()),
    }
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def render(results, info, cmd, args) -> str:
    rows = []
    for builder, by_precision in results.items():
        for key, r in by_precision.items():
            precision, _, saving = key.partition("/")
            saving = saving.replace("saving_", "") or "off"
            if "error" in r:
                rows.append([builder, precision, saving, "failed", "", "", r["error"][:80]])
            else:
                memory = f"{r['peak_memory_gib']:.2f}" if "peak_memory_gib" in r else "-"
                rows.append(
                    [
                        builder,
                        precision,
                        saving,
                        f"{r['images_per_s']:.0f}",
                        f"{r['ms_per_step']:.1f}",
                        memory,
                        r["parameters"],
                    ]
                )
    return "\n".join(
        [
            f"# Image flows: training throughput at {'x'.join(map(str, args.shape))}, batch {args.batch}",
            "",
            report.header(info, cmd),
            f"- settings: {args.steps} timed steps after {args.warmup} warm-up, Adam lr 1e-4, builders' defaults",
            "",
            report.markdown_table(
                [
                    "builder",
                    "precision",
                    "memory saving",
                    "images/s",
                    "ms/step",
                    "peak GiB",
                    "parameters / error",
                ],
                rows,
            ),
            "",
        ]
    )


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--builders", nargs="+", default=list(BUILDERS), choices=BUILDERS)
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument(
        "--memory-saving", nargs="+", default=list(SAVING), choices=SAVING, help="configurations to time"
    )
    p.add_argument("--smoke", action="store_true", help="tiny flows and images, 1 step (any device)")
    p.add_argument("--shape", type=int, nargs=3, default=[3, 32, 32])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", default=str(report.RESULTS))
    p.add_argument("--stem", default=None, help="file name stem (default images_<device>)")
    args = p.parse_args(argv)
    if args.smoke:
        args.shape, args.batch, args.steps, args.warmup = [3, 8, 8], 4, 1, 1
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    set_validation(["ours"], False)
    info, cmd = report.machine(args.device), report.command()
    results = {}
    for builder in args.builders:
        results[builder] = {}
        for precision in args.precisions:
            for saving in args.memory_saving:
                # float32 without memory saving keeps its old key: earlier results stay comparable
                key = precision if saving == "off" else f"{precision}/saving_{saving}"
                try:
                    results[builder][key] = throughput(builder, precision, args, device, saving == "on")
                except Exception as error:  # record and go on: one failure should not cost the run
                    results[builder][key] = {"error": f"{type(error).__name__}: {error}"}
                print(builder, key, results[builder][key], flush=True)
    markdown = render(results, info, cmd, args)
    data = {"machine": info, "command": cmd, "settings": vars(args), "results": results}
    report.publish(args.stem or f"images_{device.type}", markdown, data, args.out)
    return data


if __name__ == "__main__":
    main()
