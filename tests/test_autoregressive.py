"""Masked autoregressive spline layers: the MADE's autoregressive structure, the layer's
round trip and log-determinant, the flow's normalisation and a small fit. The generic
checks (shapes, caches, devices, pickling) run in tests/conformance."""

import pytest
import torch

import pyro_flows
from pyro_flows.nn import MADE
from pyro_flows.transforms import SplineAutoregressive, spline_autoregressive

from .helpers import autograd_logdet, midpoint_density, randomize


@pytest.mark.parametrize("order", [None, [3, 1, 4, 0, 2]])
@pytest.mark.parametrize("hidden_dims", [(), (7,), (16, 9)])
def test_made_outputs_depend_only_on_earlier_coordinates(order, hidden_dims):
    torch.manual_seed(0)
    # tanh: no unit is off at x (a ReLU's can be), so every allowed path shows in the Jacobian
    net = MADE(5, hidden_dims, 3, order, activation=torch.nn.Tanh, zero_init=False).double()
    x = torch.randn(5, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(net, x).reshape(5, 3, 5)  # (coordinate, output, input)
    position = torch.empty(5, dtype=torch.long)
    position[net.order] = torch.arange(5)
    earlier = position[None, :] < position[:, None]  # [i, j]: j comes before i
    assert bool((jac[~earlier[:, None, :].expand(5, 3, 5)] == 0).all())
    # with hidden layers, every earlier coordinate reaches every later one
    if hidden_dims:
        assert bool((jac.abs().sum(1)[earlier] > 0).all())
    assert net.order.tolist() == (order or list(range(5)))


def test_made_dropout_keeps_the_order_in_train_mode_and_is_off_in_eval_mode():
    torch.manual_seed(0)
    net = MADE(5, (32, 32), 3, [3, 1, 4, 0, 2], activation=torch.nn.Tanh, zero_init=False, dropout=0.5)
    plain = MADE(5, (32, 32), 3, [3, 1, 4, 0, 2], activation=torch.nn.Tanh, zero_init=False)
    with torch.no_grad():  # the same weights (dropout layers shift the Sequential's indices)
        for mine, theirs in zip(plain.parameters(), net.parameters(), strict=True):
            mine.copy_(theirs)
    net, plain = net.double(), plain.double()
    x = torch.randn(5, dtype=torch.float64)
    # train mode: a dropout mask drops paths, never adds one (one mask per Jacobian: one forward)
    jac = torch.autograd.functional.jacobian(net, x).reshape(5, 3, 5)
    position = torch.empty(5, dtype=torch.long)
    position[net.order] = torch.arange(5)
    earlier = position[None, :] < position[:, None]
    assert bool((jac[~earlier[:, None, :].expand(5, 3, 5)] == 0).all())
    assert not torch.allclose(net(x), plain(x))
    net.eval()
    assert torch.equal(net(x), plain(x))
    with pytest.raises(ValueError, match="dropout"):
        MADE(3, (8,), dropout=1.0)


def test_made_starts_at_zero_and_rejects_a_bad_order():
    net = MADE(3, (8,), outputs_per_input=2)
    assert torch.equal(net(torch.randn(4, 3)), torch.zeros(4, 6))
    with pytest.raises(ValueError, match="permutation"):
        MADE(3, (8,), order=[0, 0, 1])


@pytest.mark.parametrize("affine", [False, True])
def test_identity_at_init_then_round_trip_and_log_det_float64(affine):
    torch.manual_seed(0)
    layer = spline_autoregressive(4, (16, 16), num_bins=5, order=[2, 0, 3, 1], affine=affine).double().eval()
    x = 2 * torch.randn(6, 4, dtype=torch.float64)
    assert torch.allclose(layer(x), x, atol=1e-12)
    assert float(layer.log_abs_det_jacobian(x, layer(x)).detach().abs().max()) < 1e-12
    randomize(layer, 0.5, seed=1)
    y = layer(x)
    assert not torch.allclose(y, x, atol=1e-3)
    x_back, ladj_back = layer._inverse_and_ladj(y.clone())
    assert torch.allclose(x_back, x, atol=1e-9)
    expected = autograd_logdet(layer, x, 1)
    assert torch.allclose(layer.log_abs_det_jacobian(x, y), expected, atol=1e-9)
    assert torch.allclose(ladj_back, expected, atol=1e-9)
    # the Jacobian of the scoring direction is triangular in the layer's order
    jac = torch.autograd.functional.jacobian(lambda v: layer._inverse_and_ladj(v)[0], y[0])
    order = layer.conditioner.order
    assert torch.equal(jac[order][:, order].triu(1), torch.zeros(4, 4, dtype=torch.float64))


def test_scoring_is_one_conditioner_pass_and_sampling_is_d_passes():
    layer = randomize(spline_autoregressive(5, (8,), num_bins=4), 0.5)
    calls = []
    layer.conditioner.register_forward_hook(lambda *args: calls.append(1))
    y = torch.randn(3, 5)
    layer.inv(y)
    assert len(calls) == 1
    layer(torch.randn(3, 5))
    assert len(calls) == 1 + 5


def test_bad_conditioner_output_names_the_problem():
    layer = SplineAutoregressive(torch.nn.Linear(3, 7), 3, num_bins=4)
    with pytest.raises(ValueError, match="expected \\(\\*batch, 33\\)"):
        layer(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="num_bins"):
        spline_autoregressive(3, num_bins=1)


def test_spline_flow_autoregressive_alternates_orders_with_act_norms():
    flow = pyro_flows.spline_flow(3, num_layers=3, hidden_dims=(8,), autoregressive=True)
    layers = [p for p in flow.parts if isinstance(p, SplineAutoregressive)]
    assert [layer.conditioner.order.tolist() for layer in layers] == [[0, 1, 2], [2, 1, 0], [0, 1, 2]]
    kinds = [type(p).__name__ for p in flow.parts]
    assert kinds == ["SplineAutoregressive", "ActNorm"] * 3
    assert all(layer.affine for layer in layers)  # spline_flow's default
    # the default stays the coupling flow
    assert not any(isinstance(p, SplineAutoregressive) for p in pyro_flows.spline_flow(3).parts)


def test_spline_flow_autoregressive_with_dropout_is_an_exact_flow_in_eval_mode():
    torch.manual_seed(0)
    flow = pyro_flows.Flow(
        pyro_flows.spline_flow(3, num_layers=2, hidden_dims=(16,), autoregressive=True, dropout=0.3).double()
    )
    assert sum(isinstance(m, torch.nn.Dropout) for m in flow.modules()) == 2
    x = torch.randn(64, 3, dtype=torch.float64)
    flow.log_prob(x)  # initialise the ActNorms
    with torch.no_grad():
        randomize(flow, scale=0.3)
    assert not torch.allclose(flow.log_prob(x.clone()), flow.log_prob(x.clone()))  # a mask per call
    flow.eval()
    assert torch.equal(flow.log_prob(x.clone()), flow.log_prob(x.clone()))
    z = flow.transform.inv(x)
    assert torch.allclose(flow.transform(z), x, atol=1e-9)


def test_autoregressive_spline_flow_density_integrates_to_one():
    """Midpoint rule on [-9, 9]^2 (tails: the base density beyond the splines' interval)."""
    torch.manual_seed(0)
    flow = pyro_flows.spline_flow(2, num_layers=2, hidden_dims=(16,), num_bins=5, autoregressive=True)
    randomize(flow, scale=0.1).double()
    model = pyro_flows.Flow(flow).eval()  # eval: the ActNorms keep their (identity) start
    grid, density, cell = midpoint_density(model.log_prob)
    integral = float(density.sum() * cell)
    assert abs(integral - 1.0) < 2e-3, integral
    base = torch.distributions.Normal(torch.zeros(2, dtype=torch.float64), 1.0).log_prob(grid).sum(-1).exp()
    assert (density - base).abs().max() > 0.01


def test_autoregressive_spline_flow_beats_a_gaussian_on_a_bimodal_conditional():
    """x_1 | x_0 is bimodal with modes that move with x_0: no Gaussian fits it."""
    torch.manual_seed(0)
    n = 2000
    a = torch.randn(n, 1)
    b = 0.5 * a + torch.where(torch.rand(n, 1) < 0.5, -1.5, 1.5) + 0.3 * torch.randn(n, 1)
    data = torch.cat([a, b], -1)
    model = pyro_flows.Flow(
        pyro_flows.spline_flow(2, num_layers=2, hidden_dims=(32,), num_bins=8, autoregressive=True)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        loss = -model.log_prob(data).mean()
        loss.backward()
        opt.step()
    gaussian = torch.distributions.MultivariateNormal(data.mean(0), torch.cov(data.T)).log_prob(data).mean()
    assert float(-loss.detach()) > float(gaussian) + 0.3
    with torch.no_grad():  # sampling (sequential) gives the right two modes
        samples = model.sample((4000,))
    residual = samples[:, 1] - 0.5 * samples[:, 0]
    assert abs(float((residual.abs() - 1.5).abs().median())) < 0.3


@pytest.mark.parametrize(
    "args",
    [
        dict(input_dim=True),
        dict(input_dim=2.5),
        dict(input_dim=3, hidden_dims=(8.5,)),
        dict(input_dim=3, hidden_dims=(True,)),
    ],
)
def test_made_refuses_sizes_that_are_not_integers(args):
    """A bool would build a MADE of size 1 and a float size would be truncated."""
    with pytest.raises(ValueError, match=r"MADE: \w+( sizes)? must be (a )?positive ints?"):
        spline_autoregressive(**{"hidden_dims": (8,), **args})


def test_made_takes_numpy_integer_sizes():
    import numpy as np

    layer = spline_autoregressive(np.int64(3), hidden_dims=(np.int64(8),), num_bins=4)
    assert layer(torch.zeros(2, 3)).shape == (2, 3)
