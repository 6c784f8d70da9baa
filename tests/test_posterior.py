"""Amortized posteriors (pyro_flows.infer.fit_posterior): accuracy against an exact
posterior, normalization, the standardization's log-determinant, shapes and bad input."""

import math

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Uniform

from pyro_flows.infer import ConditionalPosterior, fit_posterior
from pyro_flows.transforms import ConditionalFFJORD

# Linear Gaussian model: theta ~ N(0, I_2), x = A theta + SIGMA * eps, eps ~ N(0, I_3);
# the posterior is Gaussian with precision I + A^T A / SIGMA^2.
A = torch.tensor([[1.0, 0.5], [-0.3, 1.0], [0.8, -0.6]])
SIGMA = 0.5
PRIOR = MultivariateNormal(torch.zeros(2), torch.eye(2))


def simulator(theta):
    return theta @ A.T + SIGMA * torch.randn(len(theta), 3)


def exact_posterior(x):
    cov = torch.linalg.inv(torch.eye(2) + A.T @ A / SIGMA**2)
    return MultivariateNormal((x @ A) / SIGMA**2 @ cov, cov)


def _tiny(pairs_or_simulator, prior=None, num=None, **kwargs):
    options = dict(num_layers=4, hidden_dims=(32, 32), seed=0)
    return fit_posterior(pairs_or_simulator, prior, num, **{**options, **kwargs})


@pytest.mark.parametrize(
    "options, epochs, mean_atol",
    [
        # an untrained flow (the standardized prior for every x) is at KL 1.7; 1000
        # simulations and 20 epochs reach about 0.07
        ({"num_layers": 4, "hidden_dims": (32, 32)}, 20, 0.05),
        # flow matching: 60 epochs reach 0.06-0.10, and the draws (through the ODE) are
        # within half a posterior sd (0.36) of the exact mean, as such a KL allows (the
        # prior's mean is 1.6 away)
        ({"flow": "ffjord", "hidden_dims": (64, 64)}, 60, 0.18),
    ],
    ids=["real_nvp", "ffjord"],
)
def test_fit_posterior_is_close_to_the_exact_linear_gaussian_posterior(options, epochs, mean_atol):
    posterior = fit_posterior(simulator, PRIOR, 1000, max_epochs=epochs, seed=0, **options)
    assert isinstance(posterior, ConditionalPosterior)
    flow_matching = options.get("flow") == "ffjord"
    assert isinstance(posterior.flow, ConditionalFFJORD) == flow_matching
    torch.manual_seed(1)
    x_obs = simulator(PRIOR.sample((20,)))
    exact = exact_posterior(x_obs)
    theta = exact.sample((500,))
    with torch.no_grad():
        kl = (exact.log_prob(theta) - posterior.log_prob(theta, x_obs)).mean()
    assert kl < 0.15, kl
    draws = posterior.sample(x_obs[0], 2000)
    assert torch.allclose(draws.mean(0), exact.mean[0], atol=mean_atol), (draws.mean(0), exact.mean[0])
    history = posterior.history
    assert history["epochs"] == epochs and len(history["validation"]) == epochs
    assert history["validation"][history["best_epoch"] - 1] == min(history["validation"])
    if flow_matching:  # flow-matching regressions (non-negative), not negative log-likelihoods
        assert min(history["train"]) > 0


def test_flow_matching_posterior_takes_one_dimension_and_integrates_to_one():
    torch.manual_seed(0)
    theta = 2.0 * torch.randn(800, 1) + 3.0
    x = theta + torch.randn(800, 1)
    with pytest.raises(ValueError, match='couplings need at least 2 .flow="ffjord" takes one'):
        fit_posterior((theta, x), max_epochs=1)
    posterior = fit_posterior(
        (theta, x), flow="ffjord", hidden_dims=(32, 32), max_epochs=20, dtype=torch.float64
    )
    grid = torch.linspace(-15.0, 21.0, 3001, dtype=torch.float64).unsqueeze(-1)
    with torch.no_grad():
        density = posterior.log_prob(grid, torch.tensor([4.0])).exp()
    mass = float(density.sum() * (grid[1] - grid[0]))
    assert abs(mass - 1) < 1e-3, mass


