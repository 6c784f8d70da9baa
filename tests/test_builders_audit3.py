"""The public builders and the multi-scale layers as a demanding user calls them: flags that
are not bools, single-coupling flows, the shift bound of ``real_nvp``, the priors of a
multi-scale flow, integral sizes and bounds of the wrong type, and ``repr``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from pyro.distributions.torch_transform import ComposeTransformModule

import pyro_flows
from pyro_flows.transforms import ConditionalMultiScale, MultiScale, invertible_1x1_conv, squeeze

TINY = dict(hidden_channels=4, num_blocks=1)


# ------------------------------------------------------------------ flags must be bools
def _glow(**options):
    return pyro_flows.glow((1, 4, 4), 1, 1, **TINY, **options)


def _real_nvp_image(**options):
    return pyro_flows.real_nvp_image((1, 4, 4), 1, **TINY, **options)


def _real_nvp(**options):
    return pyro_flows.real_nvp(3, 2, (8,), **options)


def _spline_flow(**options):
    return pyro_flows.spline_flow(3, 2, (8,), **options)


def _ffjord(**options):
    return pyro_flows.ffjord(2, (8,), **options)


@pytest.mark.parametrize(
    "build, name, flag",
    [
        (_glow, "glow", "memory_saving"),
        (_glow, "glow", "conditioner_batch_norm"),
        (_real_nvp_image, "real_nvp_image", "memory_saving"),
        (_real_nvp_image, "real_nvp_image", "batch_norm"),
        (_real_nvp, "real_nvp", "batch_norm"),
        (_spline_flow, "spline_flow", "act_norm"),
        (_spline_flow, "spline_flow", "linear"),
        (_spline_flow, "spline_flow", "elementwise"),
        (_spline_flow, "spline_flow", "autoregressive"),
        (_ffjord, "ffjord", "adjoint"),
    ],
)
def test_a_flag_that_is_not_a_bool_is_refused(build, name, flag):
    """``"no"`` is truthy: ``batch_norm="no"`` built batch norms, ``memory_saving="no"``
    switched recomputation on."""
    for bad in ("no", 1, None):
        with pytest.raises(TypeError, match=rf"^{name}: {flag} must be True or False, got {bad!r}$"):
            build(**{flag: bad})
    for good in (True, False):
        build(**{flag: good})


def test_multiscale_memory_saving_must_be_a_bool():
    flow = MultiScale(squeeze((1, 4, 4)), (1, 4, 4))
    with pytest.raises(TypeError, match=r"^MultiScale: memory_saving must be True or False, got 'yes'$"):
        MultiScale(squeeze((1, 4, 4)), (1, 4, 4), memory_saving="yes")
    with pytest.raises(TypeError, match="memory_saving must be True or False, got 1"):
        flow.memory_saving = 1
    assert flow.memory_saving is False
    flow.memory_saving = True
    assert flow.memory_saving is True
    conditional = pyro_flows.glow((1, 4, 4), 1, 1, context_dim=2, **TINY)
    with pytest.raises(TypeError, match=r"^ConditionalMultiScale: memory_saving must be True or False"):
        conditional.memory_saving = "no"
    assert conditional.memory_saving is False


def test_conditional_multiscale_refuses_a_bool_context_dim():
    with pytest.raises(ValueError, match=r"context_dim must be a positive int, got True"):
        ConditionalMultiScale([squeeze((1, 4, 4))], (1, 4, 4), context_dim=True)


# ----------------------------------------------------------- one coupling: a warning
@pytest.mark.parametrize(
    "build",
    [
        lambda n: pyro_flows.nice(4, n, (8,)),
        lambda n: pyro_flows.real_nvp(4, n, (8,)),
        lambda n: pyro_flows.spline_flow(4, n, (8,), act_norm=False),
        lambda n: pyro_flows.conditional_real_nvp(4, 2, n, (8,)),
    ],
    ids=["nice", "real_nvp", "spline_flow", "conditional_real_nvp"],
)
def test_a_single_coupling_warns_that_half_the_coordinates_stay_as_they_are(build):
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=r"num_layers=1 the single coupling does not transform"):
        flow = build(1)
    # what the warning is about: perturbed weights, and still the first half is the identity
    # (up to NICE's diagonal scaling, the identity at the start)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.5 * torch.randn_like(p))
        if hasattr(flow, "condition"):
            flow = flow.condition(torch.randn(2))
        x = torch.randn(50, 4)
        u = flow.inv(x)
    scale = torch.exp(-flow.parts[0].log_scale[:2]) if type(flow.parts[0]).__name__ == "Scaling" else 1.0
    assert torch.allclose(u[:, :2], x[:, :2] * scale, atol=1e-6)
    assert (u[:, 2:] - x[:, 2:]).abs().max() > 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build(2)


def test_spline_flow_with_layers_that_transform_every_coordinate_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pyro_flows.spline_flow(3, 1, (8,), elementwise=True)
        pyro_flows.spline_flow(3, 1, (8,), autoregressive=True)


# ------------------------------------------------------------- real_nvp's shift bound
def test_real_nvp_takes_shift_bound_like_conditional_real_nvp():
    assert [p.shift_bound for p in pyro_flows.real_nvp(3, 2, (8,)).parts] == [8.0, 8.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one coupling is enough here
        unbounded = pyro_flows.real_nvp(2, 1, (8,), shift_bound=None)
        bounded = pyro_flows.real_nvp(2, 1, (8,), shift_bound=3.0)
    assert unbounded.parts[0].shift_bound is None and bounded.parts[0].shift_bound == 3.0
    # a conditioner whose shift is 100: clamped to 3, or passed as it is
    for flow, expected in ((bounded, 3.0), (unbounded, 100.0)):
        with torch.no_grad():
            flow.parts[0].conditioner[-1].bias.zero_()
            flow.parts[0].conditioner[-1].bias[0] = 100.0  # the shift of the transformed coordinate
        x = torch.zeros(1, 2)
        assert float((flow(x) - x).abs().max()) == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"^real_nvp: shift_bound must be positive or None, got -1.0$"):
        pyro_flows.real_nvp(3, 2, (8,), shift_bound=-1.0)


@pytest.mark.parametrize(
    "build, name, bound",
    [
        (lambda b: pyro_flows.real_nvp(3, 2, (8,), scale_bound=b), "real_nvp", "scale_bound"),
        (
            lambda b: pyro_flows.conditional_real_nvp(3, 2, 2, (8,), shift_bound=b),
            "conditional_real_nvp",
            "shift_bound",
        ),
        (lambda b: pyro_flows.glow((1, 4, 4), 1, 1, scale_bound=b, **TINY), "glow", "scale_bound"),
        (
            lambda b: pyro_flows.real_nvp_image((1, 4, 4), 1, scale_bound=b, **TINY),
            "real_nvp_image",
            "scale_bound",
        ),
    ],
)
def test_bounds_of_the_wrong_type_are_named(build, name, bound):
    """A string bound failed inside the coupling with "'>' not supported between 'str' and
    'int'", naming neither the builder nor the argument."""
    for bad in ("3", True, 0.0, -1.0):
        with pytest.raises(ValueError, match=rf"^{name}: {bound} must be positive or None, got {bad!r}$"):
            build(bad)


