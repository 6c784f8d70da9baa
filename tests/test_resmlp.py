"""The residual conditioner network and the ``conditioner="residual"`` option of the
spline couplings and flow."""

import pytest
import torch
from torch import nn

import pyro_flows
from pyro_flows.nn import MLP, ConditionalResidualMLP, ResidualMLP
from pyro_flows.transforms import SplineCoupling, conditional_spline_coupling, spline_coupling

from .helpers import autograd_logdet, randomize


def test_layout_shapes_and_leading_batch_shapes():
    net = ResidualMLP(3, 5, hidden_dims=(8, 8, 8, 4))
    # 8 -> 8 twice: two residual blocks of two linears; 8 -> 4: one plain layer
    assert [b.residual for b in net.blocks] == [True, True, False]
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [
        (8, 3),
        (8, 8),
        (8, 8),
        (8, 8),
        (8, 8),
        (4, 8),
        (5, 4),
    ]
    for batch in [(), (7,), (2, 3)]:
        assert net(torch.randn(*batch, 3)).shape == (*batch, 5)
    assert len(ResidualMLP(2, 2, hidden_dims=(16,)).blocks) == 0  # a one-hidden-layer MLP
    with pytest.raises(ValueError, match="hidden"):
        ResidualMLP(2, 2, hidden_dims=())
    with pytest.raises(ValueError, match="dropout"):
        ResidualMLP(2, 2, dropout=1.0)


def test_matches_the_written_out_formula():
    torch.manual_seed(0)
    net = ResidualMLP(3, 2, hidden_dims=(6, 6), zero_init=False).double()
    x = torch.randn(10, 3, dtype=torch.float64)
    block = net.blocks[0]
    h = net.input(x)
    h = h + block.linear2(torch.relu(block.linear1(torch.relu(h))))
    expected = net.output(torch.relu(h))
    assert torch.allclose(net(x), expected, atol=1e-12)
    # the skip connection: with the block's last layer at zero the block is the identity
    nn.init.zeros_(block.linear2.weight)
    nn.init.zeros_(block.linear2.bias)
    assert torch.allclose(net(x), net.output(torch.relu(net.input(x))), atol=1e-12)


def test_zero_init_gives_identity_coupling_and_gradients_reach_every_layer():
    torch.manual_seed(0)
    layer = spline_coupling(4, (16, 16), num_bins=4, conditioner="residual")
    assert isinstance(layer.conditioner, ResidualMLP)
    x = torch.randn(32, 4)
    y = layer(x)
    assert torch.allclose(y, x, atol=1e-6)
    assert torch.allclose(layer.log_abs_det_jacobian(x, y), torch.zeros(32), atol=1e-5)
    # zero output layer: only it gets a gradient on the first step (as with MLP); after one
    # step every parameter does
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        (layer(x) ** 2).sum().backward()
        opt.step()
    grads = {name: p.grad.abs().sum().item() for name, p in layer.named_parameters()}
    assert all(g > 0 for g in grads.values()), grads


def test_dropout_in_train_mode_only():
    torch.manual_seed(0)
    net = ResidualMLP(3, 4, hidden_dims=(16, 16), dropout=0.5)
    assert sum(isinstance(m, nn.Dropout) for m in net.modules()) == 2  # in the block, before the output
    with torch.no_grad():
        randomize(net, scale=0.3)
    x = torch.randn(20, 3)
    net.train()
    assert not torch.allclose(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))
    assert sum(isinstance(m, nn.Dropout) for m in ResidualMLP(3, 4).modules()) == 0


def test_hooks_fall_back_to_module_calls_with_the_same_values():
    torch.manual_seed(0)
    net = ResidualMLP(3, 4, hidden_dims=(8, 8), zero_init=False)
    x = torch.randn(5, 3)
    plain = net(x)
    calls = []
    handle = net.blocks[0].linear1.register_forward_hook(lambda *_: calls.append(1))
    assert torch.equal(net(x), plain) and calls == [1]
    handle.remove()


def test_conditional_residual_mlp_broadcasts_and_zeroed_context_is_unconditional():
    torch.manual_seed(0)
    cnet = ConditionalResidualMLP(3, 2, 4, (8, 8), zero_init=False)
    assert cnet(torch.randn(5, 3), torch.randn(2)).shape == (5, 4)
    assert cnet(torch.randn(3), torch.randn(7, 2)).shape == (7, 4)
    with pytest.raises(ValueError, match="context"):
        cnet(torch.randn(5, 3), torch.randn(5, 3))
    layer = conditional_spline_coupling(3, 2, (8, 8), num_bins=4, conditioner="residual")
    assert isinstance(layer.conditioner, ConditionalResidualMLP)
    x = torch.randn(6, 3)
    assert torch.allclose(layer.condition(torch.ones(2))(x), x, atol=1e-6)


def test_spline_flow_with_residual_conditioner_is_exact_and_fits():
    torch.manual_seed(0)
    flow = pyro_flows.Flow(
        pyro_flows.spline_flow(
            3, num_layers=2, hidden_dims=(8, 8), num_bins=4, conditioner="residual"
        ).double()
    )
    couplings = [m for m in flow.modules() if isinstance(m, SplineCoupling)]
    assert len(couplings) == 2 and all(isinstance(c.conditioner, ResidualMLP) for c in couplings)
    assert not any(isinstance(m, MLP) for m in flow.modules())
    with torch.no_grad():
        randomize(flow, scale=0.3)
    flow.eval()
    transform = flow.transform
    z = torch.randn(16, 3, dtype=torch.float64)
    x = transform(z)
    assert torch.allclose(transform.inv(x), z, atol=1e-10)
    assert torch.allclose(transform.log_abs_det_jacobian(z, x), autograd_logdet(transform, z, 1), atol=1e-8)
    with pytest.raises(ValueError, match="conditioner"):
        pyro_flows.spline_flow(2, conditioner="resnet")
    with pytest.raises(ValueError, match="conditioner"):
        pyro_flows.spline_flow(2, autoregressive=True, conditioner="residual")


def test_trained_residual_flow_beats_the_base():
    torch.manual_seed(0)
    data = torch.randn(512, 2) * torch.tensor([1.0, 0.3])
    data[:, 1] += 0.5 * data[:, 0] ** 2
    flow = pyro_flows.Flow(
        pyro_flows.spline_flow(2, num_layers=2, hidden_dims=(16, 16), conditioner="residual")
    )
    flow.log_prob(data)  # initialise the ActNorms
    before = -flow.log_prob(data).mean().item()
    opt = torch.optim.Adam(flow.parameters(), lr=5e-3)
    for _ in range(150):
        opt.zero_grad()
        loss = -flow.log_prob(data).mean()
        loss.backward()
        opt.step()
    assert loss.item() < before - 0.3, (before, loss.item())
