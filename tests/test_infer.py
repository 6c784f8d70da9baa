"""Flow guides, flow priors, NeuTra, serialisation and diagnostics with Pyro inference."""

import functools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoNormal, AutoNormalizingFlow
from pyro.infer.reparam import NeuTraReparam

import pyro_flows
from pyro_flows.infer import (
    AutoRealNVP,
    AutoSplineFlow,
    compare_moments,
    guide_samples,
    guide_to_inference_data,
    importance_log_weights,
    mcmc_to_inference_data,
    psis_khat,
)

# Normal-Normal conjugate model: z ~ N(0, I_2), x_i | z ~ N(z, I_2), i = 1..4, so
# z | x ~ N(sum(x) / 5, I / 5).
X = torch.tensor([[1.0, -0.5], [2.0, 0.3], [0.5, -1.0], [1.5, 0.2]])
POST_MEAN = X.sum(0) / (len(X) + 1)
POST_VAR = torch.full((2,), 1.0 / (len(X) + 1))


def conjugate_model(x=X):
    z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    loc = z.unsqueeze(-2).expand(*z.shape[:-1], *x.shape)
    pyro.sample("x", dist.Normal(loc, 1.0).to_event(2), obs=x)


def funnel(dim=3):
    v = pyro.sample("v", dist.Normal(0.0, 3.0))
    pyro.sample("x", dist.Normal(torch.zeros(dim - 1), (v / 2).exp().unsqueeze(-1)).to_event(1))


def _train(model, guide, steps, elbo, lr=0.02, decay=1.0):
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": decay ** (1 / steps)})
    svi = SVI(model, guide, optim, elbo)
    return [svi.step() for _ in range(steps)]


def _small_guide(model, **kw):
    return AutoRealNVP(model, num_layers=2, hidden_dims=(8,), **kw)


def test_svi_recovers_the_exact_conjugate_posterior():
    guide = _small_guide(conjugate_model)
    _train(
        conjugate_model,
        guide,
        300,
        Trace_ELBO(num_particles=32, vectorize_particles=True, max_plate_nesting=0),
        0.03,
        0.05,
    )
    with torch.no_grad():
        z = guide.get_posterior().sample((40000,))
    assert torch.allclose(z.mean(0), POST_MEAN, atol=0.04), (z.mean(0), POST_MEAN)
    assert torch.allclose(z.var(0), POST_VAR, rtol=0.08), (z.var(0), POST_VAR)
    # the trained guide is almost the posterior: importance weights are nearly constant
    lw = importance_log_weights(conjugate_model, guide, num_particles=2000, max_plate_nesting=0)
    log_evidence = dist.MultivariateNormal(
        torch.zeros(8), torch.eye(8) + torch.ones(4, 4).kron(torch.eye(2))
    ).log_prob(X.reshape(-1))
    assert abs(lw.mean() - log_evidence) < 0.05, (lw.mean(), log_evidence)
    # Nearly constant means a spread of a few hundredths. (PSIS k-hat is no check here:
    # fitted to weights this flat it is noise, 0.12 to 0.86 over four seeds of this run.)
    assert float(lw.std()) < 0.1, float(lw.std())


def test_real_nvp_as_init_transform_fn_of_auto_normalizing_flow():
    guide = AutoNormalizingFlow(
        conjugate_model, functools.partial(pyro_flows.real_nvp, num_layers=2, hidden_dims=(8,))
    )
    losses = _train(conjugate_model, guide, 200, Trace_ELBO(num_particles=8, vectorize_particles=True), 0.03)
    assert sum(losses[-30:]) / 30 < sum(losses[:30]) / 30
    with torch.no_grad():
        z = guide.get_posterior().sample((20000,))
    assert torch.allclose(z.mean(0), POST_MEAN, atol=0.1), z.mean(0)
    assert isinstance(guide.transform, pyro_flows.builders.vector.VectorFlow)