def test_flow_matching_posterior_with_a_bounded_prior_rejects_and_renormalizes():
    prior = Independent(Uniform(-torch.ones(1), torch.ones(1)), 1)
    torch.manual_seed(0)
    theta = prior.sample((800,))
    x = theta + 0.1 * torch.randn(800, 1)
    posterior = fit_posterior((theta, x), prior, flow="ffjord", hidden_dims=(32, 32), max_epochs=10)
    posterior.num_normalizing_draws = 20_000
    x_obs = torch.tensor([0.95])
    grid = torch.linspace(-1 + 1e-4, 1 - 1e-4, 2001).unsqueeze(-1)
    with torch.no_grad():
        density = posterior.log_prob(grid, x_obs).exp()
        draws = posterior.sample(x_obs, 500)
        outside = posterior.log_prob(torch.tensor([1.5]), x_obs)
    mass = float(density.sum() * (grid[1] - grid[0]))
    assert abs(mass - 1) < 0.03, mass
    assert outside == -math.inf and (draws.abs() < 1).all()


def test_fit_posterior_rejects_an_unknown_flow_and_a_bad_time_exponent():
    with pytest.raises(ValueError, match="flow must be one of real_nvp, ffjord"):
        fit_posterior((torch.randn(10, 2), torch.randn(10, 3)), flow="maf")
    with pytest.raises(ValueError, match="time_exponent must be a finite number > 0, got 0"):
        fit_posterior((torch.randn(10, 2), torch.randn(10, 3)), flow="ffjord", time_exponent=0.0)


def _grid(low, high, n=401):
    axis = torch.linspace(low, high, n, dtype=torch.float64)
    a, b = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([a, b], -1).reshape(-1, 2), (axis[1] - axis[0]) ** 2


def test_log_prob_integrates_to_one_in_the_original_units():
    theta = 3.0 * torch.randn(600, 2) + torch.tensor([10.0, -4.0])
    x = theta[:, :1] + torch.randn(600, 1)
    posterior = _tiny((theta, x), max_epochs=5, dtype=torch.float64)
    points, area = _grid(-20.0, 40.0)
    points = points + torch.tensor([0.0, -14.0], dtype=torch.float64)
    with torch.no_grad():
        mass = posterior.log_prob(points, torch.tensor([12.0])).exp().sum() * area
    assert abs(float(mass) - 1) < 1e-3, mass


@pytest.mark.parametrize("bounded", ["reject", "transform"])
def test_log_prob_with_a_bounded_prior_integrates_to_one_over_the_support(bounded):
    prior = Independent(Uniform(-torch.ones(2), torch.ones(2)), 1)
    theta = prior.sample((600,))
    x = theta.sum(-1, keepdim=True) + 0.1 * torch.randn(600, 1)
    posterior = _tiny((theta, x), prior, max_epochs=5, dtype=torch.float64, bounded=bounded)
    assert repr(posterior.support) == repr(prior.support)
    assert posterior.reject == (bounded == "reject")
    points, area = _grid(-1 + 1e-4, 1 - 1e-4, n=801)
    with torch.no_grad():
        mass = posterior.log_prob(points, torch.tensor([0.3])).exp().sum() * area
        outside = posterior.log_prob(torch.tensor([1.5, 0.0]), torch.tensor([0.3]))
        draws = posterior.sample(torch.tensor([0.3]), 500)
    assert abs(float(mass) - 1) < 1e-2, mass
    assert outside == -math.inf
    assert (draws.abs() < 1).all()


