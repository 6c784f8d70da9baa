"""Flows inside Pyro models: as priors and likelihoods under plates and handlers, learnt
with SVI (``pyro.module`` or ``PyroModule`` conversion), under NUTS, with latent contexts,
and through the parameter store. Each test checks numbers, not only that it runs."""

import copy

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal
from pyro.nn.module import to_pyro_module_
from pyro.optim.clipped_adam import ClippedAdam

import pyro_flows


def _perturbed(module, scale=0.3):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def _normal(dim):
    return dist.Normal(torch.zeros(dim), torch.ones(dim)).to_event(1)


def test_a_pyro_module_flow_registers_and_trains_every_parameter():
    """``to_pyro_module_(flow)`` without ``pyro.module``: SVI trains what the model's trace
    registers. Parameters read by the transforms themselves (NICE's scaling, the spline
    flow's ActNorms, the CDF flow's mixture) were read outside any module call, so they
    were never registered and stayed at their initial values while the conditioners
    learnt."""
    data = torch.randn(32, 2) * 2 + 3
    flows = {
        "nice": pyro_flows.nice(2, num_layers=2, hidden_dims=(8,)),
        "spline": pyro_flows.spline_flow(2, num_layers=2, hidden_dims=(8,)),
        "cdf": pyro_flows.cdf_flow(3, event_shape=(2,)),
    }
    for name, flow in flows.items():
        pyro.clear_param_store()
        _perturbed(flow)  # as if trained: no gradient is zero (a new coupling's would be)
        reference = copy.deepcopy(flow)
        to_pyro_module_(flow)
        x = torch.randn(4, 2) * 2 + 3
        with torch.no_grad():  # the conversion leaves the density as it was
            expected = dist.TransformedDistribution(_normal(2), [reference]).log_prob(x)
            assert torch.allclose(dist.TransformedDistribution(_normal(2), [flow]).log_prob(x), expected)
        before = {n: p.detach().clone() for n, p in flow.named_parameters()}

        def model(x, flow=flow):
            shift = pyro.sample("shift", dist.Normal(0.0, 1.0))
            with pyro.plate("data", len(x)):
                pyro.sample("x", dist.TransformedDistribution(_normal(2), [flow]), obs=x - shift)

        svi = SVI(model, AutoDelta(model), pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
        svi.step(data)
        stored = {id(p) for p in pyro.get_param_store().values()}
        unregistered = [n for n, p in flow.named_parameters() if id(p) not in stored]
        assert not unregistered, (name, unregistered)
        unchanged = [n for n, p in flow.named_parameters() if torch.equal(p, before[n])]
        assert not unchanged, (name, unchanged)


def test_a_sample_scored_after_a_data_writing_optimizer_step_is_recomputed():
    """Pyro's ClippedAdam writes parameters through ``.data``, which moves no version
    counter. A sample drawn, backpropagated through and scored again after such a step
    was answered from the cache (Pyro's identity rule) with the old parameters' values;
    so was the base-side value of scored data mapped forward again."""
    flow = _perturbed(pyro_flows.real_nvp(2, num_layers=2, hidden_dims=(8,)))
    d = dist.TransformedDistribution(_normal(2), [flow])
    optim = ClippedAdam(flow.parameters(), lr=0.1)
    z = d.rsample((5,))
    z.square().sum().backward()
    optim.step()
    assert torch.allclose(d.log_prob(z), d.log_prob(z.detach().clone()))
    # the other direction: data scored, then its base-side value mapped forward again
    data = torch.randn(5, 2)
    for p in flow.parameters():
        p.grad = torch.zeros_like(p)  # as Pyro's SVI zeroes gradients: new tensors
    x = flow.inv(data)
    x.square().sum().backward()
    optim.step()
    assert torch.allclose(flow(x), flow(x.detach().clone()))
    assert not torch.allclose(flow(x), data)


def test_flow_prior_under_plates_scale_mask_and_condition_scores_exactly(float64):
    """A trained flow prior in a plate, with ``poutine.scale``, ``poutine.mask`` and
    ``poutine.condition``: the site's log-density is the flow's, scaled and masked, and
    ``expand`` broadcasts it."""
    flow = pyro_flows.Flow(_perturbed(pyro_flows.real_nvp(2, num_layers=2, hidden_dims=(8,))))
    z = torch.randn(5, 2)
    with torch.no_grad():
        expected = flow.log_prob(z)
    keep = torch.tensor([True, False, True, True, False])

    def model():
        with pyro.plate("points", 5):
            pyro.sample("z", flow())

    handled = poutine.condition(poutine.mask(poutine.scale(model, 3.0), keep), {"z": z})
    trace = poutine.trace(handled).get_trace()
    trace.compute_log_prob()
    site = trace.nodes["z"]
    assert site["log_prob"].shape == (5,)
    assert torch.allclose(site["log_prob_sum"], 3.0 * expected[keep].sum())
    expanded = flow().expand((3, 5))
    assert expanded.sample().shape == (3, 5, 2)
    assert torch.allclose(expanded.log_prob(z), expected.expand(3, 5))


def test_nuts_on_a_fixed_flow_prior_matches_the_flows_own_samples():
    flow = _perturbed(pyro_flows.nice(2, num_layers=2, hidden_dims=(8,))).requires_grad_(False)
    prior = pyro_flows.Flow(flow)

    def model():
        pyro.sample("z", prior())

    kernel = NUTS(model, max_tree_depth=4)
    mcmc = MCMC(kernel, warmup_steps=50, num_samples=100, disable_progbar=True)
    mcmc.run()
    samples = mcmc.get_samples()["z"]
    assert torch.isfinite(samples).all()
    z = torch.randn(2, requires_grad=True)
    (grad,) = torch.autograd.grad(kernel.potential_fn({"z": z}), z)
    assert torch.isfinite(grad).all()
    reference = prior.sample((20000,))
    # loose: 100 correlated draws; the reference's spread sets the scale
    assert ((samples.mean(0) - reference.mean(0)).abs() < 0.6 * reference.std(0)).all()


def test_latent_context_gradients_match_finite_differences_in_a_plate(float64):
    """A conditional flow as the likelihood of one observation per context, the context a
    latent variable of a plate: the site's log-density and its gradient with respect to
    the contexts (by central differences)."""
    cflow = _perturbed(pyro_flows.conditional_real_nvp(2, context_dim=3, num_layers=2, hidden_dims=(8,)))
    likelihood = dist.ConditionalTransformedDistribution(_normal(2), [cflow])
    data = torch.randn(4, 2)

    def model():
        with pyro.plate("contexts", 4):
            c = pyro.sample("c", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            pyro.sample("x", likelihood.condition(c), obs=data)

    context = torch.randn(4, 3)

    def log_density(c):
        trace = poutine.trace(poutine.condition(model, {"c": c})).get_trace()
        trace.compute_log_prob()
        return trace.nodes["x"]["log_prob"].sum()

    c = context.clone().requires_grad_()
    (grad,) = torch.autograd.grad(log_density(c), c)
    numeric = torch.zeros_like(context)
    for i in range(context.numel()):
        step = torch.zeros(context.numel())
        step[i] = 1e-6
        step = step.view_as(context)
        numeric.view(-1)[i] = (log_density(context + step) - log_density(context - step)) / 2e-6
    assert torch.allclose(grad, numeric, atol=1e-6)
    per_context = torch.stack([likelihood.condition(context[i]).log_prob(data[i]) for i in range(4)])
    assert torch.allclose(log_density(context), per_context.sum())


def test_param_store_round_trip_restores_a_flow_prior_exactly(tmp_path):
    """A flow prior learnt through ``pyro.module``: after an SVI step, the saved store
    loaded into a fresh flow (``update_module_params=True``) restores every weight
    exactly, and data the fresh flow had already scored is scored with the loaded weights.
    A deep copy of the model's flow scores as the original."""
    data = torch.randn(16, 2) + 1
    flow = pyro_flows.real_nvp(2, num_layers=2, hidden_dims=(8,))

    def model(x):
        pyro.module("flow", flow)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.TransformedDistribution(_normal(2), [flow]))
            pyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=x)

    svi = SVI(model, AutoNormal(model), pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    svi.step(data)
    points = torch.randn(5, 2)
    with torch.no_grad():
        expected = dist.TransformedDistribution(_normal(2), [flow]).log_prob(points)
        twin = copy.deepcopy(flow)
        assert torch.equal(dist.TransformedDistribution(_normal(2), [twin]).log_prob(points), expected)
    pyro.get_param_store().save(tmp_path / "params.pt")

    pyro.clear_param_store()
    fresh = pyro_flows.real_nvp(2, num_layers=2, hidden_dims=(8,))
    prior = dist.TransformedDistribution(_normal(2), [fresh])
    with torch.no_grad():
        before = prior.log_prob(points)  # cached by the fresh flow
    pyro.get_param_store().load(tmp_path / "params.pt")
    pyro.module("flow", fresh, update_module_params=True)
    for (name, p), q in zip(fresh.named_parameters(), flow.parameters(), strict=True):
        assert torch.equal(p, q), name
    with torch.no_grad():
        after = prior.log_prob(points)
    assert torch.equal(after, expected) and not torch.allclose(before, expected)


def test_rsample_gradients_match_finite_differences(float64):
    """Reparameterized draws of a Flow (a RealNVP, and a CDF flow whose sampling solves
    for the root of its mixture CDF) differentiate correctly with respect to the flow's
    parameters."""
    for flow in (
        pyro_flows.Flow(_perturbed(pyro_flows.real_nvp(2, num_layers=2, hidden_dims=(4,)))),
        pyro_flows.Flow(_perturbed(pyro_flows.cdf_flow(2, base="beta", event_shape=(2,)), 0.5)),
    ):

        def loss(flow=flow):
            torch.manual_seed(1)
            return (flow.rsample((3,)).sin() * torch.tensor([1.0, -2.0])).sum()

        params = list(flow.parameters())
        grads = torch.autograd.grad(loss(), params)
        for p, g in zip(params, grads, strict=True):
            flat = p.data.view(-1)
            for i in range(min(flat.numel(), 3)):
                old = flat[i].item()
                flat[i] = old + 1e-6
                up = loss().item()
                flat[i] = old - 1e-6
                down = loss().item()
                flat[i] = old
                assert abs((up - down) / 2e-6 - g.view(-1)[i].item()) < 1e-6
