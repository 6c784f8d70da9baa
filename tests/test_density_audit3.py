"""Numbers a density model can get wrong without an error: the cells a dequantized
model scores when given the wrong kind of input, bits/dim against the exact discrete
likelihood, the log-likelihood EM reports for its fitted parameters, and inverse-CDF
samples whose bracket cuts off the tails."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch.distributions import Distribution

import pyro_flows
from pyro_flows import GaussianMixture, bits_per_dim
from pyro_flows.dequantization import DequantizedFlow
from pyro_flows.sampling import inverse_cdf_sample
from pyro_flows.transforms import Logit, dequantize

K, D, ALPHA = 4, 3, 0.05


def logit_model(dtype=torch.float64):
    """A flow on [0, 1]^3 (a logit of a standard Normal) whose discrete probabilities
    have a closed form, in a uniformly dequantized model of 4 levels."""
    return DequantizedFlow(pyro_flows.Flow(Logit((D,), ALPHA)).to(dtype), K)


def exact_log_prob(levels):
    r""":math:`\log P(x)`: the flow's mass in the cell of ``levels``, from its CDF."""

    def cdf(y):
        p = ALPHA + (1 - 2 * ALPHA) * y
        return torch.special.ndtr(torch.log(p) - torch.log1p(-p))

    return torch.log(cdf((levels + 1) / K) - cdf(levels / K)).sum(-1)


# ------------------------------------------------------------ dequantized input
def test_dequantized_bound_refuses_scaled_data_instead_of_levels():
    model = logit_model()
    levels = torch.tensor([[0.0, 1.0, 3.0], [2.0, 2.0, 0.0]], dtype=torch.float64)
    # the levels themselves score
    assert torch.isfinite(model.bound(levels)).all()
    # data already scaled to [0, 1) would be read as levels 0 (the cells of the first
    # level), a bound for other data
    for method in ("bound", "log_likelihood"):
        with pytest.raises(
            ValueError, match=rf"DequantizedFlow.{method}: expected integer levels in \[0, 3\]"
        ):
            getattr(model, method)(levels / K)
        with pytest.raises(ValueError, match="not all whole numbers"):
            getattr(model, method)(levels + 0.5)
    with pytest.raises(ValueError, match=r"integer levels in \[0, 3\], got values in \[0.0, 4.0\]"):
        model.bound(torch.tensor([[0.0, 4.0, 1.0]], dtype=torch.float64))


def test_dequantized_log_prob_refuses_raw_levels():
    model = logit_model()
    levels = torch.tensor([[0.0, 1.0, 3.0]], dtype=torch.float64)
    with pytest.raises(
        ValueError, match=r"DequantizedFlow.log_prob: expected points in \[0, 1\].*\[0.0, 3.0\]"
    ):
        model.log_prob(levels)
    with pytest.raises(ValueError, match=r"expected points in \[0, 1\]"):
        model.log_prob(torch.tensor([[-0.1, 0.5, 0.5]], dtype=torch.float64))
    # the same points scaled by 1/K, and by 1/(K-1) (the top level at exactly 1), score
    # the same cells; dequantized points score too
    with model.fixed_noise(torch.Generator().manual_seed(0)):
        scaled = model.log_prob(levels / K)
    with model.fixed_noise(torch.Generator().manual_seed(0)):
        by_k_minus_1 = model.log_prob(levels / (K - 1))
    assert torch.equal(scaled, by_k_minus_1)
    assert torch.isfinite(model.log_prob(dequantize(levels, K, torch.Generator().manual_seed(1)))).all()
    # without validation, the checks (and their device syncs) are skipped
    Distribution.set_default_validate_args(False)
    assert torch.isfinite(model.log_prob(levels)).all()