@pytest.mark.parametrize("bad", ["3", True, float("nan"), 0.0])
def test_spline_flow_refuses_a_tail_bound_that_is_not_a_positive_number(bad):
    with pytest.raises(
        ValueError, match=rf"^spline_flow: tail_bound must be positive and finite, got {bad!r}$"
    ):
        pyro_flows.spline_flow(3, 2, (8,), tail_bound=bad)


# ---------------------------------------------------------------- integral sizes
def test_vector_and_continuous_builders_take_integral_sizes_but_not_bools_or_floats():
    """``input_dim=np.int64(3)`` was refused with "needs input_dim >= 2, got np.int64(3)";
    ``conditional_ffjord(2, context_dim=True)`` built a flow of context size ``True``."""
    for build in (pyro_flows.nice, pyro_flows.real_nvp, pyro_flows.spline_flow):
        flow = build(np.int64(3), 2, (8,))
        assert flow.event_shape == (3,) and type(flow.event_shape[0]) is int
        assert flow(torch.zeros(5, 3)).shape == (5, 3)
        for bad in (True, 3.0):
            with pytest.raises(
                ValueError, match=rf"^{build.__name__}: input_dim must be an integer >= 2, got {bad!r}$"
            ):
                build(bad, 2, (8,))
    flow = pyro_flows.conditional_real_nvp(np.int64(3), 2, 2, (8,))
    assert flow.event_shape == (3,)
    assert pyro_flows.ffjord(np.int64(2), (8,)).input_dim == 2
    with pytest.raises(ValueError, match=r"^ffjord: expected a positive integer input_dim, got True$"):
        pyro_flows.ffjord(True, (8,))
    for bad in (True, 2.0, 0):
        with pytest.raises(
            ValueError, match=rf"^conditional_ffjord: expected a positive integer context_dim, got {bad!r}$"
        ):
            pyro_flows.conditional_ffjord(2, bad, (8,))
    assert pyro_flows.conditional_ffjord(2, np.int64(3), (8,)).context_dim == 3