def test_a_posterior_at_the_edge_of_the_box_is_truncated_and_renormalized():
    """theta ~ U(0, 1)^2 observed with noise 0.05 next to the box's edge: the flow, fit to
    theta itself, puts mass outside the box; draws are rejected there and log_prob is
    renormalized by the flow's mass inside, so it integrates to one over the box."""
    prior = Independent(Uniform(torch.zeros(2), torch.ones(2)), 1)
    torch.manual_seed(0)
    theta = prior.sample((2000,))
    x = theta + 0.05 * torch.randn(2000, 2)
    posterior = _tiny((theta, x), prior, max_epochs=15, dtype=torch.float64)
    x_obs = torch.tensor([0.01, 0.5], dtype=torch.float64)
    torch.manual_seed(1)
    with torch.no_grad():
        log_z = posterior.log_normalizer(x_obs)
        draws = posterior.sample(x_obs, 2000)
        points, area = _grid(1e-4, 1 - 1e-4, n=401)
        log_q = posterior.log_prob(points, x_obs)
        unnormalized = posterior.log_prob(points, x_obs, normalize=False)
    # a real leak: the flow's mass inside the box is well below one
    assert float(log_z.exp()) < 0.9, log_z.exp()
    assert ((draws > 0) & (draws < 1)).all()
    assert torch.isfinite(log_q).all() and torch.isfinite(unnormalized).all()
    mass = float(log_q.exp().sum() * area)
    assert abs(mass - 1) < 0.02, mass
    # without the renormalization the mass inside is the flow's acceptance rate
    assert abs(float(unnormalized.exp().sum() * area) - float(log_z.exp())) < 0.02
    # the draws follow the renormalized density: the share of draws in the left half
    left = float((log_q.exp() * (points[:, 0] < 0.5)).sum() * area)
    assert abs(float((draws[:, 0] < 0.5).double().mean()) - left) < 0.04
    # scoring in batches against the same x reuses one estimate of Z (no new estimate is
    # drawn; the values agree with one call up to the rounding of a different batch size
    # in the flow's matrix products), and a change of the weights makes a new one
    estimates = []
    estimate = posterior.log_normalizer
    posterior.log_normalizer = lambda x: estimates.append(x) or estimate(x)
    with torch.no_grad():
        halves = torch.cat([posterior.log_prob(p, x_obs) for p in points.chunk(2)])
        assert estimates == []
        torch.testing.assert_close(halves, log_q, rtol=1e-12, atol=1e-12)
        before = posterior._log_normalizer_cached(x_obs)
        next(posterior.parameters()).mul_(0.5)
        torch.manual_seed(2)
        after = posterior._log_normalizer_cached(x_obs)
    assert len(estimates) == 1 and not torch.equal(before, after) and torch.isfinite(after).all()


def test_fit_posterior_rejects_an_unknown_bounded_option():
    prior = Independent(Uniform(-torch.ones(2), torch.ones(2)), 1)
    with pytest.raises(ValueError, match="bounded"):
        fit_posterior((prior.sample((20,)), torch.randn(20, 1)), prior, bounded="clip")


def test_the_standardization_log_det_is_in_log_prob():
    theta = torch.randn(400, 2, dtype=torch.float64)
    x = theta + 0.3 * torch.randn(400, 2, dtype=torch.float64)
    scale, shift = (
        torch.tensor([100.0, 0.01], dtype=torch.float64),
        torch.tensor([5.0, -3.0], dtype=torch.float64),
    )
    unit = _tiny((theta, x), max_epochs=3, dtype=torch.float64)
    scaled = _tiny((theta * scale + shift, x), max_epochs=3, dtype=torch.float64)
    query = torch.randn(7, 2, dtype=torch.float64)
    with torch.no_grad():
        expected = unit.log_prob(query, x[:7]) - scale.log().sum()
        actual = scaled.log_prob(query * scale + shift, x[:7])
        # the same density from the flow's own standardized distribution
        standardized = (query * scale + shift - scaled.theta_loc) / scaled.theta_scale
        by_hand = (
            scaled.standardized_distribution(x[:7]).log_prob(standardized) - scaled.theta_scale.log().sum()
        )
    # identical standardized problems give identical flows, so the densities differ by
    # exactly log|det| of theta -> scale * theta + shift
    assert torch.allclose(actual, expected, atol=1e-6), actual - expected
    assert torch.allclose(actual, by_hand, atol=1e-10)


