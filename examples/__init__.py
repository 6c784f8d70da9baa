"""Example scripts of pyro-flows.

Run them from the repository root as modules, e.g. ``python -m examples.banana``. Each
writes its figures and tables into :data:`OUTPUT_DIR` (``outputs/examples/``, ignored by
git) unless given ``--out DIR``, so running an example never changes the checkout.
``python -m examples.make_figures`` regenerates the figures that the documentation shows
and is the only command that writes into ``docs/img/``.
"""

from pathlib import Path

#: under the repository root whatever the working directory (``/outputs/`` is ignored there)
OUTPUT_DIR = Path(__file__).resolve().parents[1] / "outputs" / "examples"
