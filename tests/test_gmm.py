"""The Gaussian-mixture baseline: EM recovers known mixtures, the likelihood never
decreases, densities normalize, SGD reaches EM's fit, and errors are clear."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_flows import GaussianMixture


def mixture_1d(n, seed):
    g = torch.Generator().manual_seed(seed)
    comp = torch.multinomial(torch.tensor([0.3, 0.7]), n, replacement=True, generator=g)
    loc, scale = torch.tensor([-2.0, 3.0]), torch.tensor([0.5, 1.5])
    return (loc[comp] + scale[comp] * torch.randn(n, generator=g)).double()


def correlated_2d(n, seed):
    """Two elongated, oppositely tilted Gaussian blobs."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    tilt = torch.tensor([[1.0, 0.0], [0.9, 0.3]], dtype=torch.float64)
    first = z @ tilt.T + torch.tensor([-2.0, 0.0], dtype=torch.float64)
    second = z @ (tilt * torch.tensor([[1.0], [-1.0]], dtype=torch.float64)).T + torch.tensor([2.0, 0.0])
    return torch.where(torch.rand(n, 1, generator=g) < 0.5, first, second)


def test_em_recovers_a_known_1d_mixture():
    gmm = GaussianMixture(2).double().fit_em(mixture_1d(4000, 0))
    order = gmm.loc[:, 0].argsort()
    weights = torch.softmax(gmm.logits, -1)[order]
    assert torch.allclose(gmm.loc[order, 0], torch.tensor([-2.0, 3.0], dtype=torch.float64), atol=0.15)
    assert torch.allclose(
        gmm.log_scale[order, 0].exp(), torch.tensor([0.5, 1.5], dtype=torch.float64), atol=0.06
    )
    assert torch.allclose(weights, torch.tensor([0.3, 0.7], dtype=torch.float64), atol=0.03)


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_em_log_likelihood_never_decreases(covariance):
    gmm = GaussianMixture(3, dim=2, covariance=covariance).double()
    gmm.fit_em(correlated_2d(600, 1), max_iter=60, tol=0.0)
    history = torch.tensor(gmm.history)
    assert len(history) == 60
    assert (history.diff() >= -1e-10).all()
    # and the last value is the log-likelihood of the fitted parameters, up to one step
    assert abs(history[-1].item() - gmm.log_prob(correlated_2d(600, 1)).mean().item()) < 1e-3


def test_full_covariance_recovers_tilted_blobs_and_beats_diagonal():
    train, test = correlated_2d(3000, 0), correlated_2d(3000, 1)
    full = GaussianMixture(2, dim=2, covariance="full").double().fit_em(train)
    diag = GaussianMixture(2, dim=2, covariance="diag").double().fit_em(train)
    left = full.loc[:, 0].argmin()
    cov = full.scale_tril()[left] @ full.scale_tril()[left].T
    expected = torch.tensor([[1.0, 0.9], [0.9, 0.9]], dtype=torch.float64)  # tilt @ tilt.T
    assert torch.allclose(cov, expected, atol=0.08)
    nll_full = -full.log_prob(test).mean().item()
    nll_diag = -diag.log_prob(test).mean().item()
    assert nll_full < nll_diag - 0.3, (nll_full, nll_diag)
    # the true model's NLL is the floor: EM gets within sampling error of it
    true_nll = _true_nll(test)
    assert abs(nll_full - true_nll) < 0.03


def _true_nll(x):
    tilt = torch.tensor([[1.0, 0.0], [0.9, 0.3]], dtype=torch.float64)
    flipped = tilt * torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    mvn = torch.distributions.MultivariateNormal
    a = mvn(torch.tensor([-2.0, 0.0], dtype=torch.float64), covariance_matrix=tilt @ tilt.T)
    b = mvn(torch.tensor([2.0, 0.0], dtype=torch.float64), covariance_matrix=flipped @ flipped.T)
    both = torch.stack([a.log_prob(x), b.log_prob(x)], -1)
    return -(torch.logsumexp(both, -1) - math.log(2)).mean().item()


def test_densities_integrate_to_one():
    gmm1 = GaussianMixture(3).double().fit_em(mixture_1d(500, 2))
    grid = torch.linspace(-15.0, 20.0, 20001, dtype=torch.float64)
    assert abs(torch.trapezoid(gmm1.log_prob(grid).exp(), grid).item() - 1) < 1e-8
    gmm2 = GaussianMixture(2, dim=2, covariance="full").double().fit_em(correlated_2d(500, 2))
    axis = torch.linspace(-9.0, 9.0, 601, dtype=torch.float64)
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    with torch.no_grad():
        density = gmm2.log_prob(torch.stack([xx, yy], -1)).exp()
    mass = torch.trapezoid(torch.trapezoid(density, axis, dim=1), axis).item()
    assert abs(mass - 1) < 1e-4


def test_sgd_reaches_the_em_fit():
    data = mixture_1d(1000, 3)
    em = GaussianMixture(2).double().fit_em(data)
    sgd = GaussianMixture(2).double().fit_sgd(data, steps=150, lr=0.05, batch_size=1000)
    with torch.no_grad():
        assert sgd.log_prob(data).mean() > em.log_prob(data).mean() - 0.01


def test_sample_shapes_and_moments():
    gmm = GaussianMixture(2).double().fit_em(mixture_1d(3000, 4))
    torch.manual_seed(0)
    s = gmm.sample((20000,))
    assert s.shape == (20000,)
    # mixture mean 0.3 * -2 + 0.7 * 3 = 1.5
    assert abs(s.mean().item() - 1.5) < 0.1
    gmm2 = GaussianMixture(3, dim=4)
    assert gmm2.sample((2, 5)).shape == (2, 5, 4)
    assert gmm2.log_prob(torch.zeros(2, 5, 4)).shape == (2, 5)


def test_state_dict_round_trip():
    gmm = GaussianMixture(2, dim=2, covariance="full").double().fit_em(correlated_2d(300, 5))
    fresh = GaussianMixture(2, dim=2, covariance="full").double()
    fresh.load_state_dict(gmm.state_dict())
    x = correlated_2d(10, 6)
    assert torch.allclose(fresh.log_prob(x), gmm.log_prob(x))


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match=r"event shape \(3,\)"):
        GaussianMixture(2, dim=3).log_prob(torch.zeros(5, 2))
    with pytest.raises(ValueError, match="covariance must be one of"):
        GaussianMixture(2, dim=3, covariance="spherical")
    with pytest.raises(ValueError, match="at least num_components=5"):
        GaussianMixture(5).fit_em(torch.zeros(3))
    with pytest.raises(ValueError, match="floating-point"):
        GaussianMixture(2).fit_em(torch.arange(10))
