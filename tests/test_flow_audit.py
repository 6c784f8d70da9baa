"""Flow against torch's TransformedDistribution, bases, inverse-CDF sampling, metrics and
plots on edge inputs."""

import copy
import math
import subprocess
import sys
import warnings

import pyro.distributions as dist
import pytest
import torch
from torch.distributions import Distribution
from torch.distributions import transforms as T

import pyro_flows
from pyro_flows import Flow, inverse_cdf_sample
from pyro_flows import plot as plots
from pyro_flows.metrics import bits_per_dim

from .helpers import midpoint_density, randomize


@pytest.fixture(autouse=True)
def _restore_validation():
    """Tests here switch distribution validation; every other test expects it as it was."""
    before = Distribution._validate_args
    yield
    Distribution.set_default_validate_args(before)


@pytest.fixture(params=[False, True], ids=["fast-path", "validated"])
def validation(request):
    """Distribution validation off (Flow's own loop) and on (torch's log_prob)."""
    Distribution.set_default_validate_args(request.param)
    return request.param


def _reference(flow: Flow) -> dist.TransformedDistribution:
    """torch's/Pyro's distribution over a deep copy of the flow's base and parts."""
    twin = copy.deepcopy(flow)
    return twin, dist.TransformedDistribution(twin.base(), twin._transforms())


def _coupling(dim):
    return randomize(pyro_flows.real_nvp(dim, num_layers=2, hidden_dims=(8,)))


FLOWS = {
    "real_nvp": lambda: Flow(_coupling(3)),
    "batch_norm_train": lambda: Flow(
        randomize(pyro_flows.real_nvp(3, num_layers=2, hidden_dims=(8,), batch_norm=True))
    ).train(),
    "batch_norm_eval": lambda: Flow(
        randomize(pyro_flows.real_nvp(3, num_layers=2, hidden_dims=(8,), batch_norm=True))
    ).eval(),
    "nice": lambda: Flow(randomize(pyro_flows.nice(4, num_layers=2, hidden_dims=(8,)))),
    "spline_act_norm_linear": lambda: Flow(
        randomize(pyro_flows.spline_flow(3, num_layers=2, hidden_dims=(8,), linear=True))
    ),
    "cdf_beta": lambda: Flow(randomize(pyro_flows.cdf_flow(3, base="beta", a=2.0, b=3.0))),
    "glow_learned_prior": lambda: Flow(
        randomize(
            pyro_flows.glow(
                (2, 4, 4), num_scales=2, steps_per_scale=1, hidden_channels=4, split_prior="learned"
            ),
            scale=0.05,
        )
    ),
    "real_nvp_image_1x1": lambda: Flow(
        randomize(
            pyro_flows.real_nvp_image(
                (1, 4, 4), num_scales=1, hidden_channels=4, num_blocks=1, num_final_layers=1
            ),
            scale=0.05,
        )
    ),
    "ffjord": lambda: Flow(randomize(pyro_flows.ffjord(2, hidden_dims=(8,)), scale=0.1)),
    "beta_base_bridge": lambda: Flow(_coupling(2), base="beta", a=2.0, b=3.0),
    "torch_parts_mixed_in": lambda: Flow(
        [T.ComposeTransform([T.AffineTransform(0.5, 3.0), T.ExpTransform()]), _coupling(2), T.ExpTransform()]
    ),
    "batched_base": lambda: Flow(
        _coupling(2), base=dist.Normal(torch.randn(5, 2), torch.rand(5, 2) + 0.5).to_event(1)
    ),
    # the parts' event dims differ from the base's: a reshape to the data's (2, 2) ...
    "reshape_to_matrix": lambda: Flow([_coupling(4), T.ReshapeTransform((4,), (2, 2))]),
    # ... and a part over (3, 2) events fed by a base with batch shape (3,)
    "part_with_larger_event_dim": lambda: Flow(
        [_coupling(2), T.AffineTransform(torch.zeros(3, 2), torch.rand(3, 2) + 0.5, event_dim=2)],
        base=dist.Normal(torch.zeros(3, 2), 1.0).to_event(1),
    ),
    # a part that broadcasts the base's draws to a batch of 3: torch expands the base
    "broadcasting_part": lambda: Flow(
        [T.AffineTransform(torch.randn(3, 2), torch.rand(3, 2) + 0.5, event_dim=1), _coupling(2)],
        event_shape=(2,),
    ),
}


