"""Couplings, masks, conditioner networks and normalization layers as a PyTorch user drives
them: an image coupling's shift bound, masks and sizes that are refused by name, hooks on
a conditioner, a batch of contexts for one image, batch norm's cumulative average, and
spline minimums that would divide by zero."""

import pytest
import torch
from torch.nn import functional as F

import pyro_flows
from pyro_flows.nn import ConditionalResNet
from pyro_flows.transforms import (
    AdditiveCoupling,
    AffineCoupling,
    ConditionalAffineCoupling,
    RealNVPBatchNorm,
    SplineCoupling,
    affine_coupling,
    conditional_affine_coupling,
    image_additive_coupling,
    image_affine_coupling,
    image_spline_coupling,
    spline_coupling,
)

from .helpers import autograd_logdet


def _image_coupling_with_shift(shift_value, **options):
    """A channel-mask image affine coupling (float64, no batch norm) whose conditioner
    returns ``shift_value`` as the shift of every transformed pixel and 0 as log-scale."""
    layer = image_affine_coupling(
        (2, 4, 4), "channel", hidden_channels=4, num_blocks=1, batch_norm=False, **options
    )
    layer = layer.double()
    with torch.no_grad():
        # output channels: the shift of the one transformed channel, then its log-scale
        layer.conditioner.output.bias.copy_(torch.tensor([shift_value, 0.0]))
    return layer


def test_image_affine_coupling_takes_a_shift_bound_with_the_vector_couplings_default():
    assert image_affine_coupling((2, 4, 4), "channel", hidden_channels=4, num_blocks=1).shift_bound == 8.0
    torch.manual_seed(0)
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    for options, expected_shift in [({}, 5.0), (dict(shift_bound=None), 5.0), (dict(shift_bound=0.5), 0.5)]:
        layer = _image_coupling_with_shift(5.0, **options).eval()
        y = layer(x)
        assert torch.equal(y[:, 0], x[:, 0])  # the conditioning channel
        assert torch.allclose(y[:, 1] - x[:, 1], torch.full_like(x[:, 1], expected_shift), atol=1e-12)
    # with a perturbed conditioner the bounded layer is still an exact flow
    layer = _image_coupling_with_shift(5.0, shift_bound=0.5).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in layer.conditioner.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    y = layer(x)
    assert torch.allclose(layer.inv(y.clone()), x, atol=1e-12)
    ladj = layer.log_abs_det_jacobian(x, y)
    assert torch.allclose(ladj, autograd_logdet(layer, x, 3), atol=1e-10)
    assert float(ladj.abs().max()) > 1e-3  # the log-scale really moved
    with pytest.raises(ValueError, match="shift_bound must be positive or None, got -1"):
        image_affine_coupling((2, 4, 4), "channel", shift_bound=-1.0)


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda m: affine_coupling(3, (4,), mask=m), "affine_coupling"),
        (lambda m: pyro_flows.transforms.additive_coupling(3, (4,), mask=m), "additive_coupling"),
        (lambda m: spline_coupling(3, (4,), mask=m), "spline_coupling"),
        (lambda m: conditional_affine_coupling(3, 2, (4,), mask=m), "conditional_affine_coupling"),
        (
            lambda m: pyro_flows.transforms.conditional_spline_coupling(3, 2, (4,), mask=m),
            "conditional_spline_coupling",
        ),
    ],
)
@pytest.mark.parametrize(
    "mask, what",
    [
        (torch.ones(3, dtype=torch.bool), "conditions on every coordinate and transforms none"),
        (torch.zeros(3, dtype=torch.int64), "transforms every coordinate"),
    ],
)
def test_a_mask_that_transforms_nothing_or_everything_is_refused_naming_the_builder(build, name, mask, what):
    with pytest.raises(ValueError, match=rf"^{name}: a mask must have both True .*{what}"):
        build(mask)


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda m: AffineCoupling(m, None), "AffineCoupling"),
        (lambda m: AdditiveCoupling(m, None), "AdditiveCoupling"),
        (lambda m: SplineCoupling(m, None), "SplineCoupling"),
        (lambda m: ConditionalAffineCoupling(m, None, 2), "ConditionalAffineCoupling"),
    ],
)
def test_the_coupling_classes_name_themselves_for_a_bad_mask(build, name):
    with pytest.raises(ValueError, match=rf"^{name}: the mask must select a non-empty, proper subset"):
        build(torch.ones(3, dtype=torch.bool))
    # a mask of numbers other than 0 and 1 is refused, not read as True where nonzero
    with pytest.raises(ValueError, match=rf"^{name}: a mask must be boolean or hold only 0 and 1"):
        build(torch.tensor([2, 0, 1]))
    with pytest.raises(ValueError, match=rf"^{name}: a mask must be boolean or hold only 0 and 1"):
        build(torch.tensor([0.5, 0.0, 1.0]))


