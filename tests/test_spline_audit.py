"""Rational-quadratic splines and their layers: the inverse's accuracy where the quadratic
of the inverse cancels, its gradients, argument checks and error messages."""

import math

import pytest
import torch

import pyro_flows
from pyro_flows.nn import MADE, ConditionalMLP
from pyro_flows.transforms import (
    ConditionalSplineCoupling,
    ElementwiseSpline,
    SplineCoupling,
    rational_quadratic_spline,
    spline_autoregressive,
    spline_coupling,
    vector_mask,
)
from pyro_flows.transforms.spline import DEFAULT_MIN_BIN_HEIGHT, DEFAULT_MIN_BIN_WIDTH, _knots

BOUND = 3.0


def _flat_middle_bin(dtype, n):
    """A spline with three bins: a narrow steep one at each end and a wide flat one
    (width ~6, height ~0.006) between them, with derivatives 1 and ~1.7 at its knots;
    the values: ``n`` points across the flat bin's height."""
    widths = torch.tensor([-5.0, 5.0, -5.0], dtype=dtype).expand(n, 3)
    heights = torch.tensor([5.0, -5.0, 5.0], dtype=dtype).expand(n, 3)
    derivatives = torch.tensor([0.0, 1.0], dtype=dtype).expand(n, 2)
    y_knots = _knots(heights[0], BOUND, DEFAULT_MIN_BIN_HEIGHT)[0]
    values = torch.linspace(float(y_knots[1]), float(y_knots[2]), n, dtype=dtype)
    return values, (widths, heights, derivatives)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-13)])
