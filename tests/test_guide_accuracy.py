"""The guide-accuracy and guide-JIT benchmarks: smoke runs and the exact log-evidence."""

import json
import math

import pyro.distributions as dist
import torch

from benchmarks import guide_accuracy, guide_jit
from examples.eight_schools import SIGMA, Y


def test_eight_schools_log_evidence_against_importance_sampling():
    """The quadrature's log p(y) agrees with importance sampling over (mu, log tau) from a
    broad Gaussian proposal (theta integrated out in both)."""
    g = torch.Generator().manual_seed(0)
    n = 200_000
    proposal_mu, proposal_lt = dist.Normal(5.0, 10.0), dist.Normal(1.0, 2.0)
    mu = 5.0 + 10.0 * torch.randn(n, generator=g, dtype=torch.float64)
    lt = 1.0 + 2.0 * torch.randn(n, generator=g, dtype=torch.float64)
    tau = lt.exp()
    scale = (SIGMA.double().square() + tau.unsqueeze(-1).square()).sqrt()
    log_p = (
        dist.Normal(0.0, 5.0).log_prob(mu)
        + dist.HalfCauchy(5.0).log_prob(tau)
        + lt
        + dist.Normal(mu.unsqueeze(-1), scale).log_prob(Y.double()).sum(-1)
    )
    log_w = log_p - proposal_mu.log_prob(mu) - proposal_lt.log_prob(lt)
    estimate = float(torch.logsumexp(log_w, 0) - math.log(n))
    assert abs(guide_accuracy.eight_schools_log_evidence() - estimate) < 0.02


def test_guide_accuracy_smoke(tmp_path):
    rows = guide_accuracy.main(["--smoke", "--models", "banana", "--out", str(tmp_path), "--stem", "s"])
    assert {r["guide"] for r in rows} == set(guide_accuracy.GUIDES)
    for r in rows:
        assert math.isfinite(r["kl"]) and r["kl"] > -0.05  # a KL (up to Monte Carlo noise)
        assert math.isfinite(r["avg_kl"]) and r["nonfinite"] == 0
    text = (tmp_path / "s.md").read_text()
    assert "| banana | AutoSplineFlow | 0.01 | 3 |" in text and "+ iterate average" in text
    assert "python -m benchmarks." in json.loads((tmp_path / "s.json").read_text())["command"]


def test_guide_jit_smoke(tmp_path):
    data = guide_jit.main(["--smoke", "--models", "funnel", "--out", str(tmp_path), "--stem", "j"])
    for guide in guide_jit.GUIDES:
        for elbo in guide_jit.ELBOS:
            cell = data["results"]["funnel"][guide][elbo]
            assert cell["cpu_ms"] > 0 and cell["gain"] > 0
