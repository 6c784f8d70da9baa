"""Flow guides on models as Pyro users write them: supports that depend on other latents,
latent shapes that change between calls, deterministic sites under Predictive."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO

from pyro_flows.infer import AutoRealNVP, AutoSplineFlow, neutra_mcmc
from pyro_flows.infer.noncentered import dependent_support_sites

from .helpers import plated_model, sized_model


def _bounded_by_a_latent():
    # the support of u, (0, t), depends on the latent t
    t = pyro.sample("t", dist.LogNormal(0.0, 0.5))
    u = pyro.sample("u", dist.Uniform(torch.zeros(()), t))
    pyro.sample("y", dist.Normal(u, 1.0), obs=torch.tensor(0.3))


def _guide(guide_cls, model, **kwargs):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    return guide_cls(model, num_layers=2, hidden_dims=(8,), **kwargs)


@pytest.mark.parametrize("guide_cls", [AutoRealNVP, AutoSplineFlow])
@pytest.mark.parametrize("noncentered", ["auto", False])
def test_a_support_that_depends_on_a_latent_follows_the_draw(guide_cls, noncentered):
    # with noncentered=False the guide mapped u with the support at its initial point,
    # (0, t0): 10.8% of its draws had u > t (outside the model's support), and SVI
    # stopped at the first such draw with "Expected value argument ... to be within the
    # support"
    guide = _guide(guide_cls, _bounded_by_a_latent, noncentered=noncentered)
    svi = SVI(_bounded_by_a_latent, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    for _ in range(10):
        assert torch.isfinite(torch.tensor(svi.step()))
    assert guide.dependent_support_sites == {"u"}
    with torch.no_grad():
        draws = Predictive(_bounded_by_a_latent, guide=guide, num_samples=1000, parallel=True)()
    t, u = draws["t"].reshape(-1), draws["u"].reshape(-1)
    assert bool(((u > 0) & (u < t)).all())
    # the guide's density of its draw is the change of variables of its own bounds
    with torch.no_grad():
        trace = poutine.trace(guide).get_trace()
    trace.compute_log_prob()
    latent = trace.nodes[f"_{type(guide).__name__}_latent"]["value"]
    theta_t, theta_u = latent
    t, u = trace.nodes["t"]["value"], trace.nodes["u"]["value"]
    torch.testing.assert_close(t, theta_t.exp())
    torch.testing.assert_close(u, t * torch.sigmoid(theta_u))
    expected = (
        guide.get_posterior().log_prob(latent)
        - theta_t
        - (t * torch.sigmoid(theta_u) * torch.sigmoid(-theta_u)).log()
    )
    torch.testing.assert_close(trace.log_prob_sum(), expected.detach(), rtol=1e-5, atol=1e-5)


def test_fixed_supports_keep_the_plain_path():
    # bounds that no latent moves are not "dependent": the guide with noncentered=False
    # stays Pyro's AutoContinuous (no second run of the model a step)
    def model():
        t = pyro.sample("t", dist.LogNormal(0.0, 0.5))
        pyro.sample("u", dist.Uniform(torch.zeros(()), torch.tensor(2.0)))
        pyro.sample("b", dist.Beta(2.0, 2.0))
        pyro.sample("y", dist.Normal(t, 1.0), obs=torch.tensor(0.3))

    guide = _guide(AutoRealNVP, model, noncentered=False)
    trace = poutine.trace(guide).get_trace()
    assert guide.dependent_support_sites == frozenset()
    assert 0 < float(trace.nodes["u"]["value"]) < 2
    # a model the prior draw cannot run: every tensor-bounded support counts as dependent
    proto = poutine.trace(model).get_trace()
    assert dependent_support_sites(lambda: 1 / 0, proto) == {"u"}


@pytest.mark.parametrize("noncentered", ["auto", False])
def test_neutra_maps_a_dependent_support_with_the_draws_own_bounds(noncentered):
    # Pyro's NeuTraReparam maps the chain's draws back with the supports at the guide's
    # initial point: 8% of the samples of u lay above their t (u / t mean 0.43 instead
    # of 0.45 on this chain)
    guide = _guide(AutoRealNVP, _bounded_by_a_latent, noncentered=noncentered)
    guide()
    run = neutra_mcmc(_bounded_by_a_latent, guide, num_samples=60, warmup_steps=30, seed=0, max_tree_depth=3)
    t, u = run.samples["t"], run.samples["u"]
    assert bool(((u > 0) & (u < t)).all())


@pytest.mark.parametrize("guide_cls", [AutoRealNVP, AutoSplineFlow])
@pytest.mark.parametrize("model", [plated_model, sized_model])
def test_a_model_whose_latent_shapes_change_is_refused_clearly(guide_cls, model):
    # it failed with "The size of tensor a (5) must match the size of tensor b (3)"
    guide = _guide(guide_cls, model)
    guide(3)
    message = r"site 'b' has shape \(5,\) in this run of the model, but \(3,\) when the guide was built"
    with pytest.raises(ValueError, match=message):
        guide(5)
    with pytest.raises(ValueError, match=message):
        SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO()).step(5)
    with pytest.raises(ValueError, match=message):
        Predictive(model, guide=guide, num_samples=2)(5)


@pytest.mark.parametrize("noncentered", ["auto", False])
def test_predictive_deterministic_sites_are_the_function_of_the_drawn_latents(noncentered):
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        s = pyro.sample("s", dist.HalfCauchy(1.0))
        with pyro.plate("i", 2, dim=-2), pyro.plate("j", 3, dim=-1):
            theta = pyro.sample("theta", dist.Normal(mu, s))
            pyro.deterministic("d", theta * s + mu)
            pyro.sample("y", dist.Normal(theta, 0.5), obs=y)

    y = torch.arange(6.0).reshape(2, 3)
    guide = _guide(AutoRealNVP, model, noncentered=noncentered)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    for _ in range(3):
        svi.step(y)
    with torch.no_grad():
        draws = Predictive(
            model, guide=guide, num_samples=50, parallel=True, return_sites=["mu", "s", "theta", "d"]
        )(y)
    assert set(draws) == {"mu", "s", "theta", "d"}
    mu, s, theta = draws["mu"].reshape(50, 1, 1), draws["s"].reshape(50, 1, 1), draws["theta"]
    assert theta.shape == (50, 2, 3)
    torch.testing.assert_close(draws["d"], theta * s + mu)