def test_guide_with_predictive_plates_and_vectorised_particles():
    def model():
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        with pyro.plate("p", 3):
            pyro.sample("b", dist.LogNormal(a, 1.0))
            pyro.sample("c", dist.Normal(0.0, 1.0), obs=torch.zeros(3))

    guide = _small_guide(model)
    losses = []
    for elbo in (Trace_ELBO, TraceMeanField_ELBO):
        losses += _train(
            model, guide, 3, elbo(num_particles=5, vectorize_particles=True, max_plate_nesting=1)
        )
    assert all(torch.isfinite(torch.tensor(losses)))
    samples = Predictive(model, guide=guide, num_samples=7)()
    assert samples["a"].numel() == 7 and samples["b"].shape[0] == 7 and samples["b"].shape[-1] == 3
    assert (samples["b"] > 0).all()  # constrained sites are mapped to their support
    idata = guide_to_inference_data(model, guide, 11)
    assert idata.posterior["b"].shape == (1, 11, 3)


def test_inference_data_keeps_the_sites_own_shapes():
    # a genuine event dimension of size 1 stays; the singleton plate dimensions of a
    # vectorised draw go (the samples of guide_samples have the sites' own shapes)
    def model():
        w = pyro.sample("w", dist.Normal(torch.zeros(1), 1.0).to_event(1))
        with pyro.plate("outer", 2, dim=-2), pyro.plate("inner", 3):
            pyro.sample("b", dist.Normal(w[..., 0], 1.0))
        pyro.sample("y", dist.Normal(w[..., 0], 1.0), obs=torch.tensor(0.5))

    guide = _small_guide(model)
    _train(model, guide, 2, Trace_ELBO(max_plate_nesting=2))
    samples = guide_samples(model, guide, 5)
    assert samples["w"].shape == (5, 1) and samples["b"].shape == (5, 2, 3)
    idata = guide_to_inference_data(model, guide, 5)
    assert idata.posterior["w"].shape == (1, 5, 1) and idata.posterior["b"].shape == (1, 5, 2, 3)
    # the look at the shapes leaves the draws as they were
    pyro.set_rng_seed(4)
    first = guide_samples(model, guide, 5, sites=["w"])["w"]
    pyro.set_rng_seed(4)
    second = Predictive(model, guide=guide, num_samples=5, return_sites=["w"], parallel=True)()["w"]
    assert torch.equal(first, second.reshape(5, 1))


@pytest.mark.parametrize("guide_class", [AutoRealNVP, AutoSplineFlow])
def test_latents_in_a_subsampled_plate_are_refused_and_observed_ones_are_not(guide_class):
    covariate = torch.randn(100)

    def local(subsample_size):
        def model():
            mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
            with pyro.plate("n", 100, subsample_size=subsample_size) as idx:
                z = pyro.sample("z", dist.Normal(mu + covariate[idx], 0.1))
                pyro.sample("y", dist.Normal(z, 1.0), obs=torch.zeros(len(idx)))

        return model

    pyro.clear_param_store()
    with pytest.raises(
        ValueError, match=r"latent site 'z' is in the subsampled plate 'n' \(size 100, subsample 5\)"
    ):
        guide_class(local(5), num_layers=2, hidden_dims=(8,))()
    pyro.clear_param_store()
    assert guide_class(local(None), num_layers=2, hidden_dims=(8,))()["z"].shape == (100,)

    def observed_only():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("n", 100, subsample_size=5) as idx:
            pyro.sample("y", dist.Normal(mu + covariate[idx], 1.0), obs=torch.zeros(5))

    pyro.clear_param_store()
    assert guide_class(observed_only, num_layers=2, hidden_dims=(8,))()["mu"].shape == ()


def test_median_quantiles_and_plate_nesting_errors_say_what_to_do():
    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("a", 2, dim=-2), pyro.plate("b", 3, dim=-1):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=torch.zeros(2, 3))

    pyro.clear_param_store()
    guide = _small_guide(model)
    guide()
    with pytest.raises(NotImplementedError, match="estimate it from draws"):
        guide.median()
    with pytest.raises(NotImplementedError, match="estimate them from draws"):
        guide.quantiles([0.5])
    with pytest.raises(
        (RuntimeError, ValueError), match="pass the number of nested plates as max_plate_nesting"
    ):
        psis_khat(model, guide, num_particles=50)
    assert math.isfinite(psis_khat(model, guide, num_particles=50, max_plate_nesting=2))