def test_a_mask_that_does_not_broadcast_to_the_event_is_named():
    with pytest.raises(
        ValueError,
        match=r"^AffineCoupling: mask of shape \(2,\) does not broadcast to the event shape \(3,\)",
    ):
        AffineCoupling(torch.tensor([True, False]), None, event_shape=(3,))


def test_integer_and_float_masks_of_0_and_1_build_the_same_coupling_as_a_bool_mask():
    torch.manual_seed(0)
    x = torch.randn(5, 3, dtype=torch.float64)
    outputs = []
    for mask in ([True, False, True], torch.tensor([1, 0, 1]), torch.tensor([1.0, 0.0, 1.0])):
        torch.manual_seed(1)
        layer = affine_coupling(3, (4,), mask=mask).double()
        torch.nn.init.normal_(layer.conditioner[-1].weight)
        outputs.append(layer(x))
        assert layer.partition.sizes == (2, 1)
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])


@pytest.mark.parametrize("input_dim", [2.5, True, 1, 0])
def test_a_vector_size_that_is_not_an_integer_of_at_least_2_is_refused(input_dim):
    # 2.5 used to build a coupling on vectors of size 3 (torch.arange(2.5) has 3 entries)
    with pytest.raises(
        ValueError, match=rf"^affine_coupling: input_dim must be an integer >= 2, got {input_dim}"
    ):
        affine_coupling(input_dim, (4,))
    with pytest.raises(
        ValueError, match=rf"^spline_coupling: input_dim must be an integer >= 2, got {input_dim}"
    ):
        spline_coupling(input_dim, (4,))


@pytest.mark.parametrize(
    "build, name",
    [
        (image_affine_coupling, "image_affine_coupling"),
        (image_additive_coupling, "image_additive_coupling"),
        (image_spline_coupling, "image_spline_coupling"),
    ],
)
def test_image_couplings_read_integral_float_shapes_and_name_bad_ones(build, name):
    layer = build((2.0, 28 / 7, 4), "channel", hidden_channels=4, num_blocks=1)
    assert layer.event_shape == (2, 4, 4)
    assert layer(torch.randn(3, 2, 4, 4)).shape == (3, 2, 4, 4)
    for shape in [(2, 4.5, 4), (2, True, 4), (4, 4)]:
        with pytest.raises(
            ValueError, match=rf"^{name}: expected an image shape \(C, H, W\) of positive integers"
        ):
            build(shape, "channel", hidden_channels=4, num_blocks=1)
    with pytest.raises(ValueError, match=rf"^{name}: a channel mask needs at least 2 channels"):
        build((1, 4, 4), "channel", hidden_channels=4, num_blocks=1)


