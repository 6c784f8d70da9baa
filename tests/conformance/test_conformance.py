"""One conformance suite for every public transform and builder (see registry.py).

Each check guards against a failure users have reported in peer libraries; the name of
the test says which.
"""

from __future__ import annotations

import copy
import inspect
import io
import math
import pickle
import re

import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.distributions.torch_transform import TransformModule

import pyro_flows
import pyro_flows.builders
import pyro_flows.transforms

from ..helpers import autograd_logdet, randomize
from .registry import all_entries, draw_input

ENTRIES = all_entries()
IDS = [e.name for e in ENTRIES]


def build(entry, dtype=torch.float64, seed=0):
    """A randomised, warmed-up instance (and a batch of inputs) of an entry."""
    torch.manual_seed(seed)
    module = entry.factory()
    if getattr(entry, "context_dim", None):
        module.context = torch.randn(entry.context_dim)
    module = module.to(dtype)
    randomize(module, entry.randomize_scale, seed)
    x = draw_input(entry, (6, *entry.event_shape), dtype)
    transform = as_transform(module, entry)
    if entry.warmup is not None:
        entry.warmup(transform, x)
    if entry.has_train_mode:
        # Give batch norms non-trivial running statistics: score shifted, scaled data.
        with torch.no_grad():
            for k in range(3):
                transform.inv(x * (1.5 + k) + 0.3 * k)
    return module, transform, x


def as_data(entry, x):
    """Values to score: ``x`` itself unless the codomain needs its own draws."""
    if entry.sample_output is None:
        return x
    return entry.sample_output(tuple(x.shape), x.dtype)


def as_transform(module, entry):
    if getattr(entry, "context_dim", None):
        return module.condition(module.context.to(next(module.parameters()).dtype))
    return module


def flow_dist(transform, entry, dtype=torch.float64):
    shape = torch.Size(entry.event_shape)
    if entry.base is not None:
        return dist.TransformedDistribution(entry.base(shape, dtype), [transform])
    base = dist.Normal(torch.zeros(shape, dtype=dtype), torch.ones(shape, dtype=dtype)).to_event(len(shape))
    return dist.TransformedDistribution(base, [transform])


def event_dim(entry):
    return len(entry.event_shape)


def _has_parameters(entry):
    return any(True for _ in entry.factory().parameters())


def entries_where(predicate):
    """Parametrize over the entries a check applies to (no skips for what does not apply)."""
    chosen = [e for e in ENTRIES if predicate(e)]
    return pytest.mark.parametrize("entry", chosen, ids=[e.name for e in chosen])


@pytest.fixture(params=ENTRIES, ids=IDS)
def entry(request):
    return request.param


# ------------------------------------------------------------------- registry
def test_every_public_transform_is_registered():
    covered = {c for e in ENTRIES for c in e.covers}
    public = []
    for name in pyro_flows.transforms.__all__:
        obj = getattr(pyro_flows.transforms, name)
        if (
            inspect.isclass(obj)
            and issubclass(obj, (TransformModule, ConditionalTransformModule))
            and not inspect.isabstract(obj)
            and obj is not pyro_flows.transforms.FlowTransform
            and not name.startswith("_")
        ):
            public.append(obj)
    missing = [c.__name__ for c in public if c not in covered]
    assert not missing, f"public transforms missing from the conformance registry: {missing}"


def test_every_builder_is_registered():
    covered = {c for e in ENTRIES for c in e.covers}
    missing = [n for n in pyro_flows.builders.__all__ if getattr(pyro_flows.builders, n) not in covered]
    assert not missing, f"public builders missing from the conformance registry: {missing}"


# --------------------------------------------------------- round trip, log-det
def test_round_trip_float64(entry):
    module, t, x = build(entry)
    module.eval()
    with torch.no_grad():
        y = t(x)
        assert torch.allclose(t.inv(y.clone()), x, atol=1e-10, rtol=0)
        # scoring data, then mapping it back
        data = as_data(entry, x)
        x2 = t.inv(data.clone())
        assert torch.allclose(t(x2.clone()), data, atol=1e-10, rtol=0)


