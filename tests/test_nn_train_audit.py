"""The conditioner networks' fast paths against their module calls, memory-saving
recomputation with random layers, the weight average after a move and run options
through a TOML file."""

import pytest
import tomllib
import torch
from pyro.distributions.torch_transform import ComposeTransformModule
from torch import nn

from pyro_flows.nn import MLP, ConditionalMLP, ResidualMLP
from pyro_flows.train.averaging import WeightAverage
from pyro_flows.train.config import RunConfig, config_to_toml, read_toml
from pyro_flows.transforms import AdditiveCoupling, AffineCoupling, MemorySaving
from pyro_flows.transforms.coupling import vector_mask


# ---------------------------------------------------------------- MLP / ResidualMLP
def test_an_mlp_slices_like_a_sequential():
    torch.manual_seed(0)
    net = MLP(3, 2, hidden_dims=(5, 4), zero_init=False)
    x = torch.randn(6, 3)
    features = net[:-1]
    assert isinstance(features, nn.Sequential)
    assert [type(m) for m in features] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU]
    assert features[0] is net[0]  # the same layers, not copies
    assert torch.equal(net[-1](features(x)), net(x))
    cond = ConditionalMLP(3, 2, 4, hidden_dims=(5,), zero_init=False)
    assert len(cond[1:]) == 2


def _written_out(net, x, act):
    """ResidualMLP with one residual block of width 5, by its formula."""
    block = net.blocks[0]
    h = net.input(x)
    h = h + block.linear2(act(block.linear1(act(h))))
    return net.output(act(h))


@pytest.mark.parametrize("activation", [nn.ELU, nn.ReLU, nn.LeakyReLU])
def test_an_activation_built_in_place_leaves_the_skip_connection_alone(activation):
    torch.manual_seed(0)
    net = ResidualMLP(3, 2, hidden_dims=(5, 5), activation=lambda: activation(inplace=True), zero_init=False)
    net = net.double()
    x = torch.randn(6, 3, dtype=torch.float64)
    expected = _written_out(net, x, activation())
    assert torch.allclose(net(x), expected, atol=1e-12)
    # a hook sends the activation through its module call: the same numbers
    handle = net.blocks[0].act1.register_forward_hook(lambda module, args, out: None)
    assert torch.allclose(net(x), expected, atol=1e-12)
    handle.remove()


def test_hooks_on_a_residual_block_see_and_keep_the_true_values():
    torch.manual_seed(0)
    net = ResidualMLP(3, 2, hidden_dims=(5, 5), zero_init=False).double()
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    block = net.blocks[0]
    pre_activation = block.linear1(torch.relu(net.input(x))).detach()
    assert (pre_activation < 0).any()  # else an in-place ReLU would change nothing
    seen = []
    handle = block.linear1.register_forward_hook(lambda module, args, out: seen.append(out))
    y = net(x)
    handle.remove()
    assert torch.equal(seen[0].detach(), pre_activation)  # not the ReLU of it
    expected_grad = torch.autograd.grad(y.sum(), x)[0]

    grads_out = []
    handle = block.linear1.register_full_backward_hook(lambda m, gi, go: grads_out.append(go[0]))
    y = net(x)  # raised "a view ... is being modified inplace" when the ReLU went in place
    (grad,) = torch.autograd.grad(y.sum(), x)
    handle.remove()
    assert len(grads_out) == 1 and grads_out[0].shape == (6, 5)
    assert torch.allclose(grad, expected_grad, atol=1e-12)


# ---------------------------------------------------------------- recompute
class _Generic(AffineCoupling):
    """An affine coupling the fused backward does not take (a subclass): the generic path."""


def _stack(dropout, affine=AffineCoupling):
    parts = []
    for p in range(4):
        mask = vector_mask(4, "half", p % 2)
        if p % 2 == 0:
            parts.append(affine(mask, MLP(2, 4, (16,), zero_init=False, dropout=dropout)))
        else:
            parts.append(AdditiveCoupling(mask, MLP(2, 2, (16,), zero_init=False, dropout=dropout)))
    return ComposeTransformModule(parts).double()


def _plain_backprop(stack, x):
    y, ladj = x, 0.0
    for block in reversed(list(stack.parts)):
        y, block_ladj = block._inverse_and_ladj(y)
        ladj = ladj + block_ladj
    return y, ladj