def test_sample_and_log_prob_shapes():
    posterior = _tiny((torch.randn(200, 2), torch.randn(200, 3)), max_epochs=1)
    assert posterior.sample(torch.zeros(3), 5).shape == (5, 2)
    assert posterior.sample(torch.zeros(4, 3), 5).shape == (5, 4, 2)
    assert posterior.log_prob(torch.zeros(6, 2), torch.zeros(3)).shape == (6,)
    assert posterior.log_prob(torch.zeros(6, 1, 2), torch.zeros(4, 3)).shape == (6, 4)
    fresh = ConditionalPosterior(
        _tiny((torch.randn(200, 2), torch.randn(200, 3)), max_epochs=1, seed=1).flow,
        *(torch.zeros(2), torch.ones(2), torch.zeros(3), torch.ones(3)),
    )
    fresh.load_state_dict(posterior.state_dict())
    assert torch.equal(
        fresh.log_prob(torch.ones(2), torch.ones(3)), posterior.log_prob(torch.ones(2), torch.ones(3))
    )


@pytest.mark.parametrize(
    "theta, x, message",
    [
        (torch.randn(10, 2), torch.randn(9, 3), "10 theta but 9 x"),
        (
            torch.randn(10, 2),
            torch.randn(10, 3).index_put_((torch.tensor(4),), torch.tensor(math.nan)),
            "1 of 10.*x",
        ),
        (torch.full((10, 2), math.inf), torch.randn(10, 3), "10 of 10.*theta"),
        (torch.randn(10), torch.randn(10, 3), r"theta has shape \(10,\)"),
        (torch.randn(10, 1), torch.randn(10, 3), "dimension 1"),
        (torch.randn(10, 2, 2), torch.randn(10, 3), "num_simulations, dim"),
    ],
)
def test_fit_posterior_rejects_bad_pairs(theta, x, message):
    with pytest.raises(ValueError, match=message):
        fit_posterior((theta, x), max_epochs=1)


def test_fit_posterior_rejects_a_simulator_without_prior_and_theta_outside_the_prior():
    with pytest.raises(ValueError, match="needs a prior"):
        fit_posterior(simulator, num_simulations=10)
    with pytest.raises(ValueError, match="num_simulations"):
        fit_posterior(simulator, PRIOR)
    prior = Independent(Uniform(-torch.ones(2), torch.ones(2)), 1)
    with pytest.raises(ValueError, match="outside the prior's support"):
        fit_posterior((torch.full((10, 2), 2.0), torch.randn(10, 3)), prior, max_epochs=1)
    with pytest.raises(TypeError, match="simulator .* or a pair"):
        fit_posterior(torch.randn(10, 2))


def test_a_fitted_posterior_names_a_bad_observation():
    posterior = _tiny((torch.randn(50, 2), torch.randn(50, 3)), max_epochs=1)
    with pytest.raises(ValueError, match=r"x of shape \(\*batch, 3\), got \(2,\)"):
        posterior.sample(torch.zeros(2), 3)
    with pytest.raises(ValueError, match="NaN"):
        posterior.log_prob(torch.zeros(2), torch.tensor([0.0, math.nan, 0.0]))
    with pytest.raises(ValueError, match=r"theta of shape \(\*batch, 2\)"):
        posterior.log_prob(torch.zeros(3), torch.zeros(3))


