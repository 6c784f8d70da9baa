"""Where and how a benchmark ran, and writing its results (markdown + JSON).

Every result file records the date, the machine (CPU model from ``lscpu``, core count,
threads, torch version, GPU name when used), the library versions and the exact
command, so a table can be reproduced or at least interpreted.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from pyro_flows.train.loop import mean_and_standard_error

#: where a benchmark writes by default: ignored by git, so a run never changes the checkout
RESULTS = Path(__file__).resolve().parents[1] / "outputs" / "benchmarks"
#: the recorded results that the documentation cites (write there with ``--out benchmarks/results``)
RECORDED = Path(__file__).resolve().parent / "results"
_PACKAGES = ("torch", "pyro-ppl", "nflows", "normflows", "zuko")


def cpu_model() -> str:
    """The CPU model name as ``lscpu`` reports it (``platform.processor()`` otherwise)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine(device: str = "cpu") -> dict:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": {},
        "device": device,
    }
    for name in _PACKAGES:
        try:
            info["versions"][name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def command() -> str:
    """The command line that is running, with the thread settings that affect timing."""
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ)
    module = Path(sys.argv[0]).stem
    line = f"python -m benchmarks.{module} " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return f"{env} {line}".strip()


def header(info: dict, cmd: str) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    lines = [
        f"- date: {info['date']}",
        f"- machine: {info['cpu']}, {info['cores']} cores, {info['torch_threads']} torch thread(s)"
        + (f", GPU {info['gpu']}" if "gpu" in info else ""),
        f"- versions: Python {info['python']}, {versions}",
        f"- command: `{cmd}`",
    ]
    return "\n".join(lines)


def write(stem: str, markdown: str, data: dict, directory: Path = RESULTS) -> tuple:
    """Write ``<stem>.md`` and ``<stem>.json`` under ``directory``; return both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    md, js = directory / f"{stem}.md", directory / f"{stem}.json"
    md.write_text(markdown)
    js.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return md, js


def publish(stem: str, markdown: str, data: dict, directory: Path = RESULTS) -> tuple:
    """:func:`write` the results, then print the table and where it went."""
    paths = write(stem, markdown, data, directory)
    print(markdown)
    print("written: " + ", ".join(map(str, paths)))
    return paths


def mean_se(values: torch.Tensor) -> tuple:
    """Mean and standard error of per-point values; ``(nan, nan)`` if any is not finite
    (a diverged model is reported as such, not as an infinite mean)."""
    if not bool(torch.isfinite(values).all()):
        return float("nan"), float("nan")
    return mean_and_standard_error(values)


def markdown_table(header_row, rows) -> str:
    out = ["| " + " | ".join(header_row) + " |", "|" + "---|" * len(header_row)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)