@pytest.mark.parametrize("name", list(FLOWS))
@pytest.mark.parametrize("sample_shape", [(), (4,), (2, 3)], ids=str)
def test_flow_matches_torch_transformed_distribution(name, sample_shape, validation):
    torch.manual_seed(0)
    flow = FLOWS[name]().double()
    twin, reference = _reference(flow)

    torch.manual_seed(1)
    x = flow.sample(sample_shape)
    torch.manual_seed(1)
    expected = reference.sample(sample_shape)
    assert x.shape == expected.shape and torch.equal(x, expected), name

    value = expected.clone()  # a tensor neither cache has seen
    log_prob, expected_log_prob = flow.log_prob(value), reference.log_prob(value.clone())
    assert log_prob.shape == expected_log_prob.shape == sample_shape + reference.batch_shape
    assert torch.equal(log_prob, expected_log_prob), (log_prob - expected_log_prob).abs().max()

    # values with two more batch dimensions
    wide = value.expand(2, 1, *value.shape).clone()
    log_prob, expected_log_prob = flow.log_prob(wide), reference.log_prob(wide.clone())
    assert log_prob.shape == expected_log_prob.shape and log_prob.shape[:2] == (2, 1)
    assert torch.allclose(log_prob, expected_log_prob, rtol=1e-12, atol=1e-12)

    # rsample, then the log-density of the draw (a cache hit), and its gradients
    torch.manual_seed(2)
    drawn = flow.rsample(sample_shape)
    torch.manual_seed(2)
    expected_drawn = reference.rsample(sample_shape)
    assert torch.equal(drawn, expected_drawn)
    log_prob, expected_log_prob = flow.log_prob(drawn), reference.log_prob(expected_drawn)
    assert torch.allclose(log_prob, expected_log_prob, rtol=1e-12, atol=1e-12)
    params, twin_params = list(flow.parameters()), list(twin.parameters())
    if params:
        grads = torch.autograd.grad((log_prob.sum() + drawn.sum()), params, allow_unused=True)
        expected_grads = torch.autograd.grad(
            (expected_log_prob.sum() + expected_drawn.sum()), twin_params, allow_unused=True
        )
        assert sum(g is not None for g in grads) > 0
        for g, e in zip(grads, expected_grads, strict=True):
            assert (g is None) == (e is None)
            if g is not None:
                assert torch.allclose(g, e, rtol=1e-9, atol=1e-10)


def test_log_prob_sums_the_log_dets_over_the_data_event():
    # base (4,) reshaped to data (2, 2): one log-density per matrix, not one per row
    torch.manual_seed(0)
    Distribution.set_default_validate_args(False)
    coupling = _coupling(4).double()
    flow = Flow([coupling, T.ReshapeTransform((4,), (2, 2))])
    x = torch.randn(3, 5, 2, 2, dtype=torch.float64)
    z = coupling.inv(x.reshape(3, 5, 4))
    ladj = coupling.log_abs_det_jacobian(z, x.reshape(3, 5, 4))
    base = dist.Normal(torch.zeros(4, dtype=torch.float64), 1.0).to_event(1)
    expected = base.log_prob(z) - ladj
    assert flow.log_prob(x).shape == (3, 5)
    assert torch.allclose(flow.log_prob(x), expected, atol=1e-12)


def test_sample_expands_the_base_like_torch():
    # a part with batch shape (3,) after a base of event shape (2,): three independent
    # draws per sample, not one draw broadcast three times
    torch.manual_seed(0)
    flow = Flow([T.AffineTransform(torch.zeros(3, 2), torch.ones(3, 2), event_dim=1)], event_shape=(2,))
    x = flow.sample((1000,))
    assert x.shape == (1000, 3, 2)
    assert not torch.equal(x[:, 0], x[:, 1])
    # the rows are independent standard normals
    correlation = torch.corrcoef(torch.stack([x[:, 0, 0], x[:, 1, 0], x[:, 2, 0]]))
    assert (correlation - torch.eye(3)).abs().max() < 0.1