@entries_where(lambda e: e.has_train_mode)
def test_round_trip_float64_train_mode(entry):
    """Scoring in train mode updates the statistics, then sampling with them maps the
    values back: only this order is a round trip in train mode."""
    module, t, x = build(entry)
    module.train()
    with torch.no_grad():
        data = as_data(entry, x)
        x2 = t.inv(data.clone())
        assert torch.allclose(t(x2.clone()), data, atol=1e-10, rtol=0)


@entries_where(lambda e: e.jacobian)
def test_log_det_matches_autograd_eval(entry):
    module, t, x = build(entry)
    module.eval()
    x = x[:3]
    y = t(x)
    ladj = t.log_abs_det_jacobian(x, y)
    assert ladj.shape == x.shape[:1]
    expected = autograd_logdet(t, x, event_dim(entry))
    assert torch.allclose(ladj, expected, atol=entry.atol, rtol=1e-8), (ladj, expected)
    # inverse direction: log|det d t^{-1}/dy| = -log|det dt/dx|
    inv_expected = autograd_logdet(t.inv, y.detach(), event_dim(entry))
    assert torch.allclose(-ladj, inv_expected, atol=entry.atol * 10, rtol=1e-7)


@entries_where(lambda e: e.has_train_mode)
def test_log_det_matches_autograd_train(entry):
    """In train mode the log-det is that of the map with the batch statistics frozen,
    which after the call are the running statistics, i.e. the eval-mode map."""
    module, t, y = build(entry)
    module.train()
    x = t.inv(y)
    ladj = t.log_abs_det_jacobian(x, y)
    module.eval()
    assert torch.allclose(t.inv(y.clone()), x, atol=1e-10)
    expected = autograd_logdet(t.inv, y.detach(), event_dim(entry))
    assert torch.allclose(-ladj, expected, atol=1e-8, rtol=1e-8)


# ------------------------------------------------------------------ shapes
@pytest.mark.parametrize("batch_shape", [(), (1,), (4,), (2, 3)])
def test_batch_shapes(entry, batch_shape):
    module, t, _ = build(entry)
    module.eval()
    x = draw_input(entry, (*batch_shape, *entry.event_shape))
    y = t(x)
    assert y.shape == x.shape
    assert t.log_abs_det_jacobian(x, y).shape == torch.Size(batch_shape)
    assert t.inv(y.clone()).shape == x.shape


def test_sample_rsample_shapes_and_gradients(entry):
    module, t, _ = build(entry)
    d = flow_dist(t, entry)
    s = d.sample((4, 2))
    assert s.shape == (4, 2, *entry.event_shape)
    r = d.rsample((5,))
    assert r.shape == (5, *entry.event_shape)
    params = [p for p in module.parameters() if p.requires_grad]
    if params:
        grads = torch.autograd.grad(r.square().sum() + d.log_prob(r).sum(), params, allow_unused=True)
        assert all(g is not None and torch.isfinite(g).all() for g in grads)


@entries_where(_has_parameters)
def test_gradients_reach_every_parameter(entry):
    module, t, x = build(entry)
    x = as_data(entry, x)
    params = dict(module.named_parameters())
    if not params:
        raise AssertionError("registered as having parameters")
    loss = -flow_dist(t, entry).log_prob(x).mean()
    loss.backward()
    for name, p in params.items():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


# ----------------------------------------------------------------- caching
@entries_where(_has_parameters)
def test_no_stale_cache_after_optimizer_step(entry):
    """Scoring the same tensor after a step must recompute (wrong log-dets and
    'backward through the graph a second time' otherwise)."""
    module, t, x = build(entry)
    x = as_data(entry, x)
    params = [p for p in module.parameters()]
    if not params:
        raise AssertionError("registered as having parameters")
    d = flow_dist(t, entry)
    opt = torch.optim.SGD(params, lr=entry.lr)
    for _ in range(3):
        opt.zero_grad()
        loss = -d.log_prob(x).mean()
        loss.backward()  # raises if a freed graph were reused
        opt.step()
    # (scoring in train mode moves batch-norm statistics, so compare in eval mode)
    module.eval()
    stale = d.log_prob(x)
    fresh = flow_dist(t, entry).log_prob(x.clone())
    assert torch.allclose(stale, fresh, atol=1e-10)
    module.train()
    opt.zero_grad()
    (-d.log_prob(x).mean()).backward()
    opt.step()
    module.eval()
    assert not torch.allclose(d.log_prob(x), stale, atol=1e-12), "parameters moved, log-probs must too"


