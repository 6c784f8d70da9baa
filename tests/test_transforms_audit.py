"""Couplings and RealNVP batch norm in use: bounds given as infinity, and a training batch
with a single value per feature."""

import math

import pytest
import torch

import pyro_flows
from pyro_flows.transforms import conditional_affine_coupling

from .helpers import autograd_logdet


def _perturbed(layer, seed=0):
    """``layer`` in float64 with every parameter moved off its (identity) start."""
    generator = torch.Generator().manual_seed(seed)
    layer = layer.double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return layer


@pytest.mark.parametrize("bounds", [(math.inf, 8.0), (2.0, math.inf), (math.inf, math.inf)])
def test_an_infinite_bound_is_no_bound(bounds):
    """``b tanh(s / b)`` tends to ``s`` and a clamp to ``[-inf, inf]`` does nothing: an
    infinite bound is the unbounded layer, not NaN."""
    scale_bound, shift_bound = bounds
    torch.manual_seed(0)
    x = torch.randn(6, 3, dtype=torch.float64) * 3
    layer = _perturbed(pyro_flows.affine_coupling(3, (8,), scale_bound=scale_bound, shift_bound=shift_bound))
    unbounded = _perturbed(
        pyro_flows.affine_coupling(
            3,
            (8,),
            scale_bound=None if math.isinf(scale_bound) else scale_bound,
            shift_bound=None if math.isinf(shift_bound) else shift_bound,
        )
    )
    unbounded.load_state_dict(layer.state_dict())
    y = layer(x)
    assert torch.isfinite(y).all(), y
    assert torch.equal(y, unbounded(x))
    ladj = layer.log_abs_det_jacobian(x, y)
    assert torch.allclose(ladj, autograd_logdet(layer, x, 1), atol=1e-10)
    assert torch.allclose(layer.inv(y.clone()), x, atol=1e-10)


def test_an_infinite_bound_is_no_bound_for_the_conditional_twin():
    torch.manual_seed(0)
    layer = _perturbed(conditional_affine_coupling(4, 2, (8,), scale_bound=math.inf, shift_bound=math.inf))
    t = layer.condition(torch.randn(5, 2, dtype=torch.float64))
    x = torch.randn(5, 4, dtype=torch.float64)
    y = t(x)
    assert torch.isfinite(y).all() and torch.isfinite(t.log_abs_det_jacobian(x, y)).all()
    assert torch.allclose(t.inv(y.clone()), x, atol=1e-10)


def test_a_single_point_in_train_mode_leaves_the_running_averages_alone():
    """One value per feature has no variance: it must not set the running variance to 0
    (after which eval mode would scale by ``1/sqrt(eps)``). It is scored with the running
    averages, as in eval mode, and a later batch still initialises them."""
    bn = pyro_flows.real_nvp_batch_norm(3).double()
    point = torch.tensor([[4.0, -2.0, 7.0]], dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="single value"):
        x = bn.inv(point)
    assert torch.equal(bn.running_var, torch.ones(3, dtype=torch.float64))
    assert torch.equal(bn.running_mean, torch.zeros(3, dtype=torch.float64))
    assert not bool(bn.initialized)
    assert torch.allclose(x, point / math.sqrt(1 + bn.eps), atol=1e-12)
    expected = 1.5 * math.log(1 + bn.eps)
    assert torch.allclose(bn.log_abs_det_jacobian(x, point), torch.full((1,), expected, dtype=torch.float64))

    torch.manual_seed(0)
    y = torch.randn(200, 3, dtype=torch.float64) * 2 + 1
    bn.inv(y)  # the first real batch initialises the averages to its own statistics
    assert torch.allclose(bn.running_mean, y.mean(0), atol=1e-12)
    assert torch.allclose(bn.running_var, y.var(0, unbiased=False), atol=1e-12)


def test_a_single_point_after_initialisation_does_not_move_the_averages():
    bn = pyro_flows.real_nvp_batch_norm(2).double()
    torch.manual_seed(0)
    bn.inv(torch.randn(50, 2, dtype=torch.float64) * 3)
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    point = torch.tensor([[10.0, -10.0]], dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="single value"):
        x = bn.inv(point)
    assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    assert torch.allclose(x, (point - mean) / torch.sqrt(var + bn.eps), atol=1e-12)
    bn.eval()
    assert torch.allclose(bn.inv(point.clone()), x, atol=1e-12)  # what eval mode gives