# ------------------------------------------------------------------- the cache
def _fresh(flow, x):
    return _reference(flow)[1].log_prob(x.detach().clone())


@pytest.mark.parametrize("base", ["normal", "beta"])
def test_cache_never_returns_stale_log_densities(base, validation):
    torch.manual_seed(0)
    flow = Flow(
        randomize(pyro_flows.real_nvp(3, num_layers=2, hidden_dims=(8,), batch_norm=True)), base=base
    ).double()
    flow.eval()
    x = flow.sample((6,))
    log_prob = flow.log_prob(x)  # sampled without gradients, scored with them
    assert log_prob.grad_fn is not None
    assert torch.allclose(log_prob, _fresh(flow, x), atol=1e-12)
    optimizer = torch.optim.SGD(flow.parameters(), lr=0.1)
    (-log_prob.mean()).backward()
    optimizer.step()
    after = flow.log_prob(x)
    assert not torch.allclose(after, log_prob) and torch.allclose(after, _fresh(flow, x), atol=1e-12)
    with torch.no_grad():
        flow.log_prob(x)
    assert flow.log_prob(x).grad_fn is not None
    x.requires_grad_()
    (grad,) = torch.autograd.grad(flow.log_prob(x).sum(), x)
    assert grad.shape == x.shape and grad.abs().sum() > 0


# -------------------------------------------------------------------- bases
@pytest.mark.parametrize("base, params", [("uniform", {}), ("beta", {"a": 2.0, "b": 3.0})])
def test_base_choice_on_a_float64_transform_leaves_the_density(base, params):
    # the transform is float64 before the Flow is built: its bridge must follow
    torch.manual_seed(0)
    transform = randomize(pyro_flows.real_nvp(2, num_layers=2, hidden_dims=(8,)), scale=0.1).double()
    normal, chosen = Flow(transform), Flow(transform, base=base, **params)
    assert {t.dtype for t in chosen.buffers() if t.is_floating_point()} == {torch.float64}
    x = 3 * torch.randn(50, 2, dtype=torch.float64)
    assert torch.allclose(chosen.log_prob(x), normal.log_prob(x), atol=1e-10)
    _, density, cell = midpoint_density(chosen.log_prob, n=300)
    assert abs(float(density.sum() * cell) - 1.0) < 2e-3


@pytest.mark.parametrize("base", ["uniform", "beta"])
def test_1d_base_choice_integrates_to_one(base):
    torch.manual_seed(0)
    model = Flow(randomize(pyro_flows.cdf_flow(3)).double(), base=base)
    x = torch.linspace(-20, 20, 40001, dtype=torch.float64)
    with torch.no_grad():
        mass = float(model.log_prob(x).exp().sum() * (x[1] - x[0]))
    assert abs(mass - 1.0) < 1e-6


def test_multivariate_normal_base():
    covariance = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
    base = dist.MultivariateNormal(torch.tensor([1.0, -1.0]), covariance)
    flow = Flow(pyro_flows.real_nvp(2, num_layers=2, hidden_dims=(8,)), base=base)
    x = torch.randn(4, 2)
    identity = dist.TransformedDistribution(base, flow._transforms())
    assert torch.allclose(flow.log_prob(x), identity.log_prob(x))
    moved = flow.double()
    assert moved.base().covariance_matrix.dtype == torch.float64


def test_a_single_torch_transform():
    flow = Flow(T.AffineTransform(1.0, 2.0), event_shape=(2,))
    x = torch.randn(3, 2)
    expected = dist.Normal(torch.ones(2), 2.0).to_event(1).log_prob(x)
    assert torch.allclose(flow.log_prob(x), expected)
    assert flow.sample((4,)).shape == (4, 2)


