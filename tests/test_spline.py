"""Rational-quadratic spline couplings: the spline itself (round trip, derivative,
inverse accuracy at knots and in the tails) and the coupling layers built on it. The
generic checks (shapes, caches, devices, pickling) run in tests/conformance."""

import pytest
import torch

import pyro_flows
from pyro_flows.transforms import (
    ConditionalSplineCoupling,
    SplineCoupling,
    image_spline_coupling,
    rational_quadratic_spline,
)

from .helpers import autograd_logdet, randomize

K = 5
BOUND = 2.5


def random_params(shape, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)

    def draw(*tail):
        return scale * torch.randn(*shape, *tail, generator=g, dtype=torch.float64)

    return draw(K), draw(K), draw(K - 1)


def spline(x, params, inverse=False):
    return rational_quadratic_spline(x, *params, bound=BOUND, inverse=inverse)


def test_round_trip_and_log_derivative_float64():
    x = torch.linspace(-3.5, 3.5, 301, dtype=torch.float64)
    params = random_params(x.shape)
    y, ladj = spline(x, params)
    x_back, ladj_back = spline(y, params, inverse=True)
    assert torch.allclose(x_back, x, atol=1e-10)
    assert torch.allclose(ladj_back, ladj, atol=1e-9)
    # derivative by autograd, elementwise (the spline acts on each value on its own)
    xr = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(spline(xr, params)[0].sum(), xr)
    assert torch.allclose(ladj, grad.log(), atol=1e-9)
    assert bool((grad > 0).all())  # monotone


def test_knots_are_interpolated_and_inverse_is_accurate_there():
    params = random_params((K + 1,), seed=1)
    # the knots of the first value's spline: x_k = -B + 2B * cumsum(min + (1 - K min) softmax)
    widths = 1e-3 + (1 - 1e-3 * K) * torch.softmax(params[0], -1)
    cumulative = torch.cat([torch.zeros(K + 1, 1, dtype=torch.float64), widths.cumsum(-1)], -1)
    knots = -BOUND + 2 * BOUND * cumulative
    x = knots.diagonal()  # value i sits exactly on knot i of its own spline
    for eps in (0.0, 1e-12, -1e-12, 1e-7):
        xs = (x + eps).clamp(-BOUND, BOUND)
        y, _ = spline(xs, params)
        back, _ = spline(y, params, inverse=True)
        assert torch.allclose(back, xs, atol=1e-11, rtol=0), eps
    # ends map to ends
    y, _ = spline(torch.tensor([-BOUND, BOUND], dtype=torch.float64), tuple(p[:2] for p in params))
    assert y.tolist() == [-BOUND, BOUND]


def test_tails_are_the_identity_and_the_spline_is_continuous_at_the_bound():
    x = torch.tensor([-40.0, -BOUND - 1e-9, BOUND + 1e-9, 7.0], dtype=torch.float64)
    params = random_params(x.shape, seed=2)
    y, ladj = spline(x, params)
    assert torch.equal(y, x) and torch.equal(ladj, torch.zeros(4, dtype=torch.float64))
    back, _ = spline(y, params, inverse=True)
    assert torch.equal(back, x)
    # just inside: value and derivative (fixed to 1 at +-B) match the tails
    inside = torch.tensor([-BOUND + 1e-11, BOUND - 1e-11], dtype=torch.float64)
    y_in, ladj_in = spline(inside, tuple(p[1:3] for p in params))
    assert torch.allclose(y_in, inside, atol=1e-6)
    assert float(ladj_in.abs().max()) < 1e-6


def test_zero_parameters_give_the_identity():
    x = torch.linspace(-4, 4, 101)
    zeros = torch.zeros(101, K)
    y, ladj = rational_quadratic_spline(x, zeros, zeros, zeros[:, 1:], bound=3.0)
    assert torch.allclose(y, x, atol=1e-6)
    assert float(ladj.abs().max()) < 1e-6


def test_extreme_parameters_stay_finite_and_invertible():
    x = torch.linspace(-2.4, 2.4, 97, dtype=torch.float64)
    params = random_params(x.shape, seed=3, scale=30.0)  # bins at their minimum size
    y, ladj = spline(x, params)
    back, _ = spline(y, params, inverse=True)
    assert bool(torch.isfinite(ladj).all())
    assert torch.allclose(back, x, atol=1e-7)


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: pyro_flows.spline_coupling(5, (16,), num_bins=4), (5,)),
        (lambda: pyro_flows.spline_coupling(4, (16,), mask="alternating", parity=1), (4,)),
        (lambda: pyro_flows.spline_coupling(3, (16,), num_bins=3, affine=True), (3,)),
        (
            lambda: image_spline_coupling((2, 4, 4), "checkerboard", 0, 4, 1, num_bins=3, affine=True),
            (2, 4, 4),
        ),
        (lambda: image_spline_coupling((2, 4, 4), "checkerboard", 1, 4, 1, num_bins=3), (2, 4, 4)),
        (lambda: image_spline_coupling((4, 2, 2), "channel", 0, 4, 1, num_bins=3), (4, 2, 2)),
    ],
)
def test_coupling_identity_at_init_then_round_trip_and_log_det(make, shape):
    torch.manual_seed(0)
    layer = make().double().eval()
    x = 2 * torch.randn(3, *shape, dtype=torch.float64)
    assert torch.allclose(layer(x), x, atol=1e-12)
    assert float(layer.log_abs_det_jacobian(x, layer(x)).detach().abs().max()) < 1e-12
    randomize(layer, 0.5, seed=1)
    y = layer(x)
    assert not torch.allclose(y, x, atol=1e-3)
    assert torch.allclose(layer.inv(y.clone()), x, atol=1e-10)
    expected = autograd_logdet(layer, x, len(shape))
    assert torch.allclose(layer.log_abs_det_jacobian(x, y), expected, atol=1e-9)