def test_the_tutorial_and_the_benchmark_run_end_to_end(tmp_path):
    from benchmarks.sbi import main as benchmark
    from examples.sbi_posterior import main as tutorial

    tutorial(["--smoke", "--out", str(tmp_path)])
    assert (tmp_path / "sbi_posterior.png").exists()
    assert "| (0.0, 0.0) |" in (tmp_path / "sbi_posterior.md").read_text()
    rows = benchmark(["--smoke", "--methods", "ours", "--out", str(tmp_path)])
    assert {r["task"] for r in rows} == {"linear Gaussian", "two moons"}
    assert all(0.0 <= r["c2st"] <= 1.0 and math.isfinite(r["kl"]) for r in rows)
    # the flow-matching posterior, named as such in the record
    kwargs = '{"flow": "ffjord", "hidden_dims": [16]}'
    argv = ["--smoke", "--methods", "ours", "--tasks", "linear Gaussian", "--fit-kwargs", kwargs]
    (row,) = benchmark([*argv, "--out", str(tmp_path), "--stem", "fm"])
    assert row["method"] == "ours (fit_posterior, ffjord)" and math.isfinite(row["kl"])


def test_the_two_moons_reference_is_normalized_and_matches_its_likelihood():
    from benchmarks.sbi import TwoMoonsReference, two_moons_log_likelihood

    x = torch.tensor([0.1, -0.2])
    fine, coarse = TwoMoonsReference(x, cells=2000), TwoMoonsReference(x, cells=1000)
    # the midpoint rule's error falls 4x when the cells halve: 0.0023 between these two
    assert abs(fine.log_z - coarse.log_z) < 5e-3
    draws = fine.sample(500)
    assert (draws.abs() <= 1).all()
    assert torch.isfinite(fine.log_prob(draws)).all()
    assert torch.isfinite(two_moons_log_likelihood(draws.double(), x.double())).all()


def test_a_plateau_decays_the_learning_rate_before_stopping():
    theta, x = torch.randn(100, 2), torch.randn(100, 2)  # no signal: the held-out loss stalls soon
    plain = _tiny((theta, x), patience=2, max_epochs=60)
    decayed = _tiny((theta, x), patience=2, max_epochs=60, lr_decays=2)
    assert plain.history["epochs"] < 60
    assert decayed.history["epochs"] >= plain.history["epochs"] + 2
    assert min(decayed.history["validation"]) <= min(plain.history["validation"]) + 1e-6


def test_an_unbounded_prior_written_with_to_event_is_recognised_as_unbounded():
    """``Normal(zeros(2), 1).to_event(1)`` has support ``independent(real, 1)``, not the
    object ``real_vector``: it is unbounded all the same, so no rejection and no Z(x)."""
    import pyro.distributions as dist
    from torch.distributions import constraints

    prior = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    assert prior.support is not constraints.real_vector
    pairs = (prior.sample((40,)), torch.randn(40, 3))
    plain = _tiny(pairs, max_epochs=1)
    query = torch.randn(5, 2)
    for bounded in ("reject", "transform"):
        posterior = _tiny(pairs, prior, max_epochs=1, bounded=bounded)
        assert not posterior.reject and posterior.support is constraints.real_vector
        with torch.no_grad():
            assert torch.equal(
                posterior.log_prob(query, torch.zeros(3)), plain.log_prob(query, torch.zeros(3))
            )
    # a posterior built directly with such a support does not reject either
    direct = ConditionalPosterior(
        plain.flow,
        *(torch.zeros(2), torch.ones(2), torch.zeros(3), torch.ones(3)),
        support=constraints.independent(constraints.real, 1),
        reject=True,
    )
    assert not direct.reject and len(direct.distribution(torch.zeros(3)).transforms) == 1


@pytest.mark.parametrize("bounded", ["reject", "transform"])
def test_a_simplex_prior_is_refused_at_fit_time(bounded):
    import pyro.distributions as dist

    prior = dist.Dirichlet(torch.ones(3))
    pairs = (prior.sample((20,)), torch.randn(20, 2))
    with pytest.raises(
        ValueError, match=r"Simplex\(\) is a 2-dimensional set .*Dirichlet/simplex.*no density on R\^3"
    ):
        fit_posterior(pairs, prior, max_epochs=1, bounded=bounded)
    # nor is a discrete prior, whose support a flow's draws never land on
    poisson = dist.Poisson(torch.full((2,), 3.0)).to_event(1)
    with pytest.raises(ValueError, match="discrete"):
        fit_posterior((poisson.sample((20,)), torch.randn(20, 2)), poisson, max_epochs=1, bounded=bounded)