@pytest.mark.parametrize("generic", [False, True])
def test_recomputation_replays_the_dropout_masks_of_the_forward_pass(generic):
    torch.manual_seed(1)
    stack = _stack(dropout=0.3, affine=_Generic if generic else AffineCoupling)
    layer = MemorySaving(stack, (4,))
    x = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    tensors = [x, *stack.parameters()]

    torch.manual_seed(5)
    y, ladj = _plain_backprop(stack, x)
    expected = torch.autograd.grad((y**2).sum() + ladj.sum(), tensors)
    expected_next = torch.rand(3)  # the random stream after a plain training step

    torch.manual_seed(5)
    y_saving, ladj_saving = layer._inverse_and_ladj(x)
    assert torch.equal(y_saving, y)  # the same masks in the forward pass
    found = torch.autograd.grad((y_saving**2).sum() + ladj_saving.sum(), tensors)
    for a, b in zip(found, expected, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10), (a - b).abs().max()
    # the backward pass's reruns leave the caller's random stream where the forward left it
    assert torch.equal(torch.rand(3), expected_next)


def test_recomputation_refuses_a_second_derivative_instead_of_dropping_it():
    torch.manual_seed(0)
    stack = _stack(dropout=0.0)
    layer = MemorySaving(stack, (4,))
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    y, ladj = layer._inverse_and_ladj(x)
    (grad_x,) = torch.autograd.grad((y**2).sum() + ladj.sum(), x, create_graph=True)
    y_plain, ladj_plain = _plain_backprop(stack, x)
    (grad_plain,) = torch.autograd.grad((y_plain**2).sum() + ladj_plain.sum(), x)
    assert torch.allclose(grad_x, grad_plain, atol=1e-12)
    # a gradient penalty would otherwise add nothing to the parameters' gradients, silently
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grad_x.pow(2).sum().backward()


# ---------------------------------------------------------------- weight average
@pytest.mark.parametrize("move", ["double", "float"])
def test_the_weight_average_follows_a_dtype_move(move):
    torch.manual_seed(0)
    net = nn.Linear(2, 1)
    if move == "float":
        net.double()
    average = WeightAverage(net, decay=0.5)
    with torch.no_grad():
        net.weight.fill_(1.0)
    average.update()
    getattr(net, move)()
    with torch.no_grad():
        net.weight.fill_(3.0)
    average.update()  # raised "expected dtype float for `end` but got dtype double"
    assert average.shadow[0].dtype == net.weight.dtype
    # d_1 = min(0.5, 2/11)
    assert torch.allclose(average.shadow[0], torch.full_like(net.weight, 2 / 11 + 9 / 11 * 3))
    with average.applied():
        assert torch.allclose(net.weight, torch.full_like(net.weight, 2 / 11 + 9 / 11 * 3))
    assert torch.equal(net.weight, torch.full_like(net.weight, 3.0))


# ---------------------------------------------------------------- run options in TOML
@pytest.mark.parametrize(
    "path",
    ["runs/a b", "q\"uo'te\\x", "ü/ñ 日本 😀", "new\nline", "cr\rtab\tend", "bell\x07del\x7fesc\x1b"],
)
def test_every_string_option_survives_a_toml_file(tmp_path, path):
    config = RunConfig(out=path, data_dir=path, data=path + ".csv")
    text = config_to_toml(config)
    assert RunConfig.from_dict(tomllib.loads(text)) == config
    # written in a platform's legacy encoding (as a text file is on Windows) it reads back alike
    file = tmp_path / "config.toml"
    file.write_text(text, encoding="cp1252")
    assert RunConfig.from_dict(read_toml(file)) == config


def test_floats_tuples_and_booleans_survive_a_toml_file():
    config = RunConfig(
        hidden_dims=(7,),
        lr=0.1 + 0.2,
        weight_decay=5e-324,
        grad_clip=1e300,
        noise=-0.0,
        ema=0.999,
        plots=False,
        standardize=False,
    )
    back = RunConfig.from_dict(tomllib.loads(config_to_toml(config)))
    assert back == config and back.to_dict() == config.to_dict()
    assert str(back.noise) == "-0.0"


def test_a_run_saved_before_flow_matching_had_its_own_field_rebuilds_the_field_it_trained():
    from pyro_flows.train.registry import ffjord_field

    saved = RunConfig(flow="ffjord", objective="flow-matching").to_dict()
    for key in ("field", "fm_ot_block", "fm_time_exponent", "state_features", "state_frequency"):
        del saved[key]
    config = RunConfig.from_saved(saved)
    assert ffjord_field(config) == "concat-squash"  # the only field then
    assert config.fm_ot_block == 0  # whole batches were paired then
    assert config.fm_time_exponent == 1.0
    # a run that saved them keeps them
    saved = RunConfig(flow="ffjord", objective="flow-matching").to_dict()
    config = RunConfig.from_saved(saved)
    assert ffjord_field(config) == "velocity" and config.fm_ot_block == 128
