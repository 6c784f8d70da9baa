"""Glow's and RealNVP's image layers in use: ActNorm's data-dependent initialisation
from a batch of one point, the ``initialized`` flag read without a device sync, the
argument checks of the image builders and of the linear layers."""

from __future__ import annotations

import io
import warnings

import pyro
import pytest
import torch

import pyro_flows
from pyro_flows import Flow
from pyro_flows.transforms import (
    ActNorm,
    Invertible1x1Conv,
    LocScale,
    Squeeze,
    real_nvp_batch_norm,
)

TINY = dict(hidden_channels=4, num_blocks=1)


# ------------------------------------------------- ActNorm: a first batch of one point
def test_act_norm_does_not_initialise_from_a_single_point():
    """One vector has no spread: initialised from it the layer would shift by that point
    and keep unit scale for good, and the first real batch would not standardise."""
    layer = ActNorm(2, event_dim=1).double()
    point = torch.tensor([[30.0, -10.0]], dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="single value per feature"):
        x = layer.inv(point)
    assert torch.equal(x, point)  # scored by the identity
    assert not bool(layer.initialized)
    assert torch.equal(layer.loc.detach(), torch.zeros(2, dtype=torch.float64))

    torch.manual_seed(0)
    scale = torch.tensor([20.0, 5.0], dtype=torch.float64)
    y = torch.randn(256, 2, dtype=torch.float64) * scale + torch.tensor([30.0, -10.0], dtype=torch.float64)
    x = layer.inv(y)  # the first batch with spread initialises
    assert bool(layer.initialized)
    assert torch.allclose(x.detach().std(0, unbiased=False), torch.ones(2, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(layer.log_scale.detach().exp(), y.std(0, unbiased=False), rtol=1e-6)


def test_spline_flow_scored_on_one_point_first_still_standardises_its_data():
    """The spline flow's data-side ActNorm is what brings data of scale 20 into the
    splines' interval; a one-point smoke test before training must not spend it."""
    torch.manual_seed(0)
    data = torch.randn(512, 2) * torch.tensor([20.0, 5.0]) + torch.tensor([30.0, -10.0])
    model = Flow(pyro_flows.spline_flow(2, num_layers=2, hidden_dims=(8,)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        model.log_prob(data[:1])
    model.log_prob(data)
    data_side = [m for m in model.modules() if isinstance(m, ActNorm)][-1]  # Pyro order: data last
    assert torch.allclose(data_side.log_scale.detach().exp(), data.std(0, unbiased=False), rtol=1e-4)
    assert torch.allclose(data_side.loc.detach(), data.mean(0), rtol=1e-4)


def test_glow_scored_on_one_image_first_initialises_its_one_pixel_act_norm_later():
    """At the coarsest scale of a (1, 4, 4) Glow each channel has one pixel: one image
    gives one value per channel there, the finer ActNorms initialise from its pixels."""
    torch.manual_seed(0)
    flow = pyro_flows.glow((1, 4, 4), num_scales=2, steps_per_scale=1, **TINY)
    coarse = next(m for m in flow.inner.modules() if isinstance(m, ActNorm))
    fine = next(m for m in flow.transform.modules() if isinstance(m, ActNorm))
    with pytest.warns(RuntimeWarning, match="single value per feature"):
        Flow(flow).log_prob(torch.rand(1, 1, 4, 4))
    assert bool(fine.initialized) and not bool(coarse.initialized)
    Flow(flow).log_prob(torch.rand(16, 1, 4, 4) * 3)
    assert bool(coarse.initialized)
    assert coarse.log_scale.detach().abs().min() > 1e-3  # a scale learnt from 16 values per channel


# ---------------------------------------------- the initialized flag, without a sync
@pytest.mark.parametrize(
    "build",
    [
        lambda: pyro_flows.glow((1, 4, 4), num_scales=2, steps_per_scale=2, **TINY),
        lambda: pyro_flows.real_nvp_image(
            (1, 4, 4), num_scales=1, num_final_layers=1, batch_norm=True, conditioner_batch_norm=False, **TINY
        ),
    ],
    ids=["glow", "real_nvp_batch_norm"],
)
def test_a_training_step_reads_no_initialized_flag_from_the_device(build, monkeypatch):
    """Without validation a training step of Glow (and of RealNVP with batch norm) reads
    no tensor into a Python bool, each a device synchronisation on a GPU: the
    ``initialized`` flags (one per ActNorm or batch norm, 96 in a Glow of 3 scales of 32
    steps) were read with ``bool()`` on every call (4 and 2 reads here)."""
    torch.manual_seed(0)
    model = Flow(build())
    x = torch.rand(8, 1, 4, 4)
    reads = []

    def counting_bool(tensor):
        reads.append(tuple(tensor.shape))
        return torch._C.TensorBase.__bool__(tensor)

    validate = torch.distributions.Distribution._validate_args
    pyro.enable_validation(False)
    try:
        model.log_prob(x)  # initialises
        monkeypatch.setattr(torch.Tensor, "__bool__", counting_bool)
        model.log_prob(x + 0.01).sum().backward()
        monkeypatch.undo()
    finally:
        pyro.enable_validation(validate)
    assert reads == []


@pytest.mark.parametrize("make", [lambda: ActNorm(2), lambda: real_nvp_batch_norm(2, event_dim=3)])
def test_a_reset_or_reloaded_flag_is_read_again(make):
    """The remembered flag follows ``load_state_dict`` of an uninitialised layer,
    ``initialized.fill_(False)``, copies and ``.to()``: each makes the next batch
    initialise again."""
    torch.manual_seed(0)
    layer = make().double()
    first = torch.randn(16, 2, 3, 3, dtype=torch.float64) * 4 + 2
    second = torch.randn(16, 2, 3, 3, dtype=torch.float64) * 0.5 - 3

    def statistic(module):
        return (module.loc if isinstance(module, ActNorm) else module.running_mean).detach().clone()

    layer.inv(first)
    initialised = statistic(layer)
    layer.load_state_dict(make().double().state_dict())  # an uninitialised layer's state
    layer.inv(second)
    assert torch.allclose(statistic(layer), second.mean((0, 2, 3)), atol=1e-12)
    with torch.no_grad():
        layer.initialized.fill_(False)
        if isinstance(layer, ActNorm):  # nonzero parameters would count as trained
            layer.loc.zero_()
            layer.log_scale.zero_()
    layer.inv(first)
    assert torch.allclose(statistic(layer), initialised, atol=1e-12)
    # a saved, reloaded (weights_only) copy of an uninitialised layer initialises too
    buffer = io.BytesIO()
    torch.save(make().double().state_dict(), buffer)
    buffer.seek(0)
    layer.load_state_dict(torch.load(buffer, weights_only=True))
    copy = layer.float().double()
    copy.inv(second)
    assert torch.allclose(statistic(copy), second.mean((0, 2, 3)), atol=1e-6)


# ------------------------------------------------------------------ argument checks
@pytest.mark.parametrize("build", [pyro_flows.glow, pyro_flows.real_nvp_image])
@pytest.mark.parametrize(
    "options, message",
    [
        (
            dict(shape=(1, 8.5, 8)),
            r"expected an image shape \(C, H, W\) of positive integers, got \(1, 8.5, 8\)",
        ),
        (dict(shape=(True, 8, 8)), r"expected an image shape .*got \(True, 8, 8\)"),
        (dict(shape="abc"), r"expected an image shape .*got 'abc'"),
        (dict(num_scales=True), r"num_scales must be a positive integer, got True"),
        (dict(context_dim=0), r"context_dim must be an integer >= 1, got 0"),
        (dict(context_dim=-1), r"context_dim must be an integer >= 1, got -1"),
        (dict(context_dim=2.5), r"context_dim must be an integer >= 1, got 2.5"),
        (dict(context_dim=True), r"context_dim must be an integer >= 1, got True"),
        (dict(split_prior="glow"), r"split_prior must be one of \('fixed', 'learned'\), got 'glow'"),
        (dict(coupling="spline", context_dim=2), r"spline couplings are not available"),
    ],
)
def test_image_builders_name_bad_arguments(build, options, message):
    kwargs = {"shape": (1, 8, 8), "num_scales": 2, **TINY, **options}
    with pytest.raises(ValueError, match=rf"^{build.__name__}: {message}"):
        build(**kwargs)


def test_image_builders_accept_integral_sizes_of_any_type():
    for shape in [(1, 8.0, 8), torch.Size([1, 8, 8]), torch.tensor([1, 8, 8])]:
        flow = pyro_flows.glow(shape, num_scales=2, steps_per_scale=1, **TINY)
        assert flow.event_shape == (1, 8, 8) and isinstance(flow.event_shape[1], int)


def test_layers_refuse_sizes_they_would_truncate_or_overflow():
    with pytest.raises(ValueError, match=r"Squeeze: expected an image shape .*\(1, 4.5, 4\)"):
        Squeeze((1, 4.5, 4))
    assert Squeeze((1, 4.0, 4)).event_shape == (4, 2, 2)
    for bad in (0, True, 2.0):
        with pytest.raises(
            ValueError, match=rf"Invertible1x1Conv: num_channels must be an integer >= 1, got {bad}"
        ):
            Invertible1x1Conv(bad)
    for bad in (float("inf"), float("nan"), 0.0):
        with pytest.raises(ValueError, match="LocScale: init_scale must be positive and finite"):
            LocScale(torch.zeros(2), init_scale=bad)


def test_act_norm_initialize_checks_its_batch():
    """The public ``initialize`` grouped any tensor into ``num_features`` rows: four
    channels into two, silently; an empty batch gave NaN parameters."""
    layer = ActNorm(2)
    with pytest.raises(ValueError, match=r"ActNorm: expected value with 2 channels"):
        layer.initialize(torch.randn(8, 4, 3, 3))
    with pytest.raises(ValueError, match="ActNorm: cannot initialise from an empty batch"):
        layer.initialize(torch.randn(0, 2, 3, 3))
    assert not bool(layer.initialized) and torch.isfinite(layer.loc).all()
