"""Image flows: squeeze, multi-scale split, ActNorm, 1x1 convolutions, logit
preprocessing, bits/dim, the RealNVP and Glow builders, and a short training run on
sklearn's digits."""

from __future__ import annotations

import importlib
import io
import json
import math
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_flows
from pyro_flows import Flow, bits_per_dim
from pyro_flows.data import DIGITS_LEVELS, DIGITS_SPLIT_SIZES, load_cifar10, load_digits, load_mnist
from pyro_flows.nn import ResNet
from pyro_flows.transforms import (
    ActNorm,
    Invertible1x1Conv,
    Logit,
    MultiScale,
    Squeeze,
    depth_to_space,
    dequantize,
    image_affine_coupling,
    space_to_depth,
)

from .helpers import randomize

TINY = dict(hidden_channels=4, num_blocks=1)


def jacobian_logdet(fn, x):
    """log|det dfn/dx| of one event x (float64), by the full vectorized Jacobian."""
    n = x.numel()
    jac = torch.autograd.functional.jacobian(
        lambda v: fn(v.view(1, *x.shape)).reshape(-1), x.reshape(-1), vectorize=True
    )
    return torch.linalg.slogdet(jac.reshape(n, n))[1]


def standard_normal(shape, dtype=torch.float64):
    return dist.Normal(torch.zeros(shape, dtype=dtype), torch.ones(shape, dtype=dtype)).to_event(len(shape))


# ---------------------------------------------------------------------- squeeze
def test_space_to_depth_moves_each_2x2_block_into_channels():
    x = torch.arange(2 * 4 * 6.0).view(2, 4, 6)
    y = space_to_depth(x)
    assert y.shape == (8, 2, 3)
    for c in range(2):
        for i in range(2):
            for j in range(2):
                assert torch.equal(y[4 * c + 2 * i + j], x[c, i::2, j::2])


def test_squeeze_and_unsqueeze_are_exact_inverses():
    x = torch.randn(3, 5, 2, 4, 6, dtype=torch.float64)
    assert torch.equal(depth_to_space(space_to_depth(x)), x)
    y = torch.randn(3, 8, 2, 3)
    assert torch.equal(space_to_depth(depth_to_space(y)), y)
    layer = Squeeze((2, 4, 6))
    assert layer.event_shape == (8, 2, 3) and layer.data_shape == (2, 4, 6)
    assert torch.equal(layer(layer.inv(x)), x)
    assert torch.equal(layer.log_abs_det_jacobian(layer.inv(x), x), torch.zeros(3, 5, dtype=torch.float64))


def test_squeeze_shapes_distribution_and_errors():
    layer = Squeeze((1, 4, 4))
    assert layer.forward_shape((7, 4, 2, 2)) == (7, 1, 4, 4)
    assert layer.inverse_shape((7, 1, 4, 4)) == (7, 4, 2, 2)
    d = dist.TransformedDistribution(standard_normal((4, 2, 2)), [layer])
    x = d.sample((5,))
    assert x.shape == (5, 1, 4, 4)
    # a permutation of coordinates: the density is the base density of the squeezed image
    assert torch.allclose(d.log_prob(x.clone()), standard_normal((1, 4, 4)).log_prob(x))
    with pytest.raises(ValueError, match=r"H and W must be even.*\(1, 5, 4\)"):
        Squeeze((1, 5, 4))
    with pytest.raises(ValueError, match=r"expected value of shape .*1, 4, 4.*got shape \(2, 1, 4, 6\)"):
        layer.inv(torch.randn(2, 1, 4, 6))


# ------------------------------------------------------------------- multiscale
def test_lecture_latent_structure_3x32x32():
    """Def. 10.30: Z1 2c x 16 x 16, Z2 4c x 8 x 8, Z3 16c x 4 x 4 for c = 3."""
    c = 3
    expected = [(2 * c, 16, 16), (4 * c, 8, 8), (16 * c, 4, 4)]
    for flow in (
        pyro_flows.real_nvp_image((c, 32, 32), num_scales=3, hidden_channels=2, num_blocks=0),
        pyro_flows.glow((c, 32, 32), num_scales=3, steps_per_scale=1, hidden_channels=2, num_blocks=0),
    ):
        assert [tuple(s) for s in flow.latent_shapes] == expected
        assert sum(math.prod(s) for s in expected) == c * 32 * 32
        flow.eval()
        u = flow.inv(torch.rand(2, c, 32, 32))
        assert u.shape == (2, c, 32, 32)
        assert [tuple(z.shape) for z in flow.latents(u)] == [(2, *s) for s in expected]


def test_shapes_through_every_scale():
    flow = pyro_flows.real_nvp_image((2, 8, 8), num_scales=2, **TINY)
    scales = []
    level = flow
    while level is not None:
        scales.append(
            (tuple(level.event_shape), tuple(level.scale_shape), level.kept_shape and tuple(level.kept_shape))
        )
        level = level.inner
    # scale 1: (2, 8, 8) -> squeeze (8, 4, 4) -> Z1 (4, 4, 4), keep (4, 4, 4)
    # scale 2: (4, 4, 4) -> squeeze (16, 2, 2), last scale: Z2 (16, 2, 2)
    assert scales == [((2, 8, 8), (8, 4, 4), (4, 4, 4)), ((4, 4, 4), (16, 2, 2), None)]
    kinds = [type(p).__name__ for p in reversed(flow.transform.parts)]  # normalizing order
    assert kinds == ["AffineCoupling"] * 3 + ["Squeeze"] + ["AffineCoupling"] * 3
    inner_parts = list(reversed(flow.inner.transform.parts))
    assert [type(p).__name__ for p in inner_parts] == ["AffineCoupling"] * 3 + ["Squeeze"] + [
        "AffineCoupling"
    ] * 7
    masks = [tuple(p.partition.a_shape) for p in inner_parts if hasattr(p, "partition")]
    assert (
        masks == [(4, 4, 4)] * 3 + [(8, 2, 2)] * 3 + [(16, 2, 2)] * 4
    )  # checkerboard, channel, checkerboard
    glow = pyro_flows.glow((2, 8, 8), num_scales=2, steps_per_scale=2, **TINY)
    assert [type(p).__name__ for p in reversed(glow.transform.parts)] == ["Squeeze"] + [
        "ActNorm",
        "Invertible1x1Conv",
        "AffineCoupling",
    ] * 2


