"""Audit 4 of pyro_flows.infer: NeuTra's potential with the first latent site in a plate, and
a guide state_dict loaded beside Pyro's parameter store."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoIAFNormal

from pyro_flows.infer import AutoRealNVP, AutoSplineFlow, neutra_mcmc


def _plate_first_model():
    # the first latent site is in a plate of 3
    with pyro.plate("g", 3):
        pyro.sample("z", dist.Normal(0.0, 1.0))
    pyro.sample("m", dist.Normal(0.0, 1.0))


@pytest.mark.parametrize("make_guide", ["nvp-plain", "nvp-auto", "iaf"])
def test_neutra_counts_the_flows_log_det_once_with_the_first_site_in_a_plate(make_guide):
    # The warped potential is -log p(T(z)) - log|det J_T(z)|. Pyro's NeuTraReparam adds
    # log|det J| to the Delta of the first latent site, which counted it once per element
    # of that site's plate: here 3 times (log joint -5.9155 against -5.4642 for the guide
    # below, whose log|det J| is -0.2257), and NUTS then drew means of 0.30 and -0.56 for
    # N(0, 1) sites (1000 draws).
    if make_guide == "iaf":
        guide = AutoIAFNormal(_plate_first_model, hidden_dim=[8])
    else:
        noncentered = "auto" if make_guide == "nvp-auto" else False
        guide = AutoRealNVP(_plate_first_model, num_layers=2, hidden_dims=(8,), noncentered=noncentered)
    guide()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a flow whose log|det J| is not constant
        for p in guide.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = neutra_mcmc(_plate_first_model, guide, num_samples=2, warmup_steps=1, seed=0, max_tree_depth=1)
    z = torch.randn(4, generator=gen)
    model = poutine.condition(run.reparam.reparam(_plate_first_model), data={"z_shared_latent": z})
    log_joint = poutine.trace(model).get_trace().log_prob_sum()
    transform = guide.get_transform()
    x = transform(z)
    expected = dist.Normal(0.0, 1.0).log_prob(x).sum() + transform.log_abs_det_jacobian(z, x)
    torch.testing.assert_close(log_joint, expected)
    assert run.samples["z"].shape == (2, 3) and run.samples["m"].shape == (2,)


def _hierarchical(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
    with pyro.plate("g", 3):
        z = pyro.sample("z", dist.Normal(mu, s))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


@pytest.mark.parametrize("guide_cls", [AutoRealNVP, AutoSplineFlow])
def test_a_loaded_state_dict_is_what_a_saved_param_store_restores(guide_cls, tmp_path):
    # With noncentered="auto" the centeredness is a buffer (in the state_dict) and kept in
    # the parameter store, which the guide reads as the source of truth. A state_dict loaded
    # into a new guide left the store's own value (from the new guide's random initial
    # point) there: the loaded guide drew right, but a store saved from it restored another
    # posterior (draws of z off by 0.42 for AutoRealNVP, 0.19 for AutoSplineFlow).
    x = torch.tensor([1.0, -2.0, 0.5])
    trained = guide_cls(_hierarchical, num_layers=2, hidden_dims=(8,))
    svi = pyro.infer.SVI(_hierarchical, trained, pyro.optim.Adam({"lr": 1e-2}), pyro.infer.Trace_ELBO())
    for _ in range(20):
        svi.step(x)
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    pyro.set_rng_seed(5)
    expected = trained(x)

    pyro.clear_param_store()
    pyro.set_rng_seed(1)  # another initial point, so another curvature centeredness
    loaded = guide_cls(_hierarchical, num_layers=2, hidden_dims=(8,))
    loaded(x)
    loaded.load_state_dict(state)
    pyro.set_rng_seed(5)
    draws = loaded(x)
    for name in expected:
        torch.testing.assert_close(draws[name], expected[name])

    pyro.get_param_store().save(tmp_path / "store.pt")
    pyro.clear_param_store()
    pyro.get_param_store().load(tmp_path / "store.pt")
    restored = guide_cls(_hierarchical, num_layers=2, hidden_dims=(8,))
    restored(x)
    pyro.set_rng_seed(5)
    draws = restored(x)
    for name in expected:
        torch.testing.assert_close(draws[name], expected[name])
