"""The path-gradient ("sticking the landing") log-density of flow guides."""

import copy
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.torch_transform import ComposeTransformModule
from pyro.infer import JitTrace_ELBO, JitTraceGraph_ELBO, Trace_ELBO, TraceGraph_ELBO

from pyro_flows.infer import AutoRealNVP, PathGradientTransformedDistribution, guide_real_nvp
from pyro_flows.transforms import LocScale

from .helpers import trained_parameters


def _flow(dim=3, seed=0, dtype=torch.float64):
    """A flow that is far from the identity: couplings with random last layers."""
    torch.manual_seed(seed)
    couplings = guide_real_nvp(dim, num_layers=4, hidden_dims=(16,))
    # a module of the flow (appending to .parts would leave it out of .to() and .parameters())
    flow = ComposeTransformModule([*couplings.parts, LocScale(torch.randn(dim), 1.5)])
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return flow.to(dtype)


def _base(dim=3, dtype=torch.float64):
    return dist.Normal(torch.zeros(dim, dtype=dtype), torch.ones(dim, dtype=dtype)).to_event(1)


def test_values_equal_the_ordinary_log_density():
    flow = _flow()
    stl = PathGradientTransformedDistribution(_base(), [flow])
    plain = dist.TransformedDistribution(_base(), [flow])
    y = stl.rsample((7, 2))  # a sample (a cache hit for the plain one) ...
    assert torch.allclose(stl.log_prob(y), plain.log_prob(y), atol=1e-10)
    fresh = torch.randn(5, 3, dtype=torch.float64)  # ... and a fresh point
    assert torch.allclose(stl.log_prob(fresh), plain.log_prob(fresh), atol=1e-10)
    assert stl.log_prob(y).shape == (7, 2)


def test_gradient_reaches_the_value_but_not_the_parameters():
    flow = _flow()
    stl = PathGradientTransformedDistribution(_base(), [flow])
    plain = dist.TransformedDistribution(_base(), [flow])
    y = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    (g_stl,) = torch.autograd.grad(stl.log_prob(y).sum(), y)
    (g_plain,) = torch.autograd.grad(plain.log_prob(y).sum(), y)
    assert torch.allclose(g_stl, g_plain, atol=1e-10)
    assert g_plain.abs().max() > 1e-3
    assert not stl.log_prob(y.detach()).requires_grad  # no parameter is in the graph


def test_gradient_is_exactly_zero_when_the_guide_is_the_posterior():
    """With q equal to the target, every single-sample path gradient of log p - log q
    vanishes (the estimator "sticks the landing"), while the ordinary one does not."""
    flow = _flow()
    target = dist.TransformedDistribution(_base(), [copy.deepcopy(flow)])  # a frozen copy
    params = list(flow.parameters())
    for cls in (PathGradientTransformedDistribution, dist.TransformedDistribution):
        q = cls(_base(), [flow])
        y = q.rsample((1,))
        grads = torch.autograd.grad((target.log_prob(y) - q.log_prob(y)).sum(), params, allow_unused=True)
        largest = max(g.abs().max().item() for g in grads if g is not None)
        if cls is PathGradientTransformedDistribution:
            assert largest < 1e-10, largest
        else:
            assert largest > 1e-3, largest


def test_elbo_gradient_is_unbiased():
    """The dropped score term has mean zero: over 20 independent batches, the difference
    between the ordinary and the path ELBO gradient averages to zero within its
    standard error, while the gradient itself is many standard errors large."""
    flow = _flow(dim=2, seed=1)
    target = dist.Normal(torch.tensor([1.0, -1.0], dtype=torch.float64), 0.7).to_event(1)
    params = list(flow.parameters())
    torch.manual_seed(2)
    differences, gradients = [], []
    for _ in range(20):
        z = _base(2).sample((4000,))
        estimates = []
        for cls in (PathGradientTransformedDistribution, dist.TransformedDistribution):
            q = cls(_base(2), [flow])
            y = flow(z.clone())  # a new input each time: a cached output's graph is used up
            elbo = (target.log_prob(y) - q.log_prob(y)).mean()
            estimates.append(torch.cat([g.flatten() for g in torch.autograd.grad(elbo, params)]))
        differences.append(estimates[1] - estimates[0])
        gradients.append(estimates[1])
    differences, gradients = torch.stack(differences), torch.stack(gradients)
    se = differences.std(0) / 20**0.5 + 1e-12
    # about 400 components: under the null a bound of 5.5 standard errors fails by chance with p ~ 0.01
    assert (differences.mean(0).abs() / se).max() < 5.5
    assert (gradients.mean(0).abs() / se).max() > 20  # a test with power: the gradient is not noise


def test_guide_losses_agree_with_and_without_path_gradient():
    def model():
        pyro.sample("a", dist.Normal(torch.zeros(3), 2.0).to_event(1))

    losses = []
    for path_gradient in (True, False):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoRealNVP(model, num_layers=2, hidden_dims=(8,), path_gradient=path_gradient)
        elbo = Trace_ELBO(num_particles=4, vectorize_particles=True)
        losses.append(elbo.loss(model, guide))
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)


