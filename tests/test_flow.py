"""Whole flows: normalization, training on two moons, the Flow module, bad input."""

import io
import math

import pyro.distributions as dist
import pytest
import torch

import pyro_flows
from pyro_flows.data import make_moons

from .helpers import midpoint_density, randomize


def gaussian_nll(train: torch.Tensor, test: torch.Tensor) -> float:
    """Held-out NLL of the maximum-likelihood Gaussian fitted to ``train``."""
    mean = train.mean(0)
    cov = torch.cov(train.T, correction=0)
    return float(-dist.MultivariateNormal(mean, cov).log_prob(test).mean())


@pytest.mark.parametrize("builder", [pyro_flows.real_nvp, pyro_flows.nice])
def test_density_integrates_to_one(builder):
    """Concept 10.4: a flow's density is normalised. Midpoint rule on [-9, 9]^2."""
    torch.manual_seed(0)
    flow = randomize(builder(2, num_layers=4, hidden_dims=(16,)), scale=0.1).double()
    model = pyro_flows.Flow(flow)
    grid, density, cell = midpoint_density(model.log_prob)
    integral = float(density.sum() * cell)
    assert abs(integral - 1.0) < 2e-3, integral
    # and it is not trivially the base density
    base = dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1).log_prob(grid).exp()
    assert (density - base).abs().max() > 0.01


