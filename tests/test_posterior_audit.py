"""Audit of the amortized posterior (pyro_flows.infer.posterior): Z(x), rejection and
log_prob against an exact truncated Gaussian for several observations at once, the
standardization of constant columns, the estimate of Z under a change of draws or
dtype, the support on another device, empty batches and the errors for bad input."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal, Uniform, constraints

from pyro_flows.builders import conditional_real_nvp
from pyro_flows.infer import ConditionalPosterior, fit_posterior

BOX = Independent(Uniform(-torch.ones(2), torch.ones(2)), 1)


def _gaussian_posterior(num_normalizing_draws=100_000):
    """A posterior whose q(theta | x) is exactly Gaussian with a mean and scale per x: a
    conditional RealNVP whose conditioners see the context but not the coordinates they
    condition on is an elementwise affine map z -> a(x) z + b(x). Returns the posterior
    (box prior, reject) and the exact mean and sd of the flow's Gaussian for x."""
    torch.manual_seed(0)
    flow = conditional_real_nvp(2, 1, num_layers=2, hidden_dims=(8,)).double()
    with torch.no_grad():
        for name, p in flow.named_parameters():
            p.copy_(0.5 * torch.randn_like(p))
            if name.endswith("conditioner.0.weight"):
                p[:, :1] = 0.0  # the coupled coordinate: the map stays affine in z
    posterior = ConditionalPosterior(
        flow,
        torch.tensor([0.6, -0.3], dtype=torch.float64),
        torch.tensor([0.3, 0.25], dtype=torch.float64),
        torch.zeros(1, dtype=torch.float64),
        torch.ones(1, dtype=torch.float64),
        BOX.support,
        reject=True,
    )
    posterior.num_normalizing_draws = num_normalizing_draws

    def exact(x):
        with torch.no_grad():
            f = flow.condition(x)
            zeros = torch.zeros(*x.shape[:-1], 2, dtype=torch.float64)
            b = f(zeros)
            a = f(zeros + 1) - b
        return posterior.theta_loc + posterior.theta_scale * b, posterior.theta_scale * a.abs()

    return posterior, exact


def test_z_log_prob_and_rejection_match_the_exact_truncated_gaussian_for_several_x():
    posterior, exact = _gaussian_posterior()
    x = torch.tensor([[-1.5], [0.0], [1.2]], dtype=torch.float64)
    mean, sd = exact(x)
    gauss = Normal(mean, sd)
    z_exact = (gauss.cdf(torch.ones(2)) - gauss.cdf(-torch.ones(2))).prod(-1)
    # the three observations have different posteriors, each leaking out of the box
    # (Z = 0.37, 0.61, 0.55)
    assert z_exact.max() < 0.7 and z_exact.max() - z_exact.min() > 0.2, z_exact
    torch.manual_seed(1)
    z = posterior.log_normalizer(x).exp()
    se = (z_exact * (1 - z_exact) / posterior.num_normalizing_draws).sqrt()
    assert ((z - z_exact).abs() < 5 * se).all(), (z, z_exact)
    # log_prob: every theta against every x, renormalized per x
    theta = torch.tensor([[0.1, 0.2], [-0.9, 0.95], [0.7, -0.4], [1.5, 0.0]], dtype=torch.float64)
    with torch.no_grad():
        log_q = posterior.log_prob(theta.unsqueeze(-2), x)
    reference = gauss.log_prob(theta.unsqueeze(-2)).sum(-1) - z_exact.log()
    assert log_q.shape == (4, 3)
    torch.testing.assert_close(log_q[:3], reference[:3], atol=0.01, rtol=0)
    assert (log_q[3] == -math.inf).all()
    # rejection: each x's draws have the truncated normal's mean, per coordinate
    draws = posterior.sample(x, 20_000)
    assert draws.shape == (20_000, 3, 2) and (draws.abs() <= 1).all()
    alpha, beta = (-1 - mean) / sd, (1 - mean) / sd
    std = Normal(torch.zeros((), dtype=torch.float64), 1.0)
    pdf = lambda v: std.log_prob(v).exp()  # noqa: E731
    mass = std.cdf(beta) - std.cdf(alpha)
    truncated_mean = mean + sd * (pdf(alpha) - pdf(beta)) / mass
    truncated_var = sd**2 * (
        1 + (alpha * pdf(alpha) - beta * pdf(beta)) / mass - ((pdf(alpha) - pdf(beta)) / mass) ** 2
    )
    tolerance = 5 * (truncated_var / 20_000).sqrt()
    assert ((draws.mean(0) - truncated_mean).abs() < tolerance).all(), (draws.mean(0), truncated_mean)


