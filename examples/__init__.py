"""Example scripts of pyro-flows.

Run them from the repository root as modules, e.g. ``python -m examples.banana``. Those
that write figures or tables write them into :data:`OUTPUT_DIR` (``outputs/examples/``,
ignored by git) unless given ``--out DIR`` (``compare_nll`` and ``ffjord_vs_realnvp`` only
print), so running an example never changes the checkout.
``python -m examples.make_figures`` regenerates the figures that the documentation shows
and is the only command that writes into ``docs/img/``.
"""

from pathlib import Path

#: under the repository root whatever the working directory (``/outputs/`` is ignored there)
OUTPUT_DIR = Path(__file__).resolve().parents[1] / "outputs" / "examples"
