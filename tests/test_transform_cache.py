"""The transform cache: one entry (the last call), reused only for the same input, grad
mode, train/eval mode and state tensors. These check that no change of any of them can
hit it, and that importing the library leaves the process as it was."""

import copy
import json
import subprocess
import sys

import torch
from torch import nn

import pyro_flows
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


def test_grad_mode_is_part_of_the_key():
    """Scoring a tensor under no_grad, then with gradients, must give a value with a graph."""
    layer = _randomized()
    y = torch.randn(5, 4)
    with torch.no_grad():
        x_ng = layer.inv(y)
        ladj_ng = layer.log_abs_det_jacobian(x_ng, y)
    assert not x_ng.requires_grad and not ladj_ng.requires_grad
    x = layer.inv(y)
    ladj = layer.log_abs_det_jacobian(x, y)
    assert x.requires_grad and ladj.requires_grad
    assert torch.equal(x, x_ng) and torch.equal(ladj, ladj_ng)
    (grad,) = torch.autograd.grad(ladj.sum(), layer.conditioner[-1].weight)
    assert grad.abs().sum() > 0
    # and through a whole flow: log_prob with gradients after log_prob without
    flow = pyro_flows.Flow(pyro_flows.real_nvp(4, num_layers=2, hidden_dims=(8,)))
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0, 0.3)
        expected = flow.log_prob(y)
    lp = flow.log_prob(y)
    assert lp.requires_grad and torch.allclose(lp, expected)
    lp.sum().backward()
    assert all(p.grad is not None for p in flow.parameters())


def test_train_eval_mode_is_part_of_the_key():
    """An entry made in eval mode must not answer in train mode, where scoring also
    updates the running statistics (and the reverse)."""
    flow = pyro_flows.real_nvp(4, num_layers=2, hidden_dims=(8,), batch_norm=True)
    norm = flow.parts[1]
    y = torch.randn(64, 4) * 3 + 1
    norm.train()
    norm.inv(y * 2 - 1)
    x_train = norm.inv(y)
    norm.eval()
    x_eval = norm.inv(y)
    assert x_eval is not x_train
    assert torch.allclose(x_eval, norm._inverse_and_ladj(y)[0])
    norm.train()
    mean = norm.running_mean.clone()
    assert norm.inv(y) is not x_eval
    assert not torch.allclose(norm.running_mean, mean)  # the train-mode call did run


def test_a_sample_is_scored_from_the_cache_until_a_parameter_changes():
    layer = _randomized()
    x = torch.randn(5, 4)
    y = layer(x)
    assert layer.inv(y) is x  # Pyro's identity rule: no inverse is computed
    with torch.no_grad():
        layer.conditioner[0].weight.add_(0.5)  # in place: a new version
    x2 = layer.inv(y)
    assert x2 is not x and not torch.allclose(x2, x)
    assert torch.allclose(layer(x2), y, atol=1e-5)


def test_data_scored_at_every_step_under_clipped_adam():
    """The usual Pyro density fit: the same data tensor observed at every SVI step, and
    Pyro's ClippedAdam, which writes the parameters through ``.data`` (no version
    counter moves). A cache hit on the repeated input returned the last step's values
    with their freed graph: the second step raised "backward through the graph a second
    time"."""
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI, Trace_ELBO

    pyro.clear_param_store()
    torch.manual_seed(0)
    data = torch.randn(64, 2) * torch.tensor([1.0, 0.3]) + 1
    flow = _randomized(2)
    base = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)

    def model():
        pyro.module("flow", flow)
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.TransformedDistribution(base, [flow]), obs=data)

    svi = SVI(model, lambda: None, pyro.optim.ClippedAdam({"lr": 1e-2}), Trace_ELBO())
    losses = []
    for _ in range(3):
        with torch.no_grad():  # the loss at the current parameters, bypassing the cache
            x, ladj = flow._inverse_and_ladj(data)
            fresh = -(base.log_prob(x) - ladj).sum().item()
        losses.append(svi.step())
        assert abs(losses[-1] - fresh) < 1e-4 * abs(fresh)
    assert losses[2] < losses[0]
    pyro.clear_param_store()