def test_rejects_foreign_transforms_and_mismatched_event_dims():
    base = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    pyro_affine = dist.transforms.affine_coupling(2, hidden_dims=[4])
    with pytest.raises(TypeError, match="pyro-flows transforms"):
        PathGradientTransformedDistribution(base, [pyro_affine]).log_prob(torch.zeros(2))
    flow = guide_real_nvp(2, num_layers=2, hidden_dims=(4,))
    matrix_base = dist.Normal(torch.zeros(3, 2), torch.ones(3, 2)).to_event(2)
    with pytest.raises(ValueError, match="event_dim"):
        PathGradientTransformedDistribution(matrix_base, [flow]).log_prob(torch.zeros(3, 2))


def test_follows_a_flow_whose_parts_change():
    flow = _flow()
    stl = PathGradientTransformedDistribution(_base(), [flow])
    y = torch.randn(4, 3, dtype=torch.float64)
    before = stl.log_prob(y)
    flow.parts.append(LocScale(torch.ones(3), 2.0).double())
    after = stl.log_prob(y)
    assert torch.allclose(after, dist.TransformedDistribution(_base(), [flow]).log_prob(y), atol=1e-10)
    assert not torch.allclose(before, after)


def test_bad_values_are_named():
    q = PathGradientTransformedDistribution(_base(), [_flow()])
    with pytest.raises(ValueError, match="shape"):
        q.log_prob(torch.zeros(4, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="floating-point"):
        q.log_prob(torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="(?i)nan|finite"):
        q.log_prob(torch.full((4, 3), float("nan"), dtype=torch.float64))


def _jit_model(data):
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2), 3.0).to_event(1))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with pyro.plate("n", data.shape[0]):
        pyro.sample("obs", dist.Normal(loc, scale).to_event(1), obs=data)


def _losses_and_grads(elbo, path_gradient=True):
    """Three (loss, gradients) of an AutoRealNVP, with the parameters moved in between
    so that a traced ELBO must read them as inputs, not constants."""
    data = torch.randn(20, 2, generator=torch.Generator().manual_seed(1)) + 1
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoRealNVP(_jit_model, num_layers=2, hidden_dims=(8,), path_gradient=path_gradient)
    elbo.loss_and_grads(_jit_model, guide, data)  # sets the guide up (and traces a JIT ELBO)
    params = trained_parameters()
    out = []
    for step in range(3):
        for p in params.values():
            p.grad = None
        pyro.set_rng_seed(10 + step)
        loss = elbo.loss_and_grads(_jit_model, guide, data)
        grads = {name: p.grad.clone() for name, p in params.items()}
        out.append((loss, grads))
        with torch.no_grad():
            for name, p in params.items():
                p.sub_(0.01 * grads[name])
    return out


@pytest.mark.parametrize(
    "plain, jitted",
    [(Trace_ELBO, JitTrace_ELBO), (TraceGraph_ELBO, JitTraceGraph_ELBO)],
    ids=["trace", "tracegraph"],
)
def test_path_gradient_under_jit_elbos(plain, jitted):
    """Path gradients run under Pyro's JIT ELBOs (``torch.func.functional_call`` does
    not) and give the same losses and gradients as without JIT."""
    expected = _losses_and_grads(plain())
    got = _losses_and_grads(jitted())
    for (loss, grads), (jit_loss, jit_grads) in zip(expected, got, strict=True):
        assert math.isclose(loss, jit_loss, rel_tol=1e-5), (loss, jit_loss)
        for name in grads:
            assert torch.allclose(grads[name], jit_grads[name], rtol=1e-4, atol=1e-5), name
    # the path gradient is not the ordinary one (the score term is dropped)
    ordinary = _losses_and_grads(plain(), path_gradient=False)
    assert math.isclose(ordinary[0][0], expected[0][0], rel_tol=1e-5)
    assert any(not torch.allclose(ordinary[0][1][n], expected[0][1][n]) for n in expected[0][1])


def _hierarchical(data):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("groups", data.shape[0]):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, 1.0), obs=data)