@pytest.mark.parametrize(
    "build, shape",
    [
        (lambda: pyro_flows.real_nvp_image((1, 4, 4), num_scales=1, **TINY), (1, 4, 4)),
        (lambda: pyro_flows.real_nvp_image((2, 8, 8), num_scales=2, num_final_layers=2, **TINY), (2, 8, 8)),
        (lambda: pyro_flows.glow((1, 4, 4), num_scales=2, steps_per_scale=2, **TINY), (1, 4, 4)),
        (lambda: pyro_flows.glow((2, 8, 8), num_scales=3, steps_per_scale=1, **TINY), (2, 8, 8)),
    ],
    ids=["real_nvp_1x4x4", "real_nvp_2x8x8", "glow_1x4x4", "glow_2x8x8"],
)
def test_builders_round_trip_and_log_det_float64(build, shape):
    torch.manual_seed(0)
    flow = build().double()
    flow.train()
    flow.inv(torch.randn(16, *shape, dtype=torch.float64))  # ActNorm init, batch-norm statistics
    randomize(flow, 0.05)
    flow.eval()
    u = torch.randn(3, *shape, dtype=torch.float64)
    x = flow(u)
    assert torch.allclose(flow.inv(x.clone()), u, atol=1e-10)
    ladj = flow.log_abs_det_jacobian(u, x)
    assert torch.allclose(ladj[0], jacobian_logdet(flow, u[0]), atol=1e-8)
    assert torch.allclose(-ladj[1], jacobian_logdet(flow.inv, x[1].detach()), atol=1e-8)
    assert ladj.abs().min() > 1e-3  # not volume-preserving: the check has teeth


def test_multiscale_rejects_mismatched_inner():
    with pytest.raises(ValueError, match=r"kept half \(2, 2, 2\).*\(4, 2, 2\)"):
        MultiScale(Squeeze((1, 4, 4)), (1, 4, 4), inner=Squeeze((1, 4, 4)))


def test_builders_reject_bad_shapes():
    with pytest.raises(ValueError, match=r"divisible by 2\*\*num_scales = 8.*\(1, 12, 8\)"):
        pyro_flows.real_nvp_image((1, 12, 8), num_scales=3)
    with pytest.raises(ValueError, match=r"divisible by 2\*\*num_scales = 4"):
        pyro_flows.glow((3, 6, 8), num_scales=2)
    with pytest.raises(ValueError, match=r"at least 2x2 pixels.*leaves 1x1"):
        pyro_flows.real_nvp_image((1, 8, 8), num_scales=3)
    with pytest.raises(ValueError, match="image shape"):
        pyro_flows.glow((8, 8), num_scales=1)
    # the same shape works for glow, and for real_nvp_image without the final checkerboards
    assert pyro_flows.glow((1, 8, 8), num_scales=3, steps_per_scale=1, **TINY).latent_shapes[-1] == (16, 1, 1)
    pyro_flows.real_nvp_image((1, 8, 8), num_scales=3, num_final_layers=0, **TINY)


# ------------------------------------------------------------------- conditioner
def test_resnet_depth_batch_shapes_and_zero_init():
    net = ResNet(3, 6, hidden_channels=8, num_blocks=9)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == 20  # the lecture's 20 layers
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 19
    out = net(torch.randn(2, 5, 3, 4, 4))
    assert out.shape == (2, 5, 6, 4, 4) and bool((out == 0).all())
    layer = image_affine_coupling((3, 4, 4), "checkerboard", hidden_channels=8, num_blocks=2)
    x = torch.randn(4, 3, 4, 4)
    assert torch.equal(layer(x), x)
    with pytest.raises(ValueError, match=r"expected input of shape \(\*batch, 3, H, W\)"):
        net(torch.randn(2, 4, 4, 4))


def test_batch_normalized_conditioner_round_trips_in_train_mode():
    """The conditioner sees the unchanged half x^A in both directions, so even with batch
    statistics (train mode) a coupling inverts exactly on the same batch."""
    torch.manual_seed(0)
    layer = image_affine_coupling((2, 4, 4), "checkerboard", 1, hidden_channels=8, num_blocks=2).double()
    randomize(layer, 0.3)
    layer.train()
    y = torch.randn(8, 2, 4, 4, dtype=torch.float64)
    x = layer.inv(y)
    assert torch.allclose(layer(x.clone()), y, atol=1e-10)
    assert (x - y).abs().max() > 0.1
    layer.eval()  # running averages instead of batch statistics: a different map
    assert not torch.allclose(layer.inv(y.clone()), x, atol=1e-3)