# ------------------------------------------------------------ the multi-scale priors
def _learned_glow(**options):
    torch.manual_seed(0)
    flow = pyro_flows.glow((1, 4, 4), 2, 1, split_prior="learned", **TINY, **options).double()
    with torch.no_grad():
        for name, p in flow.named_parameters():
            if "prior" in name:
                p.add_(0.3 * torch.randn_like(p))
    return flow


def test_prior_reads_the_batch_shape_of_h():
    """``prior(h)`` with a batch of ``h`` failed for the learned prior ("shape '[4, 2, 2]' is
    invalid") and gave one unbatched latent's zeros for the fixed one."""
    flow = _learned_glow()
    h = torch.randn(5, 3, *flow.kept_shape, dtype=torch.float64)
    loc, log_scale = flow.prior(h)
    assert loc.shape == log_scale.shape == (5, 3, *flow.factored_shape)
    expected = flow.prior(h, (5, 3))
    assert torch.equal(loc, expected[0]) and torch.equal(log_scale, expected[1])
    # each element of the batch is its own: the first equals the prior of h[0, 0] alone
    alone = flow.prior(h[0, 0])
    assert alone[0].shape == flow.factored_shape and torch.allclose(alone[0], loc[0, 0])
    assert float(loc.std()) > 1e-3  # not a constant
    # a batch_shape that holds h's broadcasts it; one that does not is named
    assert flow.prior(h[0], (2, 3))[0].shape == (2, 3, *flow.factored_shape)
    with pytest.raises(
        ValueError, match=r"MultiScale.prior: batch_shape \(4,\) does not hold the batch shape \(5, 3\) of h"
    ):
        flow.prior(h, (4,))
    fixed = pyro_flows.glow((1, 4, 4), 2, 1, **TINY).double()
    zeros = fixed.prior(h)
    assert zeros[0].shape == (5, 3, *fixed.factored_shape) and not zeros[0].any()