def test_log_det_independent_of_call_order(entry):
    module, t, x = build(entry)
    module.eval()
    y = t(x)
    reference = t.log_abs_det_jacobian(x, y).detach().clone()
    other = torch.randn_like(x) if entry.sample_output is None else as_data(entry, x)
    t.inv(other)  # overwrite the cache with unrelated data
    assert torch.allclose(t.log_abs_det_jacobian(x, y), reference, atol=1e-10)
    d = flow_dist(t, entry)
    s = d.sample((3,))
    lp_cached = d.log_prob(s)
    assert torch.allclose(lp_cached, d.log_prob(s.clone()), atol=1e-9)


# ------------------------------------------------------------ dtype, device
def test_composes_with_torch_transforms(entry):
    """Outputs are contiguous, so torch's own transforms after ours (whose log-dets
    ``.view()`` their input) work, on samples (cache hits) and on data."""
    module, t, x = build(entry)
    module.eval()
    data = as_data(entry, x)
    assert t(x.clone()).is_contiguous() and t.inv(data.clone()).is_contiguous()
    n = event_dim(entry)
    doubled = dist.TransformedDistribution(
        flow_dist(t, entry).base_dist, [t, torch.distributions.AffineTransform(0.0, 2.0, event_dim=n)]
    )
    log_2 = math.log(2.0) * math.prod(entry.event_shape)
    sample = doubled.rsample((3,))
    expected = flow_dist(t, entry).log_prob(sample.detach() / 2) - log_2
    assert torch.allclose(doubled.log_prob(sample), expected, atol=1e-8)
    expected = flow_dist(t, entry).log_prob(data.clone()) - log_2
    assert torch.allclose(doubled.log_prob(2 * data), expected, atol=1e-8)


def _has_float_state(entry):
    module = entry.factory()
    return any(t.is_floating_point() for t in [*module.parameters(), *module.buffers()])


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_empty_batch(entry, mode):
    """A (0, *event_shape) batch maps to an empty batch, with an empty log-det, and
    leaves the state alone (no statistics learnt from nothing)."""
    module, t, x = build(entry)
    getattr(module, mode)()
    state = {k: v.clone() for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
    data = as_data(entry, x)[:0]
    z = t.inv(data)
    assert z.shape == data.shape
    assert t.log_abs_det_jacobian(z, data).shape == (0,)
    assert t(x[:0]).shape == x[:0].shape
    for k, v in state.items():
        assert torch.equal(module.state_dict()[k], v), f"{k} changed on an empty batch"


def test_inference_mode(entry):
    """Under ``torch.inference_mode()`` (whose tensors have no version counters for the
    cache to key on) a transform scores and samples as under ``no_grad``."""
    module, t, x = build(entry)
    module.eval()
    data = as_data(entry, x)
    with torch.no_grad():
        z = t.inv(data.clone())
        expected = (z, t.log_abs_det_jacobian(z, data), t(x.clone()))
    with torch.inference_mode():
        data_i, x_i = data.clone(), x.clone()
        z_i = t.inv(data_i)
        got = (z_i, t.log_abs_det_jacobian(z_i, data_i), t(x_i))
        y_i = t(z_i)  # a round trip through the same call
    for a, b in zip(got, expected, strict=True):
        assert torch.allclose(a, b, atol=1e-10)
    assert torch.allclose(y_i, data, atol=1e-6)


@entries_where(_has_float_state)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_wrong_dtype_names_both_dtypes_and_the_fix(entry, dtype):
    module, t, x = build(entry, dtype=torch.float32)
    module.eval()
    data = as_data(entry, x).to(dtype)
    fix = {torch.float64: "flow.double()", torch.float16: "flow.half()"}[dtype]
    with pytest.raises(ValueError, match=rf"dtype {dtype}.*torch.float32.*x\.float\(\).*{re.escape(fix)}"):
        flow_dist(t, entry, torch.float32).log_prob(data)


def test_to_float64_matches_float32(entry):
    module, t, x = build(entry, dtype=torch.float32)
    x = as_data(entry, x)
    module.eval()
    lp32 = flow_dist(t, entry, torch.float32).log_prob(x)
    module64 = module.to(torch.float64)
    t64 = as_transform(module64, entry)
    lp64 = flow_dist(t64, entry).log_prob(x.double())
    assert lp64.dtype == torch.float64
    assert torch.allclose(lp32.double(), lp64, atol=1e-3, rtol=1e-4)


def test_construction_under_default_float64(entry):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        module = entry.factory()
        if getattr(entry, "context_dim", None):
            module.context = torch.randn(entry.context_dim)
        assert all(p.dtype == torch.float64 for p in module.parameters())
        t = as_transform(module, entry)
        x = as_data(entry, draw_input(entry, (3, *entry.event_shape), torch.float64))
        if entry.warmup is not None:
            entry.warmup(t, x)
        assert flow_dist(t, entry).log_prob(x).dtype == torch.float64
    finally:
        torch.set_default_dtype(previous)


def test_construction_under_default_device(entry):
    """Everything a transform creates follows ``torch.set_default_device`` (masks and
    factorisations made on the CPU break ``.to("cuda")``-free CUDA use). The meta
    device shows it without a GPU."""
    validate = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)  # meta has no values
    torch.set_default_device("meta")
    try:
        module = entry.factory()
    finally:
        torch.set_default_device(None)
        torch.distributions.Distribution.set_default_validate_args(validate)
    on_cpu = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.device.type != "meta"]
    assert not on_cpu, f"created outside the default device: {on_cpu}"


