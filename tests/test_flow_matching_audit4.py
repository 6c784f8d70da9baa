"""Audit of the continuous flows and the flow-matching objective (fourth pass)."""

import math

import pyro
import pytest
import torch
from torch import nn

import pyro_flows
from pyro_flows.train.flow_matching import flow_matching_loss
from pyro_flows.transforms import FFJORD

pytest.importorskip("torchdiffeq")


class _LinearField(nn.Module):
    """h(t, z) = z A with a fixed diagonal A: the trace is tr(A) everywhere."""

    def __init__(self, diagonal):
        super().__init__()
        self.weight = nn.Parameter(torch.diag(torch.as_tensor(diagonal, dtype=torch.float64)))

    def forward(self, t, z):
        return z @ self.weight


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_adjoint_solve_of_an_input_that_requires_grad_counts_the_first_trace(trace):
    # log|det| of the sampling map is -tr(A) = 3 exactly for rk4 (a constant integrand);
    # the adjoint's forward solve saw the trace at t = 0 as 0 when the input required
    # grad, which took tr(A) * (0.5 / 6) off the first of two rk4 steps: 2.75
    torch.manual_seed(0)
    flow = FFJORD(
        _LinearField([-1.0, -2.0]), 2, trace=trace, method="rk4", options={"step_size": 0.5}, adjoint=True
    )
    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    z, ladj = flow._inverse_and_ladj(x)
    assert torch.allclose(ladj, torch.full((4,), 3.0, dtype=torch.float64), atol=1e-12)
    # two rk4 steps of z' = a z multiply z by R(a / 2)^2, R(h) = 1 + h + h^2/2 + h^3/6 + h^4/24
    factor = torch.tensor([(1 - 0.5 + 0.125 - 0.5**3 / 6 + 0.5**4 / 24) ** 2, 0.375**2], dtype=torch.float64)
    assert torch.allclose(z, x * factor, atol=1e-12)
    assert flow.nfe == 8
    z.sum().backward()  # the adjoint pass still takes the gradient of the end point to the input
    assert torch.allclose(x.grad, factor.expand(4, 2), atol=1e-12)


def test_flow_matching_base_samples_noise_and_sigma_are_checked():
    torch.manual_seed(0)
    flow = pyro_flows.ffjord(2, (8,))
    x, z, t = torch.randn(6, 2), torch.randn(6, 2), torch.rand(6)
    bad = z.clone()
    bad[2, 1] = math.nan
    for path in ("independent", "ot"):  # was a NaN loss, or SciPy's "invalid numeric entries"
        with (
            pyro.validation_enabled(True),
            pytest.raises(ValueError, match=r"base samples contains 1 non-finite"),
        ):
            flow_matching_loss(flow, x, bad, path=path, t=t)
    # was "mat1 and mat2 must have the same dtype" from inside the field
    with pytest.raises(
        ValueError, match=r"path noise of the data's dtype torch\.float32, got torch\.float64"
    ):
        flow_matching_loss(flow, x, z, path="independent", sigma=0.1, t=t, noise=torch.randn(6, 2).double())
    # was accepted as ">= 0", and every loss came out NaN
    with pytest.raises(ValueError, match=r"expected a finite sigma >= 0, got inf"):
        flow_matching_loss(flow, x, z, path="independent", sigma=math.inf, t=t)
    loss = flow_matching_loss(flow, x, z, path="independent", sigma=0.0, t=t)
    expected = (flow.dynamics(t, (1 - t[:, None]) * x + t[:, None] * z) - (z - x)).square().mean(-1)
    torch.testing.assert_close(loss, expected)


def test_a_field_of_another_size_is_named_when_the_flow_is_built():
    from pyro_flows.nn import DynamicsNet, VelocityNet
    from pyro_flows.transforms import ConditionalFFJORD

    # was "mat1 and mat2 shapes cannot be multiplied (4x2 and 3x8)" at the first solve
    with pytest.raises(ValueError, match=r"^FFJORD: the dynamics have dim=3, but input_dim=2$"):
        FFJORD(DynamicsNet(3, (8,)), 2)
    with pytest.raises(ValueError, match=r"^ConditionalFFJORD: the dynamics have dim=3, but input_dim=2$"):
        ConditionalFFJORD(VelocityNet(3, (8,), context_dim=1), 2, 1)
    # was "DynamicsNet: expected a context of shape (N, 4), got (4, 3)" for a context of the flow's size
    with pytest.raises(
        ValueError, match=r"^ConditionalFFJORD: the dynamics have context_dim=4, but context_dim=3$"
    ):
        ConditionalFFJORD(DynamicsNet(2, (8,), context_dim=4), 2, 3)
    flow = ConditionalFFJORD(DynamicsNet(2, (8,), context_dim=3), 2, 3)
    assert flow.condition(torch.zeros(3)).inv(torch.zeros(4, 2)).shape == (4, 2)


def test_a_flow_or_a_conditioned_transform_is_named_instead_of_trained():
    # a Flow failed with "Flow.forward() takes 1 positional argument but 3 were given"; a
    # conditioned ConditionalFFJORD dropped its context and the field asked for one
    torch.manual_seed(0)
    x, z = torch.randn(8, 2), torch.randn(8, 2)
    flow = pyro_flows.Flow(pyro_flows.ffjord(2, (8,)))
    with pytest.raises(
        TypeError, match=r"expected the flow's FFJORD transform \(flow.transform\), got a Flow"
    ):
        flow_matching_loss(flow, x, z)
    assert flow_matching_loss(flow.transform, x, z).shape == (8,)
    conditional = pyro_flows.conditional_ffjord(2, 3)
    context = torch.randn(8, 3)
    with pytest.raises(TypeError, match=r"conditioned on a context \(\.condition\(c\)\)"):
        flow_matching_loss(conditional.condition(context), x, z, path="independent")
    assert flow_matching_loss(conditional, x, z, path="independent", context=context).shape == (8,)
