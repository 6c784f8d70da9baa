"""AutoSplineFlow: its density, its identity start, vectorized particles, the JIT ELBOs
and a short fit against an exact baseline."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, JitTrace_ELBO, JitTraceGraph_ELBO, Predictive, Trace_ELBO, TraceGraph_ELBO

from pyro_flows.infer import AutoSplineFlow, guide_spline_flow

from .helpers import trained_parameters

# A correlated 2-D Gaussian "posterior" (no data, so log p(x) = 0 and KL = -ELBO).
COV = torch.tensor([[1.0, 0.9], [0.9, 1.0]])


def gaussian_model():
    pyro.sample("z", dist.MultivariateNormal(torch.zeros(2), COV))


def three_sites():
    pyro.sample("a", dist.Normal(0.0, 1.0))
    pyro.sample("b", dist.LogNormal(0.0, 1.0))
    pyro.sample("c", dist.Normal(torch.zeros(2), 1.0).to_event(1))


def _perturbed_guide(model, dtype=torch.float64, **kw):
    """A set-up guide whose couplings are no longer the identity."""
    guide = AutoSplineFlow(model, num_layers=3, hidden_dims=(8,), layers="mix", **kw)
    guide()  # builds the flow
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in guide.transform.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return guide


def test_layers_option_and_bad_values():
    kinds = [type(p).__name__ for p in guide_spline_flow(4, 4, (8,), layers="mix").parts]
    assert kinds == ["AffineCoupling", "SplineCoupling", "Permutation", "AffineCoupling", "SplineCoupling"]
    kinds = [type(p).__name__ for p in guide_spline_flow(4, 2, (8,), layers="spline", linear=True).parts]
    assert kinds == ["InvertibleLinear", "SplineCoupling", "SplineCoupling"]
    with pytest.raises(ValueError, match="layers"):
        AutoSplineFlow(gaussian_model, layers="maf")


@pytest.mark.parametrize("spline_bound", [None, 3.0])
def test_starts_as_a_normal_at_the_initial_point(spline_bound):
    pyro.clear_param_store()
    guide = AutoSplineFlow(
        three_sites, num_layers=2, hidden_dims=(8,), init_scale=0.5, spline_bound=spline_bound
    )
    guide()
    q = guide.get_posterior()
    x = torch.randn(7, 4)
    expected = dist.Normal(guide._init_loc(), 0.5).to_event(1).log_prob(x)
    assert torch.allclose(q.log_prob(x), expected, atol=1e-5)


def test_spline_bound_caps_the_conditioner_outputs():
    pyro.clear_param_store()
    guide = _perturbed_guide(three_sites, spline_bound=0.5)
    spline = next(p for p in guide.transform.parts if type(p).__name__ == "SplineCoupling")
    with torch.no_grad():
        out = spline.conditioner(100 * torch.randn(50, 2))
    assert out.abs().max() <= 0.5 and out.abs().max() > 0.4


def test_log_prob_of_samples_is_the_flow_density_in_float64():
    """log q of the guide's own draws equals the change of variables with the Jacobian from
    autograd, the path-gradient density equals the ordinary one, and the flow inverts."""
    pyro.clear_param_store()
    with torch.random.fork_rng():
        torch.set_default_dtype(torch.float64)
        try:
            guide = _perturbed_guide(three_sites)
            transform = guide.get_transform()
            q = guide.get_posterior()
            assert next(transform.parameters()).dtype == torch.float64
            z = torch.randn(5, 4)
            theta = transform(z)
            assert torch.allclose(transform.inv(theta), z, atol=1e-8)
            base = dist.Normal(torch.zeros(4), 1.0).to_event(1)
            for zi, ti in zip(z, theta, strict=True):
                jac = torch.autograd.functional.jacobian(transform, zi)
                expected = base.log_prob(zi) - torch.linalg.slogdet(jac)[1]
                assert torch.allclose(q.log_prob(ti), expected, atol=1e-8)
            ordinary = dist.TransformedDistribution(base, transform)
            draws = q.rsample((6,))
            assert torch.allclose(q.log_prob(draws), ordinary.log_prob(draws), atol=1e-8)
        finally:
            torch.set_default_dtype(torch.float32)


def test_vectorized_particles_and_predictive():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoSplineFlow(three_sites, num_layers=2, hidden_dims=(8,))
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(three_sites, guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    assert all(math.isfinite(svi.step()) for _ in range(3))
    draws = Predictive(three_sites, guide=guide, num_samples=5)()
    assert draws["c"].shape == (5, 2) and bool((draws["b"] > 0).all())


def _losses_and_grads(elbo):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoSplineFlow(three_sites, num_layers=2, hidden_dims=(8,), layers="mix")
    elbo.loss_and_grads(three_sites, guide)  # sets the guide up (and traces a JIT ELBO)
    params = trained_parameters()
    out = []
    for step in range(3):
        for p in params.values():
            p.grad = None
        pyro.set_rng_seed(10 + step)
        loss = elbo.loss_and_grads(three_sites, guide)
        out.append((loss, {name: p.grad.clone() for name, p in params.items()}))
        with torch.no_grad():  # move the parameters: a traced ELBO must read them as inputs
            for p in params.values():
                p.sub_(0.05 * p.grad + 0.05)
    return out


@pytest.mark.parametrize(
    "plain, jitted",
    [(Trace_ELBO, JitTrace_ELBO), (TraceGraph_ELBO, JitTraceGraph_ELBO)],
    ids=["trace", "tracegraph"],
)
def test_same_losses_and_gradients_under_the_jit_elbos(plain, jitted):
    expected = _losses_and_grads(plain(num_particles=2, vectorize_particles=True))
    got = _losses_and_grads(jitted(num_particles=2, vectorize_particles=True))
    for (loss, grads), (jit_loss, jit_grads) in zip(expected, got, strict=True):
        assert math.isclose(loss, jit_loss, rel_tol=1e-5), (loss, jit_loss)
        for name in grads:
            assert torch.allclose(grads[name], jit_grads[name], rtol=1e-4, atol=1e-5), name


def test_short_fit_beats_the_best_mean_field_guide():
    """On a correlated Gaussian, 300 steps get below the KL of the *optimal* diagonal
    Gaussian, 0.5 log(prod(diag(inv COV)) det COV) = 0.830 nats."""
    best_mean_field = 0.5 * float(torch.log(torch.linalg.inv(COV).diagonal().prod() * torch.linalg.det(COV)))
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoSplineFlow(gaussian_model, num_layers=2, hidden_dims=(16,), layers="mix")
    elbo = Trace_ELBO(num_particles=8, vectorize_particles=True)
    svi = SVI(gaussian_model, guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    for _ in range(300):
        svi.step()
    with torch.no_grad():
        q = guide.get_posterior()
        z = q.sample((4000,))
        kl = float((q.log_prob(z) - dist.MultivariateNormal(torch.zeros(2), COV).log_prob(z)).mean())
    assert kl < 0.5 * best_mean_field, (kl, best_mean_field)


def test_conditioners_read_their_inputs_soft_clipped():
    """With ``input_bound`` b (default 4) every coupling's conditioner sees b tanh(x / b):
    far out its outputs are those of a saturated input, so they cannot grow with it."""
    far = torch.tensor([[1e4, -1e4, 3e3, -2e4]])
    at_bound = 100.0 * far.sign()  # b tanh(100 / b) is b in float32
    for input_bound, same in ((4.0, True), (None, False)):
        guide = _perturbed_guide(three_sites, input_bound=input_bound)
        couplings = [p for p in guide.transform.parts if hasattr(p, "conditioner")]
        assert len(couplings) == 3
        for part in couplings:
            a_far, _ = part.partition.split(far)
            a_bound, _ = part.partition.split(at_bound)
            out_far, out_bound = part.conditioner(a_far), part.conditioner(a_bound)
            assert torch.isfinite(out_far).all()
            assert torch.allclose(out_far, out_bound, rtol=0, atol=1e-5) == same
