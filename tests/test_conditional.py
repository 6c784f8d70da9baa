"""Conditional couplings and conditional RealNVP: agreement with the unconditional flow,
context broadcasting, gradients to the context, errors, and a tiny conditional fit."""

import inspect

import pyro.distributions as dist
import pytest
import torch

import pyro_flows
from pyro_flows.builders.conditional import ConditionalVectorFlow, conditional_real_nvp
from pyro_flows.nn import MLP, ConditionalMLP
from pyro_flows.transforms import AffineCoupling, ConditionalAffineCoupling, conditional_affine_coupling

from .helpers import autograd_logdet, randomize


def _base(d, dtype=torch.float64):
    return dist.Normal(torch.zeros(d, dtype=dtype), torch.ones(d, dtype=dtype)).to_event(1)


def _copy_ignoring_context(conditional, unconditional):
    """Give every conditional conditioner the unconditional one's weights and zero
    weights on the context columns."""
    with torch.no_grad():
        for cond_part, part in zip(conditional.transforms, unconditional.parts, strict=True):
            c_net, net = cond_part.conditioner, part.conditioner
            for c_layer, layer in zip(c_net, net, strict=True):
                if isinstance(layer, torch.nn.Linear):
                    c_layer.weight.zero_()
                    c_layer.weight[:, : layer.in_features].copy_(layer.weight)
                    c_layer.bias.copy_(layer.bias)


def test_log_prob_equals_unconditional_when_context_is_ignored():
    torch.manual_seed(0)
    flow = randomize(pyro_flows.real_nvp(5, num_layers=4, hidden_dims=(16, 16)).double(), 0.5)
    cflow = pyro_flows.conditional_real_nvp(5, context_dim=3, num_layers=4, hidden_dims=(16, 16)).double()
    _copy_ignoring_context(cflow, flow)
    x = torch.randn(7, 5, dtype=torch.float64)
    context = torch.randn(7, 3, dtype=torch.float64) * 5
    expected = dist.TransformedDistribution(_base(5), [flow]).log_prob(x)
    got = dist.ConditionalTransformedDistribution(_base(5), [cflow]).condition(context).log_prob(x)
    assert torch.allclose(got, expected, atol=1e-12)
    # and the context matters once its weights are not zero
    randomize(cflow, 0.3, seed=1)
    moved = dist.ConditionalTransformedDistribution(_base(5), [cflow]).condition(context).log_prob(x)
    assert (moved - expected).abs().max() > 1e-3


def test_context_batch_broadcasting_and_per_context_log_det():
    torch.manual_seed(0)
    cflow = randomize(pyro_flows.conditional_real_nvp(3, 2, num_layers=3, hidden_dims=(16,)).double(), 0.5)
    d = dist.ConditionalTransformedDistribution(_base(3), [cflow])
    contexts = torch.randn(4, 2, dtype=torch.float64)
    cd = d.condition(contexts)
    assert cd.sample((4,)).shape == (4, 3)  # one sample per context
    many = cd.sample((6, 1))
    assert many.shape == (6, 4, 3)  # six per context
    lp = cd.log_prob(many)
    assert lp.shape == (6, 4)
    # each column equals conditioning on that context alone
    for j in range(4):
        alone = d.condition(contexts[j]).log_prob(many[:, j])
        assert torch.allclose(lp[:, j], alone, atol=1e-12)
    # the log-det of the conditioned flow is the autograd one, context by context
    t = cflow.condition(contexts[1])
    x = torch.randn(2, 3, dtype=torch.float64)
    assert torch.allclose(t.log_abs_det_jacobian(x, t(x)), autograd_logdet(t, x, 1), atol=1e-10)


def test_gradients_reach_the_context():
    torch.manual_seed(0)
    cflow = randomize(pyro_flows.conditional_real_nvp(4, 3, num_layers=2, hidden_dims=(8,)), 0.5)
    context = torch.randn(5, 3, requires_grad=True)
    d = dist.ConditionalTransformedDistribution(_base(4, torch.float32), [cflow]).condition(context)
    (g,) = torch.autograd.grad(d.log_prob(torch.randn(5, 4)).sum(), context)
    assert torch.isfinite(g).all() and (g.abs().sum(-1) > 0).all()
    (g2,) = torch.autograd.grad(d.rsample((5,)).square().sum(), context)
    assert (g2.abs().sum(-1) > 0).all()


def test_condition_shares_modules():
    cflow = pyro_flows.conditional_real_nvp(4, 2, num_layers=2, hidden_dims=(8,))
    t = cflow.condition(torch.zeros(2))
    assert t.parts[0].partition is cflow.transforms[0].partition
    assert {id(p) for p in t.parameters()} == {id(p) for p in cflow.parameters()}