def test_prior_names_a_missing_or_misplaced_h():
    flow = _learned_glow()
    with pytest.raises(
        ValueError, match=r"^MultiScale.prior: the learned prior .* pass h of shape \(\*batch, 2, 2, 2\)$"
    ):
        flow.prior()
    with pytest.raises(ValueError, match=r"MultiScale.prior: expected h of shape \(\*batch_shape, 2, 2, 2\)"):
        flow.prior(torch.randn(5, 3, 2, 2, dtype=torch.float64))
    with pytest.raises(
        ValueError, match=r"^MultiScale.prior: the last scale's latent does not depend on a kept half h"
    ):
        flow.inner.prior(torch.randn(5, 8, 1, 1, dtype=torch.float64))
    assert flow.inner.prior(batch_shape=(3, 2))[0].shape == (3, 2, 8, 1, 1)
    # the fixed prior does without h
    assert pyro_flows.glow((1, 4, 4), 2, 1, **TINY).prior(batch_shape=(4,))[0].shape == (4, 2, 2, 2)


def test_conditional_prior_reads_the_batch_of_h_and_the_context():
    torch.manual_seed(0)
    cflow = _learned_glow(context_dim=3)
    context = torch.randn(4, 1, 3, dtype=torch.float64)
    flow = cflow.condition(context)
    h = torch.randn(5, *cflow.kept_shape, dtype=torch.float64)
    loc, log_scale = flow.prior(h)
    assert loc.shape == (4, 5, *cflow.factored_shape)
    assert torch.equal(loc, cflow.prior(h, None, context)[0])
    expected = cflow.prior(h.expand(4, 5, *cflow.kept_shape), (4, 5), context.expand(4, 5, 3))
    assert torch.allclose(loc, expected[0]) and torch.allclose(log_scale, expected[1])
    assert float(loc[0].sub(loc[1]).abs().max()) > 1e-3  # the context matters
    with pytest.raises(ValueError, match=r"^ConditionalMultiScale.prior: the learned prior"):
        flow.prior()
    with pytest.raises(
        ValueError, match=r"^ConditionalMultiScale.prior: the prior of a conditional flow needs the context$"
    ):
        cflow.prior(h)
    with pytest.raises(
        ValueError, match=r"batch shape \(2, 5\) of h does not broadcast with the context's \(4, 1\)"
    ):
        flow.prior(torch.randn(2, 5, *cflow.kept_shape, dtype=torch.float64))


def test_fixed_prior_follows_the_dtype_of_the_inner_scales():
    """A scale whose own layers are only a squeeze took the dtype of an empty parameter
    list (float32) after ``.double()``."""
    inner = MultiScale(ComposeTransformModule([invertible_1x1_conv(8), squeeze((2, 2, 2))]), (2, 2, 2))
    flow = MultiScale(squeeze((1, 4, 4)), (1, 4, 4), inner=inner).double()
    loc, log_scale = flow.prior(batch_shape=(3,))
    assert loc.dtype == log_scale.dtype == torch.float64 and loc.shape == (3, 2, 2, 2)
    loc, log_scale = flow.prior(torch.zeros(2, 2, 2, 2, dtype=torch.float64))
    assert loc.dtype == torch.float64 and loc.shape == (2, 2, 2, 2)
    loc[0, 0, 0, 0] = 1.0
    assert float(log_scale.abs().sum()) == 0.0  # two tensors, not one


# ------------------------------------------------------------------------ repr
def test_multiscale_repr_shows_its_shapes_prior_and_layers():
    """``repr(glow(...))`` was ``MultiScale()``: torch's Transform.__repr__ shadowed the
    module's, so the shapes, the prior and the layers were never printed."""
    text = repr(pyro_flows.glow((1, 4, 4), 2, 1, split_prior="learned", memory_saving=True, **TINY))
    assert "latent_shapes=[(2, 2, 2), (8, 1, 1)]" in text
    assert "split_prior='learned', memory_saving=True" in text
    assert "(inner): MultiScale(" in text and "AffineCoupling" in text and "(prior_net): Conv2d" in text
    conditioned = pyro_flows.real_nvp_image((1, 4, 4), 1, context_dim=2, **TINY).condition(torch.zeros(2))
    assert "event_shape=(1, 4, 4), latent_shapes=[(4, 2, 2)]" in repr(conditioned)
