"""Regression tests for continuous flows and flow matching: the conditioned FFJORD's
train/eval mode, the checks of solver options, the checks of a flow-matching batch
(context, data, times) and ``ot_block=0``."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_flows
from pyro_flows.train.flow_matching import FlowMatching, flow_matching_loss, ot_pairing

from .helpers import randomize


def normal_base(dim, dtype=torch.float64):
    return dist.Normal(torch.zeros(dim, dtype=dtype), torch.ones(dim, dtype=dtype)).to_event(1)


# --------------------------------------------- the conditioned FFJORD's train/eval mode
def test_conditional_ffjord_in_eval_mode_scores_with_the_exact_trace():
    # 10 dimensions: trace="auto" uses Hutchinson in training and the exact trace in eval
    torch.manual_seed(0)
    cflow = randomize(
        pyro_flows.conditional_ffjord(10, 2, hidden_dims=(8,), rtol=1e-6, atol=1e-6).double(), 0.4, 0
    )
    model = dist.ConditionalTransformedDistribution(normal_base(10), [cflow])
    context = torch.randn(3, 2, dtype=torch.float64)
    x = torch.randn(3, 10, dtype=torch.float64)
    held = model.condition(context)  # conditioned before eval(): must follow the module's mode
    assert not held.transforms[0].uses_exact_trace()
    cflow.eval()
    for d in (model.condition(context), held):
        assert not d.transforms[0].training
        assert d.transforms[0].uses_exact_trace(), "eval mode scores with the exact trace"
    with torch.no_grad():
        first = model.condition(context).log_prob(x)
        second = model.condition(context).log_prob(x.clone())
        third = held.log_prob(x.clone())
        cflow.settings["trace"] = "exact"
        exact = model.condition(context).log_prob(x.clone())
        cflow.settings["trace"] = "auto"
    assert torch.equal(first, second), "an eval-mode log-density is deterministic"
    assert torch.allclose(first, exact, atol=1e-12, rtol=0)
    assert torch.allclose(third, exact, atol=1e-12, rtol=0)
    cflow.train()
    assert not model.condition(context).transforms[0].uses_exact_trace()
    assert not held.transforms[0].uses_exact_trace()


# -------------------------------------------------------------- solver options
@pytest.mark.parametrize("step_size", [0.0, -0.125, math.nan, math.inf])
@pytest.mark.parametrize("which", ["options", "sample_options"])
def test_a_step_size_that_is_not_positive_and_finite_is_refused(step_size, which):
    settings = {"method": "rk4", "sample_method": "rk4", which: {"step_size": step_size}}
    with pytest.raises(ValueError, match=rf"{which}.*step_size must be a positive.*got {step_size}"):
        pyro_flows.ffjord(2, (4,), **settings)
    with pytest.raises(ValueError, match="step_size must be a positive"):
        pyro_flows.conditional_ffjord(2, 1, hidden_dims=(4,), **settings)


def test_solver_options_set_after_construction_are_checked_at_the_solve():
    flow = pyro_flows.ffjord(2, (4,), method="rk4", options={"step_size": 0.25})
    flow.options = {"step_size": 0.0}  # torchdiffeq would fail with "unsupported range: 0 -> inf"
    with pytest.raises(ValueError, match=r"options.*step_size must be a positive.*got 0\.0"):
        flow.inv(torch.randn(3, 2))
    flow.options = {"step_size": 0.25}
    flow.sample_method, flow.sample_options = "euler", {"step_size": -0.5}
    with pytest.raises(ValueError, match=r"sample_options.*step_size.*got -0\.5"):
        flow(torch.randn(3, 2))
    flow.sample_options = {"step_size": 0.5}
    with torch.no_grad():
        flow(torch.randn(3, 2))
    assert flow.nfe == 2  # two Euler steps


@pytest.mark.parametrize("tolerances", [dict(rtol=math.inf), dict(atol=math.inf), dict(sample_rtol=math.inf)])
def test_infinite_tolerances_are_refused(tolerances):
    with pytest.raises(ValueError, match="tolerances must be positive"):
        pyro_flows.ffjord(2, (4,), **tolerances)


def test_options_must_be_a_mapping():
    with pytest.raises(ValueError, match=r"options must be a dict of solver options, got list"):
        pyro_flows.ffjord(2, (4,), options=[("step_size", 0.1)])
    with pytest.raises(ValueError, match=r"sample_options must be a dict"):
        pyro_flows.ffjord(2, (4,), sample_options="step_size=0.1")


# ----------------------------------------------- the batch given to flow matching
def _conditional_flow():
    torch.manual_seed(0)
    return pyro_flows.conditional_ffjord(2, 3, hidden_dims=(8,))


def test_flow_matching_context_of_another_batch_size_is_named():
    cflow = _conditional_flow()
    x, z = torch.randn(8, 2), torch.randn(8, 2)
    with pytest.raises(ValueError, match=r"context.*\(4, 3\).*8 data points"):
        flow_matching_loss(cflow, x, z, path="independent", context=torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"context.*\(2, 8, 3\)"):
        flow_matching_loss(cflow, x, z, path="independent", context=torch.randn(2, 8, 3))
    with pytest.raises(ValueError, match=r"expected a context of shape \(\*batch, 3\), got \(8, 2\)"):
        flow_matching_loss(cflow, x, z, path="independent", context=torch.randn(8, 2))
    with pytest.raises(ValueError, match="got a context, but the field was built without one"):
        flow_matching_loss(pyro_flows.ffjord(2, (8,)), x, z, path="independent", context=torch.ones(8, 3))
    # one context per point, or one for all, as documented
    one_each = flow_matching_loss(
        cflow, x, z, path="independent", t=torch.full((8,), 0.5), context=torch.ones(8, 3)
    )
    one_for_all = flow_matching_loss(
        cflow, x, z, path="independent", t=torch.full((8,), 0.5), context=torch.ones(3)
    )
    assert torch.equal(one_each, one_for_all)


def test_flow_matching_context_dtype_and_values_are_checked():
    cflow = _conditional_flow()
    x, z = torch.randn(8, 2), torch.randn(8, 2)
    with pytest.raises(
        ValueError, match=r"context has dtype torch\.float64 but the flow's parameters are torch\.float32"
    ):
        flow_matching_loss(cflow, x, z, path="independent", context=torch.randn(8, 3, dtype=torch.float64))
    context = torch.randn(8, 3)
    context[2, 1] = math.nan
    with pyro.validation_enabled(True), pytest.raises(ValueError, match=r"context contains 1 non-finite"):
        flow_matching_loss(cflow, x, z, path="independent", context=context)


def test_flow_matching_data_is_checked_against_the_flow():
    torch.manual_seed(0)
    flow = pyro_flows.ffjord(2, (8,))
    with pytest.raises(ValueError, match=r"event shape \(2,\), got shape \(8, 3\)"):
        flow_matching_loss(flow, torch.randn(8, 3), torch.randn(8, 3), path="independent")
    with pytest.raises(
        ValueError, match=r"dtype torch\.float64 but the transform's parameters are torch\.float32"
    ):
        flow_matching_loss(flow, torch.randn(8, 2).double(), torch.randn(8, 2).double(), path="independent")
    with pytest.raises(ValueError, match=r"data and base samples of the same dtype"):
        flow_matching_loss(flow, torch.randn(8, 2), torch.randn(8, 2).double(), path="independent")
    with pytest.raises(ValueError, match=r"expected 8 times.*got shape \(5,\)"):
        flow_matching_loss(flow, torch.randn(8, 2), torch.randn(8, 2), path="independent", t=torch.rand(5))
    x = torch.randn(8, 2)
    x[0, 0] = math.inf
    with pyro.validation_enabled(True), pytest.raises(ValueError, match="non-finite"):
        flow_matching_loss(flow, x, torch.randn(8, 2), path="independent")


def test_ot_block_zero_pairs_the_whole_batch():
    # documented: "0 or None pairs the whole batch"
    torch.manual_seed(0)
    flow = pyro_flows.ffjord(2, (8,))
    x, z, t = torch.randn(200, 2) + 1, torch.randn(200, 2), torch.rand(200)
    whole = flow_matching_loss(flow, x, z, path="ot", t=t, ot_block=None)
    zero = flow_matching_loss(flow, x, z, path="ot", t=t, ot_block=0)
    blocked = flow_matching_loss(flow, x, z, path="ot", t=t, ot_block=64)
    assert torch.equal(whole, zero)
    assert not torch.equal(whole, blocked)  # the blocks do change the pairs at this size
    assert ot_pairing(x, z, None).tolist() != ot_pairing(x, z, 64).tolist()
    objective = FlowMatching(pyro_flows.Flow(flow), path="ot", ot_block=0)
    assert objective(x)[0].shape == (200,)


# ------------------------------------------------------------------- the cache
def test_changed_regularisation_or_trace_noise_solves_again():
    # the cached solve of a tensor holds the integrals its settings asked for: switching
    # on a regularisation weight, or changing the trace's noise, must not reuse it
    torch.manual_seed(0)
    flow = randomize(pyro_flows.ffjord(2, (8,), trace="hutchinson").double(), 0.4, 0)
    d = dist.TransformedDistribution(normal_base(2), [flow])
    x = torch.randn(5, 2, dtype=torch.float64)
    d.log_prob(x)
    assert not flow.regularizes and flow.kinetic_energy is None
    flow.kinetic_weight = 0.1
    d.log_prob(x)
    assert flow.kinetic_energy is not None and bool((flow.kinetic_energy > 0).all())
    flow.noise = "gaussian"
    torch.manual_seed(1)
    gaussian = d.log_prob(x)
    flow.noise = "rademacher"
    torch.manual_seed(1)
    rademacher = d.log_prob(x)
    assert not torch.equal(gaussian, rademacher), "another noise draws other probes"


@pytest.mark.parametrize("settings", [{"method": "rk4"}, {"sample_method": "euler"}])
def test_a_fixed_step_solver_without_its_step_is_refused(settings):
    # without a step torchdiffeq takes one step over [0, 1]: a crude solve, not an error
    with pytest.raises(ValueError, match="fixed-step solver .* needs its step"):
        pyro_flows.ffjord(2, (4,), **settings)
    flow = pyro_flows.ffjord(2, (4,))
    for name, value in settings.items():
        setattr(flow, name, value)  # changed after construction: refused at the solve
    with pytest.raises(ValueError, match="needs its step"):
        flow.inv(torch.zeros(3, 2)) if "sample_method" not in settings else flow(torch.zeros(3, 2))