def test_a_new_number_of_normalizing_draws_makes_a_new_estimate_of_z():
    """Z(x) is kept between calls of log_prob; a larger ``num_normalizing_draws`` set for a
    better estimate was ignored, and the one-draw estimate (always 1: 0 or 1 inside,
    clamped to at least one) stayed instead of Z = 0.60."""
    posterior, exact = _gaussian_posterior(num_normalizing_draws=1)
    x = torch.tensor([0.3], dtype=torch.float64)
    mean, sd = exact(x)
    gauss = Normal(mean, sd)
    z_exact = float((gauss.cdf(torch.ones(2)) - gauss.cdf(-torch.ones(2))).prod())
    theta = torch.tensor([0.2, -0.1], dtype=torch.float64)
    with torch.no_grad():
        unnormalized = float(posterior.log_prob(theta, x, normalize=False))
        torch.manual_seed(0)
        posterior.log_prob(theta, x)  # a rough estimate from one draw
        posterior.num_normalizing_draws = 200_000
        log_q = float(posterior.log_prob(theta, x))
    assert abs(math.exp(unnormalized - log_q) - z_exact) < 0.005, (math.exp(unnormalized - log_q), z_exact)


@pytest.mark.parametrize("bad", [0, -5, 1e5, 2.5, True])
def test_num_normalizing_draws_must_be_a_positive_int(bad):
    posterior, _ = _gaussian_posterior()
    posterior.num_normalizing_draws = bad
    x = torch.tensor([0.3], dtype=torch.float64)
    # with 0 draws Z was inf and log_prob -inf at every point, silently
    with pytest.raises(ValueError, match="num_normalizing_draws must be an int >= 1"):
        posterior.log_prob(torch.zeros(2, dtype=torch.float64), x)


def test_moving_the_posterior_to_another_dtype_makes_a_new_estimate_of_z():
    posterior, _ = _gaussian_posterior(num_normalizing_draws=1000)
    posterior.float()
    x = torch.tensor([0.3])
    theta = torch.tensor([0.2, -0.1])
    with torch.no_grad():
        posterior.log_prob(theta, x)
        assert posterior._z_cache[2].dtype == torch.float32
        posterior.double()
        estimates = []
        estimate = posterior.log_normalizer
        posterior.log_normalizer = lambda x: estimates.append(x) or estimate(x)
        log_q = posterior.log_prob(theta.double(), x.double())
    # the float32 estimate was reused for the float64 posterior (torch.equal compares a
    # float32 x and a float64 x as equal)
    assert len(estimates) == 1 and estimates[0].dtype == torch.float64
    assert log_q.dtype == torch.float64 and posterior._z_cache[2].dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("bounded", ["reject", "transform"])
def test_a_bounded_posterior_moved_to_the_gpu_scores_and_samples_there(bounded):
    # the box's bounds (CPU tensors of shape (2,)) stayed behind: comparing them with draws
    # on the GPU raised a device mismatch
    torch.manual_seed(0)
    theta = BOX.sample((300,))
    x = theta.sum(-1, keepdim=True) + 0.1 * torch.randn(300, 1)
    posterior = fit_posterior((theta, x), BOX, max_epochs=2, num_layers=2, hidden_dims=(16,), bounded=bounded)
    posterior.num_normalizing_draws = 1000
    query = torch.tensor([[0.1, 0.2], [0.5, -0.5], [1.5, 0.0]])
    with torch.no_grad():
        cpu = posterior.log_prob(query, torch.tensor([0.3]), normalize=False)
        gpu = posterior.to("cuda")
        on_gpu = gpu.log_prob(query.cuda(), torch.tensor([0.3], device="cuda"), normalize=False)
        draws = gpu.sample(torch.tensor([[0.3], [-0.5]], device="cuda"), 200)
        log_z = gpu.log_prob(query.cuda(), torch.tensor([0.3], device="cuda"))
    torch.testing.assert_close(on_gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)
    assert draws.is_cuda and (draws.abs() <= 1).all() and log_z.is_cuda and log_z[2] == -math.inf


def test_constant_columns_are_left_unscaled():
    """A constant x column (a summary statistic the simulations never move) and a constant
    theta column: in float32 the mean of 180 copies of 0.3 is rounded, their standard
    deviation came out 3e-8 instead of 0, and a change of 1e-3 of such an x entry became
    a context input of 3e4."""
    torch.manual_seed(0)
    theta = torch.randn(200, 3)
    theta[:, 2] = 0.7
    x = torch.cat([theta[:, :2] + 0.3 * torch.randn(200, 2), torch.full((200, 1), 0.3)], -1)
    posterior = fit_posterior((theta, x), max_epochs=3, num_layers=2, hidden_dims=(16,))
    assert posterior.x_scale[2] == 1 and posterior.x_loc[2] == torch.tensor(0.3)
    assert posterior.theta_scale[2] == 1 and posterior.theta_loc[2] == torch.tensor(0.7)
    assert (posterior.x_scale[:2] > 0.5).all()  # the informative columns are standardized
    query = torch.tensor([[0.2, -0.4, 0.7], [1.0, 0.5, 0.7]])
    x_obs = torch.tensor([0.1, -0.2, 0.3])
    with torch.no_grad():
        log_q = posterior.log_prob(query, x_obs)
        nudged = posterior.log_prob(query, x_obs + torch.tensor([0.0, 0.0, 1e-3]))
    assert torch.isfinite(log_q).all()
    assert (log_q - nudged).abs().max() < 0.05, (log_q, nudged)