# ---------------------------------------------------------- inverse-CDF sampling
def test_inverse_cdf_sample_refuses_a_base_its_bridges_do_not_carry_to_uniform():
    from scipy import stats

    torch.manual_seed(0)
    # the uniform base goes through the CDF of a Beta(2, 2): not the mixture's CDF
    chosen = Flow(randomize(pyro_flows.cdf_flow(3, base="beta", a=2.0, b=2.0), scale=0.5), base="uniform")
    with pytest.raises(ValueError, match="does not carry .* to Uniform"):
        inverse_cdf_sample(chosen, 10)
    # N(0, 3) through the standard normal's CDF: neither
    wide = Flow(pyro_flows.cdf_flow(3), base=dist.Normal(0.0, 3.0))
    with pytest.raises(ValueError, match="does not carry .* to Uniform"):
        inverse_cdf_sample(wide, 10)
    # the matching base still samples the model's law
    own = Flow(randomize(pyro_flows.cdf_flow(3, base="beta", a=2.0, b=2.0), scale=0.5))
    x = inverse_cdf_sample(own, 3000, torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    assert stats.ks_2samp(x.numpy(), own.sample((3000,)).numpy()).pvalue > 0.01


# ------------------------------------------------------------------ metrics
@pytest.mark.parametrize("levels", [0, 1, -3])
def test_bits_per_dim_names_bad_levels(levels):
    with pytest.raises(ValueError, match=f"num_levels must be at least 2.*got {levels}"):
        bits_per_dim(torch.zeros(2), num_dims=4, num_levels=levels)


def test_bits_per_dim_values():
    assert torch.equal(bits_per_dim(torch.zeros(3), 12, 256), torch.full((3,), 8.0))
    assert bits_per_dim(-10 * math.log(2), 10) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="num_dims must be positive, got 0"):
        bits_per_dim(0.0, 0)


# -------------------------------------------------------------------- plots
def test_importing_pyro_flows_does_not_import_matplotlib():
    code = "import sys, pyro_flows; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_plots_of_a_float32_flow_leave_matplotlib_as_found(tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt

    rc, backend = dict(matplotlib.rcParams), matplotlib.get_backend()
    torch.manual_seed(0)
    flow = Flow(pyro_flows.real_nvp(2, num_layers=2, hidden_dims=(8,)))
    data = flow.sample((100,))
    grids = []

    def log_density(x):
        grids.append(x)
        return flow.log_prob(x)

    plots.plot_2d(data, data, log_density, str(tmp_path / "2d.png"), resolution=20)
    assert grids[-1].dtype == torch.float32 and grids[-1].shape == (400, 2)
    one_d = Flow(pyro_flows.cdf_flow(3))
    plots.plot_1d(one_d.sample((100,)), one_d.log_prob, str(tmp_path / "1d.png"))
    assert (tmp_path / "2d.png").stat().st_size > 0 and (tmp_path / "1d.png").stat().st_size > 0
    assert plt.get_fignums() == []
    assert matplotlib.get_backend() == backend and dict(matplotlib.rcParams) == rc


def test_plot_1d_of_constant_data_spans_an_interval(tmp_path):
    grids = []

    def log_density(x):
        grids.append(x)
        return torch.zeros(len(x), dtype=x.dtype)

    plots.plot_1d(torch.full((20,), 3.0), log_density, str(tmp_path / "1d.png"))
    assert float(grids[0].min()) < 3.0 < float(grids[0].max())


def test_plot_of_no_records_does_not_warn(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.plot_nll_curves([], str(tmp_path / "curves.png"))


@pytest.mark.parametrize(
    "shape, message",
    [
        ((0, 1, 4, 4), r"at least one image"),
        ((3, 2, 4, 4), r"1 \(grey\) or 3 \(RGB\) channels, got 2"),
        ((3, 4, 4), r"images of shape \(N, C, H, W\), got shape \(3, 4, 4\)"),
    ],
)
def test_plot_image_grid_names_bad_input(tmp_path, shape, message):
    with pytest.raises(ValueError, match=message):
        plots.plot_image_grid(torch.rand(shape), str(tmp_path / "grid.png"))
