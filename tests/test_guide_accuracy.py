"""The guide-accuracy, guide-JIT and guide-coverage benchmarks: smoke runs, the exact
log-evidence and the exact marginal of log tau."""

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from benchmarks import guide_accuracy, guide_coverage, guide_jit
from examples.eight_schools import SIGMA, Y, log_tau_cdf, quadrature_reference
from examples.funnel import funnel


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


def test_clip_norm_trains_with_pyros_clipped_adam(tmp_path, monkeypatch):
    """``--clip-norm`` swaps plain Adam for ``ClippedAdam`` at that clip, labels and records
    the runs apart from the plain ones, and refuses a clip that is not positive."""
    made = []
    clipped = pyro.optim.ClippedAdam

    def spy(args):
        made.append(dict(args))
        return clipped(args)

    monkeypatch.setattr(pyro.optim, "ClippedAdam", spy)
    rows = guide_accuracy.main(
        [
            "--smoke",
            "--models",
            "banana",
            "--guides",
            "AutoRealNVP",
            "--clip-norm",
            "10",
            "--out",
            str(tmp_path),
            "--stem",
            "c",
        ]
    )
    assert made == [{"lr": 1e-2, "clip_norm": 10.0}]
    (row,) = rows
    assert row["label"] == "AutoRealNVP, ClippedAdam 10" and row["clip_norm"] == 10.0
    assert math.isfinite(row["kl"]) and row["nonfinite"] == 0
    plain = guide_accuracy.main(
        ["--smoke", "--models", "banana", "--guides", "AutoRealNVP", "--out", str(tmp_path), "--stem", "p"]
    )
    assert len(made) == 1 and "clip_norm" not in plain[0] and plain[0]["label"] == "AutoRealNVP"
    target = guide_accuracy._targets()["banana"]
    with pytest.raises(ValueError, match="clip_norm"):
        guide_accuracy.run_one(
            target, "AutoRealNVP", {"num_layers": 2, "hidden_dims": [8]}, 1e-2, 0, 3, clip_norm=0.0
        )


def test_scores_along_the_way_leave_the_run_unchanged():
    """``score_every`` scores on a forked random stream: the run ends where it ends without
    them, to the last bit, and the trajectory holds one score per interval."""
    target = guide_accuracy._targets()["banana"]
    small = {"num_layers": 2, "hidden_dims": [8]}
    plain = guide_accuracy.run_one(target, "AutoRealNVP", small, 1e-2, 0, 6)
    traced = guide_accuracy.run_one(target, "AutoRealNVP", small, 1e-2, 0, 6, score_every=2)
    assert [plain[k] for k in ("kl", "khat", "sd")] == [traced[k] for k in ("kl", "khat", "sd")]
    assert "trajectory" not in plain
    assert [t["step"] for t in traced["trajectory"]] == [2, 4, 6]
    # the score after the last step is the final score, drawn from the same stream state
    assert traced["trajectory"][-1]["kl"] == traced["kl"]
    with pytest.raises(ValueError, match="score_every"):
        guide_accuracy.run_one(target, "AutoRealNVP", small, 1e-2, 0, 6, score_every=-1)


def test_khat_redraws_score_the_same_guide_again_and_leave_the_run_unchanged():
    """``--khat-redraws``: fresh importance weights per redraw, on a forked stream (the
    run's own scores and its averaged scores are those of the run without them); a
    redraw with the evaluation's own stream state gives the evaluation's k-hat."""
    target = guide_accuracy._targets()["banana"]
    small = {"num_layers": 2, "hidden_dims": [8]}
    plain = guide_accuracy.run_one(target, "AutoRealNVP", small, 1e-2, 0, 6, average_last=3)
    redrawn = guide_accuracy.run_one(
        target, "AutoRealNVP", small, 1e-2, 0, 6, average_last=3, inspect=guide_accuracy.khat_redraws(3)
    )
    keys = ("kl", "khat", "sd", "avg_kl", "avg_khat", "avg_sd")
    assert [plain[k] for k in keys] == [redrawn[k] for k in keys]
    values = redrawn["khat_redraws"]
    assert len(values) == 3 and all(math.isfinite(v) for v in values)
    assert len(set(values)) == 3  # three different sets of weights
    # each redraw is its seed's evaluation of the guide: the same seed gives the same k-hat
    again = guide_accuracy.run_one(
        target, "AutoRealNVP", small, 1e-2, 0, 6, inspect=guide_accuracy.khat_redraws(1)
    )
    assert again["khat_redraws"] == values[:1]
    with pytest.raises(ValueError, match="at least 1"):
        guide_accuracy.khat_redraws(0)
    with pytest.raises(SystemExit):
        guide_accuracy.main(["--smoke", "--khat-redraws", "-1"])


def test_guide_jit_smoke(tmp_path):
    data = guide_jit.main(["--smoke", "--models", "funnel", "--out", str(tmp_path), "--stem", "j"])
    for guide in guide_jit.GUIDES:
        for elbo in guide_jit.ELBOS:
            cell = data["results"]["funnel"][guide][elbo]
            assert cell["cpu_ms"] > 0 and cell["gain"] > 0