def test_flow_prior_is_learned_inside_a_model():
    """A RealNVP prior over local latents z_n, registered with pyro.module, learns where
    the data are: its mean moves from 0 to near (3, -2)."""
    torch.manual_seed(0)
    data = torch.tensor([3.0, -2.0]) + 0.5 * torch.randn(64, 2)
    prior_flow = pyro_flows.real_nvp(2, num_layers=4, hidden_dims=(16,))
    base = dist.Normal(torch.zeros(2), 1.0).to_event(1)

    def model(x):
        pyro.module("prior_flow", prior_flow)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.TransformedDistribution(base, [prior_flow]))
            pyro.sample("x", dist.Normal(z, 0.1).to_event(1), obs=x)

    guide = AutoNormal(model)
    losses = _train(functools.partial(model, data), functools.partial(guide, data), 150, Trace_ELBO(), 0.04)
    assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20 - 100
    names = [n for n in pyro.get_param_store() if n.startswith("prior_flow$$$")]
    assert len(names) == len(list(prior_flow.parameters()))
    with torch.no_grad():
        prior_mean = dist.TransformedDistribution(base, [prior_flow]).sample((4000,)).mean(0)
    assert torch.allclose(prior_mean, torch.tensor([3.0, -2.0]), atol=0.5), prior_mean


def test_neutra_hmc_with_a_trained_flow_guide():
    pyro.set_rng_seed(0)
    guide = _small_guide(funnel)
    _train(funnel, guide, 100, Trace_ELBO(num_particles=4, vectorize_particles=True), 0.02)
    neutra = NeuTraReparam(guide.requires_grad_(False).eval())
    mcmc = MCMC(
        NUTS(neutra.reparam(funnel), max_tree_depth=4), num_samples=30, warmup_steps=20, disable_progbar=True
    )
    mcmc.run()
    latent = mcmc.get_samples()["v_shared_latent"]
    assert latent.shape == (30, 3)
    samples = neutra.transform_sample(latent)
    assert samples["v"].shape == (30,) and samples["x"].shape == (30, 2)
    assert torch.isfinite(samples["x"]).all()
    idata = mcmc_to_inference_data(mcmc)
    assert idata.posterior["v_shared_latent"].shape == (1, 30, 3)
    assert idata.sample_stats["diverging"].shape == (1, 30)


def test_param_store_save_load_restores_the_guide(tmp_path):
    guide = _small_guide(funnel)
    _train(funnel, guide, 20, Trace_ELBO(num_particles=4, vectorize_particles=True))
    z = torch.randn(10, 3)
    with torch.no_grad():
        expected = guide.get_posterior().log_prob(z)
    pyro.get_param_store().save(tmp_path / "params.pt")
    pyro.clear_param_store()
    fresh = _small_guide(funnel)
    fresh()  # set up the (differently initialised) guide
    with torch.no_grad():
        assert not torch.allclose(fresh.get_posterior().log_prob(z), expected, atol=1e-4)
    pyro.get_param_store().load(tmp_path / "params.pt")
    with torch.no_grad():
        fresh()  # PyroModule syncs parameters from the store
        got = fresh.get_posterior().log_prob(z)
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("guide_class", [AutoRealNVP, AutoSplineFlow])
def test_a_float64_model_gets_a_float64_guide(guide_class):
    # as Pyro's autoguides: the guide takes the model's dtype, not the default one
    assert torch.get_default_dtype() == torch.float32
    y = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)

    def model():
        mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=torch.float64), 1.0))
        sigma = pyro.sample("sigma", dist.LogNormal(torch.zeros((), dtype=torch.float64), 1.0))
        with pyro.plate("data", 3):
            pyro.sample("y", dist.Normal(mu, sigma), obs=y)

    pyro.clear_param_store()
    guide = guide_class(model, num_layers=2, hidden_dims=(8,))
    _train(model, guide, 3, Trace_ELBO())
    assert {p.dtype for p in guide.parameters()} == {torch.float64}
    assert {v.dtype for v in guide().values()} == {torch.float64}


