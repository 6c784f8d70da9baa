"""NeuTra HMC through pyro_flows.infer.neutra_mcmc: shapes, sites, the target and the
guide left as it was found."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_flows.infer import AutoRealNVP, NeuTraRun, neutra_mcmc

MEAN = torch.tensor([1.0, -2.0])
COV = torch.tensor([[1.0, 0.8], [0.8, 1.0]])


def gaussian():
    pyro.sample("z", dist.MultivariateNormal(MEAN, COV))


TWO_SITES_DATA = torch.tensor([0.5, 1.5, 1.0])


def two_sites(y=TWO_SITES_DATA):
    # scale has a positive support, so its draws go through biject_to; y informs loc
    loc = pyro.sample("loc", dist.Normal(0.0, 2.0))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 0.5))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(loc, scale), obs=y)


def _trained(model, steps=150):
    guide = AutoRealNVP(model, num_layers=2, hidden_dims=(16,))
    svi = SVI(
        model, guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO(num_particles=8, vectorize_particles=True)
    )
    for _ in range(steps):
        svi.step()
    return guide


def test_neutra_mcmc_recovers_the_mean_of_a_correlated_gaussian():
    guide = _trained(gaussian)
    run = neutra_mcmc(gaussian, guide, num_samples=200, warmup_steps=100, seed=0, max_tree_depth=4)
    assert isinstance(run, NeuTraRun)
    assert run.samples["z"].shape == (200, 2)
    assert run.latent.shape == (1, 200, 2)
    assert torch.isfinite(run.samples["z"]).all()
    # MCSE of each mean is about sd / sqrt(ESS) ~ 1 / sqrt(100) = 0.1
    assert torch.allclose(run.samples["z"].mean(0), MEAN, atol=0.3), run.samples["z"].mean(0)
    corr = torch.corrcoef(run.samples["z"].T)[0, 1]
    assert 0.6 < corr < 0.95, corr
    assert run.divergences == 0
    assert run.seconds > 0


def test_neutra_mcmc_returns_every_site_in_its_support_and_to_inference_data():
    guide = _trained(two_sites, steps=50)
    run = neutra_mcmc(two_sites, guide, num_samples=20, warmup_steps=10, seed=0, max_tree_depth=3)
    assert set(run.samples) == {"loc", "scale"}
    assert run.samples["loc"].shape == (20,) and run.samples["scale"].shape == (20,)
    assert (run.samples["scale"] > 0).all()
    idata = run.to_inference_data()
    assert idata.posterior["scale"].shape == (1, 20)
    assert idata.sample_stats["diverging"].shape == (1, 20)
    # the transform maps further latent draws the same way
    again = run.to_model_space(run.latent[0])
    assert torch.allclose(again["loc"], run.samples["loc"])


def test_neutra_mcmc_keeps_plated_sites_apart_from_the_draws():
    # a plated latent site: the draws' dimension must not be broadcast against the plate
    def plated():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("groups", 3):
            pyro.sample("theta", dist.Normal(mu, 1.0))

    guide = _trained(plated, steps=5)
    run = neutra_mcmc(plated, guide, num_samples=4, warmup_steps=2, seed=0, max_tree_depth=2)
    assert run.samples["mu"].shape == (4,) and run.samples["theta"].shape == (4, 3)


def test_neutra_mcmc_under_jit_gives_the_same_chain():
    guide = _trained(gaussian, steps=20)
    options = dict(num_samples=15, warmup_steps=10, seed=0, max_tree_depth=3)
    plain = neutra_mcmc(gaussian, guide, **options)
    jitted = neutra_mcmc(gaussian, guide, jit_compile=True, ignore_jit_warnings=True, **options)
    # the same chain up to float32 rounding (the traced graph orders some operations
    # differently: 1e-5 here); another accept decision would differ by O(1)
    assert torch.allclose(plain.samples["z"], jitted.samples["z"], atol=1e-4)


def test_neutra_mcmc_leaves_the_guide_trainable():
    guide = _trained(gaussian, steps=5)
    neutra_mcmc(gaussian, guide, num_samples=3, warmup_steps=2, seed=0, max_tree_depth=2)
    params = list(guide.parameters())
    assert params and all(p.requires_grad for p in params)
    assert guide.training


def test_neutra_mcmc_rejects_guides_without_a_single_latent_vector():
    with pytest.raises(TypeError, match="AutoContinuous guide.*AutoNormal"):
        neutra_mcmc(gaussian, AutoNormal(gaussian), num_samples=2, warmup_steps=1)


def test_neutra_mcmc_warns_about_an_untrained_guide():
    guide = AutoRealNVP(gaussian, num_layers=2, hidden_dims=(8,))
    with pytest.warns(UserWarning, match="untrained"):
        run = neutra_mcmc(gaussian, guide, num_samples=3, warmup_steps=2, seed=0, max_tree_depth=2)
    assert run.samples["z"].shape == (3, 2)


@pytest.mark.parametrize("kwargs", [{"num_samples": 0}, {"warmup_steps": -1}, {"num_chains": 1.5}])
def test_neutra_mcmc_rejects_bad_sizes(kwargs):
    guide = _trained(gaussian, steps=1)
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        neutra_mcmc(gaussian, guide, **{"num_samples": 2, "warmup_steps": 1, **kwargs})


def test_the_neutra_comparison_runs_end_to_end(tmp_path):
    from examples.neutra import main

    rows = main(["--smoke", "--models", "funnel", "--out", str(tmp_path)])
    assert [r["method"] for r in rows] == ["NUTS centered", "NUTS non-centered", "NeuTra"]
    assert all(r["exact sd"] == 3.0 and r["ess_min"] > 0 for r in rows)
    assert "| funnel | 0 | NeuTra |" in (tmp_path / "neutra.md").read_text()


def test_the_neutra_comparison_passes_flow_kwargs_to_the_guide(tmp_path, monkeypatch):
    import examples.neutra as neutra_example

    seen = []
    real = neutra_example.AutoRealNVP
    monkeypatch.setattr(
        neutra_example, "AutoRealNVP", lambda model, **kw: seen.append(kw) or real(model, **kw)
    )
    argv = ["--smoke", "--models", "funnel", "--methods", "NeuTra", "--out", str(tmp_path)]
    neutra_example.main([*argv, "--flow-kwargs", '{"input_bound": null, "num_layers": 2}'])
    assert seen == [{"input_bound": None, "num_layers": 2}]


def test_neutra_mcmc_warns_when_many_draws_diverge(monkeypatch):
    from pyro_flows.infer import neutra as neutra_module

    with pytest.warns(UserWarning, match="91 of 500 draws diverged"):
        neutra_module._warn_if_divergent(91, 500)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        neutra_module._warn_if_divergent(7, 500)  # 1.4%: what good NeuTra runs here show
        neutra_module._warn_if_divergent(0, 0)
    # neutra_mcmc counts the run's divergences and warns through it
    guide = _trained(gaussian, steps=5)
    monkeypatch.setattr(neutra_module.NeuTraRun, "divergences", property(lambda self: 3))
    with pytest.warns(UserWarning, match="3 of 4 draws diverged"):
        neutra_mcmc(gaussian, guide, num_samples=4, warmup_steps=2, seed=0, max_tree_depth=2)