@pytest.mark.parametrize("bad", [torch.zeros(3), torch.zeros(5, 1), torch.zeros(())])
def test_wrong_context_size_is_a_clear_error(bad):
    cflow = pyro_flows.conditional_real_nvp(4, 2, num_layers=2, hidden_dims=(8,))
    with pytest.raises(ValueError, match=r"expected a context of shape \(\*batch, 2\)"):
        cflow.condition(bad)
    layer = pyro_flows.conditional_affine_coupling(4, 2, hidden_dims=(8,))
    with pytest.raises(ValueError, match=r"\(\*batch, 2\)"):
        layer.condition(bad)


def test_integer_context_and_bad_dims_rejected():
    layer = pyro_flows.conditional_additive_coupling(4, 2, hidden_dims=(8,))
    with pytest.raises(ValueError, match="floating-point context"):
        layer.condition(torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="context_dim"):
        pyro_flows.conditional_real_nvp(4, 0)


def test_conditional_mlp_matches_mlp_with_zero_context_weights():
    torch.manual_seed(0)
    net = MLP(3, 4, (8,), zero_init=False)
    cnet = ConditionalMLP(3, 2, 4, (8,), zero_init=False)
    _copy = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        cnet[0].weight.zero_()
        cnet[0].weight[:, :3] = _copy["0.weight"]
        cnet[0].bias.copy_(_copy["0.bias"])
        cnet[2].load_state_dict({"weight": _copy["2.weight"], "bias": _copy["2.bias"]})
    x = torch.randn(5, 3)
    assert torch.allclose(cnet(x, torch.randn(5, 2)), net(x), atol=1e-6)


def test_conditional_flow_learns_a_context_dependent_gaussian():
    """x | c ~ N(2c, 0.5^2) per coordinate: after a short fit the conditional flow's
    log-likelihood beats the best context-free Gaussian by a wide margin."""
    torch.manual_seed(0)
    c = torch.randn(256, 1)
    x = 2 * c + 0.5 * torch.randn(256, 2)
    cflow = pyro_flows.conditional_real_nvp(2, 1, num_layers=4, hidden_dims=(32,))
    d = dist.ConditionalTransformedDistribution(_base(2, torch.float32), [cflow])
    opt = torch.optim.Adam(cflow.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        loss = -d.condition(c).log_prob(x).mean()
        loss.backward()
        opt.step()
    nll = -d.condition(c).log_prob(x).mean().item()
    exact = -dist.Normal(2 * c, 0.5).log_prob(x).sum(-1).mean().item()
    marginal = -dist.Normal(x.mean(0), x.std(0)).log_prob(x).sum(-1).mean().item()
    assert nll < marginal - 1.5, (nll, marginal)
    assert nll < exact + 0.25, (nll, exact)


@pytest.mark.parametrize("cache_size", [0, 1])
def test_condition_keeps_the_cache_size(cache_size):
    cflow = conditional_real_nvp(3, context_dim=2, num_layers=2, hidden_dims=(8,))
    assert cflow._cache_size == 1  # Pyro's conditional flows cache by default
    cflow = ConditionalVectorFlow(list(cflow.transforms), (3,), context_dim=2, cache_size=cache_size)
    flow = cflow.condition(torch.randn(2))
    assert flow._cache_size == cache_size
    x = torch.randn(4, 3)
    assert torch.allclose(flow.inv(flow(x)), x, atol=1e-5)


def test_conditional_coupling_scale_bound_default_matches_the_unconditional_one():
    """The documented default (2) is the one the code uses, for both twins and the
    conditional builder; a larger raw log-scale is squashed to below it."""
    defaults = {
        f: inspect.signature(f).parameters["scale_bound"].default
        for f in (
            AffineCoupling,
            ConditionalAffineCoupling,
            conditional_affine_coupling,
            conditional_real_nvp,
        )
    }
    assert set(defaults.values()) == {2.0}, defaults
    assert "(default 2" in ConditionalAffineCoupling.__doc__ and "(default 2" in AffineCoupling.__doc__
    layer = conditional_affine_coupling(2, context_dim=1, hidden_dims=(4,))
    with torch.no_grad():
        layer.conditioner[-1].bias.fill_(50.0)  # raw log-scale 50 everywhere
    t = layer.condition(torch.zeros(1))
    x = torch.randn(3, 2)
    ladj = t.log_abs_det_jacobian(x, t(x))
    assert torch.allclose(ladj, torch.full((3,), 2.0), atol=1e-6)  # one coordinate, at the bound


def test_a_wrong_conditioner_output_names_the_conditional_class_built():
    # the conditioned layer is a private class; the error names the one the user made
    mask = pyro_flows.transforms.vector_mask(4, "half")
    layer = ConditionalAffineCoupling(mask, ConditionalMLP(2, 3, 6, (8,)), 3)
    with pytest.raises(ValueError, match=r"^ConditionalAffineCoupling: conditioner returned shape \(5, 6\)"):
        layer.condition(torch.zeros(3))(torch.zeros(5, 4))
