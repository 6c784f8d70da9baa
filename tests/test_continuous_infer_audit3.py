"""Path gradients with a learnt base, the lifetime of a flow scored by path gradients,
the sampling solver's step, and the flow-matching path noise."""

import copy
import gc
import weakref

import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.torch_transform import ComposeTransformModule

import pyro_flows
from pyro_flows.infer import PathGradientTransformedDistribution, guide_real_nvp
from pyro_flows.train.flow_matching import flow_matching_loss
from pyro_flows.transforms import FFJORD, LocScale

from .helpers import randomize


def _learnt_base():
    loc = torch.tensor([0.5, -0.3], dtype=torch.float64, requires_grad=True)
    scale = torch.tensor([1.2, 0.7], dtype=torch.float64, requires_grad=True)
    return loc, scale


def _single_draw_gradients(q, target, params):
    y = q.rsample((1,))
    grads = torch.autograd.grad((target.log_prob(y) - q.log_prob(y)).sum(), params)
    return [g.abs().max().item() for g in grads]


@pytest.mark.parametrize("flow_kind", ["couplings", "loc-scale"])
def test_a_learnt_base_sticks_the_landing_through_the_inverse_pass(flow_kind):
    """The base's parameters are variational parameters too: with the guide equal to
    the target, the single-draw path gradient of log p - log q vanishes for them as for
    the flow's, whichever pass scores the draw; the ordinary gradient does not."""
    torch.manual_seed(0)
    if flow_kind == "couplings":  # plain couplings: scored through the inverse pass
        couplings = guide_real_nvp(2, num_layers=2, hidden_dims=(8,))
        flow = ComposeTransformModule([*couplings.parts, LocScale(torch.tensor([0.1, 0.2]), 1.3)])
        with torch.no_grad():
            for p in flow.parameters():
                p.add_(0.3 * torch.randn_like(p))
    else:  # a location-scale flow: the score is carried by the sampling pass
        flow = ComposeTransformModule([LocScale(torch.tensor([0.1, 0.2]), 1.3)])
    flow = flow.double()
    loc, scale = _learnt_base()
    params = [loc, scale, *flow.parameters()]
    frozen_base = dist.Normal(loc.detach(), scale.detach()).to_event(1)
    target = dist.TransformedDistribution(frozen_base, [copy.deepcopy(flow)])
    base = dist.Normal(loc, scale).to_event(1)
    for score_pass in (True, False):
        q = PathGradientTransformedDistribution(base, [flow])
        q.score_pass = score_pass
        largest = _single_draw_gradients(q, target, params)
        assert max(largest) < 1e-10, (score_pass, largest)
    ordinary = _single_draw_gradients(dist.TransformedDistribution(base, [flow]), target, params)
    assert max(ordinary[:2]) > 1e-3, ordinary  # a check with power: the score term is not small


def test_a_learnt_base_keeps_the_value_and_the_gradient_of_the_value():
    torch.manual_seed(1)
    flow = randomize(guide_real_nvp(2, num_layers=2, hidden_dims=(8,)).double(), 0.3, 1)
    loc, scale = _learnt_base()
    base = dist.Normal(loc, scale).to_event(1)
    q = PathGradientTransformedDistribution(base, [flow])
    plain = dist.TransformedDistribution(base, [flow])
    y = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    value = q.log_prob(y)
    torch.testing.assert_close(value, plain.log_prob(y.clone()), rtol=0, atol=1e-12)
    (g_q,) = torch.autograd.grad(value.sum(), y)
    (g_plain,) = torch.autograd.grad(plain.log_prob(y.clone()).sum(), y)
    torch.testing.assert_close(g_q, g_plain, rtol=0, atol=1e-12)
    assert loc.grad is None and scale.grad is None
    assert base.base_dist.loc is loc  # the user's base is left as it was


def test_a_flow_of_one_part_scored_by_path_gradients_is_not_kept_alive():
    """Scoring through the inverse pass must not keep the flow (its cache, the graph of
    its last sample) once the user drops it."""
    base = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    flow = pyro_flows.transforms.affine_coupling(2, hidden_dims=(8,))
    alive = weakref.ref(flow)
    q = PathGradientTransformedDistribution(base, [flow])
    q.log_prob(q.rsample((3,))).sum().backward()
    del q, flow
    gc.collect()
    assert alive() is None, "the flow is still referenced after it was dropped"


def test_a_fixed_step_sampling_solver_needs_its_step_in_the_sample_options_given():
    """sample_options replace options for sampling, also when the sampling method is the
    scoring one: without a step, rk4 would take one step over [0, 1]."""
    dynamics = pyro_flows.nn.DynamicsNet(2, (8,), zero_init=False)
    with pytest.raises(ValueError, match=r"fixed-step solver 'rk4' needs its step in sample_options"):
        FFJORD(dynamics, 2, method="rk4", options={"step_size": 0.125}, sample_options={})
    flow = FFJORD(dynamics, 2, method="rk4", options={"step_size": 0.125})
    flow.sample_options = {"perturb": False}  # changed after construction: checked at the solve
    with torch.no_grad(), pytest.raises(ValueError, match="needs its step in sample_options"):
        flow(torch.randn(3, 2))
    flow.sample_options = {"step_size": 0.25}
    with torch.no_grad():
        flow(torch.randn(3, 2))
    assert flow.nfe == 4 * 4  # four rk4 steps of four evaluations
    flow.sample_options = None  # sampling takes the scoring options: eight steps
    with torch.no_grad():
        flow(torch.randn(3, 2))
    assert flow.nfe == 8 * 4


def test_flow_matching_path_noise_must_have_one_draw_per_point():
    torch.manual_seed(0)
    flow = randomize(pyro_flows.ffjord(2, hidden_dims=(8,)), 0.5, 0)
    x, z, t = torch.randn(6, 2), torch.randn(6, 2), torch.rand(6)
    for bad in (torch.randn(2), torch.randn(6, 1), torch.randn(1, 2)):
        with pytest.raises(ValueError, match=r"path noise of the data's shape \(6, 2\).*got shape"):
            flow_matching_loss(flow, x, z, path="independent", sigma=0.1, t=t, noise=bad)
    noise = torch.randn(6, 2)
    loss = flow_matching_loss(flow, x, z, path="independent", sigma=0.1, t=t, noise=noise)
    x_t = (1 - t[:, None]) * x + t[:, None] * z + 0.1 * noise
    expected = (flow.dynamics(t, x_t) - (z - x)).square().mean(-1)
    torch.testing.assert_close(loss, expected)