@pytest.mark.parametrize("prior", [None, BOX], ids=["unbounded", "box"])
def test_empty_batches_and_zero_draws(prior):
    """``num_samples=0`` (documented as allowed) and empty batches of theta or x: torch's
    support check could not reshape an empty batch and raised."""
    torch.manual_seed(0)
    theta = BOX.sample((60,))
    posterior = fit_posterior(
        (theta, theta + 0.1 * torch.randn(60, 2)), prior, max_epochs=1, num_layers=2, hidden_dims=(8,)
    )
    posterior.num_normalizing_draws = 1000
    x = torch.tensor([0.1, 0.2])
    with torch.no_grad():
        assert posterior.sample(x, 0).shape == (0, 2)
        assert posterior.sample(torch.zeros(0, 2), 3).shape == (3, 0, 2)
        assert posterior.sample(torch.zeros(4, 2), (2, 0)).shape == (2, 0, 4, 2)
        assert posterior.log_prob(torch.zeros(0, 2), x).shape == (0,)
        assert posterior.log_prob(torch.zeros(3, 1, 2), torch.zeros(0, 2)).shape == (3, 0)
        assert posterior.log_normalizer(torch.zeros(0, 2)).shape == (0,)
        # and the non-empty answers are unchanged
        log_q = posterior.log_prob(torch.tensor([[0.1, 0.1], [2.0, 0.0]]), x)
    assert torch.isfinite(log_q[0]) and (log_q[1] == -math.inf) == (prior is not None)


def test_log_prob_names_batch_shapes_that_do_not_broadcast():
    posterior, _ = _gaussian_posterior(num_normalizing_draws=100)
    theta = torch.zeros(5, 2, dtype=torch.float64)
    x = torch.zeros(4, 1, dtype=torch.float64)
    with pytest.raises(
        ValueError, match=r"theta of shape \(5, 2\) and x of shape \(4, 1\).*do not broadcast"
    ):
        posterior.log_prob(theta, x)
    assert posterior.log_prob(theta.unsqueeze(-2), x).shape == (5, 4)


def test_conditional_real_nvp_takes_integer_context_sizes_but_not_a_bool():
    with pytest.raises(ValueError, match="positive int context_dim, got True"):
        conditional_real_nvp(3, True)
    flow = conditional_real_nvp(3, np.int64(2), num_layers=2, hidden_dims=(8,))
    assert flow.context_dim == 2 and type(flow.context_dim) is int
    y = flow.condition(torch.zeros(4, 2))(torch.ones(4, 3))
    assert torch.equal(y, torch.ones(4, 3))  # a new conditional flow is the identity


def test_a_state_dict_loads_only_into_a_posterior_of_the_same_support_and_reject(tmp_path):
    """The weights of a rejection posterior on a box, loaded into a posterior built with
    the defaults (no support, no rejection), gave another density without a word; the
    state now records both and such a load is an error. A state saved before keeps
    loading."""
    import io

    posterior, _ = _gaussian_posterior(num_normalizing_draws=20_000)
    buffer = io.BytesIO()
    torch.save(posterior.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    x = torch.tensor([[0.3]], dtype=torch.float64)
    theta = torch.tensor([[0.5, 0.2]], dtype=torch.float64)

    def rebuilt(support=BOX.support, reject=True):
        torch.manual_seed(1)
        flow = conditional_real_nvp(2, 1, num_layers=2, hidden_dims=(8,)).double()
        locs = [torch.zeros(n, dtype=torch.float64) for n in (2, 2, 1, 1)]
        return ConditionalPosterior(flow, *locs, support, reject=reject)

    same = rebuilt()
    same.load_state_dict(state)
    same.num_normalizing_draws = 20_000
    torch.manual_seed(2)
    expected = posterior.log_prob(theta, x)
    torch.manual_seed(2)
    assert torch.equal(same.log_prob(theta, x), expected)
    with pytest.raises(ValueError, match="reject=True.*this posterior has support _Real"):
        rebuilt(support=constraints.real_vector, reject=False).load_state_dict(state)
    wider = Independent(Uniform(-torch.ones(2), 2 * torch.ones(2)), 1).support
    with pytest.raises(ValueError, match=r"upper_bound=\[2.0, 2.0\]"):
        rebuilt(support=wider).load_state_dict(state)
    with pytest.raises(ValueError, match="reject=False"):
        rebuilt(reject=False).load_state_dict(state)
    older = {k: v for k, v in state.items() if not k.endswith("_extra_state")}
    rebuilt().load_state_dict(older)


def test_num_simulations_with_pairs_must_match_them():
    """With pairs, ``num_simulations`` was ignored silently (a user asking for the first
    100 of 300 simulations trained on all 300)."""
    torch.manual_seed(0)
    theta = torch.randn(300, 2)
    x = theta + 0.1 * torch.randn(300, 2)
    with pytest.raises(ValueError, match="num_simulations=100 is for a simulator; the pairs given hold 300"):
        fit_posterior((theta, x), num_simulations=100, max_epochs=1)
    posterior = fit_posterior((theta, x), num_simulations=300, max_epochs=1, seed=0)
    assert torch.isfinite(posterior.log_prob(theta[:5], x[:5])).all()