def test_inverse_is_accurate_in_a_flat_bin_next_to_a_steep_knot(dtype, tolerance):
    # Near the top of the flat bin the inverse's quadratic has b < 0 and |4ac| << b^2:
    # there 2c / (-b - sqrt(b^2 - 4ac)) divides by a difference of nearly equal numbers.
    # With it, float32 round trips were off by 5e-4 (a tenth of the bin's height) and
    # float64 ones by 1e-12.
    y, params = _flat_middle_bin(dtype, 2001)
    x, ladj_inverse = rational_quadratic_spline(y, *params, BOUND, inverse=True)
    y_back, ladj = rational_quadratic_spline(x, *params, BOUND)
    assert float((y_back - y).abs().max()) < tolerance
    assert bool(torch.isfinite(ladj_inverse).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inverse_is_accurate_for_random_splines(dtype):
    # Round-trip error in units of what rounding x and y alone costs,
    # eps * B * (1 + g'(x)): at most 5.5 over these splines (it was 4600 in float32 and
    # 190 in float64 with the one form of the root).
    g = torch.Generator().manual_seed(0)
    n, bins = 20000, 8
    widths, heights, derivatives = (
        10 * torch.randn(n, k, generator=g, dtype=dtype) for k in (bins, bins, bins - 1)
    )
    y = (2 * torch.rand(n, generator=g, dtype=dtype) - 1) * BOUND
    x, _ = rational_quadratic_spline(y, widths, heights, derivatives, BOUND, inverse=True)
    y_back, ladj = rational_quadratic_spline(x, widths, heights, derivatives, BOUND)
    scale = torch.finfo(dtype).eps * BOUND * (1 + ladj.exp())
    assert float(((y_back - y).abs() / scale).max()) < 10


def test_inverse_gradients_are_finite_and_match_finite_differences():
    # both forms of the root (b < 0 near the top of the flat bin, b >= 0 near its bottom);
    # then values on the knots and at +-B, where the form not taken divides by ~0
    y, params = _flat_middle_bin(torch.float64, 7)
    y = y[1:-1]  # not on the knots: the bin picked there changes with the parameters
    params = tuple(p[1:-1].clone().requires_grad_() for p in params)

    def inverse(y, *params):
        return rational_quadratic_spline(y, *params, BOUND, inverse=True)

    assert torch.autograd.gradcheck(inverse, (y.clone().requires_grad_(), *params))

    first = tuple(p[:1].expand(4, -1) for p in params)
    x_knots = _knots(params[0][0].detach(), BOUND, DEFAULT_MIN_BIN_WIDTH)[0]
    y_knots = _knots(params[1][0].detach(), BOUND, DEFAULT_MIN_BIN_HEIGHT)[0]
    values = y_knots.clone().requires_grad_()
    out, ladj = inverse(values, *first)
    grads = torch.autograd.grad((out + ladj).sum(), (values, *params))
    assert all(bool(torch.isfinite(grad).all()) for grad in grads)
    assert torch.allclose(out, x_knots, atol=1e-12)


@pytest.mark.parametrize(
    "build",
    [
        lambda bound: spline_coupling(4, (8,), tail_bound=bound),
        lambda bound: ElementwiseSpline(3, tail_bound=bound),
        lambda bound: spline_autoregressive(3, (8,), tail_bound=bound),
        lambda bound: pyro_flows.spline_flow(3, num_layers=2, hidden_dims=(8,), tail_bound=bound),
    ],
)
def test_an_infinite_tail_bound_is_refused(build):
    # it was accepted, and every knot came out NaN (2B * 0 - B with B = inf)
    with pytest.raises(ValueError, match="tail_bound must be positive and finite, got inf"):
        build(math.inf)


def test_a_wrong_conditioner_output_names_the_class_built_and_the_parameter_count():
    mask = vector_mask(4, "half")
    layer = ConditionalSplineCoupling(mask, ConditionalMLP(2, 3, 10, (8,)), 3, num_bins=4)
    with pytest.raises(
        ValueError, match=r"^ConditionalSplineCoupling: .* 11 parameters \(3 \* num_bins - 1\)"
    ):
        layer.condition(torch.zeros(3))(torch.zeros(5, 4))
    layer = SplineCoupling(mask, torch.nn.Linear(2, 10), num_bins=4, affine=True)
    with pytest.raises(ValueError, match=r"13 parameters \(3 \* num_bins \+ 1 with affine\)"):
        layer(torch.zeros(5, 4))


def test_spline_parameters_of_the_wrong_size_are_refused():
    # K + 1 derivatives (the boundary ones included, as some libraries take them) were
    # accepted: the last bin then ended on the wrong derivative, and the spline was no
    # longer C^1 where it meets the identity tail
    x = torch.randn(4)
    widths, heights = torch.randn(4, 5), torch.randn(4, 5)
    with pytest.raises(ValueError, match=r"4 interior derivatives .* got 6"):
        rational_quadratic_spline(x, widths, heights, torch.randn(4, 6), bound=BOUND)
    with pytest.raises(ValueError, match=r"heights .* \(4, 4\)"):
        rational_quadratic_spline(x, widths, torch.randn(4, 4), torch.randn(4, 4), bound=BOUND)
    with pytest.raises(ValueError, match=r"inputs of shape \(4,\), widths \(5,\)"):
        rational_quadratic_spline(x, widths[0], heights[0], torch.randn(4), bound=BOUND)


@pytest.mark.parametrize("hidden_dims", [(2,), (3, 1), (1, 8)])
def test_made_with_hidden_layers_narrower_than_the_input_stays_autoregressive(hidden_dims):
    # Fewer than D - 1 hidden units cannot carry every degree: the outputs then see fewer
    # earlier coordinates (those of degree up to the narrowest layer's size), never a later one.
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        order = torch.randperm(6, generator=g).tolist()
        net = MADE(6, hidden_dims, 2, order, activation=torch.nn.Tanh, zero_init=False).double()
        x = torch.randn(6, generator=g, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(net, x).reshape(6, 2, 6).abs().sum(1)
        degrees = net.degrees
        seen = degrees[None, :] <= min(hidden_dims)
        allowed = (degrees[None, :] < degrees[:, None]) & seen
        assert torch.equal(jac > 0, allowed)
