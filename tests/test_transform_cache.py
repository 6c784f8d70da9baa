"""The transform cache keeps its list of state tensors between calls; these check that
the list follows every way a transform's tensors can be replaced (not only updated)."""

import copy

import torch
from torch import nn

from pyro_flows.transforms import affine_coupling


def _randomized(dim=4):
    layer = affine_coupling(dim, hidden_dims=(8,))
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.5)
    return layer


def test_replacing_a_parameter_invalidates_the_cache():
    layer = _randomized()
    x = torch.randn(5, 4)
    y = layer(x)
    before = layer.log_abs_det_jacobian(x, y)
    last = layer.conditioner[-1]
    # A new Parameter object (not an in-place update): its version counter starts at 0.
    last.bias = nn.Parameter(last.bias.detach() + 1.0)
    assert layer(x) is not y
    after = layer.log_abs_det_jacobian(x, layer(x))
    assert not torch.allclose(before, after)
    assert torch.allclose(after, layer._call_and_ladj(x)[1])


def test_replacing_a_submodule_invalidates_the_cache():
    layer = _randomized()
    x = torch.randn(5, 4)
    y = layer(x)
    conditioner = copy.deepcopy(layer.conditioner)
    with torch.no_grad():
        conditioner[-1].bias.add_(1.0)
    layer.conditioner = conditioner
    y2 = layer(x)
    assert not torch.allclose(y, y2)


def test_deepcopy_does_not_share_the_tensor_list():
    layer = _randomized()
    x = torch.randn(5, 4)
    layer(x)
    twin = copy.deepcopy(layer)
    y = twin(x)
    with torch.no_grad():
        twin.conditioner[-1].bias.add_(1.0)
    # An in-place update of the copy's own parameter must be seen by the copy's cache.
    assert not torch.allclose(twin(x), y)


def test_compiled_log_prob_does_not_recompile_after_optimizer_steps():
    from torch._dynamo.testing import CompileCounter

    import pyro_flows

    torch._dynamo.reset()
    flow = pyro_flows.Flow(pyro_flows.real_nvp(4, num_layers=2, hidden_dims=(8,)))
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
    counter = CompileCounter()
    compiled = torch.compile(flow.log_prob, backend=counter)
    x = torch.randn(32, 4)

    def step():
        optimizer.zero_grad()
        loss = -compiled(x.clone()).mean()
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    frames = counter.frame_count
    for _ in range(3):
        step()
    # The cache's parameter version counters change at every step; they must not be guards.
    assert counter.frame_count == frames
    with torch.no_grad():
        assert torch.allclose(compiled(x.clone()), flow.log_prob(x.clone()), atol=1e-6)
    torch._dynamo.reset()