def test_checkerboard_keeps_the_conditioning_pixels_exactly():
    layer = randomize(image_spline_coupling((1, 4, 4), "checkerboard", 0, 4, 1, num_bins=3), 0.5).eval()
    x = torch.randn(2, 1, 4, 4)
    mask = layer.partition.mask.bool().expand_as(x)
    assert torch.equal(layer(x)[mask], x[mask])


def test_conditional_spline_coupling_depends_on_the_context():
    layer = randomize(pyro_flows.conditional_spline_coupling(3, 2, (16,), num_bins=4), 0.5, seed=2)
    assert isinstance(layer, ConditionalSplineCoupling)
    x = torch.randn(4, 3)
    t1, t2 = layer.condition(torch.zeros(2)), layer.condition(torch.ones(2))
    assert isinstance(t1, SplineCoupling) and t1.num_bins == 4
    assert not torch.allclose(t1(x), t2(x), atol=1e-4)
    assert torch.allclose(t2.inv(t2(x).clone()), x, atol=1e-5)


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="num_bins"):
        pyro_flows.spline_coupling(4, num_bins=1)
    with pytest.raises(ValueError, match="tail_bound"):
        pyro_flows.spline_coupling(4, tail_bound=0.0)
    with pytest.raises(ValueError, match="min_bin_width"):
        pyro_flows.spline_coupling(4, num_bins=8, min_bin_width=0.2)
    layer = SplineCoupling(torch.tensor([True, False]), torch.nn.Linear(1, 5), num_bins=4)
    with pytest.raises(ValueError, match="expected \\(\\*batch, 11\\)"):
        layer(torch.zeros(3, 2))


def test_a_spline_coupling_fits_a_bimodal_coordinate():
    """A few Adam steps on a tiny flow must beat the best Gaussian (which RealNVP with one
    coupling and a Gaussian x^A cannot do on x^B's bimodal conditional)."""
    torch.manual_seed(0)
    n = 2000
    a = torch.randn(n, 1)
    b = torch.where(torch.rand(n, 1) < 0.5, -1.5, 1.5) + 0.3 * torch.randn(n, 1)
    data = torch.cat([a, b], -1)
    flow = pyro_flows.Flow(pyro_flows.spline_coupling(2, (32,), num_bins=8))
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        loss = -flow.log_prob(data).mean()
        loss.backward()
        opt.step()
    gaussian = torch.distributions.Normal(data.mean(0), data.std(0)).log_prob(data).sum(-1).mean()
    assert float(-loss.detach()) > float(gaussian) + 0.3


def test_checkerboard_example_runs_and_writes_its_figure(tmp_path):
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "examples", "spline_checkerboard.py")
    spec = importlib.util.spec_from_file_location("spline_checkerboard", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--smoke", "--out", str(tmp_path)])
    assert os.path.getsize(results["figure"]) > 1000
    # 20 steps of tiny flows already beat the uniform density on [-2, 2]^2 (gap log 2)
    assert results["spline_flow"]["gap"] < 0.69


def test_spline_flow_mixed_mask_pairs_halves_then_neighbours():
    flow = pyro_flows.spline_flow(4, num_layers=4, hidden_dims=(8,))  # mask="mixed" by default
    couplings = [p for p in flow.parts if isinstance(p, pyro_flows.transforms.SplineCoupling)]
    conditioning = [c.partition.split(torch.arange(4.0)[None])[0].tolist() for c in couplings]
    assert conditioning == [[[0.0, 1.0]], [[2.0, 3.0]], [[0.0, 2.0]], [[1.0, 3.0]]]
    with pytest.raises(ValueError, match="mask must be"):
        pyro_flows.spline_flow(4, mask="checkerboard")


def test_dropout_acts_in_train_mode_only_and_eval_mode_is_an_exact_flow():
    torch.manual_seed(0)
    flow = pyro_flows.Flow(pyro_flows.spline_flow(4, num_layers=2, hidden_dims=(16,), dropout=0.5).double())
    with torch.no_grad():
        randomize(flow, scale=0.3)  # dropout on a zero-initialised conditioner would change nothing
    x = torch.randn(64, 4, dtype=torch.float64)
    flow.train()
    flow.log_prob(x)  # initialise the ActNorms on this batch
    assert not torch.allclose(flow.log_prob(x.clone()), flow.log_prob(x.clone()))  # a mask per call
    flow.eval()
    first, second = flow.log_prob(x.clone()), flow.log_prob(x.clone())
    assert torch.equal(first, second)
    transform = flow.transform
    z = transform.inv(x)
    assert torch.allclose(transform(z), x, atol=1e-10)
    assert torch.allclose(transform.log_abs_det_jacobian(z, x), autograd_logdet(transform, z, 1), atol=1e-8)
    no_dropout = pyro_flows.spline_flow(4, num_layers=2, hidden_dims=(16,))
    assert sum(isinstance(m, torch.nn.Dropout) for m in no_dropout.modules()) == 0
    with pytest.raises(ValueError, match="dropout"):
        pyro_flows.spline_flow(4, dropout=1.0)