@pytest.mark.cuda
def test_cuda_to_device_and_default_device(entry):
    module, t, x = build(entry, dtype=torch.float32)
    x = as_data(entry, x)
    module.eval()
    expected = flow_dist(t, entry, torch.float32).log_prob(x)
    module = module.to("cuda")
    t = as_transform(module, entry)
    if entry.base is not None:
        base = entry.base(torch.Size(entry.event_shape), torch.float32, "cuda")
    else:
        base = dist.Normal(torch.zeros(entry.event_shape, device="cuda"), 1.0).to_event(
            len(entry.event_shape)
        )
    got = dist.TransformedDistribution(base, [t]).log_prob(x.cuda())
    assert got.device.type == "cuda"
    assert torch.allclose(got.cpu(), expected, atol=1e-4, rtol=1e-4)
    torch.set_default_device("cuda")
    try:
        fresh = entry.factory()
        if getattr(entry, "context_dim", None):
            fresh.context = torch.randn(entry.context_dim)
        ft = as_transform(fresh, entry)
        xx = draw_input(entry, (4, *entry.event_shape), torch.float32)
        if entry.warmup is not None:
            entry.warmup(ft, xx)
        assert flow_dist(ft, entry, torch.float32).sample((2,)).device.type == "cuda"
    finally:
        torch.set_default_device("cpu")


# ---------------------------------------------------------- serialisation
def test_state_dict_round_trip(entry):
    module, t, x = build(entry)
    x = as_data(entry, x)
    module.eval()
    expected = flow_dist(t, entry).log_prob(x)
    torch.manual_seed(123)
    fresh = entry.factory().to(torch.float64)
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    if getattr(entry, "context_dim", None):
        fresh.context = module.context
    fresh.eval()
    got = flow_dist(as_transform(fresh, entry), entry).log_prob(x)
    assert torch.allclose(got, expected, atol=1e-10)


def test_deepcopy_and_pickle_after_log_prob(entry):
    module, t, x = build(entry)
    x = as_data(entry, x)
    module.eval()
    d = flow_dist(t, entry)
    lp = d.log_prob(x)
    lp.sum().backward() if lp.requires_grad else None
    for clone in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        ct = as_transform(clone, entry)
        assert torch.allclose(flow_dist(ct, entry).log_prob(x), lp, atol=1e-10)
    d2 = pickle.loads(pickle.dumps(d))
    assert torch.allclose(d2.log_prob(x), lp, atol=1e-10)


@entries_where(lambda e: e.compile)
def test_torch_compile_log_prob(entry):
    module, t, x = build(entry, dtype=torch.float32)
    x = as_data(entry, x)
    module.eval()
    d = flow_dist(t, entry, torch.float32)
    expected = d.log_prob(x)
    compiled = torch.compile(lambda v: flow_dist(t, entry, torch.float32).log_prob(v), backend="aot_eager")
    torch._dynamo.reset()
    assert torch.allclose(compiled(x.clone()), expected, atol=1e-5)