def test_bits_per_dim_of_the_dequantized_bound_against_the_exact_discrete_likelihood():
    model = logit_model()
    levels = torch.tensor([[0.0, 1.0, 3.0], [2.0, 2.0, 0.0], [3.0, 3.0, 3.0]], dtype=torch.float64)
    exact = bits_per_dim(exact_log_prob(levels) + D * math.log(K), D, K)
    # -log P(x) / (D log 2) by hand for the first point, from the three cells' masses
    assert exact[0].item() == pytest.approx(-exact_log_prob(levels[0]).item() / (D * math.log(2)), rel=1e-12)
    samples = 40000
    with model.fixed_noise(torch.Generator().manual_seed(0)):
        # one batch of draws: the estimates of log_likelihood(levels, num_samples=40000)
        draws = model.bound(levels.expand(samples, *levels.shape))
    bound = draws.mean(0)
    weighted = torch.logsumexp(draws, 0) - math.log(samples)
    # Jensen: the expected bound is above the exact bits/dim by a clear margin here (the
    # density is far from flat in the edge cells), the importance-weighted estimate is
    # close to it
    gap = bits_per_dim(bound, D, K) - exact
    assert (gap > 0.05).all(), gap
    assert torch.allclose(bits_per_dim(weighted, D, K), exact, atol=0.01)


# --------------------------------------------------------------------------- EM
@pytest.mark.parametrize("max_iter", [1, 3])
@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_em_history_ends_with_the_fitted_parameters_log_likelihood(max_iter, covariance):
    g = torch.Generator().manual_seed(0)
    x = torch.cat([0.3 * torch.randn(300, 2, generator=g) - 2, torch.randn(300, 2, generator=g) + 1.5])
    gmm = GaussianMixture(3, dim=2, covariance=covariance).double()
    gmm.fit_em(x.double(), max_iter=max_iter)
    assert len(gmm.history) == max_iter
    # the number EM reports is the fitted model's, not that of the parameters one
    # iteration before (lower by 0.04 to 0.9 nats per point here)
    assert gmm.history[-1] == pytest.approx(gmm.log_prob(x.double()).mean().item(), abs=1e-10)


def test_em_history_stops_at_convergence_and_never_decreases():
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(200, generator=g) - 3, torch.randn(200, generator=g) + 3]).double()
    gmm = GaussianMixture(2).double().fit_em(x, tol=1e-9)
    history = torch.tensor(gmm.history, dtype=torch.float64)
    assert len(history) < 200
    assert (history.diff() >= -1e-12).all()
    assert history[-1].item() == pytest.approx(gmm.log_prob(x).mean().item(), abs=1e-12)
    # a converged fit continued from its parameters stops after one iteration
    gmm.fit_em(x, init=False, tol=1e-9)
    assert len(gmm.history) == 1
    assert gmm.history[0] == pytest.approx(history[-1].item(), abs=1e-8)


# --------------------------------------------------------------- inverse CDF
def cauchy_cdf(t):
    return 0.5 + torch.atan(t) / math.pi


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inverse_cdf_sample_warns_when_the_bracket_cuts_off_the_tails(dtype):
    with pytest.warns(
        UserWarning, match=r"inverse_cdf_sample: \d+ of 20000 .*below F\(-100\).*widen the bracket"
    ):
        x = inverse_cdf_sample(
            cauchy_cdf, 20000, torch.Generator().manual_seed(0), bracket=(-100.0, 100.0), dtype=dtype
        )
    # about 0.6% of a Cauchy law lies beyond +-100: those samples sit on the ends
    assert 0.004 < (x.abs() >= 100).double().mean().item() < 0.009
    # a bracket that holds the draws is silent, and its samples pass a KS test
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = inverse_cdf_sample(
            cauchy_cdf, 20000, torch.Generator().manual_seed(0), bracket=(-1e12, 1e12), dtype=dtype
        )
    sorted_cdf = cauchy_cdf(x.double().sort().values)
    grid = torch.arange(1, 20001, dtype=torch.float64) / 20000
    ks = torch.maximum((grid - sorted_cdf).abs(), (grid - 1 / 20000 - sorted_cdf).abs()).max().item()
    assert ks < 1.36 / math.sqrt(20000)
