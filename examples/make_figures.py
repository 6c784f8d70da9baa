"""Regenerate the figures that the documentation shows, into ``docs/img/``.

This is the only command that writes into the checkout. Every other example writes into
``outputs/examples/`` (ignored by git) unless given ``--out``. Each example below runs with
its default settings (the commands printed beside the numbers in the docs); its complete
output, tables included, stays in ``outputs/examples/figures/<example>/``, and only the
figures that the docs show are copied into ``docs/img/``.

    python -m examples.make_figures                        # all of them (about 30 minutes on one core)
    python -m examples.make_figures --only banana one_d    # some of them
    python -m examples.make_figures --list                 # what writes which figure

Run it from the repository root with ``OMP_NUM_THREADS=1`` (the numbers in the docs were
computed with one thread; other thread counts change the last digits).
"""

from __future__ import annotations

import argparse
import importlib
import shutil
from pathlib import Path

from examples import OUTPUT_DIR

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"

# example module -> (extra arguments, {file the example writes: path under docs/img})
FIGURES: dict[str, tuple[list[str], dict[str, str]]] = {
    "one_d": (
        [],
        {f"one_d_{name}.png": f"one_d_{name}.png" for name in ("uniform", "beta", "normal", "inverse_cdf")},
    ),
    "unnormalized": ([], {"unnormalized.png": "unnormalized.png"}),
    "gmm_digits": ([], {"gmm_digits.png": "gmm_digits.png"}),
    "digits": (
        ["--seconds", "140"],
        {
            f"{model}_{kind}.png": f"digits/{model}_{kind}.png"
            for model in ("real_nvp_image", "glow")
            for kind in ("samples", "reconstructions")
        },
    ),
    "digits_conditional": (
        [],
        {"glow_class_conditional_samples.png": "digits/glow_class_conditional_samples.png"},
    ),
    "spline_checkerboard": ([], {"spline_checkerboard.png": "spline_checkerboard.png"}),
    "funnel": ([], {"funnel.png": "inference/funnel.png"}),
    "eight_schools": ([], {"eight_schools.png": "inference/eight_schools.png"}),
    "banana": ([], {"banana.png": "inference/banana.png"}),
    "vae_digits": ([], {"vae_digits.png": "inference/vae_digits.png"}),
}


def documented_figures() -> set[str]:
    """Every path under ``docs/img/`` that this command writes (relative, POSIX style)."""
    return {dest for _, files in FIGURES.values() for dest in files.values()}


def make(name: str, out_root: Path = OUTPUT_DIR / "figures", img: Path = IMG) -> list[Path]:
    """Run one example with its documented settings and copy its figures into ``img``."""
    extra, files = FIGURES[name]
    out = Path(out_root) / name
    out.mkdir(parents=True, exist_ok=True)
    module = importlib.import_module(f"examples.{name}")
    module.main([*extra, "--out", str(out)])
    written = []
    for source, dest in files.items():
        target = Path(img) / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / source, target)
        written.append(target)
        print(f"wrote {target}")
    return written


def main(argv=None) -> list[Path]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=sorted(FIGURES), help="examples to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the examples and the figures they write")
    args = parser.parse_args(argv)
    if args.list:
        for name, (extra, files) in FIGURES.items():
            command = " ".join(["python -m", f"examples.{name}", *extra])
            print(f"{command}: " + ", ".join(f"docs/img/{dest}" for dest in files.values()))
        return []
    written = []
    for name in args.only or FIGURES:
        written += make(name)
    return written


if __name__ == "__main__":
    main()