def test_hooks_on_an_mlp_conditioner_see_its_layers_outputs_and_gradients_are_unchanged():
    # the builders' conditioners apply their ReLUs in place; a hooked layer's output must
    # not be overwritten (a forward hook's record, a full backward hook's view)
    torch.manual_seed(0)
    layer = affine_coupling(4, (8,)).double()
    torch.nn.init.normal_(layer.conditioner[-1].weight)
    x = torch.randn(16, 4, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    (expected,) = torch.autograd.grad((y**2).sum(), x)

    records = []
    first = layer.conditioner[0]
    handle = first.register_forward_hook(lambda module, args, out: records.append(out))
    x2 = x.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad((layer(x2) ** 2).sum(), x2)
    handle.remove()
    pre_activation = F.linear(x[:, :2].detach(), first.weight, first.bias)
    assert float(pre_activation.min()) < -0.5  # the ReLU would have changed these
    assert torch.equal(records[0].detach(), pre_activation.detach())
    assert torch.allclose(grad, expected, atol=1e-12)

    seen = []
    first.register_full_backward_hook(lambda module, grad_in, grad_out: seen.append(grad_out[0].shape))
    x3 = x.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad((layer(x3) ** 2).sum(), x3)
    assert seen == [torch.Size([16, 8])]
    assert torch.allclose(grad, expected, atol=1e-12)


def test_conditional_resnet_broadcasts_a_batch_of_contexts_against_one_image():
    torch.manual_seed(0)
    net = ConditionalResNet(2, 4, context_dim=3, hidden_channels=4, num_blocks=1, batch_norm=False).double()
    with torch.no_grad():
        net.net.output.weight.normal_()
    x = torch.randn(2, 5, 5, dtype=torch.float64)
    contexts = torch.randn(7, 3, dtype=torch.float64)
    out = net(x, contexts)
    assert out.shape == (7, 4, 5, 5)
    for i in range(7):
        assert torch.allclose(out[i], net(x.unsqueeze(0), contexts[i])[0], atol=1e-12)
    # (2, 1) images against (3,) contexts: (2, 3)
    xs = torch.randn(2, 1, 2, 5, 5, dtype=torch.float64)
    out = net(xs, contexts[:3])
    assert out.shape == (2, 3, 4, 5, 5)
    assert torch.allclose(out[1, 2], net(xs[1, 0], contexts[2].unsqueeze(0))[0], atol=1e-12)
    with pytest.raises(ValueError, match=r"ConditionalResNet: expected .* context of shape \(\*batch, 3\)"):
        net(x, torch.randn(7, 2, dtype=torch.float64))


def test_batch_norm_momentum_none_is_the_cumulative_average_of_the_batches():
    torch.manual_seed(0)
    bn = RealNVPBatchNorm(3, momentum=None).double()
    batches = [torch.randn(20, 3, dtype=torch.float64) * (i + 1) + i for i in range(4)]
    for y in batches:
        x = bn.inv(y)
    means = torch.stack([y.mean(0) for y in batches])
    variances = torch.stack([y.var(0, unbiased=False) for y in batches])
    assert torch.allclose(bn.running_mean, means.mean(0), atol=1e-12)
    assert torch.allclose(bn.running_var, variances.mean(0), atol=1e-12)
    assert int(bn.num_batches_tracked) == 4
    # the last batch was normalised with the averages including it
    assert torch.allclose(
        x, (batches[-1] - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps), atol=1e-12
    )
    # as torch's own batch norm with momentum=None
    reference = torch.nn.BatchNorm1d(3, momentum=None, affine=False).double()
    for y in batches:
        reference(y)
    assert torch.allclose(bn.running_mean, reference.running_mean, atol=1e-12)
    # the count is saved and reloaded
    other = RealNVPBatchNorm(3, momentum=None).double()
    other.load_state_dict(bn.state_dict())
    other.inv(batches[0])
    assert int(other.num_batches_tracked) == 5
    assert torch.allclose(other.running_mean, torch.cat([means, means[:1]]).mean(0), atol=1e-12)
    # built through the builder too
    assert pyro_flows.real_nvp_batch_norm(3, momentum=None).momentum is None


def test_batch_norm_states_load_across_momentum_settings_and_from_before_the_count():
    """The batch count is kept for every momentum (as torch's batch norm keeps it), so a
    state of either setting loads strictly into the other; a state without the count
    (saved before it was kept for every momentum) loads too, its learnt averages counting
    as one batch."""
    torch.manual_seed(0)
    batches = [torch.randn(30, 3, dtype=torch.float64) * (i + 1) + i for i in range(3)]
    ema, cumulative = RealNVPBatchNorm(3).double(), RealNVPBatchNorm(3, momentum=None).double()
    for y in batches:
        ema.inv(y)
        cumulative.inv(y)
    assert int(ema.num_batches_tracked) == int(cumulative.num_batches_tracked) == 3
    into_cumulative = RealNVPBatchNorm(3, momentum=None).double()
    into_cumulative.load_state_dict(ema.state_dict())
    into_ema = RealNVPBatchNorm(3).double()
    into_ema.load_state_dict(cumulative.state_dict())
    assert torch.equal(into_ema.running_var, cumulative.running_var)
    # the count goes on: the fourth batch has weight 1/4
    y = batches[0] * 3
    into_cumulative.inv(y)
    expected = 0.75 * ema.running_mean + 0.25 * y.mean(0)
    assert torch.allclose(into_cumulative.running_mean, expected, atol=1e-12)
    # without the count: learnt averages count as one batch, unlearnt ones as none
    old = {k: v for k, v in ema.state_dict().items() if k != "num_batches_tracked"}
    legacy = RealNVPBatchNorm(3, momentum=None).double()
    legacy.load_state_dict(old)
    assert int(legacy.num_batches_tracked) == 1
    legacy.inv(y)
    assert torch.allclose(legacy.running_mean, 0.5 * ema.running_mean + 0.5 * y.mean(0), atol=1e-12)
    fresh = {k: v for k, v in RealNVPBatchNorm(3).state_dict().items() if k != "num_batches_tracked"}
    unlearnt = RealNVPBatchNorm(3, momentum=None)
    unlearnt.load_state_dict(fresh)
    assert int(unlearnt.num_batches_tracked) == 0
    # inside a flow's state too (prefixed keys)
    flow = pyro_flows.real_nvp(3, num_layers=2, hidden_dims=(8,), batch_norm=True).double()
    flow.train()
    flow.inv(batches[0])  # scoring direction: learns the batch statistics
    saved = {k: v for k, v in flow.state_dict().items() if not k.endswith("num_batches_tracked")}
    other = pyro_flows.real_nvp(3, num_layers=2, hidden_dims=(8,), batch_norm=True, momentum=None).double()
    other.load_state_dict(saved)
    counts = [int(b) for k, b in other.state_dict().items() if k.endswith("num_batches_tracked")]
    assert counts and set(counts) == {1}


@pytest.mark.parametrize("momentum", [True, "0.1", float("nan"), 0.0, 1.5])
def test_a_bad_batch_norm_momentum_is_refused_by_name(momentum):
    with pytest.raises(ValueError, match=r"RealNVPBatchNorm: momentum must be a number in \(0, 1\], or None"):
        RealNVPBatchNorm(3, momentum=momentum)


@pytest.mark.parametrize(
    "option", [dict(min_bin_width=0.0), dict(min_bin_height=0.0), dict(min_derivative=0.0)]
)
def test_zero_spline_minimums_are_refused(option):
    # With a minimum of 0 a large enough parameter gives a bin of size 0 or a knot
    # derivative of 0 in floating point: NaN outputs (seen in float32 and float64).
    (name,) = option
    with pytest.raises(ValueError, match=rf"^SplineCoupling: .*{name}.* non-invertible"):
        spline_coupling(3, (4,), **option)
    with pytest.raises(ValueError, match=rf"^ElementwiseSpline: .*{name}"):
        pyro_flows.transforms.ElementwiseSpline(3, **option)


def test_spline_coupling_with_extreme_conditioner_outputs_stays_finite_in_float32():
    # conditioner outputs of a few hundred (softmaxes saturate): bins and derivatives at
    # their minimums, outputs and log-determinants finite in both directions
    torch.manual_seed(0)
    layer = spline_coupling(4, (8,), num_bins=8)
    with torch.no_grad():
        layer.conditioner[-1].bias.normal_(std=200.0)
    x = torch.cat([6 * torch.rand(256, 4) - 3, torch.tensor([[3.0, -3.0, 1e6, -1e6]])])
    y = layer(x)
    ladj = layer.log_abs_det_jacobian(x, y)
    back = layer.inv(y.clone())
    assert bool(torch.isfinite(y).all()) and bool(torch.isfinite(ladj).all())
    assert bool(torch.isfinite(back).all())
    assert torch.equal(y[-1, 2:], x[-1, 2:])  # the identity tails
