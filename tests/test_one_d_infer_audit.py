"""Edge cases of the 1-D flows, the GMM baseline, NeuTra and the MCMC diagnostics: the
Beta base near the ends of its support, gradients at the support's edges, fits of a
single point, and runs too short for Pyro's convergence diagnostics."""

from __future__ import annotations

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import MCMC, NUTS
from scipy import stats

from pyro_flows import Flow, GaussianMixture, cdf_flow
from pyro_flows.infer import AutoRealNVP, neutra_mcmc
from pyro_flows.infer.diagnostics import mcmc_to_inference_data
from pyro_flows.transforms import BaseCDF
from pyro_flows.transforms.cdf_functions import quantile


# ------------------------------------------------------------- the Beta base
@pytest.mark.parametrize("a, b", [(0.5, 0.5), (2.0, 1.0), (5.0, 5.0)])
def test_beta_base_scores_data_far_in_the_tails(a, b):
    # the density of a CDF flow is its mixture's whatever the base; far to the right the
    # Beta quantile's root rounds to 1, where it used to come back NaN
    flow = Flow(cdf_flow(3, base="beta", a=a, b=b)).double()
    x = torch.tensor([-60.0, -10.0, 0.0, 10.0, 60.0], dtype=torch.float64)
    expected = flow.transform.mixture.log_parts(x)[2]
    assert torch.allclose(flow.log_prob(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "a, b, u",
    [
        (0.5, 0.5, 1 - 1e-12),
        (2.0, 1.0, 1 - 2.0**-53),
        (0.5, 0.5, 1e-30),
        (0.5, 0.5, 1e-100),
        (0.3, 7.0, 1e-50),
        (5.0, 5.0, 1e-300),
    ],
)
def test_beta_quantile_is_accurate_and_inside_the_support_at_its_ends(a, b, u):
    d = torch.distributions.Beta(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    z = quantile(d, torch.tensor([u], dtype=torch.float64))
    assert torch.isfinite(z).all() and 0 < float(z) < 1, z
    assert torch.isfinite(d.log_prob(z)).all()
    reference = stats.beta.ppf(u, a, b)
    if reference < 1:  # a root below 1 in float64: found to full precision
        assert float(z) == pytest.approx(reference, rel=1e-9, abs=0)
    else:  # 1 itself: within the solver's tolerance (8 eps) of the largest float below it
        assert float(z) >= 1 - 8 * 2.0**-52


@pytest.mark.parametrize("a, b", [(1.0, 1.0), (2.0, 1.0), (1.0, 3.0), (0.5, 0.5), (5.0, 5.0)])
def test_beta_base_log_density_at_the_ends_matches_torch(a, b):
    g = BaseCDF("beta", a=a, b=b).double()
    z = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    expected = torch.distributions.Beta(torch.tensor(a).double(), torch.tensor(b).double()).log_prob(z)
    ladj = g.log_abs_det_jacobian(z, g(z))
    assert torch.equal(ladj.isnan(), expected.isnan()) and not expected.isnan().any()
    assert torch.allclose(ladj, expected, rtol=1e-12), (ladj, expected)


@pytest.mark.parametrize("base, params", [("uniform", {}), ("beta", {}), ("beta", {"a": 1.0, "b": 3.0})])
def test_base_cdf_gradients_are_finite_at_the_edges_of_the_support(base, params):
    g = BaseCDF(base, **params).double()
    z = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(g(z).sum(), z)
    assert torch.isfinite(grad).all(), grad
    # inside, the derivative of the CDF is the density
    density = torch.distributions.Beta(
        torch.tensor(params.get("a", 5.0 if base == "beta" else 1.0)).double(),
        torch.tensor(params.get("b", 5.0 if base == "beta" else 1.0)).double(),
    )
    assert float(grad[1]) == pytest.approx(
        float(density.log_prob(torch.tensor(0.5).double()).exp()), rel=1e-10
    )


# ------------------------------------------------------------------- the GMM
def test_em_fits_a_single_point_with_the_covariance_floor():
    gmm = GaussianMixture(1).fit_em(torch.tensor([3.0]), reg_covar=1e-4)
    assert gmm.loc.flatten().tolist() == [3.0]  # its mean, exactly
    assert float(gmm.log_scale.exp().square()) == pytest.approx(1e-4, rel=1e-3)
    assert all(torch.isfinite(torch.tensor(gmm.history)))


@pytest.mark.parametrize("dim", [None, 2])
def test_em_in_float32_fits_narrow_clusters_far_from_the_origin(dim):
    # variances as E[x^2] - mu^2 cancel to nothing at x ~ 1000 in float32 (ulp 6e-5 of
    # 1e6): the fit collapsed onto the covariance floor and the likelihood fell
    g = torch.Generator().manual_seed(0)
    x = torch.cat([1000 + 0.05 * torch.randn(300, generator=g), 1001 + 0.05 * torch.randn(300, generator=g)])
    if dim is not None:
        x = torch.stack([x, x + 1], -1)
    gmm = GaussianMixture(2, dim=dim).fit_em(x)
    reference = GaussianMixture(2, dim=dim).double().fit_em(x.double())
    assert torch.allclose(gmm.log_scale.exp().double(), reference.log_scale.exp(), rtol=0.02)
    history = torch.tensor(gmm.history)
    assert float(torch.diff(history).min()) > -1e-4, gmm.history
    assert history[-1] == pytest.approx(reference.history[-1], abs=1e-3)


# ------------------------------------------------- short runs and their diagnostics
def gaussian():
    pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))


def test_neutra_counts_divergences_and_converts_a_run_of_three_draws():
    # Pyro's MCMC.diagnostics() asserts 4 draws per chain (split R-hat); counting the
    # divergences of a shorter run must not need it
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoRealNVP(gaussian, num_layers=2, hidden_dims=(8,))
    guide()
    run = neutra_mcmc(gaussian, guide, num_samples=3, warmup_steps=50, seed=0, max_tree_depth=2)
    assert run.divergences == 0
    idata = run.to_inference_data()
    assert idata.posterior["z"].shape == (1, 3, 2)
    assert idata.sample_stats["diverging"].shape == (1, 3)
    assert not idata.sample_stats["diverging"].values.any()


def test_neutra_warns_about_divergences_in_a_short_run(monkeypatch):
    from pyro_flows.infer import neutra as neutra_module

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoRealNVP(gaussian, num_layers=2, hidden_dims=(8,))
    guide()
    monkeypatch.setattr(neutra_module.NeuTraRun, "divergences", property(lambda self: 2))
    with pytest.warns(UserWarning, match="2 of 3 draws diverged"):
        neutra_mcmc(gaussian, guide, num_samples=3, warmup_steps=2, seed=0, max_tree_depth=2)


def test_mcmc_to_inference_data_converts_a_run_of_two_draws():
    pyro.set_rng_seed(0)
    mcmc = MCMC(NUTS(gaussian, max_tree_depth=2), num_samples=2, warmup_steps=2, disable_progbar=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mcmc.run()
    idata = mcmc_to_inference_data(mcmc)
    assert idata.posterior["z"].shape == (1, 2, 2)
    assert idata.sample_stats["diverging"].shape == (1, 2)
    assert torch.allclose(torch.from_numpy(idata.posterior["z"].values[0]).float(), mcmc.get_samples()["z"])
