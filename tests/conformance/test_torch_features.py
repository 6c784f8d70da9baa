"""PyTorch features a demanding user reaches for, checked on every registered transform
(see registry.py) against the plain eager result in float64.

Already covered elsewhere, not repeated here: the exact Jacobian against the log-det
(``test_log_det_matches_autograd_*``, ``torch.autograd.functional.jacobian``),
``torch.inference_mode`` (``test_inference_mode``), pickling right after a log-prob
(``test_deepcopy_and_pickle_after_log_prob``) and ``torch.compile``.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch.distributions import Distribution

from pyro_flows.transforms import FFJORD, ConditionalFFJORD, MemorySaving

from .test_conformance import ENTRIES, as_data, as_transform, build, entries_where, flow_dist

ALL = entries_where(lambda e: True)


def _modules(entry):
    return list(entry.factory().modules())


def _has_parameters(entry):
    return any(True for _ in entry.factory().parameters())


def _saves_memory(entry):
    return any(isinstance(m, MemorySaving) or getattr(m, "memory_saving", False) for m in _modules(entry))


def _solves_an_ode(entry):
    return any(isinstance(m, (FFJORD, ConditionalFFJORD)) for m in _modules(entry))


def _vmappable(entry):
    return not _saves_memory(entry) and not _solves_an_ode(entry)


class _LogProb(torch.nn.Module):
    """``x -> log p(x)`` as a module, for ``torch.func.functional_call``."""

    def __init__(self, module, entry):
        super().__init__()
        self.flow = module
        self.entry = entry

    def forward(self, x):
        return flow_dist(as_transform(self.flow, self.entry), self.entry).log_prob(x)


@pytest.fixture
def no_validation():
    """Value validation (torch's support check and the finiteness check of the inputs)
    branches on tensor values, which ``torch.func.vmap`` cannot trace."""
    previous = Distribution._validate_args
    Distribution.set_default_validate_args(False)
    yield
    Distribution.set_default_validate_args(previous)


# ---------------------------------------------------------------- functional_call
@entries_where(_has_parameters)
def test_functional_call_scores_and_differentiates_the_given_parameters(entry):
    module, _, x = build(entry)
    module.eval()
    data = as_data(entry, x)
    scorer = _LogProb(module, entry)
    own = scorer(data.clone()).detach()
    g = torch.Generator().manual_seed(1)
    given = {
        name: (p.detach() + 0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype)).requires_grad_()
        for name, p in scorer.named_parameters()
    }
    reference = copy.deepcopy(scorer)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            p.copy_(given[name])
    expected = reference(data.clone())
    expected_grads = torch.autograd.grad(expected.sum(), list(reference.parameters()), allow_unused=True)

    got = torch.func.functional_call(scorer, given, (data,))
    assert torch.allclose(got, expected, atol=1e-9)
    # gradients reach the given tensors (MemorySaving's backward pass runs after the
    # call has put the module's own parameters back)
    grads = torch.autograd.grad(got.sum(), list(given.values()), allow_unused=True)
    for name, a, b in zip(given, grads, expected_grads, strict=True):
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.allclose(a, b, atol=1e-8), name
    # and the next plain call on other tensors uses the module's own parameters again
    assert torch.allclose(scorer(data.clone()), own, atol=1e-10)


@entries_where(_has_parameters)
def test_functional_call_leaves_no_stale_cache_entry(entry):
    """A call inside ``functional_call`` is cached under the tensors it was given, so the
    same tensor scored afterwards uses the module's own parameters again."""
    module, _, x = build(entry)
    module.eval()
    data = as_data(entry, x)
    scorer = _LogProb(module, entry)
    own = scorer(data.clone()).detach()  # a plain call first (the state list is kept)
    given = {name: p.detach() + 0.1 for name, p in scorer.named_parameters()}
    moved = torch.func.functional_call(scorer, given, (data,))
    assert not torch.allclose(moved, own)  # the given parameters do change the density
    assert torch.allclose(scorer(data), own, atol=1e-10)


def test_functional_call_leaves_no_stale_cache_entry_for_its_samples():
    entry = next(e for e in ENTRIES if e.name == "scaling")
    module, t, x = build(entry)
    module.eval()
    t.inv(x.clone())
    given = {name: p.detach() + 0.5 for name, p in module.named_parameters()}
    y = torch.func.functional_call(module, given, (x,))  # a sample under other parameters
    assert torch.allclose(t.inv(y), t.inv(y.clone()), atol=1e-10)


# -------------------------------------------------------------------------- vmap
@pytest.mark.parametrize("validate", [False, True], ids=["no_validation", "validation"])
@entries_where(_vmappable)
def test_vmap_log_prob_and_forward(entry, validate):
    """Every transform maps each element of a batch on its own in eval mode, so mapping
    the elements one by one with vmap gives the batched result (in train mode a batch
    norm normalises with the batch's statistics: there one element alone differs). The
    value checks branch the way torch's own support checks do, so this holds with
    distribution validation on (Pyro's default), which still refuses a NaN by name."""
    previous = Distribution._validate_args
    Distribution.set_default_validate_args(validate)
    try:
        module, t, x = build(entry)
        module.eval()
        data = as_data(entry, x)
        expected = flow_dist(t, entry).log_prob(data.clone())
        got = torch.func.vmap(lambda v: flow_dist(t, entry).log_prob(v))(data.clone())
        assert torch.allclose(got, expected, atol=1e-9)
        assert torch.allclose(torch.func.vmap(t)(x.clone()), t(x.clone()), atol=1e-9)
        if validate:
            bad = x.clone()
            bad.view(-1)[-1] = float("nan")
            with pytest.raises(ValueError, match=r"input contains non-finite value\(s\)"):
                torch.func.vmap(t)(bad)
    finally:
        Distribution.set_default_validate_args(previous)


@entries_where(lambda e: not _vmappable(e))
def test_vmap_is_refused_where_torch_cannot_batch(entry, no_validation):
    """torchdiffeq writes the solution in place into an unbatched buffer; MemorySaving's
    autograd.Function has no functorch support (see its docstring). Both raise."""
    module, t, x = build(entry)
    module.eval()
    data = as_data(entry, x)
    match = "inplace arithmetic" if _solves_an_ode(entry) else "functorch transforms"
    with pytest.raises(RuntimeError, match=match):
        torch.func.vmap(lambda v: flow_dist(t, entry).log_prob(v))(data.clone())


# -------------------------------------------------------------- double backward
PER_FAMILY = {
    "affine_half",
    "cond_affine_2d",
    "ffjord",
    "mixture_cdf_scalar",
    "base_cdf_normal",
    "image_affine_checkerboard",
    "glow_1x4x4",
    "loc_scale",
    "spline_half",
    "spline_autoregressive",
}


def _penalty(entry, t, v):
    v = v.clone().requires_grad_()
    (score,) = torch.autograd.grad(flow_dist(t, entry).log_prob(v).sum(), v, create_graph=True)
    return score.square().sum(), v


@entries_where(lambda e: e.name in PER_FAMILY)
def test_gradient_penalty_matches_finite_differences(entry):
    module, t, x = build(entry)
    module.eval()
    data = as_data(entry, x)[:2].clone()
    penalty, v = _penalty(entry, t, data)
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(penalty, [v, *params], allow_unused=True)
    assert all(g is not None and torch.isfinite(g).all() for g in grads[1:])
    direction = torch.randn_like(data)
    if entry.sample_input is not None or entry.sample_output is not None:
        direction = direction * 1e-2  # stay inside (0, 1)
    h = 1e-5
    plus = _penalty(entry, t, data + h * direction)[0]
    minus = _penalty(entry, t, data - h * direction)[0]
    fd = (plus - minus) / (2 * h)
    assert torch.allclose((grads[0] * direction).sum(), fd, rtol=1e-5, atol=1e-6)


def test_gradient_penalty_through_a_numerical_quantile():
    test_gradient_penalty_matches_finite_differences(next(e for e in ENTRIES if e.name == "base_cdf_beta"))


@entries_where(_saves_memory)
def test_memory_saving_refuses_a_gradient_penalty(entry):
    """The recomputing backward pass has no graph: a second derivative raises instead
    of coming out as None (``torch.autograd.grad`` with inputs skipped the old refusal)."""
    module, t, x = build(entry)
    module.eval()
    penalty, v = _penalty(entry, t, as_data(entry, x))
    with pytest.raises(RuntimeError, match="cannot differentiate twice"):
        torch.autograd.grad(penalty, v, allow_unused=True, retain_graph=True)
    params = [p for p in module.parameters() if p.requires_grad]
    with pytest.raises(RuntimeError, match="cannot differentiate twice"):
        torch.autograd.grad(penalty, params, allow_unused=True)


# ------------------------------------------------------------- memory layouts
@ALL
def test_strided_expanded_and_multi_dim_batch_inputs(entry):
    module, t, x = build(entry)
    module.eval()
    data = as_data(entry, x)
    d = flow_dist(t, entry)
    expected = d.log_prob(data.clone())
    strided = torch.stack([data, data], -1)[..., 0]
    assert not strided.is_contiguous()
    assert torch.allclose(d.log_prob(strided), expected, atol=1e-10)
    expanded = data[:1].expand(4, *data.shape[1:])
    assert expanded.stride(0) == 0
    assert torch.allclose(d.log_prob(expanded), expected[:1].expand(4), atol=1e-10)
    grid = data.reshape(2, 3, *data.shape[1:])
    assert torch.allclose(d.log_prob(grid), expected.reshape(2, 3), atol=1e-10)
    y = t(x.clone())
    assert torch.allclose(t(torch.stack([x, x], -1)[..., 0]), y, atol=1e-10)
    assert torch.allclose(t(x.reshape(2, 3, *x.shape[1:])), y.reshape(2, 3, *y.shape[1:]), atol=1e-10)


@entries_where(lambda e: len(e.event_shape) == 3)
def test_channels_last_images(entry):
    module, t, x = build(entry)
    module.eval()
    data = as_data(entry, x)
    expected = flow_dist(t, entry).log_prob(data.clone())
    last = data.clone().contiguous(memory_format=torch.channels_last)
    assert torch.allclose(flow_dist(t, entry).log_prob(last), expected, atol=1e-10)
    sample = t(x.clone().contiguous(memory_format=torch.channels_last))
    assert torch.allclose(sample, t(x.clone()), atol=1e-10)


# --------------------------------------------------------------------- autocast
@ALL
def test_autocast_bfloat16_runs_in_the_data_dtype(entry):
    """Under CPU autocast the conditioners may run in bfloat16; every layer hands the
    next one the data's dtype (invertible matrix products stay in full precision) and
    no NaN appears (bfloat16 spline knots gave NaN)."""
    module, t, x = build(entry, dtype=torch.float32)
    module.eval()
    data = as_data(entry, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = t.inv(data.clone())
        log_prob = flow_dist(t, entry, torch.float32).log_prob(data.clone())
        y = t(x.clone())
    for out in (z, log_prob, y):
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()


# ------------------------------------------------------------- serialisation
@ALL
def test_save_whole_module_and_deepcopy_after_a_training_step(entry):
    module, t, x = build(entry)
    data = as_data(entry, x)
    params = list(module.parameters())
    if params:
        opt = torch.optim.Adam(params, lr=1e-3)
        (-flow_dist(t, entry).log_prob(data).mean()).backward()
        opt.step()
    module.eval()
    expected = flow_dist(t, entry).log_prob(data)
    # the whole module through pickle (torch.save of a module pickles it the same way;
    # torch.load of one would need weights_only=False, which this project never uses)
    for clone in (pickle.loads(pickle.dumps(module)), copy.deepcopy(module)):
        clone.eval()
        got = flow_dist(as_transform(clone, entry), entry).log_prob(data)
        assert torch.allclose(got, expected, atol=1e-10)


# ------------------------------------------------------------ frozen, determinism
@ALL
def test_frozen_flow_scores_with_input_gradients(entry):
    module, t, x = build(entry)
    module.eval()
    data = as_data(entry, x)
    v = data.clone().requires_grad_()
    (expected,) = torch.autograd.grad(flow_dist(t, entry).log_prob(v).sum(), v)
    module.requires_grad_(False)
    v = data.clone().requires_grad_()
    log_prob = flow_dist(as_transform(module, entry), entry).log_prob(v)
    (got,) = torch.autograd.grad(log_prob.sum(), v)
    assert torch.allclose(got, expected, atol=1e-8)
    assert all(p.grad is None for p in module.parameters())


@ALL
def test_deterministic_algorithms(entry):
    module, t, x = build(entry)
    module.eval()
    data = as_data(entry, x)
    expected = flow_dist(t, entry).log_prob(data.clone())
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        v = data.clone().requires_grad_()
        got = flow_dist(t, entry).log_prob(v)
        torch.autograd.grad(got.sum(), v)
        sample = flow_dist(t, entry).sample((2,))
    finally:
        torch.use_deterministic_algorithms(previous)
    assert torch.allclose(got, expected, atol=1e-10)
    assert sample.shape == (2, *entry.event_shape)


# -------------------------------------------------------------------------- print
def _ours(entry):
    return type(entry.factory()).__module__.startswith("pyro_flows")


@entries_where(_ours)
def test_print_shows_the_settings_and_the_layers(entry):
    """``print(flow)`` shows what ``print(model)`` shows for any PyTorch module: each
    submodule under its name, and the transform's own settings (Pyro's own composition
    keeps torch's one-line form)."""
    module, _, _ = build(entry)
    text = repr(module)
    assert text.startswith(type(module).__name__ + "(")
    for name, _child in module.named_children():
        assert f"({name}): " in text, name
    settings = module.extra_repr() if isinstance(module, torch.nn.Module) else ""
    assert settings.split("\n")[0] in text