@pytest.mark.parametrize("load_first", [True, False], ids=["load-then-call", "call-then-load"])
@pytest.mark.parametrize("guide_class", [AutoRealNVP, AutoSplineFlow])
def test_param_store_restores_the_curvature_centeredness(guide_class, load_first, tmp_path):
    """With the default ``noncentered="auto"`` the centeredness comes from the curvature at
    a random initial point: a reloaded store must bring the trained one back, or the same
    parameters describe another posterior."""
    from examples.eight_schools import eight_schools

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = guide_class(eight_schools, num_layers=2, hidden_dims=(8,))
    _train(eight_schools, guide, 20, Trace_ELBO(num_particles=4, vectorize_particles=True))
    trained = {k: v.clone() for k, v in guide.site_centeredness().items()}
    pyro.set_rng_seed(7)
    with torch.no_grad():
        expected = guide()
    pyro.get_param_store().save(tmp_path / "params.pt")
    pyro.clear_param_store()
    pyro.set_rng_seed(3)  # another initial point, hence another curvature
    fresh = guide_class(eight_schools, num_layers=2, hidden_dims=(8,))
    if load_first:
        pyro.get_param_store().load(tmp_path / "params.pt")
        fresh()  # set up (drawing its own initial point) before the seeded draw
    else:
        fresh()
        assert not torch.allclose(fresh.site_centeredness()["theta"], trained["theta"])
        pyro.get_param_store().load(tmp_path / "params.pt")
    pyro.set_rng_seed(7)
    with torch.no_grad():
        got = fresh()
    for name, value in trained.items():
        torch.testing.assert_close(fresh.site_centeredness()[name], value)
    for name in ("mu", "tau", "theta"):
        torch.testing.assert_close(got[name], expected[name])


@pytest.mark.parametrize("guide_class", [AutoRealNVP, AutoSplineFlow])
def test_a_store_of_another_guides_settings_fails_with_a_clear_error(guide_class, tmp_path):
    pyro.clear_param_store()
    guide_class(funnel, num_layers=2, hidden_dims=(8,))()
    pyro.get_param_store().save(tmp_path / "params.pt")
    other = guide_class(funnel, num_layers=2, hidden_dims=(6,))  # same name, other shapes
    with pytest.raises(
        ValueError, match=r"parameter store holds .* of shape \(1, 8, 1\), but this guide's is \(1, 6, 1\)"
    ):
        other()
    # the same after a first sync: a store loaded later is checked too
    pyro.clear_param_store()
    other()
    pyro.get_param_store().load(tmp_path / "params.pt")
    with pytest.raises(ValueError, match="pyro.clear_param_store"):
        other()


def test_a_store_saved_with_another_flow_lr_scale_is_refused_not_ignored(tmp_path):
    """A store saved with ``flow_lr_scale=1`` (AutoRealNVP's default before 2026-12-02)
    holds the conditioners under other names than the default guide's; the guide says so
    instead of training from its own start, and a guide of the saved settings reads it."""
    pyro.clear_param_store()
    AutoRealNVP(funnel, num_layers=2, hidden_dims=(8,), flow_lr_scale=1)()
    names = set(pyro.get_param_store().keys())
    assert any(n.endswith(".weight0") for n in names), names
    pyro.get_param_store().save(tmp_path / "params.pt")
    pyro.clear_param_store()
    guide = AutoRealNVP(funnel, num_layers=2, hidden_dims=(8,))
    guide()
    assert any(n.endswith(".weight0_scaled0p3") for n in pyro.get_param_store().keys())
    pyro.get_param_store().load(tmp_path / "params.pt")
    with pytest.raises(
        ValueError, match=r"holds AutoRealNVP\.transform\$\$\$0\.stacks\.0\.bias0 .*flow_lr_scale=1"
    ):
        guide()
    pyro.clear_param_store()
    pyro.get_param_store().load(tmp_path / "params.pt")
    AutoRealNVP(funnel, num_layers=2, hidden_dims=(8,), flow_lr_scale=1)()  # reads it
    with pytest.raises(ValueError, match="flow_lr_scale must be a positive number"):
        AutoRealNVP(funnel, flow_lr_scale=0.0)