@pytest.mark.parametrize("guide_cls", ["AutoRealNVP", "AutoSplineFlow"])
def test_flow_guides_run_under_jit_with_a_learnt_reparameterization(guide_cls):
    """Under Pyro's AutoReparam the model has parameters of its own (each site's
    centeredness) and the guide's initial values carry their graph: the JIT ELBO gives
    the losses and gradients, the centeredness ones included, of the plain ELBO."""
    from pyro.infer.reparam import AutoReparam

    from pyro_flows.infer import AutoSplineFlow

    cls = {"AutoRealNVP": AutoRealNVP, "AutoSplineFlow": AutoSplineFlow}[guide_cls]
    data = torch.tensor([2.0, -1.0, 0.5, 3.0])
    results = []
    for elbo in (Trace_ELBO(), JitTrace_ELBO(ignore_jit_warnings=True)):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        model = pyro.poutine.reparam(_hierarchical, config=AutoReparam())
        guide = cls(model, num_layers=2, hidden_dims=(8,))
        elbo.loss_and_grads(model, guide, data)
        params = trained_parameters()
        assert "theta_centered" in params
        for p in params.values():
            p.grad = None
        pyro.set_rng_seed(1)
        loss = elbo.loss_and_grads(model, guide, data)
        results.append((loss, {n: p.grad.clone() for n, p in params.items()}))
    (loss, grads), (jit_loss, jit_grads) = results
    assert math.isclose(loss, jit_loss, rel_tol=1e-5), (loss, jit_loss)
    assert grads.keys() == jit_grads.keys() and grads["theta_centered"].abs() > 0
    for name in grads:
        assert torch.allclose(grads[name], jit_grads[name], rtol=1e-4, atol=1e-5), name


# --- the score carried through the sampling pass (fused AutoRealNVP flows) -----------


def _trained_posterior(model, steps=15, **kwargs):
    """A float64 AutoRealNVP posterior (its fused flow) moved away from its start."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    # in the model's own coordinates: non-centered, this funnel is the base distribution
    # itself, where the path gradient vanishes and the flow would not move
    kwargs.setdefault("noncentered", False)
    guide = AutoRealNVP(model, num_layers=4, hidden_dims=(16, 16), **kwargs)
    elbo = Trace_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=1)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), elbo)
    for _ in range(steps):
        svi.step()
    return guide, guide.get_posterior()


def _funnel():
    v = pyro.sample("v", dist.Normal(0.0, 3.0))
    pyro.sample("x", dist.Normal(torch.zeros(4), (v / 2).exp().unsqueeze(-1)).to_event(1))


@pytest.mark.parametrize("kwargs", [{}, {"scale_bound": None}, {"input_bound": None}])
def test_score_from_the_sampling_pass_equals_the_inverse_pass(float64, kwargs):
    guide, q = _trained_posterior(_funnel, **kwargs)
    params = list(guide.parameters())
    y = q.rsample((6,))
    assert q.__dict__["_scored_sample"][0] is y  # the draw carried its score
    fast = q.log_prob(y)
    # a fresh distribution of the same flow knows nothing of the draw: the inverse pass
    inverse = PathGradientTransformedDistribution(q.base_dist, q.transforms).log_prob(y)
    torch.testing.assert_close(fast, inverse, rtol=1e-12, atol=1e-12)
    fast_grads = torch.autograd.grad(fast.sum(), params, retain_graph=True)
    inverse_grads = torch.autograd.grad(inverse.sum(), params)
    for a, b in zip(fast_grads, inverse_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert max(g.abs().max() for g in inverse_grads) > 1e-3


def test_score_is_not_reused_after_a_parameter_changes(float64):
    guide, q = _trained_posterior(_funnel)
    y = q.rsample((4,))
    before = q.log_prob(y).detach()
    with torch.no_grad():  # as an optimizer step would
        next(guide.parameters()).add_(0.1)
    after = q.log_prob(y)
    fresh = PathGradientTransformedDistribution(q.base_dist, q.transforms).log_prob(y)
    torch.testing.assert_close(after, fresh)
    assert (after.detach() - before).abs().max() > 1e-6


def test_score_from_the_sampling_pass_sticks_the_landing(float64):
    # with the guide equal to the target, the single-draw gradient vanishes
    guide, q = _trained_posterior(_funnel)
    target = dist.TransformedDistribution(q.base_dist, [copy.deepcopy(q.transforms[0])])
    y = q.rsample((1,))
    grads = torch.autograd.grad((target.log_prob(y) - q.log_prob(y)).sum(), list(guide.parameters()))
    assert max(g.abs().max().item() for g in grads) < 1e-10


@pytest.mark.parametrize("noncentered", [False, True])
def test_training_is_the_same_with_the_score_pass(float64, noncentered):
    # 20 steps of SVI, losses and final parameters, with the score pass (the default) and
    # through the inverse pass (path_gradient="inverse")
    results = []
    for path_gradient in (True, "inverse"):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoRealNVP(
            _funnel, num_layers=4, hidden_dims=(16, 16), noncentered=noncentered, path_gradient=path_gradient
        )
        elbo = Trace_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=1)
        svi = pyro.infer.SVI(_funnel, guide, pyro.optim.Adam({"lr": 0.05}), elbo)
        losses = [svi.step() for _ in range(20)]
        q = guide.get_posterior()
        q.rsample((2,))
        assert ("_scored_sample" in q.__dict__) == (path_gradient is True)  # which pass ran
        results.append((losses, [p.detach().clone() for p in guide.parameters()]))
    (losses, params), (ref_losses, ref_params) = results
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-10, atol=1e-10)
    for p, r in zip(params, ref_params, strict=True):
        torch.testing.assert_close(p, r, rtol=1e-9, atol=1e-10)
