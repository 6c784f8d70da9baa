"""Coupling layers and masks: the math of Defs. 10.26-10.29 checked by numbers."""

import math

import pytest
import torch
from torch import nn
from torch.distributions import Distribution

import pyro_flows
from pyro_flows.transforms import (
    AffineCoupling,
    affine_coupling,
    channel_mask,
    checkerboard_mask,
    half_mask,
    image_mask,
)

from .helpers import autograd_logdet, randomize


def default_init(module):
    """PyTorch's default init for every linear layer (no zero last layer)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            m.reset_parameters()
    return module


def test_new_coupling_is_identity():
    layer = pyro_flows.affine_coupling(5, hidden_dims=(16,))
    x = torch.randn(7, 5)
    assert torch.equal(layer(x), x)
    assert torch.equal(layer.log_abs_det_jacobian(x, layer(x)), torch.zeros(7))


def test_affine_coupling_formula():
    """y_B = exp(s(x_A)) x_B + t(x_A) with s the soft-bounded log-scale (the shifts here lie
    inside the shift bound's knee, where it is the identity)."""
    torch.manual_seed(1)
    conditioner = nn.Linear(2, 4).double()
    layer = AffineCoupling(half_mask(4), conditioner, scale_bound=2.0)
    x = torch.randn(3, 4, dtype=torch.float64)
    shift, raw = conditioner(x[:, :2]).chunk(2, -1)
    s = 2.0 * torch.tanh(raw / 2.0)
    assert shift.abs().max() < 4
    y = layer(x)
    assert torch.equal(y[:, :2], x[:, :2])
    assert torch.allclose(y[:, 2:], torch.exp(s) * x[:, 2:] + shift, atol=1e-14)
    assert torch.allclose(layer.log_abs_det_jacobian(x, y), s.sum(-1), atol=1e-14)


def test_additive_coupling_preserves_volume():
    layer = randomize(pyro_flows.additive_coupling(4, (16,)).double())
    x = torch.randn(3, 4, dtype=torch.float64)
    assert torch.allclose(autograd_logdet(layer, x, 1), torch.zeros(3, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("mask", ["half", "alternating"])
def test_alternating_layers_change_every_coordinate(mask):
    flow = randomize(pyro_flows.real_nvp(5, num_layers=2, hidden_dims=(8,), mask=mask))
    x = torch.randn(10, 5)
    y1 = flow.parts[0](x)
    y2 = flow.parts[1](y1)
    assert (y1 == x).all(0).any()  # one layer leaves its A part unchanged
    assert not (y2 == x).all(0).any()  # two complementary layers change every coordinate


@pytest.mark.parametrize(
    "build",
    [
        lambda m: pyro_flows.real_nvp(4, num_layers=2, hidden_dims=(8,), mask=m),
        lambda m: pyro_flows.nice(4, num_layers=2, hidden_dims=(8,), mask=m),
        lambda m: pyro_flows.spline_flow(
            4, num_layers=2, hidden_dims=(8,), mask=m, act_norm=False, linear=False
        ),
    ],
    ids=["real_nvp", "nice", "spline_flow"],
)
def test_a_tensor_mask_alternates_with_its_complement(build):
    mask = torch.tensor([True, True, False, False])
    flow = randomize(build(mask))
    couplings = [p for p in flow.parts if hasattr(p, "partition")]
    assert [c.partition.idx_a.tolist() for c in couplings] == [[0, 1], [2, 3]]
    x = torch.randn(10, 4)
    assert not (flow(x) == x).all(0).any()  # every coordinate is transformed


def test_a_tensor_mask_is_checked():
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        pyro_flows.affine_coupling(4, (8,), mask=torch.tensor([True, False, True]))
    with pytest.raises(ValueError, match="both True"):
        pyro_flows.affine_coupling(3, (8,), mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="only 0 and 1"):
        pyro_flows.affine_coupling(2, (8,), mask=torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="broadcast to the image shape"):
        image_mask((2, 4, 4), checkerboard_mask(3, 4))
    checker = checkerboard_mask(4, 4)
    assert torch.equal(image_mask((2, 4, 4), checker, parity=1), ~checker)


def test_masks_are_complementary():
    assert (half_mask(7) ^ half_mask(7, 1)).all()
    cb = checkerboard_mask(4, 6)
    assert (cb ^ checkerboard_mask(4, 6, 1)).all() and cb.sum() == 12
    assert (channel_mask(4) ^ channel_mask(4, 1)).all()
    with pytest.raises(ValueError, match="at least 2"):
        half_mask(1)


@pytest.mark.parametrize("mask_kind", ["checkerboard", "channel"])
def test_image_events_checkerboard_and_channel(mask_kind):
    """The same class on (C, H, W) events, with a convolutional conditioner."""
    torch.manual_seed(0)
    c, h, w = 2, 4, 4
    if mask_kind == "checkerboard":
        mask, c_in, c_out = checkerboard_mask(h, w), c, 2 * c
    else:
        mask, c_in, c_out = channel_mask(c), c // 2, 2 * (c - c // 2)
    conv = nn.Conv2d(c_in, c_out, 3, padding=1).double()

    def conditioner(x_a):
        batch = x_a.shape[:-3]
        return conv(x_a.reshape(-1, *x_a.shape[-3:])).reshape(*batch, c_out, h, w)

    layer = AffineCoupling(mask, conditioner, event_shape=(c, h, w)).double()
    x = torch.randn(2, 3, c, h, w, dtype=torch.float64)
    y = layer(x)
    full_mask = mask.expand(c, h, w)
    assert torch.equal(y[..., full_mask], x[..., full_mask])
    assert not torch.allclose(y[..., ~full_mask], x[..., ~full_mask])
    assert torch.allclose(layer.inv(y.clone()), x, atol=1e-12)
    ladj = layer.log_abs_det_jacobian(x[0, :2], layer(x[0, :2]))
    assert torch.allclose(ladj, autograd_logdet(layer, x[0, :2], 3), atol=1e-10)


def test_round_trip_float32_after_50_layers():
    # Random weights of a size a trained flow has; every layer is far from the identity.
    flow = randomize(pyro_flows.real_nvp(6, num_layers=50, hidden_dims=(64, 64)), scale=0.02)
    x = torch.randn(512, 6)
    with torch.no_grad():
        z = flow.inv(x)
        back = flow(z.clone())
    assert (z - x).abs().mean() > 0.1
    assert ((back - x).abs() / (1 + x.abs())).max() < 1e-5


def test_round_trip_float64_after_50_layers():
    flow = randomize(pyro_flows.real_nvp(6, num_layers=50, hidden_dims=(32,)), scale=0.02).double()
    x = torch.randn(64, 6, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(flow(flow.inv(x).clone()), x, atol=1e-10, rtol=0)


@pytest.mark.parametrize("magnitude", [1.0, 1e2, 1e3])
def test_deep_flow_stays_finite_because_of_scale_bound(magnitude):
    """50 couplings at PyTorch's default init, float32, large inputs: the bounded
    log-scale keeps log_prob and samples finite; the same flow unbounded overflows."""
    previous = Distribution._validate_args
    Distribution.set_default_validate_args(False)  # let non-finite values through to count them
    try:
        results = {}
        for bound in (2.0, None):
            torch.manual_seed(0)
            flow = default_init(
                pyro_flows.real_nvp(8, num_layers=50, hidden_dims=(64, 64), scale_bound=bound)
            )
            model = pyro_flows.Flow(flow)
            x = magnitude * torch.randn(256, 8)
            with torch.no_grad():
                lp = model.log_prob(x)
                s = model.sample((256,))
            results[bound] = bool(torch.isfinite(lp).all() and torch.isfinite(s).all())
        assert results[2.0], "bounded flow produced non-finite values"
        assert not results[None], "the unbounded flow should overflow (else the test proves nothing)"
    finally:
        Distribution.set_default_validate_args(previous)


def test_scale_bound_limits_each_layer():
    conditioner = lambda x_a: torch.cat([torch.zeros_like(x_a), 1e6 * torch.ones_like(x_a)], -1)  # noqa: E731
    layer = AffineCoupling(half_mask(2), conditioner, scale_bound=2.0)
    x = torch.ones(1, 2)
    assert math.isclose(float(layer.log_abs_det_jacobian(x, layer(x))), 2.0, rel_tol=1e-6)
    with pytest.raises(ValueError, match="scale_bound"):
        AffineCoupling(half_mask(2), conditioner, scale_bound=0.0)


def test_conditioner_output_shape_is_checked():
    layer = AffineCoupling(half_mask(4), nn.Linear(2, 3))
    with pytest.raises(ValueError, match="conditioner returned shape"):
        layer(torch.randn(5, 4))


def test_conditioner_runs_once_per_direction_and_score():
    """Scoring (inverse + log-det) and sampling (forward + log-det) each evaluate the
    conditioner exactly once per layer: the log-det comes from the cache."""
    calls = []
    net = nn.Linear(2, 4)
    layer = AffineCoupling(half_mask(4), lambda x_a: calls.append(1) or net(x_a))
    d = pyro_flows.Flow(layer)()
    x = torch.randn(8, 4)
    d.log_prob(x)
    assert len(calls) == 1
    s = d.rsample((3,))
    d.log_prob(s)
    assert len(calls) == 2


def test_deep_perturbed_real_nvp_stays_finite_on_large_inputs():
    """A 60-layer real_nvp with weights perturbed by 0.03 scores inputs of magnitude 50
    (D=16); Pyro's affine_coupling stack of the same shape stays finite on all of them."""
    torch.manual_seed(0)
    flow = randomize(pyro_flows.real_nvp(16, num_layers=60), scale=0.03)
    x = 50 * torch.randn(400, 16)
    with torch.no_grad():
        lp = pyro_flows.Flow(flow).log_prob(x)
    assert torch.isfinite(lp).all(), f"{float((~torch.isfinite(lp)).float().mean()):.0%} non-finite"


def test_without_the_shift_bound_deep_flows_overflow_far_from_the_data():
    """The cause of the overflow the shift bound prevents: a ReLU conditioner's shift grows
    linearly with |x^A|, so |z| grows geometrically with depth although every log-scale is
    bounded."""
    torch.manual_seed(0)
    flow = randomize(pyro_flows.real_nvp(16, num_layers=60), scale=0.03)
    for layer in flow.parts:
        if isinstance(layer, AffineCoupling):
            layer.shift_bound = None
    x = 50 * torch.randn(400, 16)
    with torch.no_grad():
        lp = pyro_flows.Flow(flow).log_prob(x)
    assert (~torch.isfinite(lp)).float().mean() > 0.5


def test_the_shift_bound_is_exact_where_it_does_not_bind_and_bounds_the_rest():
    # through a layer: large raw shifts are bounded, and None removes the bound
    torch.manual_seed(0)
    layer = affine_coupling(4, hidden_dims=(8,))
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p))
    x = 100 * torch.randn(50, 4)
    assert torch.allclose(layer.inv(layer(x)), x, rtol=1e-4, atol=1e-3)
    unbounded = affine_coupling(4, hidden_dims=(8,), shift_bound=None)
    unbounded.load_state_dict(layer.state_dict())
    x_a = layer.partition.split(x)[0]
    raw_shift, _ = unbounded._shift_log_scale(x_a)
    bounded_shift, _ = layer._shift_log_scale(x_a)
    assert raw_shift.abs().max() > 8 and bounded_shift.abs().max() <= 8
    free = raw_shift.abs() < 8
    assert torch.equal(bounded_shift[free], raw_shift[free])
    with pytest.raises(ValueError, match="shift_bound must be positive"):
        affine_coupling(4, shift_bound=0.0)