def test_flow_lr_scale_is_adam_with_the_flow_at_a_lower_rate():
    """``flow_lr_scale=c`` changes no value, only Adam's step on the conditioners: in
    float64, the default guide (c = 0.3) under Adam at lr 1e-2 follows the guide held at
    its own scale (c = 1) under Adam with lr 3e-3 on the conditioners and 1e-2 on the
    location and scale, step for step."""

    def run(scale, optim_args):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoRealNVP(_eight_schools_64, flow_lr_scale=scale)
        elbo = Trace_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=1)
        svi = SVI(_eight_schools_64, guide, pyro.optim.Adam(optim_args), elbo)
        losses = [svi.step() for _ in range(6)]
        stacks = guide.transform.parts[0].stacks
        weights = [t for stack in stacks for j in range(stack.num_layers) for t in stack.layer(j)]
        return losses, weights, guide.transform.parts[-1]

    eps = 1e-16  # Adam's eps acts on the held scale: keep it out of the comparison
    torch.set_default_dtype(torch.float64)
    try:
        losses, weights, loc_scale = run(0.3, {"lr": 1e-2, "eps": eps})
        ref_losses, ref_weights, ref_loc_scale = run(
            1.0, lambda name: {"lr": 3e-3 if ".stacks." in name else 1e-2, "eps": eps}
        )
    finally:
        torch.set_default_dtype(torch.float32)
    for a, b in zip(losses, ref_losses, strict=True):
        assert abs(a - b) <= 1e-9 * max(1.0, abs(b)), (a, b)
    assert len(weights) == len(ref_weights) == 12  # 11-D: two stacks of three layers
    for w, v in zip(weights, ref_weights, strict=True):
        assert float((w - v).abs().max()) < 1e-8, float((w - v).abs().max())  # steps: ~3e-3
    assert torch.allclose(loc_scale.loc, ref_loc_scale.loc, rtol=0, atol=1e-8)
    # the steps moved the flow (its last layer starts at zero), by about 3e-3 a step
    last = weights[-2]
    assert 1e-3 < float(last.abs().max()) < 6 * 3e-3 * 1.5


def test_khat_separates_a_good_guide_from_a_bad_one():
    good = _small_guide(conjugate_model)
    _train(conjugate_model, good, 150, Trace_ELBO(num_particles=8, vectorize_particles=True), 0.05)
    k_good = psis_khat(conjugate_model, good, num_particles=2000, max_plate_nesting=0)
    pyro.clear_param_store()
    # a guide ten times too narrow misses the posterior's tails: heavy-tailed weights
    bad = AutoNormal(conjugate_model, init_scale=0.05)
    k_bad = psis_khat(conjugate_model, bad, num_particles=2000, max_plate_nesting=0)
    assert k_good < 0.5 < 0.7 < k_bad, (k_good, k_bad)


def test_compare_moments_against_inference_data_and_exact():
    torch.manual_seed(0)
    samples = {"v": 3 * torch.randn(8000), "x": torch.randn(8000, 2) + torch.tensor([1.0, -1.0])}
    rows = compare_moments(
        samples, {"v": {"mean": 0.0, "sd": 3.0}, "x": {"mean": [1.0, -1.0], "sd": [1.0, 1.0]}}
    )
    assert [(r["site"], r["index"]) for r in rows] == [("v", 0), ("x", 0), ("x", 1)]
    assert all(r["mean_error"] < 0.1 and abs(r["sd_rel_error"]) < 0.05 for r in rows)
    import arviz as az

    reference = az.from_dict(posterior={"v": 1.5 * torch.randn(2, 4000).numpy()})
    (row,) = compare_moments(samples, reference, sites=["v"])
    assert abs(row["sd_rel_error"] - 1.0) < 0.06  # sd 3 against 1.5: +100%


def test_psis_khat_rejects_non_finite_weights():
    with pytest.raises(ValueError, match="non-finite"):
        psis_khat(None, None, log_weights=torch.tensor([0.0, float("nan")] * 50))


