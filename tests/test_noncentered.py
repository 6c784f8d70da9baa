"""Flow guides with ``noncentered=True``: the same ELBO and gradients as the plain guide
on the model under Pyro's ``LocScaleReparam(0)``, the density a change of variables,
NeuTra on the same warped posterior, and JIT."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, JitTrace_ELBO, JitTraceGraph_ELBO, Trace_ELBO, TraceGraph_ELBO
from pyro.infer.reparam import AutoReparam, LocScaleReparam, NeuTraReparam

from examples.banana import banana
from examples.eight_schools import SIGMA, eight_schools
from examples.funnel import funnel
from pyro_flows.infer import AutoRealNVP, AutoSplineFlow, neutra_mcmc
from pyro_flows.infer.noncentered import NonCenteredNeuTraReparam, curvature_centeredness, loc_scale_sites

from .helpers import trained_parameters

# each model with its location-scale sites
MODELS = {
    "eight_schools": (eight_schools, ("mu", "theta")),
    "funnel": (funnel, ("v", "x")),
    "banana": (banana, ("a", "b")),
}


def _noncentered_model(name):
    model, sites = MODELS[name]
    return poutine.reparam(model, config={s: LocScaleReparam(0.0) for s in sites})


def _train(model, guide_cls, steps, lr=1e-2, elbo_cls=Trace_ELBO, **kwargs):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = guide_cls(model, num_layers=2, hidden_dims=(16,), **kwargs)
    elbo = elbo_cls(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), elbo)
    losses = []
    for step in range(steps):
        pyro.set_rng_seed(100 + step)  # the two guides' set-ups draw differently
        losses.append(svi.step())
    return guide, losses


@pytest.mark.parametrize("guide_cls", [AutoRealNVP, AutoSplineFlow])
@pytest.mark.parametrize("name", list(MODELS))
def test_same_training_as_the_reparameterized_model(float64, name, guide_cls):
    # The non-centered guide on the centered model is the plain guide on the model under
    # LocScaleReparam(0): the same losses, so the same gradients, step after step.
    model, _ = MODELS[name]
    ours, ours_losses = _train(model, guide_cls, 12, noncentered=True)
    theirs, their_losses = _train(_noncentered_model(name), guide_cls, 12, noncentered=False)
    assert ours.noncentered_sites == frozenset(MODELS[name][1])
    torch.testing.assert_close(torch.tensor(ours_losses), torch.tensor(their_losses), rtol=1e-10, atol=1e-10)
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-10)
    # and training moved it: not a comparison of two untouched guides
    # the steps trained the guide (its location moves at the full rate, 1e-2 a step)
    with torch.no_grad():
        moved = float((ours.transform.parts[-1].loc - ours._init_loc()).abs().max())
    assert moved > 2e-2, moved


def test_density_is_the_change_of_variables(float64):
    # log q(v, x) = log q~(v, u) - sum log sigma(v), with x = mu(v) + sigma(v) u
    guide, _ = _train(funnel, AutoRealNVP, 5, noncentered=True)
    pyro.set_rng_seed(3)
    with pyro.plate("draws", 6, dim=-1):
        trace = poutine.trace(guide).get_trace()
    trace.compute_log_prob()
    latent = trace.nodes["_AutoRealNVP_latent"]
    v, x = trace.nodes["v"]["value"], trace.nodes["x"]["value"]
    u_v, u_x = latent["value"][..., 0], latent["value"][..., 1:]
    torch.testing.assert_close(v, 3.0 * u_v)
    torch.testing.assert_close(x, (v / 2).exp().unsqueeze(-1) * u_x)
    log_q = latent["log_prob"] + trace.nodes["v"]["log_prob"] + trace.nodes["x"]["log_prob"]
    expected = guide.get_posterior().log_prob(latent["value"]) - torch.tensor(3.0).log() - 9 * v / 2
    torch.testing.assert_close(log_q, expected)


def test_init_is_the_model_initial_point():
    # the guide's start in non-centered coordinates is the model's initial point
    def model():
        a = pyro.sample("a", dist.Normal(1.0, 2.0))
        pyro.sample("b", dist.Normal(a, 3.0))
        pyro.sample("c", dist.LogNormal(0.0, 1.0))

    init = {"a": torch.tensor(2.0), "b": torch.tensor(-1.0), "c": torch.tensor(4.0)}
    guide = AutoRealNVP(model, noncentered=True, init_loc_fn=pyro.infer.autoguide.init_to_value(values=init))
    guide()
    assert guide.noncentered_sites == {"a", "b"}  # LogNormal lives on the positive line
    torch.testing.assert_close(guide._init_loc(), torch.tensor([0.5, -1.0, torch.tensor(4.0).log()]))
    assert loc_scale_sites(guide.prototype_trace) == {"a", "b"}
    # half-centered: u = c loc + (x - loc) / scale ** (1 - c), c = 1/2
    pyro.clear_param_store()
    guide = AutoRealNVP(
        model, noncentered="learn", init_loc_fn=pyro.infer.autoguide.init_to_value(values=init)
    )
    guide()
    expected = [0.5 + 1.0 / 2**0.5, 1.0 + (-1.0 - 2.0) / 3**0.5, float(torch.tensor(4.0).log())]
    torch.testing.assert_close(guide._init_loc(), torch.tensor(expected))


def test_rejects_an_unknown_setting():
    with pytest.raises(ValueError, match="noncentered must be"):
        AutoRealNVP(funnel, noncentered="yes")


@pytest.mark.parametrize(
    "guide_cls, noncentered",
    [(AutoRealNVP, True), (AutoRealNVP, "auto"), (AutoRealNVP, "learn"), (AutoSplineFlow, "auto")],
)
@pytest.mark.parametrize("jit_elbo", [JitTrace_ELBO, JitTraceGraph_ELBO])
def test_runs_under_jit(float64, guide_cls, noncentered, jit_elbo):
    # a JIT ELBO gives the plain ELBO's loss and gradients (its first call traces)
    plain = Trace_ELBO if jit_elbo is JitTrace_ELBO else TraceGraph_ELBO
    results = []
    for elbo in (
        plain(num_particles=4, vectorize_particles=True, max_plate_nesting=1),
        jit_elbo(num_particles=4, vectorize_particles=True, max_plate_nesting=1),
    ):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = guide_cls(eight_schools, num_layers=2, hidden_dims=(16,), noncentered=noncentered)
        elbo.loss_and_grads(eight_schools, guide)
        params = trained_parameters()
        for p in params.values():
            p.grad = None
        pyro.set_rng_seed(1)
        loss = elbo.loss_and_grads(eight_schools, guide)
        # the curvature centeredness is kept in the store but never traced or optimized
        fixed = set(pyro.get_param_store().keys()) - set(params)
        assert bool(fixed) == (noncentered == "auto")
        assert all(pyro.param(n).unconstrained().grad is None for n in fixed)
        results.append((loss, {n: p.grad.clone() for n, p in params.items()}))
    (loss, grads), (jit_loss, jit_grads) = results
    assert abs(loss - jit_loss) < 1e-8 * abs(loss)
    assert grads.keys() == jit_grads.keys()
    for name in grads:
        torch.testing.assert_close(jit_grads[name], grads[name], rtol=1e-7, atol=1e-9)


def test_neutra_warps_the_same_posterior(float64):
    # NeuTra with the non-centered guide on the centered model and Pyro's NeuTra with the
    # plain guide on the non-centered model: the same potential at every shared latent,
    # and the same model-space draws.
    ours, _ = _train(eight_schools, AutoRealNVP, 6, noncentered=True)
    nc_model = _noncentered_model("eight_schools")
    theirs, _ = _train(nc_model, AutoRealNVP, 6, noncentered=False)
    z = torch.randn(10)

    def log_joint(model, reparam):
        name = next(iter(reparam.guide.prototype_trace.iter_stochastic_nodes()))[0]
        conditioned = poutine.condition(reparam.reparam(model), data={f"{name}_shared_latent": z})
        trace = poutine.trace(conditioned).get_trace()
        return trace.log_prob_sum()

    a = log_joint(eight_schools, NonCenteredNeuTraReparam(ours))
    b = log_joint(nc_model, NeuTraReparam(theirs))
    torch.testing.assert_close(a, b)
    # the plain NeuTra would read u as theta: another (wrong) potential
    assert abs(float(log_joint(eight_schools, NeuTraReparam(ours)) - a)) > 1e-3
    run = neutra_mcmc(eight_schools, ours, num_samples=4, warmup_steps=4, seed=0, max_tree_depth=2)
    draw = run.latent.reshape(-1, 10)[:1]
    values = run.to_model_space(draw)
    u = ours.get_transform()(draw)
    torch.testing.assert_close(values["mu"][0], 5.0 * u[0, 0])
    torch.testing.assert_close(values["theta"][0], values["mu"][0] + values["tau"][0] * u[0, 2:])


def test_predictive_draws_are_centered():
    guide, _ = _train(eight_schools, AutoRealNVP, 3, noncentered=True)
    samples = pyro.infer.Predictive(
        eight_schools, guide=guide, num_samples=50, return_sites=["theta", "mu"]
    )()
    assert samples["theta"].shape[0] == 50 and samples["theta"].shape[-1] == 8
    # draws of theta scatter around mu by tau, not around zero by one
    assert float((samples["theta"] - samples["mu"]).abs().mean()) > 0.5


def _loss_and_grads(model, guide, seed):
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(seed)
    loss = elbo.differentiable_loss(model, guide)
    params = dict(pyro.get_param_store().named_parameters())
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return float(loss), {n: g for n, g in zip(params, grads, strict=True)}


@pytest.mark.parametrize("name", ["eight_schools", "funnel"])
def test_learnt_centeredness_is_pyros_learnable_reparam(float64, name):
    # noncentered="learn": each location-scale site's centeredness is a parameter, and the
    # guide with it is the plain guide on the model under Pyro's learnable
    # LocScaleReparam(): at the same parameters, the same loss and gradients
    model, sites = MODELS[name]
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    ours = AutoRealNVP(model, num_layers=2, hidden_dims=(16,), noncentered="learn")
    ours()
    store = pyro.get_param_store()
    assert {f"AutoRealNVP.centeredness.{s}" for s in sites} <= set(store.keys())
    for s in sites:
        store[f"AutoRealNVP.centeredness.{s}"] = torch.tensor(0.3)
    state = {k: v.detach().clone() for k, v in store.items()}
    loss, grads = _loss_and_grads(model, ours, seed=5)

    pyro.clear_param_store()
    reparam = poutine.reparam(model, config={s: LocScaleReparam() for s in sites})
    theirs = AutoRealNVP(reparam, num_layers=2, hidden_dims=(16,), noncentered=False)
    theirs()
    store = pyro.get_param_store()
    for k, v in state.items():
        if ".centeredness." in k:
            site = k.rsplit(".", 1)[1]
            store[f"{site}_centered"] = torch.full_like(store[f"{site}_centered"], 0.3)
        else:
            store[k] = v
    their_loss, their_grads = _loss_and_grads(reparam, theirs, seed=5)

    assert abs(loss - their_loss) < 1e-9 * max(1.0, abs(loss))
    for k, g in grads.items():
        if ".centeredness." in k:  # Pyro keeps one per element of the event: the same total
            site = k.rsplit(".", 1)[1]
            torch.testing.assert_close(g, their_grads[f"{site}_centered"].sum())
            assert abs(float(g)) > 1e-6
        else:
            torch.testing.assert_close(g, their_grads[k])


def test_sites_of_other_supports_keep_their_own_bijection():
    # a simplex site (one latent coordinate fewer than its value) next to a location-scale
    # one: the non-centered guide gives the plain guide's loss when the location-scale
    # site's loc and scale are 0 and 1 (u = x), with vectorized particles
    def model():
        pyro.sample("p", dist.Dirichlet(torch.ones(4)))
        pyro.sample("z", dist.Normal(0.0, 1.0))

    losses = []
    for noncentered in (False, True):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoRealNVP(model, num_layers=2, hidden_dims=(8,), noncentered=noncentered)
        pyro.set_rng_seed(1)
        elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
        losses.append(elbo.loss(model, guide))
    assert guide.noncentered_sites == {"z"}
    assert abs(losses[0] - losses[1]) < 1e-5 * max(1.0, abs(losses[0]))


def test_curvature_centeredness_is_the_conjugate_ratio(float64):
    # eight schools at its initial point: theta_j ~ N(mu, tau) with y_j ~ N(theta_j, sigma_j)
    # gives c_j = tau^2 / (tau^2 + sigma_j^2); mu ~ N(0, 5) with eight children N(mu, tau)
    # gives kappa = 25 * 8 / tau^2
    pyro.set_rng_seed(0)
    guide = AutoRealNVP(eight_schools, num_layers=2, hidden_dims=(8,), noncentered="auto")
    guide()
    tau = guide.prototype_trace.nodes["tau"]["value"]
    c = guide.site_centeredness()
    sigma = torch.as_tensor(SIGMA, dtype=tau.dtype)
    torch.testing.assert_close(c["theta"], tau**2 / (tau**2 + sigma**2))
    kappa = 25 * 8 / tau**2
    torch.testing.assert_close(c["mu"], kappa / (1 + kappa))
    # held as buffers: saved with the guide and moved with it
    buffers = dict(guide.named_buffers())
    assert sum(k.startswith("centeredness.") for k in buffers) == 2


def test_curvature_centeredness_of_large_sites_and_of_sites_without_children(float64):
    scales = torch.linspace(0.5, 3.0, 100)

    def model():
        x = pyro.sample("x", dist.Normal(torch.zeros(100), 2.0).to_event(1))
        pyro.sample("lone", dist.Normal(0.0, 1.0))
        lin = pyro.sample("lin", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(x, scales).to_event(1), obs=torch.zeros(100))
        pyro.sample("w", dist.Exponential(1.0), obs=torch.tensor(1.0) + lin.exp() * 0)

    trace = poutine.trace(model).get_trace()
    exact = curvature_centeredness(model, trace, ["x", "lone"], exact_max=100)
    kappa = 4 / scales**2
    torch.testing.assert_close(exact["x"], kappa / (1 + kappa))
    assert float(exact["lone"]) == 0.0  # nothing else depends on it: fully non-centered
    # above exact_max, the site's mean curvature (exact for a diagonal Hessian)
    mean = curvature_centeredness(model, trace, ["x"], exact_max=10)["x"]
    kappa = 4 * (1 / scales**2).mean()
    torch.testing.assert_close(mean, torch.full((100,), float(kappa / (1 + kappa))))


@pytest.mark.parametrize("name", ["eight_schools", "funnel"])
def test_auto_centeredness_is_pyros_fixed_reparam(float64, name):
    # noncentered="auto" is the plain guide on the model under Pyro's LocScaleReparam with
    # the same fixed centeredness: the same losses and parameters, step after step
    model, sites = MODELS[name]
    ours, ours_losses = _train(model, AutoRealNVP, 12, noncentered="auto")
    c = ours.site_centeredness()
    assert set(c) == set(sites)
    if name == "eight_schools":
        assert 0.01 < float(c["theta"].min()) < float(c["theta"].max()) < 0.5
    reparam = poutine.reparam(model, config={s: LocScaleReparam(c[s]) for s in sites})
    theirs, their_losses = _train(reparam, AutoRealNVP, 12, noncentered=False)
    torch.testing.assert_close(torch.tensor(ours_losses), torch.tensor(their_losses), rtol=1e-10, atol=1e-10)
    for p, q in zip(ours.transform.parameters(), theirs.transform.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-10)
    # the steps trained the guide (its location moves at the full rate, 1e-2 a step)
    with torch.no_grad():
        moved = float((ours.transform.parts[-1].loc - ours._init_loc()).abs().max())
    assert moved > 2e-2, moved


@pytest.mark.parametrize("model", [funnel, eight_schools], ids=["funnel", "eight_schools"])
def test_default_guide_trains_on_a_model_under_pyros_auto_reparam(model):
    # AutoReparam learns each location-scale site's centeredness as a parameter: the rest
    # of the model then needs grad through it without depending on the site itself
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    reparam_model = poutine.reparam(model, config=AutoReparam())
    guide = AutoRealNVP(reparam_model, num_layers=2, hidden_dims=(8,))
    svi = SVI(
        reparam_model,
        guide,
        pyro.optim.Adam({"lr": 1e-2}),
        Trace_ELBO(num_particles=4, vectorize_particles=True),
    )
    losses = [svi.step() for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