def test_real_nvp_beats_a_gaussian_on_two_moons():
    torch.manual_seed(0)
    train, test = make_moons(2000, seed=1), make_moons(1000, seed=2)
    model = pyro_flows.Flow(pyro_flows.real_nvp(2, num_layers=6, hidden_dims=(64, 64)))
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 400)
    for _ in range(400):
        batch = train[torch.randint(len(train), (256,))]
        loss = -model.log_prob(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        flow_nll = float(-model.log_prob(test).mean())
    baseline = gaussian_nll(train, test)
    # The best single Gaussian scores about 2.72 nats; the data's entropy is about 1.8
    # (uniform on two arcs of total length 2*pi, noise sd 0.1, then standardised).
    assert 2.6 < baseline < 2.85
    assert flow_nll < baseline - 0.5, (flow_nll, baseline)


def test_real_nvp_with_batch_norm_trains_and_evaluates():
    torch.manual_seed(0)
    train, test = make_moons(2000, seed=1), make_moons(1000, seed=2)
    model = pyro_flows.Flow(pyro_flows.real_nvp(2, num_layers=4, hidden_dims=(64, 64), batch_norm=True))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(250):
        loss = -model.log_prob(train[torch.randint(len(train), (256,))]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        nll = float(-model.log_prob(test).mean())
        samples = model.sample((500,))
    assert nll < gaussian_nll(train, test) - 0.3
    assert torch.isfinite(samples).all()


def test_flow_module_moves_and_serialises():
    torch.manual_seed(0)
    model = pyro_flows.Flow(randomize(pyro_flows.real_nvp(3, num_layers=2, hidden_dims=(8,))))
    x = torch.randn(5, 3)
    expected = model.log_prob(x)
    model64 = model.to(torch.float64)
    lp = model64.log_prob(x.double())
    assert lp.dtype == torch.float64 and model64().base_dist.base_dist.loc.dtype == torch.float64
    assert torch.allclose(lp, expected.double(), atol=1e-5)
    buffer = io.BytesIO()
    torch.save(model64.state_dict(), buffer)
    buffer.seek(0)
    fresh = pyro_flows.Flow(pyro_flows.real_nvp(3, num_layers=2, hidden_dims=(8,))).double()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(fresh.log_prob(x.double()), lp)


@pytest.mark.parametrize("base", ["normal", "uniform", "beta"])
def test_flow_bases_by_name(base):
    model = pyro_flows.Flow(pyro_flows.real_nvp(2, num_layers=2, hidden_dims=(8,)), base=base)
    assert model().base_dist.event_shape == (2,)
    assert model.sample((4,)).shape == (4, 2)


def test_custom_base_distribution_and_errors():
    base = dist.StudentT(4.0, torch.zeros(2), torch.ones(2))
    model = pyro_flows.Flow(pyro_flows.real_nvp(2, num_layers=2, hidden_dims=(8,)), base=base)
    assert torch.allclose(model.log_prob(torch.zeros(1, 2)), base.log_prob(torch.zeros(2)).sum())
    with pytest.raises(ValueError, match="expected event shape"):
        pyro_flows.Flow(pyro_flows.real_nvp(2, num_layers=2), base=dist.Normal(torch.zeros(3), 1.0))
    with pytest.raises(ValueError, match="unknown base"):
        pyro_flows.Flow(pyro_flows.real_nvp(2, num_layers=2), base="cauchy")


def test_pyro_auto_normalizing_flow_accepts_partial_builder():
    import functools

    import pyro
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoNormalizingFlow

    def model():
        pyro.sample("z", dist.Normal(torch.tensor([1.0, -1.0]), 0.5).to_event(1))

    guide = AutoNormalizingFlow(
        model, functools.partial(pyro_flows.real_nvp, num_layers=2, hidden_dims=(16,))
    )
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    for _ in range(5):
        assert math.isfinite(svi.step())


# ------------------------------------------------------------------ bad input
def test_wrong_event_shape_is_named():
    model = pyro_flows.Flow(pyro_flows.real_nvp(3, num_layers=2))
    with pytest.raises(ValueError, match=r"event shape|3"):
        model.log_prob(torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"event shape \(3,\), got shape \(5, 4\)"):
        pyro_flows.affine_coupling(3).inv(torch.randn(5, 4))


def test_non_finite_values_are_named():
    flow = pyro_flows.real_nvp(2, num_layers=2)
    x = torch.randn(4, 2)
    x[1, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite|NaN|support"):
        pyro_flows.Flow(flow).log_prob(x)
    with pytest.raises(ValueError, match="1 non-finite value"):
        flow.inv(x)


def test_wrong_dtype_is_named():
    flow = pyro_flows.real_nvp(2, num_layers=2)
    with pytest.raises(ValueError, match="floating-point .* got dtype torch.int64"):
        flow.inv(torch.ones(3, 2, dtype=torch.long))


def test_too_small_input_dim():
    with pytest.raises(ValueError, match="input_dim >= 2"):
        pyro_flows.real_nvp(1)


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: pyro_flows.real_nvp(3, num_layers=2, hidden_dims=(8,), batch_norm=True), (3,)),
        (lambda: pyro_flows.nice(4, num_layers=2, hidden_dims=(8,)), (4,)),
        (lambda: pyro_flows.cdf_flow(3), ()),
        (
            lambda: pyro_flows.glow(
                (2, 4, 4), num_scales=1, steps_per_scale=1, hidden_channels=4, num_blocks=1
            ),
            (2, 4, 4),
        ),
    ],
)
def test_log_prob_of_an_empty_batch_is_empty(make, shape):
    flow = pyro_flows.Flow(make())
    flow.train()
    for batch in [(0,), (2, 0)]:
        lp = flow.log_prob(torch.rand(*batch, *shape))
        assert lp.shape == batch
    # nothing learnt from no data: no NaN statistics, ActNorm still waits for a batch
    assert all(torch.isfinite(t).all() for t in [*flow.parameters(), *flow.buffers()])
    assert not any(
        bool(m.initialized) for m in flow.modules() if isinstance(m, pyro_flows.transforms.ActNorm)
    )
    flow.eval()
    assert flow.log_prob(torch.rand(0, *shape)).shape == (0,)
    assert flow.sample((0,)).shape == (0, *shape)
    if shape:  # a wrong event shape is still reported for an empty batch
        with pytest.raises(ValueError, match="shape"):
            flow.log_prob(torch.rand(0, *shape[:-1], shape[-1] + 1))


def test_log_prob_of_float64_data_on_a_float32_flow_names_the_fix():
    flow = pyro_flows.Flow(pyro_flows.real_nvp(3, num_layers=2, hidden_dims=(8,)))
    x = torch.randn(5, 3, dtype=torch.float64)  # e.g. from NumPy
    with pytest.raises(
        ValueError, match=r"torch\.float64 but .* torch\.float32.*x\.float\(\).*flow\.double\(\)"
    ):
        flow.log_prob(x)
    assert flow.double().log_prob(x).dtype == torch.float64
    with pytest.raises(
        ValueError, match=r"torch\.float16 but .* torch\.float64.*x\.double\(\).*flow\.half\(\)"
    ):
        flow.log_prob(x.half())