def test_fit_posterior_leaves_the_global_rng_alone_and_is_reproducible_from_seed():
    pairs = (torch.randn(30, 2), torch.randn(30, 3))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _tiny(pairs, max_epochs=1)
    assert torch.equal(torch.rand(3), expected)  # the caller's stream goes on as without the fit
    # two fits after different global seeds: the same fit (with a simulator, whose draws are
    # seeded too), and different draws after them
    fits, after = [], []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        fits.append(_tiny(simulator, PRIOR, 30, max_epochs=1))
        after.append(torch.rand(1))
    assert not torch.equal(after[0], after[1])
    for key, value in fits[0].state_dict().items():
        if key.endswith("_extra_state"):  # the support and reject, not weights
            assert repr(value) == repr(fits[1].state_dict()[key])
        else:
            assert torch.equal(value, fits[1].state_dict()[key]), key
    assert fits[0].history["train"] == fits[1].history["train"]


@pytest.mark.parametrize(
    "prior",
    [
        Independent(Uniform(torch.zeros(3), torch.ones(3)), 1),
        Independent(torch.distributions.LogNormal(torch.zeros(3), torch.ones(3)), 1),
    ],
    ids=["box", "lognormal"],
)
def test_a_prior_of_another_dimension_than_theta_is_refused(prior):
    theta = torch.rand(20, 2) + 0.1
    with pytest.raises(ValueError, match=r"prior draws theta of shape \(3,\).*theta has dimension 2"):
        fit_posterior((theta, torch.randn(20, 1)), prior, max_epochs=1)


def test_a_scalar_prior_holds_for_each_coordinate():
    theta = torch.rand(20, 2)
    posterior = _tiny((theta, torch.randn(20, 1)), Uniform(0.0, 1.0), max_epochs=1)
    assert posterior.reject
    assert posterior.log_prob(torch.tensor([0.5, 1.5]), torch.zeros(1)) == -math.inf


@pytest.mark.parametrize(
    "num, options, message",
    [
        (0, {}, "got 0 pairs .theta, x.; need at least 3"),
        (2, {}, "got 2 pairs .theta, x.; need at least 3"),
        (10, {"validation_fraction": 0.9}, "holds out 9 of 10 pairs and leaves 1 to train on"),
        (10, {"batch_size": 0}, "batch_size must be an int >= 1, got 0"),
    ],
    ids=["empty", "two pairs", "too few to train", "batch_size 0"],
)
def test_fit_posterior_names_too_few_pairs_and_a_bad_batch_size(num, options, message):
    with pytest.raises(ValueError, match=message):
        fit_posterior((torch.randn(num, 2), torch.randn(num, 3)), max_epochs=1, **options)


def test_sample_wants_an_int_or_a_shape_and_log_prob_names_nan():
    posterior = _tiny((torch.randn(30, 2), torch.randn(30, 3)), max_epochs=1)
    for bad in (2.5, True, -1, (2, 0.5)):
        with pytest.raises(TypeError, match="num_samples must be an int >= 0 or a sample shape"):
            posterior.sample(torch.zeros(3), bad)
    assert posterior.sample(torch.zeros(4, 3), (2, 5)).shape == (2, 5, 4, 2)
    with pytest.raises(ValueError, match="theta has NaN entries"):
        posterior.log_prob(torch.tensor([[0.0, 0.0], [math.nan, 1.0]]), torch.zeros(3))
    # an infinite theta is a point of density zero
    log_q = posterior.log_prob(torch.tensor([[0.0, 0.0], [math.inf, 1.0]]), torch.zeros(3))
    assert torch.isfinite(log_q[0]) and log_q[1] == -math.inf
