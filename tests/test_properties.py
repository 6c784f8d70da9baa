"""Property-based tests (hypothesis) over shapes, batch shapes and input magnitudes."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyro_flows

from .helpers import autograd_logdet, randomize

SETTINGS = settings(max_examples=25, deadline=None)
batch_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)
magnitudes = st.sampled_from([1e-3, 1.0, 1e2, 1e4])


def _inputs(batch_shape, dim, magnitude, seed):
    g = torch.Generator().manual_seed(seed)
    return magnitude * torch.randn(*batch_shape, dim, generator=g, dtype=torch.float64)


@SETTINGS
@given(
    dim=st.integers(2, 7),
    batch_shape=batch_shapes,
    magnitude=magnitudes,
    mask=st.sampled_from(["half", "alternating"]),
    parity=st.integers(0, 1),
    affine=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_coupling_round_trip_and_log_det(dim, batch_shape, magnitude, mask, parity, affine, seed):
    make = pyro_flows.affine_coupling if affine else pyro_flows.additive_coupling
    torch.manual_seed(seed)
    layer = randomize(make(dim, (8,), mask=mask, parity=parity).double(), scale=0.3, seed=seed)
    x = _inputs(batch_shape, dim, magnitude, seed)
    y = layer(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert torch.allclose(layer.inv(y.clone()), x, rtol=1e-9, atol=1e-9 * magnitude)
    ladj = layer.log_abs_det_jacobian(x, y)
    assert ladj.shape == torch.Size(batch_shape)
    flat = x.reshape(-1, dim)[:2]
    assert torch.allclose(
        layer.log_abs_det_jacobian(flat, layer(flat)), autograd_logdet(layer, flat, 1), atol=1e-8
    )


@SETTINGS
@given(dim=st.integers(1, 6), batch_shape=batch_shapes, magnitude=magnitudes, seed=st.integers(0, 2**16))
def test_invertible_linear_and_scaling(dim, batch_shape, magnitude, seed):
    torch.manual_seed(seed)
    for layer in (pyro_flows.invertible_linear(dim), pyro_flows.scaling(dim)):
        layer = randomize(layer.double(), scale=0.3, seed=seed)
        x = _inputs(batch_shape, dim, magnitude, seed)
        y = layer(x)
        assert torch.allclose(layer.inv(y.clone()), x, rtol=1e-9, atol=1e-9 * magnitude)
        flat = x.reshape(-1, dim)[:2]
        assert torch.allclose(
            layer.log_abs_det_jacobian(flat, layer(flat)), autograd_logdet(layer, flat, 1), atol=1e-9
        )


@SETTINGS
@given(
    dim=st.integers(1, 5),
    batch=st.integers(2, 40),
    magnitude=magnitudes,
    shift=st.floats(-1e3, 1e3),
    seed=st.integers(0, 2**16),
)
def test_batch_norm_normalises_any_scale(dim, batch, magnitude, shift, seed):
    bn = pyro_flows.real_nvp_batch_norm(dim).double()
    y = _inputs((batch,), dim, magnitude, seed) + shift
    x = bn.inv(y)
    assert torch.isfinite(x).all()
    assert torch.allclose(x.mean(0), torch.zeros(dim, dtype=torch.float64), atol=1e-6)
    bn.eval()
    assert torch.allclose(bn(bn.inv(y.clone())), y, rtol=1e-9, atol=1e-9 * (magnitude + abs(shift)))


@SETTINGS
@given(
    channels=st.integers(1, 3),
    half_height=st.integers(1, 3),
    half_width=st.integers(1, 3),
    batch_shape=batch_shapes,
    magnitude=magnitudes,
    seed=st.integers(0, 2**16),
)
def test_squeeze_is_an_exact_permutation(channels, half_height, half_width, batch_shape, magnitude, seed):
    from pyro_flows.transforms import depth_to_space, space_to_depth

    shape = (channels, 2 * half_height, 2 * half_width)
    g = torch.Generator().manual_seed(seed)
    x = magnitude * torch.randn(*batch_shape, *shape, generator=g, dtype=torch.float64)
    z = space_to_depth(x)
    assert z.shape == (*batch_shape, 4 * channels, half_height, half_width)
    assert torch.equal(depth_to_space(z), x)
    assert torch.equal(z.flatten().sort().values, x.flatten().sort().values)


@SETTINGS
@given(
    components=st.integers(1, 5),
    component=st.sampled_from(["gaussian", "logistic"]),
    batch_shape=batch_shapes,
    magnitude=st.sampled_from([1e-2, 1.0, 10.0, 1e3]),
    seed=st.integers(0, 2**16),
)
def test_mixture_cdf_is_monotone_and_invertible(components, component, batch_shape, magnitude, seed):
    torch.manual_seed(seed)
    cdf = randomize(
        pyro_flows.mixture_cdf(components, event_shape=(2,), component=component).double(), 0.5, seed
    )
    x = _inputs(batch_shape, 2, magnitude, seed)
    u = cdf.inv(x)  # data -> (0, 1) in closed form
    assert torch.isfinite(u).all() and ((u >= 0) & (u <= 1)).all()
    sorted_x, order = x.reshape(-1, 2)[:, 0].sort()
    assert (u.reshape(-1, 2)[:, 0][order].diff() >= 0).all()  # monotone
    inner = (u > 1e-6) & (u < 1 - 1e-6)  # where u still resolves x in float64
    back = cdf(u.clone())
    assert torch.allclose(back[inner], x[inner], rtol=1e-6, atol=1e-6)


@SETTINGS
@given(channels=st.integers(1, 4), batch=st.integers(2, 6), magnitude=magnitudes, seed=st.integers(0, 2**16))
def test_act_norm_initialises_to_unit_statistics(channels, batch, magnitude, seed):
    layer = pyro_flows.transforms.act_norm(channels).double()
    y = _inputs((batch, 3, 3), channels, magnitude, seed).movedim(-1, -3) + 5.0
    x = layer.inv(y)
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(channels, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(layer(x.clone()), y, rtol=1e-9, atol=1e-9 * (magnitude + 5))
