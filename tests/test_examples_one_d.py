"""The 1-D examples run end to end (``--smoke``) and write their figures."""

from __future__ import annotations

import importlib.util
import math
import os

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_d_example_writes_the_lecture_figures(tmp_path):
    result = load("one_d").main(["--smoke", "--out", str(tmp_path)])
    names = sorted(os.path.basename(p) for p in result["files"])
    assert names == ["one_d_beta.png", "one_d_inverse_cdf.png", "one_d_normal.png", "one_d_uniform.png"]
    assert all(os.path.getsize(p) > 10_000 for p in result["files"])
    assert math.isfinite(result["flow_nll"]) and math.isfinite(result["gmm_nll"])


def test_unnormalized_likelihood_runs_off_while_normalized_converges(tmp_path):
    result = load("unnormalized").main(["--smoke", "--out", str(tmp_path)])
    raw, normalized = result["unnormalized"], result["normalized"]
    # the unnormalized objective keeps climbing past any proper log-likelihood of the data
    assert raw[-1] > raw[0] + 3 and raw[-1] > 0.5
    assert all(b > a for a, b in zip(raw[-10:-1], raw[-9:], strict=True))
    assert result["log_mass"][-1] > 3  # the "density" has mass e^3 > 1
    # the normalized one stays a log-likelihood (negative for this data's spread)
    assert normalized[-1] < 0 and normalized[-1] > normalized[0]
    assert (tmp_path / "unnormalized.png").stat().st_size > 10_000


def test_compare_nll_smoke():
    out = load("compare_nll").main(["--smoke"])
    assert set(out) == {"1-D bimodal", "2-D moons"}
    assert all(math.isfinite(v) for table in out.values() for v in table.values())


def test_gmm_digits_smoke(tmp_path):
    results = load("gmm_digits").main(["--smoke", "--out", str(tmp_path)])
    assert {"GMM K=2", "GMM K=2 (train)", "RealNVP", "RealNVP (train)"} <= set(results)
    assert all(math.isfinite(v) for v in results.values())
    assert (tmp_path / "gmm_digits.png").stat().st_size > 10_000