def _eight_schools_64():
    y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0, 5.0], dtype=torch.float64)
    sigma = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0, 12.0], dtype=torch.float64)
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(torch.tensor(5.0, dtype=torch.float64)))
    with pyro.plate("schools", len(y)):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def _steps_of_real_nvp(stacked: bool, monkeypatch, steps: int = 3, fused: bool = False, **options):
    """Losses of a few Adam steps of a default AutoRealNVP in float64 (11-D: couplings of
    two shapes), its parameters in the store and its gradients after the first step;
    the couplings run one by one unless ``fused``."""
    from pyro_flows.infer import guides

    if not stacked:
        monkeypatch.setattr(guides, "_stack_conditioners", lambda *args, **kwargs: None)
    monkeypatch.setattr(AutoRealNVP, "_fused", fused)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoRealNVP(_eight_schools_64, **options)
    elbo = Trace_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(1)
    first = elbo.loss_and_grads(_eight_schools_64, guide)
    grads = {id(p): p.grad.clone() for p in guide.transform.parameters()}
    for p in guide.transform.parameters():
        p.grad = None
    svi = SVI(_eight_schools_64, guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    losses = [first] + [svi.step() for _ in range(steps)]
    monkeypatch.undo()
    return guide, losses, grads


def _conditioner_tensors(coupling, grads=None):
    """(weight, bias) per linear layer of a coupling's conditioner, stacked or not (or
    their gradients, from ``grads`` keyed by the parameter's id)."""
    from pyro_flows.infer.guides import _StackedMLP

    pick = (lambda t: t) if grads is None else (lambda t: grads[id(t)])
    conditioner = coupling.conditioner
    if isinstance(conditioner, _StackedMLP):
        stack, i = conditioner.stack, conditioner.index
        return [(pick(stack.held(j)[0])[i], pick(stack.held(j)[1])[i]) for j in range(stack.num_layers)]
    return [(pick(m.weight), pick(m.bias)) for m in conditioner if isinstance(m, torch.nn.Linear)]


def test_stacked_conditioners_leave_loss_and_gradients_unchanged(monkeypatch):
    """AutoRealNVP keeps its couplings' conditioner weights in a few stacked tensors (for
    Pyro's per-tensor costs); in float64 the losses, the gradients of every conditioner
    weight and the parameters after Adam steps equal those of separate per-coupling
    networks (held at their own scale, ``flow_lr_scale=1``: per-coupling networks have
    no other)."""
    torch.set_default_dtype(torch.float64)
    try:  # per-coupling MLPs read their inputs as they are
        options = {"input_bound": None, "flow_lr_scale": 1}
        stacked, losses, grads = _steps_of_real_nvp(True, monkeypatch, **options)
        plain, plain_losses, plain_grads = _steps_of_real_nvp(False, monkeypatch, **options)
    finally:
        torch.set_default_dtype(torch.float32)
    # 11 latent dimensions: the half masks give couplings of two shapes, so two stacks
    num_tensors = sum(1 for _ in stacked.transform.parameters())
    assert num_tensors == 2 * 6 + 2 < sum(1 for _ in plain.transform.parameters()) == 8 * 6 + 2
    for a, b in zip(losses, plain_losses, strict=True):
        assert abs(a - b) <= 1e-10 * max(1.0, abs(b)), (a, b)
    couplings = [p for p in stacked.transform.parts if hasattr(p, "conditioner")]
    plain_couplings = [p for p in plain.transform.parts if hasattr(p, "conditioner")]
    assert len(couplings) == len(plain_couplings) == 8
    for c, pc in zip(couplings, plain_couplings, strict=True):
        pairs = zip(_conditioner_tensors(c, grads), _conditioner_tensors(pc, plain_grads), strict=True)
        for (w, b), (pw, pb) in pairs:
            assert torch.allclose(w, pw, rtol=0, atol=1e-10) and torch.allclose(b, pb, rtol=0, atol=1e-10)
        for (w, b), (pw, pb) in zip(_conditioner_tensors(c), _conditioner_tensors(pc), strict=True):
            assert w.dtype == torch.float64
            assert torch.allclose(w, pw, rtol=0, atol=1e-10) and torch.allclose(b, pb, rtol=0, atol=1e-10)
    # the gradients are not all zero (the last layers start at zero, their gradients do not)
    assert any(float(g.abs().max()) > 0 for g in grads.values())


@pytest.mark.parametrize("path_gradient, input_bound", [(True, 4.0), (False, 4.0), (True, None)])
def test_fused_couplings_leave_loss_and_gradients_unchanged(monkeypatch, path_gradient, input_bound):
    """The default AutoRealNVP runs its couplings and permutations as one transform
    (pyro_flows.infer.fused); in float64 its losses over a few Adam steps, its gradients
    and its parameters equal those of the layers run one by one."""
    from pyro_flows.infer.fused import _FusedCouplings

    options = {"path_gradient": path_gradient, "input_bound": input_bound}
    torch.set_default_dtype(torch.float64)
    try:
        fused, losses, grads = _steps_of_real_nvp(True, monkeypatch, fused=True, **options)
        plain, plain_losses, plain_grads = _steps_of_real_nvp(True, monkeypatch, **options)
    finally:
        torch.set_default_dtype(torch.float32)
    assert [type(p) for p in fused.transform.parts] == [_FusedCouplings, pyro_flows.transforms.LocScale]
    assert len(plain.transform.parts) == 8 + 3 + 1  # couplings, permutations, LocScale
    for a, b in zip(losses, plain_losses, strict=True):
        assert abs(a - b) <= 1e-10 * max(1.0, abs(b)), (a, b)
    params, plain_params = list(fused.transform.parameters()), list(plain.transform.parameters())
    assert len(params) == len(plain_params) == 2 * 6 + 2
    for p, q in zip(params, plain_params, strict=True):
        assert p.shape == q.shape
        assert torch.allclose(grads[id(p)], plain_grads[id(q)], rtol=0, atol=1e-10)
        assert torch.allclose(p, q, rtol=0, atol=1e-10)  # after the Adam steps
    assert any(float(g.abs().max()) > 0 for g in grads.values())


def test_fused_couplings_match_the_layers_in_both_directions():
    """The fused transform's value, inverse and log-determinant equal the layers' own on
    perturbed weights, for an even and an odd dimension, with and without a scale bound."""
    from pyro.distributions.torch_transform import ComposeTransformModule

    from pyro_flows.infer.fused import _fuse
    from pyro_flows.infer.guides import _stack_conditioners, guide_real_nvp

    cases = (
        (6, 3.0, None, 1.0),
        (7, None, None, 1.0),
        (6, 3.0, 1.5, 1.0),
        (6, 3.0, 1.5, 0.3),
        (7, None, None, 0.3),
    )
    for dim, scale_bound, input_bound, lr_scale in cases:
        torch.manual_seed(dim)
        layers = guide_real_nvp(dim, num_layers=5, hidden_dims=(8, 8), scale_bound=scale_bound).double()
        _stack_conditioners(layers.parts, input_bound, lr_scale)
        with torch.no_grad():
            for p in layers.parameters():
                p.add_(0.3 * torch.randn_like(p))
        fused = _fuse(list(layers.parts), dim)
        reference = ComposeTransformModule(list(layers.parts))
        x = 2.0 * torch.randn(9, dim, dtype=torch.float64)  # beyond the input bound, often
        y, ladj = fused._call_and_ladj(x)
        assert torch.allclose(y, reference(x), rtol=0, atol=1e-12)
        assert torch.allclose(ladj, reference.log_abs_det_jacobian(x, reference(x)), rtol=0, atol=1e-12)
        x_back, ladj_back = fused._inverse_and_ladj(y)
        assert torch.allclose(x_back, x, rtol=0, atol=1e-10)
        assert torch.allclose(ladj_back, ladj, rtol=0, atol=1e-10)
        assert float(ladj.abs().max()) > 1e-3  # the perturbed layers are not the identity


def test_fuse_declines_layers_it_cannot_reproduce():
    from pyro_flows.infer.fused import _fuse
    from pyro_flows.infer.guides import guide_real_nvp

    # conditioners not stacked (plain MLPs): left to run one by one
    assert _fuse(list(guide_real_nvp(4, num_layers=2, hidden_dims=(8,)).parts), 4) is None
    assert _fuse([], 4) is None


def test_conditioner_input_bound_keeps_the_first_steps_at_lr_1e_2_finite():
    """The first Adam steps move every conditioner weight by about the learning rate; a
    ReLU conditioner's outputs grow with its input, so without a bound the couplings
    compound that in the tails. Six steps at lr 1e-2 on eight schools: with the default
    input bound every draw of 20000 stays below 1000 before the LocScale (it was 4768 at
    step 2 of the seed-2 run whose loss overflowed at step 7), without it some seed goes
    far beyond."""
    from benchmarks.guide_accuracy import _targets

    model = _targets()["eight_schools"]["model"]

    def worst_draw(input_bound, seed):
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        # the model's own (centered) coordinates, where the blow-up happens
        guide = AutoRealNVP(model, input_bound=input_bound, noncentered=False)
        elbo = Trace_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=1)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
        worst = 0.0
        for step in range(6):
            assert math.isfinite(svi.step())
            with torch.no_grad():
                z = torch.randn(20000, 10, generator=torch.Generator().manual_seed(step))
                for part in guide.transform.parts[:-1]:  # the flow, before mu + sigma *
                    z = part(z)
            worst = max(worst, float(z.abs().max()))
        return worst

    bounded = [worst_draw(4.0, seed) for seed in range(3)]
    unbounded = [worst_draw(None, seed) for seed in range(3)]
    assert max(bounded) < 1e3, bounded
    assert max(unbounded) > 1e3, unbounded
    # the bound is validated and reaches the conditioners
    with pytest.raises(ValueError, match="input_bound"):
        AutoRealNVP(model, input_bound=0.0)