def test_log_tau_cdf_matches_the_exact_posterior_draws():
    _, draws = quadrature_reference(n_draws=40_000, seed=3)
    log_tau = draws["tau"].double().log()
    points = torch.tensor([-2.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
    empirical = (log_tau.unsqueeze(-1) <= points.double()).double().mean(0)
    assert (log_tau_cdf(points) - empirical).abs().max() < 0.008  # 4 standard errors at worst
    ends = log_tau_cdf([-20.0, 20.0])
    assert float(ends[0]) < 1e-6 and abs(float(ends[1]) - 1) < 1e-6
    assert (log_tau_cdf(torch.linspace(-3, 4, 50)).diff() >= 0).all()


def test_guide_coverage_of_the_exact_posterior_is_a_tenth_each_side():
    """The funnel has no data, so the model itself is an exact guide: each of its tails
    holds a tenth of the posterior's mass and of the (equal) importance weights."""
    torch.manual_seed(0)
    targets = guide_accuracy._targets()
    out = guide_coverage.coverage(targets["funnel"], funnel, "funnel", 20_000)
    for side in ("below", "above"):
        assert abs(out[f"exact_{side}"] - 0.1) < 0.01
        assert abs(out[f"weight_{side}"] - 0.1) < 1e-3
    assert abs(out["q10"] + 3.0 * 1.2816) < 0.15 and abs(out["q90"] - 3.0 * 1.2816) < 0.15


def test_guide_coverage_smoke(tmp_path):
    rows = guide_coverage.main(["--smoke", "--out", str(tmp_path), "--stem", "c"])
    assert {(r["model"], r["guide"]) for r in rows} == {
        (m, g) for m in guide_coverage.COORDINATES for g in ("AutoRealNVP", "AutoIAFNormal")
    }
    for r in rows:
        assert 0 <= r["exact_below"] <= 1 and 0 <= r["weight_below"] <= 1 and r["q10"] < r["q90"]
    assert "| eight_schools | AutoRealNVP | 0.003 | 0 |" in (tmp_path / "c.md").read_text()


def test_noncentered_targets_are_the_same_posterior_in_other_coordinates():
    """log p_nc(mu, tau, z) = log p(mu, tau, theta = mu + tau z) + 8 log tau (and the funnel's
    likewise), so evidence, KL and k-hat are those of the centered model."""
    from pyro import poutine

    from examples.eight_schools import eight_schools

    targets = guide_accuracy._targets()
    g = torch.Generator().manual_seed(0)
    mu, tau, z = torch.tensor(1.3), torch.tensor(2.1), torch.randn(8, generator=g)

    def log_joint(model, values):
        return float(poutine.trace(poutine.condition(model, values)).get_trace().log_prob_sum())

    nc = log_joint(
        targets["eight_schools_noncentered"]["model"], {"mu": mu, "tau": tau, "theta_decentered": z}
    )
    c = log_joint(eight_schools, {"mu": mu, "tau": tau, "theta": mu + tau * z})
    assert abs(nc - (c + 8 * math.log(2.1))) < 1e-4
    v, x = torch.tensor(-1.7), torch.randn(9, generator=g)
    nc = log_joint(targets["funnel_noncentered"]["model"], {"v": v, "x_decentered": x})
    c = log_joint(funnel, {"v": v, "x": (v / 2).exp() * x})
    assert abs(nc - (c + 9 * -1.7 / 2)) < 1e-4
    assert targets["eight_schools_noncentered"]["log_z"] == targets["eight_schools"]["log_z"]


def test_autoreparam_target_learns_centeredness_from_half():
    import pyro
    from pyro import poutine

    pyro.clear_param_store()
    target = guide_accuracy._targets()["eight_schools_autoreparam"]
    trace = poutine.trace(target["model"]).get_trace()
    assert {"mu_decentered", "theta_decentered", "tau"} <= set(trace.nodes)
    store = pyro.get_param_store()
    assert float(store["theta_centered"].detach()) == 0.5 and store["theta_centered"].requires_grad
    pyro.clear_param_store()


def test_score_reads_a_reparameterized_site_from_the_model():
    """Under AutoReparam the funnel's v is deterministic (v_decentered is sampled): the sd
    is then read from the model's trace. Half-centered, v_decentered ~ N(0, 3^(1/2)) and
    v = 3^(1/2) v_decentered; an untrained AutoNormal guide has scale 0.1 there, so the
    sd of v is 0.1 * 3^(1/2)."""
    import pyro
    from pyro.infer.autoguide import AutoNormal

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    target = guide_accuracy._targets()["funnel_autoreparam"]
    guide = AutoNormal(target["model"])
    guide()
    assert "v_decentered" in guide.prototype_trace.nodes
    out = guide_accuracy.score(target, guide)
    assert abs(out["sd"] - 0.1 * 3**0.5) < 0.01 and out["kl"] > 1  # far from the posterior
    pyro.clear_param_store()