def test_an_input_given_again_is_recomputed_after_a_backward_pass_and_a_data_write():
    """Scoring the same tensor again after a backward pass and a ``.data`` write (an
    optimizer step that moves no version counter) gives the new values; within one
    computation (no backward pass between) the input given again is answered from the
    cache, as torch's ComposeTransform.log_abs_det_jacobian expects."""
    from torch.distributions import ComposeTransform

    layer = _randomized()
    y = torch.randn(5, 4)
    before = layer.inv(y)
    before.sum().backward()
    layer.conditioner[-1].bias.data.add_(0.5)
    after = layer.inv(y)
    assert not torch.allclose(before, after)
    assert torch.allclose(after, layer._inverse_and_ladj(y)[0])
    # the forward direction, gradients zeroed as Pyro's SVI does (new tensors)
    x = torch.randn(5, 4)
    first = layer(x)
    first.sum().backward()
    layer.conditioner[-1].bias.data.add_(0.5)
    for q in layer.parameters():
        q.grad = torch.zeros_like(q.grad)
    assert torch.allclose(layer(x), layer._call_and_ladj(x)[0])
    assert not torch.allclose(layer(x), first)
    # one computation: the composed log-det calls each part on its input again
    parts = [_randomized(), _randomized()]
    compose = ComposeTransform(parts)
    calls = []
    for part in parts:
        part.conditioner.register_forward_hook(lambda *args: calls.append(1))
    z = torch.randn(5, 4)
    out = compose(z)
    ladj = compose.log_abs_det_jacobian(z, out)
    assert len(calls) == 2
    assert torch.allclose(
        ladj, sum(p._call_and_ladj(v)[1] for p, v in zip(parts, (z, parts[0](z)), strict=True))
    )


def test_an_input_written_in_place_is_recomputed():
    # a reused input buffer: the same tensor object, new values
    flow = pyro_flows.Flow(pyro_flows.real_nvp(2, 2, (8,)))
    for p in flow.parameters():
        torch.nn.init.normal_(p, 0, 0.5)
    flow.eval()
    data = torch.randn(3, 4, 2)
    buffer = torch.empty(4, 2)
    scores = []
    for batch in data:
        buffer.copy_(batch)
        scores.append(flow.log_prob(buffer))
    assert torch.allclose(torch.stack(scores), flow.log_prob(data))
    # an output written in place is not inverted from the cache either
    layer = _randomized()
    x = torch.randn(5, 4)
    y = layer(x)
    y.add_(1.0)
    assert torch.allclose(layer(layer.inv(y)), y, atol=1e-5)


def test_requires_grad_set_after_a_call_gets_a_graph():
    layer = _randomized()
    x = torch.randn(5, 4)
    y = layer(x)
    layer.log_abs_det_jacobian(x, y)
    x.requires_grad_()
    y2 = layer(x)
    (grad,) = torch.autograd.grad(layer.log_abs_det_jacobian(x, y2).sum() + y2.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # and the inverse side: a sample drawn without gradients, then given them
    with torch.no_grad():
        y = layer(torch.randn(5, 4))
    y.requires_grad_()
    (grad,) = torch.autograd.grad(layer.inv(y).sum(), y)
    assert grad.abs().sum() > 0


_IMPORT_PROBE = """
import json, sys
import torch, pyro, pyro.distributions, pyro.infer
from torch.nn.modules import module as m
names = [n for n in dir(m) if n.startswith("_global_") and n.endswith("_hooks")]
def hooks():
    return {n: len(getattr(m, n)) for n in names}
before_hooks, before_modules = hooks(), set(sys.modules)
before_filters, before_env = len(__import__("warnings").filters), dict(__import__("os").environ)
import pyro_flows
new = sorted(k for k in set(sys.modules) - before_modules if not k.startswith("pyro_flows"))
print(json.dumps({
    "hooks_before": before_hooks, "hooks_after": hooks(),
    "dynamo": "torch._dynamo" in sys.modules, "dynamo_before": "torch._dynamo" in before_modules,
    "new_torch_modules": [k for k in new if k.startswith("torch")],
    "filters": [before_filters, len(__import__("warnings").filters)],
    "env": sorted(set(__import__("os").environ.items()) ^ set(before_env.items())),
}))
"""


def test_import_leaves_the_process_as_it_was():
    """No process-wide nn.Module hooks, no torch._dynamo (about 1 s of import time, a
    warnings filter and an environment variable), no other torch submodule the user did
    not ask for, measured against ``import torch, pyro`` in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", _IMPORT_PROBE], capture_output=True, text=True, check=True)
    probe = json.loads(out.stdout)
    assert probe["hooks_before"] == probe["hooks_after"], probe
    assert not probe["dynamo_before"], "import torch, pyro alone imports torch._dynamo: the check is void"
    assert not probe["dynamo"]
    assert probe["new_torch_modules"] == [], probe["new_torch_modules"]
    assert probe["filters"][0] == probe["filters"][1]
    assert probe["env"] == []


def test_a_context_made_in_inference_mode_is_used_without_a_cache_entry():
    # a context tensor made under torch.inference_mode has no version counter; the cache
    # read the counters of every state tensor, the context included, and raised
    # "Inference tensors do not track version counter"
    import pyro.distributions as dist

    torch.manual_seed(0)
    base = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    x = torch.randn(5, 2)
    with torch.inference_mode():
        context = torch.randn(5, 3)
    for transform in (pyro_flows.conditional_real_nvp(2, 3), pyro_flows.conditional_ffjord(2, 3)):
        flow = dist.ConditionalTransformedDistribution(base, [transform])
        with torch.no_grad():
            got = flow.condition(context).log_prob(x)
            expected = flow.condition(context.clone()).log_prob(x)
        assert got.shape == (5,) and torch.isfinite(got).all()
        torch.testing.assert_close(got, expected)
