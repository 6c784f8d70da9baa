"""The inference tutorials run end to end in smoke mode and write their figure and table.

(The other example scripts have their smoke tests beside their area's tests:
``test_examples_one_d.py``, ``test_images.py``, ``test_ffjord.py``.)
"""

from __future__ import annotations

import importlib
import math

import pytest

GUIDE_COMPARISONS = ["funnel", "banana", "eight_schools"]


@pytest.mark.parametrize("name", GUIDE_COMPARISONS)
def test_guide_comparison_smoke(name, tmp_path, capsys):
    results = importlib.import_module(f"examples.{name}").main(["--smoke", "--out", str(tmp_path)])
    assert "AutoRealNVP (ours)" in results and "AutoNormal" in results
    for metrics in results.values():
        assert math.isfinite(metrics["elbo"]) and math.isfinite(metrics["khat"])
    assert (tmp_path / f"{name}.png").stat().st_size > 1000
    table = (tmp_path / f"{name}.md").read_text()
    assert "AutoRealNVP (ours)" in table and "k-hat" in table


def test_vae_digits_smoke(tmp_path, capsys):
    rows = importlib.import_module("examples.vae_digits").main(["--smoke", "--out", str(tmp_path)])
    assert [row["model"] for row in rows] == ["Normal guide, N(0, I) prior", "flow guide + flow prior (ours)"]
    assert all(math.isfinite(row["test ELBO"]) for row in rows)
    assert any(p.suffix == ".png" and p.stat().st_size > 1000 for p in tmp_path.iterdir())
    assert any(p.suffix == ".md" for p in tmp_path.iterdir())