# ---------------------------------------------------------------------- ActNorm
def test_act_norm_data_dependent_init():
    torch.manual_seed(0)
    layer = ActNorm(3)
    scale = torch.tensor([0.1, 2.0, 7.0]).view(3, 1, 1)
    y = torch.randn(32, 3, 4, 4) * scale + torch.tensor([5.0, -1.0, 0.3]).view(3, 1, 1)
    x = layer.inv(y).detach()
    assert bool(layer.initialized)
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x.var((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    expected_ladj = 16 * torch.log(y.transpose(0, 1).reshape(3, -1).std(1, unbiased=False)).sum()
    assert torch.allclose(layer.log_abs_det_jacobian(x, y), expected_ladj.expand(32), atol=1e-4)
    # later batches do not re-initialise
    before = layer.loc.detach().clone()
    layer.inv(y * 3 + 1)
    assert torch.equal(layer.loc.detach(), before)


def test_act_norm_leaves_a_channel_without_spread_in_its_first_batch_at_unit_scale():
    layer = ActNorm(2, event_dim=1)
    first = torch.tensor([[0.0, 1.0], [0.0, 3.0], [0.0, -1.0]])  # column 0: no spread
    layer.inv(first)
    assert float(layer.log_scale.detach()[0]) == 0.0 and float(layer.loc.detach()[0]) == 0.0
    assert abs(float(layer.log_scale.detach()[1]) - math.log(first[:, 1].std(unbiased=False))) < 1e-5
    # a later point of that channel is not blown up by 1/eps
    assert float(layer.inv(torch.tensor([[0.5, 1.0]]))[0, 0]) == 0.5
    one = ActNorm(3, event_dim=1)  # a batch of one point
    one.inv(torch.tensor([[2.0, -1.0, 4.0]]))
    assert torch.equal(one.log_scale.detach(), torch.zeros(3))


def test_act_norm_trained_by_sampling_is_not_overwritten_by_its_first_scored_batch():
    # a guide trains the sampling direction only; scoring it afterwards (in train mode) must
    # not replace what it learned by the statistics of that batch
    torch.manual_seed(0)
    layer = ActNorm(2, event_dim=1)
    flow = dist.TransformedDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), [layer])
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1)
    target = torch.tensor([5.0, -3.0])
    for _ in range(200):
        loss = ((flow.rsample((64,)) - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    learned = layer.loc.detach().clone(), layer.log_scale.detach().clone()
    assert torch.allclose(learned[0], target, atol=0.05)
    points = torch.tensor([[5.0, -3.0], [4.0, -2.0]])
    with torch.no_grad():
        first = flow.log_prob(points)
    assert torch.equal(layer.loc.detach(), learned[0]) and torch.equal(layer.log_scale.detach(), learned[1])
    assert bool(layer.initialized)
    expected = dist.Normal(learned[0], learned[1].exp()).to_event(1).log_prob(points)
    assert torch.allclose(first, expected, atol=1e-5)
    # a sample scores the same from the cache and recomputed
    s = flow.sample((5,))
    assert torch.allclose(flow.log_prob(s), flow.log_prob(s.clone()), atol=1e-5)


def test_act_norm_init_flag_survives_state_dict():
    torch.manual_seed(0)
    layer = ActNorm(2)
    y = torch.randn(16, 2, 3, 3) * 4 + 2
    layer.inv(y)
    state = layer.state_dict()
    assert "initialized" in state and bool(state["initialized"])
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh = ActNorm(2)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    other = torch.randn(16, 2, 3, 3) * 0.1 - 5  # would move loc/scale if it re-initialised
    assert torch.allclose(fresh.inv(other), layer.inv(other))
    assert torch.equal(fresh.loc, layer.loc)
    # the same through a whole Glow model
    model = Flow(pyro_flows.glow((1, 4, 4), num_scales=2, steps_per_scale=1, **TINY))
    data = torch.rand(8, 1, 4, 4)
    expected = model.log_prob(data).detach()
    copy = Flow(pyro_flows.glow((1, 4, 4), num_scales=2, steps_per_scale=1, **TINY))
    copy.load_state_dict(model.state_dict())
    other = torch.rand(8, 1, 4, 4) * 9  # the first batch the copy sees: must not re-initialise it
    assert torch.allclose(copy.log_prob(other), model.log_prob(other), atol=1e-5)
    assert torch.allclose(copy.log_prob(data), expected, atol=1e-5)


def test_invertible_1x1_conv_log_det_is_hw_log_det_w():
    torch.manual_seed(0)
    layer = Invertible1x1Conv(4).double()
    randomize(layer, 0.5)
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    y = layer(x)
    w = layer.weight.weight()
    assert torch.allclose(y[1, :, 2, 3], w @ x[1, :, 2, 3])
    expected = 15 * torch.linalg.slogdet(w)[1]
    assert torch.allclose(layer.log_abs_det_jacobian(x, y), expected.expand(2), atol=1e-10)
    assert expected.abs() > 0.1


# -------------------------------------------------- preprocessing and bits/dim
def test_logit_log_det_and_density_normalizes():
    layer = Logit((1,), alpha=0.05)
    z = torch.linspace(-4, 4, 9, dtype=torch.float64).view(9, 1)
    x = layer(z)
    assert torch.allclose(layer.inv(x.clone()), z, atol=1e-10)
    expected = torch.stack([jacobian_logdet(layer, v) for v in z])
    assert torch.allclose(layer.log_abs_det_jacobian(z, x), expected, atol=1e-10)
    # p(x) = N(logit(a + (1-2a)x)) |dz/dx| integrates to 1 over the image of R
    d = dist.TransformedDistribution(standard_normal((1,)), [layer])
    low, high = -0.05 / 0.9, 0.95 / 0.9
    grid = torch.linspace(low, high, 200001, dtype=torch.float64)[1:-1].view(-1, 1)
    density = d.log_prob(grid).exp()
    assert abs(float(torch.trapezoid(density, grid.flatten())) - 1.0) < 1e-4
    with pyro.validation_enabled(True), pytest.raises(ValueError, match=r"expected data in \[0, 1\]"):
        layer.inv(torch.tensor([[1.5]]))


def test_logit_on_scalar_events_matches_vectors_of_one():
    # event_shape () sums nothing: the per-point log-det equals that of event_shape (1,)
    scalar, vector = Logit(()), Logit((1,))
    x = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    z = scalar.inv(x)
    assert torch.equal(z, vector.inv(x.view(3, 1)).view(3))
    assert torch.equal(
        scalar.log_abs_det_jacobian(z, x), vector.log_abs_det_jacobian(z.view(3, 1), x.view(3, 1))
    )
    assert torch.equal(scalar._call_and_ladj(z)[1], vector._call_and_ladj(z.view(3, 1))[1])


def test_dequantize_range_and_errors():
    levels = torch.tensor([[0.0, 16.0], [3.0, 7.0]])
    y = dequantize(levels, 17, generator=torch.Generator().manual_seed(0))
    assert bool((y >= levels / 17).all() and (y < (levels + 1) / 17).all())
    assert torch.equal((y * 17).floor(), levels)
    with pytest.raises(ValueError, match=r"integer levels in \[0, 16\]"):
        dequantize(levels / 17, 17)
    with pytest.raises(ValueError, match=r"integer levels in \[0, 3\]"):
        dequantize(torch.tensor([4.0]), 4)


def test_bits_per_dim_formula():
    # uniform density on [0, 1]^D of K-level data: log2 K bits/dim
    assert torch.allclose(bits_per_dim(torch.zeros(3), 64, 256), torch.full((3,), 8.0))
    assert math.isclose(bits_per_dim(0.0, 10, 17), math.log2(17))
    # a density of 2^-D on the cube is one bit per dimension less informative
    assert math.isclose(bits_per_dim(-64 * math.log(2), 64), 1.0)
    # matches the definition -log2 P(x) / D for a discrete model (piecewise-constant density)
    probs = torch.tensor([0.5, 0.25, 0.125, 0.125])
    x = torch.tensor([0, 1, 2, 3, 0])
    log_density = (probs[x] * 4).log().sum()  # density on [0, 1]: K * P(level)
    assert torch.allclose(bits_per_dim(log_density, 5, 4), -probs[x].log2().mean())


# ------------------------------------------------------------------------- data
def test_load_digits_fixed_split():
    parts = {s: load_digits(s) for s in ("train", "validation", "test")}
    assert {s: len(v) for s, v in parts.items()} == DIGITS_SPLIT_SIZES
    everything = load_digits("all")
    assert everything.shape == (1797, 1, 8, 8) and everything.dtype == torch.get_default_dtype()
    assert set(everything.unique().tolist()) == set(range(DIGITS_LEVELS))
    joined = torch.cat(list(parts.values())).flatten(1)
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert key(joined) == key(everything.flatten(1))  # a partition of the data set
    assert torch.equal(load_digits("test"), parts["test"])  # the same split every call
    with pytest.raises(ValueError, match="unknown split"):
        load_digits("val")


def test_mnist_and_cifar_need_torchvision(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    for loader in (load_mnist, load_cifar10):
        with pytest.raises(ImportError, match=r"needs torchvision.*load_digits"):
            loader(str(tmp_path))


# --------------------------------------------------------------------- training
def _digits_example():
    return importlib.import_module("examples.digits")


def test_short_training_run_beats_independent_pixel_baseline():
    example = _digits_example()
    torch.manual_seed(0)
    train_levels, test_levels = load_digits("train"), load_digits("test")
    gaussian = example.gaussian_baseline(train_levels, test_levels)
    histogram = example.histogram_baseline(train_levels, test_levels)
    assert 3.2 < gaussian < 3.6 and 2.2 < histogram < 2.6  # independent pixels, dequantized digits
    model = Flow(
        [
            pyro_flows.real_nvp_image((1, 8, 8), num_scales=2, hidden_channels=16, num_blocks=1),
            Logit((1, 8, 8)),
        ]
    )
    untrained = example.test_bits_per_dim(model, test_levels)
    example.train(model, train_levels, seconds=math.inf, max_steps=40, lr=3e-3)
    trained = example.test_bits_per_dim(model, test_levels)
    print(
        f"histogram {histogram:.3f} gaussian {gaussian:.3f} untrained {untrained:.3f} trained {trained:.3f}"
    )
    # below both independent-pixel baselines, even the per-pixel histogram (the best any
    # independent-pixel model of the dequantized training data can do)
    assert trained < histogram - 0.05 < gaussian, (trained, histogram, gaussian)
    assert trained < untrained - 1.0, (trained, untrained)


def test_digits_example_smoke(tmp_path):
    results = _digits_example().main(["--smoke", "--out", str(tmp_path)])
    assert set(results) == {
        "histogram_baseline",
        "gaussian_baseline",
        "real_nvp_image",
        "glow",
        "real_nvp_vector",
    }
    assert all(math.isfinite(v) and 0 < v < 10 for v in results.values())
    for name in ("real_nvp_image", "glow", "real_nvp_vector"):
        for kind in ("samples", "reconstructions"):
            assert (tmp_path / f"{name}_{kind}.png").stat().st_size > 1000


# ------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("name", ["real_nvp_image", "glow"])
def test_cuda_builders_match_cpu(name):
    torch.manual_seed(0)
    build = {
        "real_nvp_image": lambda: pyro_flows.real_nvp_image((1, 8, 8), num_scales=2, **TINY),
        "glow": lambda: pyro_flows.glow((1, 8, 8), num_scales=3, steps_per_scale=2, **TINY),
    }[name]
    model = Flow([build(), Logit((1, 8, 8))])
    x = dequantize(load_digits("test")[:32], DIGITS_LEVELS)
    model.train()
    model.log_prob(x)  # initialise ActNorm, batch statistics
    randomize(model, 0.05)
    model.eval()
    expected = model.log_prob(x)
    model = model.to("cuda")
    got = model.log_prob(x.cuda())
    assert got.device.type == "cuda"
    assert torch.allclose(got.cpu(), expected, atol=1e-3, rtol=1e-4)
    assert model.sample((4,)).shape == (4, 1, 8, 8)
    torch.set_default_device("cuda")
    try:
        fresh = Flow([build(), Logit((1, 8, 8))])
        fresh.log_prob(torch.rand(8, 1, 8, 8))
        assert fresh.sample((2,)).device.type == "cuda"
    finally:
        torch.set_default_device("cpu")


# ---------------------------------------------------------- learned split priors
PRIOR_BUILDERS = {
    "real_nvp_image": lambda **k: pyro_flows.real_nvp_image(
        (2, 8, 8), num_scales=2, num_final_layers=2, **TINY, **k
    ),
    "glow": lambda **k: pyro_flows.glow((2, 8, 8), num_scales=2, steps_per_scale=2, **TINY, **k),
}


def _trained_like(flow, seed=0):
    """Initialise ActNorm / batch statistics on data, then perturb every parameter."""
    flow.train()
    flow.inv(torch.randn(16, *flow.event_shape, dtype=torch.float64))
    randomize(flow, 0.05, seed=seed)
    return flow


def _log_prob_by_parts(level, x):
    """log p(x) of a MultiScale with a standard Normal base, computed scale by scale:
    log|det| of each scale's layers plus log N(Z_i; mu_i, sigma_i) of each latent."""
    batch = x.shape[:-3]
    v = level.transform.inv(x)
    total = -level.transform.log_abs_det_jacobian(v, x)
    if level.inner is None:
        z, h, rest = v, None, 0.0
    else:
        z, h = v.split([level.factored_shape[0], level.kept_shape[0]], dim=-3)
        rest = _log_prob_by_parts(level.inner, h)
    loc, log_scale = level.prior(h, batch)
    normal = dist.Normal(loc, log_scale.exp()).to_event(3)
    return total + normal.log_prob(z) + rest


@pytest.mark.parametrize("name", sorted(PRIOR_BUILDERS))
def test_learned_prior_starts_as_the_fixed_prior(name):
    torch.manual_seed(0)
    fixed = PRIOR_BUILDERS[name]().double()
    torch.manual_seed(0)
    learned = PRIOR_BUILDERS[name](split_prior="learned").double()
    extra = set(learned.state_dict()) - set(fixed.state_dict())
    assert extra and all("prior" in key for key in extra)
    x = torch.randn(6, 2, 8, 8, dtype=torch.float64)
    fixed.eval(), learned.eval()
    assert torch.equal(Flow(fixed).log_prob(x), Flow(learned).log_prob(x))
    with pytest.raises(ValueError, match="split_prior must be one of"):
        PRIOR_BUILDERS[name](split_prior="glow")


@pytest.mark.parametrize("name", sorted(PRIOR_BUILDERS))
def test_learned_prior_log_prob_is_the_sum_of_its_parts(name):
    torch.manual_seed(0)
    flow = _trained_like(PRIOR_BUILDERS[name](split_prior="learned").double())
    flow.eval()
    x = torch.randn(5, 2, 8, 8, dtype=torch.float64)
    expected = _log_prob_by_parts(flow, x)
    got = Flow(flow).log_prob(x.clone())
    assert torch.allclose(got, expected, atol=1e-10)
    # the learned prior does something: the fixed-prior reading of the same layers differs
    level, priors = flow, []
    while level is not None:
        priors.append(
            level.prior(torch.zeros(1, *level.kept_shape, dtype=torch.float64), (1,))
            if level.inner is not None
            else level.prior(None, (1,))
        )
        level = level.inner
    assert all(p[1].abs().max() > 1e-3 for p in priors)
    # round trip and exact log-determinant (float64 autograd Jacobian on one image)
    u = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    y = flow(u)
    assert torch.allclose(flow.inv(y.clone()), u, atol=1e-10)
    ladj = flow.log_abs_det_jacobian(u, y)
    assert torch.allclose(ladj[0], jacobian_logdet(flow, u[0]), atol=1e-8)
    samples = Flow(flow).sample((4,))
    assert samples.shape == (4, 2, 8, 8) and bool(torch.isfinite(Flow(flow).log_prob(samples)).all())


def test_learned_prior_sampling_follows_the_prior():
    """The last scale only: its latent is N(loc, exp(log_scale)^2) per coordinate, so
    samples of a flow whose layers are the identity have exactly that mean and scale."""
    flow = MultiScale(Squeeze((1, 4, 4)), (1, 4, 4), split_prior="learned").double()
    with torch.no_grad():
        flow.prior_loc.copy_(torch.linspace(-2, 2, 16, dtype=torch.float64).view(4, 2, 2))
        flow.prior_log_scale.fill_(math.log(0.5) / 1.0)
    torch.manual_seed(0)
    samples = Flow(flow).sample((20000,))
    squeezed = space_to_depth(samples)
    loc, log_scale = flow.prior(None, ())
    assert torch.allclose(squeezed.mean(0), loc, atol=0.03)
    assert torch.allclose(squeezed.std(0), log_scale.exp(), atol=0.02)
    assert log_scale.exp().sub(0.5).abs().max() < 0.02  # 3 tanh(log 0.5 / 3) is close to log 0.5


# ------------------------------------------------------------------ memory saving
def _gradients(model, x, parameters=None):
    x = x.clone().requires_grad_()
    loss = -model.log_prob(x).sum()
    parameters = list(model.parameters() if parameters is None else parameters)
    return torch.autograd.grad(loss, [x, *parameters], allow_unused=True)


def _relative_error(expected, got):
    a = torch.cat([e.flatten() for e in expected])
    b = torch.cat([g.flatten() for g in got])
    return float((a - b).norm() / a.norm())


@pytest.mark.parametrize(
    "build",
    [
        lambda **k: pyro_flows.real_nvp_image((2, 8, 8), num_scales=2, num_final_layers=2, **TINY, **k),
        lambda **k: pyro_flows.glow((2, 8, 8), num_scales=2, steps_per_scale=2, **TINY, **k),
        lambda **k: pyro_flows.glow(
            (1, 4, 4), num_scales=2, steps_per_scale=2, split_prior="learned", **TINY, **k
        ),
    ],
    ids=["real_nvp_image_bn_conditioners", "glow", "glow_learned_prior"],
)
def test_memory_saving_gradients_equal_backprop_float64(build):
    torch.manual_seed(0)
    plain = _trained_like(build().double())
    torch.manual_seed(0)
    saving = build(memory_saving=True).double()
    saving.load_state_dict(plain.state_dict())
    assert saving.memory_saving and saving.inner.memory_saving
    x = torch.randn(6, *plain.event_shape, dtype=torch.float64)
    for mode in ("train", "eval"):
        getattr(plain, mode)(), getattr(saving, mode)()
        expected = _gradients(Flow(plain), x)
        got = _gradients(Flow(saving), x)
        assert all(g is not None for g in got)
        assert _relative_error(expected, got) <= 1e-6
        assert _relative_error(expected[:1], got[:1]) <= 1e-6  # the input's gradient alone
    # running statistics of batch-normalized conditioners move once per step, as without it
    for (name, a), b in zip(plain.named_buffers(), saving.buffers(), strict=True):
        assert torch.allclose(a, b, atol=1e-12), name


def test_memory_saving_trains_like_backprop():
    torch.manual_seed(0)
    build = lambda **k: pyro_flows.real_nvp_image((1, 8, 8), num_scales=2, **TINY, **k)  # noqa: E731
    models = [Flow([build(memory_saving=flag), Logit((1, 8, 8))]).double() for flag in (False, True)]
    models[1].load_state_dict(models[0].state_dict())
    data = dequantize(load_digits("train")[:64], DIGITS_LEVELS).double()
    losses = []
    for model in models:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        trace = []
        for step in range(5):
            loss = -model.log_prob(data[16 * (step % 4) : 16 * (step % 4 + 1)]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            trace.append(float(loss.detach()))
        losses.append(trace)
    assert losses[0][-1] < losses[0][0] - 5
    assert max(abs(a - b) for a, b in zip(*losses, strict=True)) < 1e-6 * abs(losses[0][0])


def test_memory_saving_wraps_any_coupling_stack_and_rejects_batch_norm_layers():
    from pyro.distributions.torch_transform import ComposeTransformModule

    from pyro_flows.transforms import MemorySaving, image_additive_coupling

    torch.manual_seed(0)
    layers = [image_affine_coupling((2, 4, 4), "checkerboard", p % 2, **TINY) for p in range(3)]
    layers += [image_additive_coupling((2, 4, 4), "channel", 1, **TINY), ActNorm(2)]
    stack = ComposeTransformModule(layers).double()
    randomize(stack, 0.1)
    wrapped = MemorySaving(stack, (2, 4, 4))
    x = torch.randn(4, 2, 4, 4, dtype=torch.float64)
    base = standard_normal((2, 4, 4))
    expected = _gradients(dist.TransformedDistribution(base, [stack]), x, stack.parameters())
    got = _gradients(dist.TransformedDistribution(base, [wrapped]), x, stack.parameters())
    assert _relative_error(expected, got) <= 1e-6
    with pytest.raises(ValueError, match="RealNVPBatchNorm"):
        pyro_flows.real_nvp_image((1, 8, 8), num_scales=2, batch_norm=True, memory_saving=True, **TINY)


# ------------------------------------------------------- variational dequantization
def test_variational_dequantizer_log_q_is_the_change_of_variables_float64():
    from pyro_flows import VariationalDequantizer

    torch.manual_seed(0)
    q = VariationalDequantizer((2, 2, 4), num_levels=5, hidden_channels=4, num_couplings=3).double()
    randomize(q, 0.05)
    levels = torch.randint(0, 5, (3, 2, 2, 4)).double()
    eps = torch.randn(3, 2, 2, 4, dtype=torch.float64)
    u, log_q = q.transform(eps, levels)
    assert bool(((u > 0) & (u < 1)).all())
    for i in range(3):
        cell = levels[i : i + 1]
        jac = torch.autograd.functional.jacobian(
            lambda e, cell=cell: q.transform(e.view(1, 2, 2, 4), cell)[0].reshape(-1), eps[i].reshape(-1)
        )
        log_normal = standard_normal((2, 2, 4)).log_prob(eps[i])
        assert torch.allclose(log_q[i], log_normal - torch.linalg.slogdet(jac)[1], atol=1e-10)
    # the noise depends on the levels, and a new dequantizer is sigmoid(N(0, I))
    assert not torch.allclose(q.transform(eps, levels)[0], q.transform(eps, (levels + 1) % 5)[0])
    fresh = VariationalDequantizer((2, 2, 4), num_levels=5, hidden_channels=4).double()
    assert torch.allclose(fresh.transform(eps, levels)[0], torch.sigmoid(eps))
    with pytest.raises(ValueError, match=r"expected levels of shape \(\*batch, 2, 2, 4\)"):
        q(torch.zeros(3, 2, 4, 4))


def test_dequantized_flow_bound_and_importance_weighted_estimate():
    from pyro_flows import DequantizedFlow, VariationalDequantizer

    torch.manual_seed(0)
    flow = Flow([pyro_flows.real_nvp_image((1, 4, 4), num_scales=1, **TINY), Logit((1, 4, 4))]).double()
    q = VariationalDequantizer((1, 4, 4), num_levels=17, hidden_channels=4).double()
    randomize(q, 0.2)
    model = DequantizedFlow(flow, 17, q).eval()
    levels = torch.randint(0, 17, (6, 1, 4, 4)).double()
    torch.manual_seed(1)
    u, log_q = q(levels)
    expected = flow.log_prob((levels + u) / 17) - log_q
    torch.manual_seed(1)
    assert torch.allclose(model.bound(levels), expected)
    # log_prob of any point of a cell is the bound for that cell (its own noise is replaced)
    torch.manual_seed(1)
    assert torch.allclose(model.log_prob((levels + 0.99) / 17), expected)
    # the importance-weighted estimate is the log-mean-exp of bounds: above their mean
    torch.manual_seed(2)
    draws = torch.stack([model.bound(levels) for _ in range(8)])
    torch.manual_seed(2)
    weighted = model.log_likelihood(levels, num_samples=8)
    assert torch.allclose(weighted, torch.logsumexp(draws, 0) - math.log(8))
    assert bool((weighted >= draws.mean(0)).all())
    # uniform dequantization: q = 1, the bound is log p(y) with y = (x + u) / K
    uniform = DequantizedFlow(flow, 17)
    torch.manual_seed(3)
    noise = torch.rand_like(levels)
    torch.manual_seed(3)
    assert torch.allclose(uniform.bound(levels), flow.log_prob((levels + noise) / 17))


def test_variational_dequantization_trains_jointly():
    from pyro_flows import DequantizedFlow, VariationalDequantizer

    example = _digits_example()
    torch.manual_seed(0)
    flow = Flow([pyro_flows.real_nvp_image((1, 8, 8), num_scales=2, **TINY), Logit((1, 8, 8))])
    model = DequantizedFlow(
        flow, DIGITS_LEVELS, VariationalDequantizer((1, 8, 8), DIGITS_LEVELS, hidden_channels=4)
    )
    test_levels = load_digits("test")[:100]
    before = example.test_bits_per_dim(model, test_levels)
    start = [p.detach().clone() for p in model.dequantizer.parameters()]
    example.train(model, load_digits("train"), seconds=math.inf, max_steps=25, lr=3e-3)
    after = example.test_bits_per_dim(model, test_levels)
    assert after < before - 0.5, (before, after)
    moved = [not torch.equal(a, p) for a, p in zip(start, model.dequantizer.parameters(), strict=True)]
    assert all(moved)  # the dequantizer is trained with the flow


def test_digits_training_schedule_and_weight_average():
    example = _digits_example()
    rates = [example.learning_rate(1e-3, s, s / 10, "cosine", warmup=2) for s in (0, 1, 5, 10)]
    assert rates == pytest.approx([5e-4, 1e-3 * 0.5 * (1 + math.cos(math.pi * 0.1)), 5e-4, 0.0])
    assert example.learning_rate(1e-3, 7, 0.7) == 1e-3  # constant, no warm-up
    with pytest.raises(ValueError, match="unknown schedule"):
        example.learning_rate(1e-3, 0, 0.0, "linear")
    levels = load_digits("train")
    runs = {}
    for ema in (0.0, 0.9):
        torch.manual_seed(0)
        model = Flow([pyro_flows.glow((1, 8, 8), num_scales=2, steps_per_scale=1, **TINY), Logit((1, 8, 8))])
        example.train(model, levels, seconds=math.inf, max_steps=6, lr=3e-3, ema=ema, schedule="cosine")
        runs[ema] = [p.detach().clone() for p in model.parameters()]
    # the same steps (same batches and seed): the kept weights are the average, not the last
    assert any(not torch.equal(a, b) for a, b in zip(runs[0.0], runs[0.9], strict=True))
    average = example.WeightAverage(torch.nn.Linear(2, 1), decay=0.5)
    start, target = average.model.bias.detach().clone(), torch.nn.Linear(2, 1)
    average.update(target)  # decay min(0.5, 1/10) at the first update: 90% of the way
    assert torch.allclose(average.model.bias, start + 0.9 * (target.bias - start))
    average.update(target)  # then min(0.5, 2/11)
    assert torch.allclose(average.model.bias, target.bias + (2 / 11) * 0.1 * (start - target.bias))


def test_cli_fit_with_variational_dequantization(tmp_path):
    from pyro_flows.cli import main as cli

    out = tmp_path / "run"
    args = ["fit", "--data", "digits", "--flow", "glow", "--dequantization", "variational", "--steps", "4"]
    args += ["--eval-every", "2", "--batch-size", "32", "--hidden-channels", "4", "--num-blocks", "1"]
    args += ["--steps-per-scale", "1", "--no-plots", "--quiet", "--out", str(out)]
    assert cli(args) == 0
    state = torch.load(out / "best.pt", weights_only=True)["model"]
    assert any(key.startswith("dequantizer.") for key in state)  # trained with the flow
    assert 'dequantization = "variational"' in (out / "config.toml").read_text()
    assert cli(["evaluate", str(out), "--json"]) == 0
    moons = ["fit", "--data", "moons", "--dequantization", "variational", "--steps", "2", "--quiet"]
    assert cli(moons + ["--out", str(tmp_path / "m")]) != 0  # "needs discrete data"


# ------------------------------------------------------------ conditional image flows
@pytest.mark.parametrize("name", sorted(PRIOR_BUILDERS))
def test_class_conditional_flow_uses_each_context(name):
    torch.manual_seed(0)
    cflow = PRIOR_BUILDERS[name](split_prior="learned", context_dim=10).double()
    base = standard_normal((2, 8, 8))
    model = dist.ConditionalTransformedDistribution(base, [cflow])
    x = torch.randn(6, 2, 8, 8, dtype=torch.float64)
    labels = torch.eye(10, dtype=torch.float64)[torch.tensor([0, 1, 2, 3, 4, 5])]
    cflow.train()
    model.condition(labels).log_prob(x)  # ActNorm initialisation
    cflow.eval()
    # zero-initialised conditioners and priors: the same map for every context
    assert torch.allclose(model.condition(labels).log_prob(x), model.condition(labels.flip(0)).log_prob(x))
    randomize(cflow, 0.05)
    together = model.condition(labels).log_prob(x)
    one_by_one = torch.cat([model.condition(labels[i]).log_prob(x[i : i + 1]) for i in range(6)])
    assert torch.allclose(together, one_by_one, atol=1e-10)
    assert (together - model.condition(labels.flip(0)).log_prob(x)).abs().min() > 1e-4
    # one context broadcast over a batch of samples, and a batch of contexts
    assert model.condition(labels[3]).sample((4,)).shape == (4, 2, 8, 8)
    assert model.condition(labels[:4]).sample().shape == (4, 2, 8, 8)
    with pytest.raises(ValueError, match=r"expected a context of shape \(\*batch, 10\)"):
        cflow.condition(torch.zeros(3))


@pytest.mark.parametrize("name", sorted(PRIOR_BUILDERS))
def test_class_conditional_memory_saving_gradients_equal_backprop_float64(name):
    torch.manual_seed(0)
    plain = PRIOR_BUILDERS[name](split_prior="learned", context_dim=3).double()
    saving = PRIOR_BUILDERS[name](split_prior="learned", context_dim=3, memory_saving=True).double()
    assert saving.memory_saving and saving.inner.memory_saving and not plain.memory_saving
    base = standard_normal((2, 8, 8))
    x = torch.randn(6, 2, 8, 8, dtype=torch.float64)
    labels = torch.eye(3, dtype=torch.float64)[torch.tensor([0, 1, 2, 0, 1, 2])]
    plain.train()
    plain.condition(labels).inv(x)  # ActNorm initialisation, batch statistics
    randomize(plain, 0.05)
    saving.load_state_dict(plain.state_dict())
    assert saving.condition(labels).memory_saving
    # a context that is itself learned (an embedding) receives its gradient too
    embedding = torch.nn.Linear(3, 3).double()
    for mode in ("train", "eval"):
        grads = []
        for cflow in (plain, saving):
            getattr(cflow, mode)()
            context = embedding(labels)
            model = dist.ConditionalTransformedDistribution(base, [cflow]).condition(context)
            grads.append(_gradients(model, x, [*cflow.parameters(), *embedding.parameters()]))
        assert all(g is not None for g in grads[1])
        assert _relative_error(*grads) <= 1e-6
        assert _relative_error(grads[0][:1], grads[1][:1]) <= 1e-6  # the input's gradient alone
        assert _relative_error(grads[0][-2:], grads[1][-2:]) <= 1e-6  # the context's embedding
    for (key, a), b in zip(plain.named_buffers(), saving.buffers(), strict=True):
        assert torch.allclose(a, b, atol=1e-12), key


def test_class_conditional_digits_example_smoke(tmp_path):
    results = importlib.import_module("examples.digits_conditional").main(["--smoke", "--out", str(tmp_path)])
    assert results["steps"] == 4 and 0 < results["test_bits_per_dim"] < 10
    assert (tmp_path / "glow_class_conditional_samples.png").stat().st_size > 1000


@pytest.mark.parametrize("name", ["real_nvp_image", "glow"])
def test_cli_coupling_option_builds_spline_image_couplings(tmp_path, name):
    from pyro_flows.cli import main as cli
    from pyro_flows.train.config import RunConfig
    from pyro_flows.train.registry import build_model
    from pyro_flows.transforms import SplineCoupling

    size = dict(num_scales=1, hidden_channels=4, num_blocks=1, steps_per_scale=1)
    kinds = {}
    for coupling in ("affine", "spline"):
        model = build_model(
            RunConfig(flow=name, coupling=coupling, **size), (1, 8, 8), discrete=True, levels=17
        )
        kinds[coupling] = sum(isinstance(m, SplineCoupling) for m in model.modules())
    assert kinds["affine"] == 0 and kinds["spline"] > 0
    with pytest.raises(ValueError, match="coupling"):
        RunConfig(flow=name, coupling="quadratic")
    # The best digits model of the docs, from the command: spline couplings, variational noise.
    out = tmp_path / "run"
    args = ["fit", "--data", "digits", "--flow", name, "--coupling", "spline"]
    args += [
        "--dequantization",
        "variational",
        "--steps",
        "4",
        "--eval-every",
        "2",
        "--batch-size",
        "32",
        "--hidden-channels",
        "4",
    ]
    args += ["--num-blocks", "1", "--num-scales", "1", "--no-plots", "--quiet"]
    args += ["--steps-per-scale", "1"] if name == "glow" else []  # fit refuses options a flow ignores
    assert cli(args + ["--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert math.isfinite(results["test_bits_per_dim"])
    assert 'coupling = "spline"' in (out / "config.toml").read_text()
