"""Audit of the guide tools: the spline guide restored from a saved store and on a model
with one latent dimension, the parameter-store average, the training loop's weight
average and PSIS k-hat on degenerate weights."""

import math

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.infer.autoguide.initialization import init_to_value

from pyro_flows.infer import AutoSplineFlow, ParameterAverage, guide_spline_flow, psis_khat
from pyro_flows.train.averaging import WeightAverage
from pyro_flows.transforms import ElementwiseSpline

Y = torch.tensor([1.0, 2.0, -1.0])


def _schools():
    mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
    tau = pyro.sample("tau", dist.HalfCauchy(2.0))
    with pyro.plate("school", 3):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, 1.0), obs=Y)


# ---------------------------------------------------------------- the spline guide
def test_a_linear_spline_guide_restored_from_a_saved_store_draws_the_same(tmp_path):
    # the linear map's permutation and signs are buffers, not in the store: they were drawn
    # from the global random stream, so a rebuilt guide had another map (draws off by ~3)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoSplineFlow(_schools, num_layers=2, hidden_dims=(8,), linear=True)
    svi = SVI(_schools, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    for _ in range(5):
        svi.step()
    pyro.set_rng_seed(3)
    expected = Predictive(_schools, guide=guide, num_samples=5)()
    path = str(tmp_path / "store.pt")
    pyro.get_param_store().save(path)
    pyro.clear_param_store()
    pyro.set_rng_seed(123)  # another random state when the guide is rebuilt
    rebuilt = AutoSplineFlow(_schools, num_layers=2, hidden_dims=(8,), linear=True)
    pyro.get_param_store().load(path)
    rebuilt()  # sets the guide up (its initialisation draws random numbers)
    pyro.set_rng_seed(3)
    got = Predictive(_schools, guide=rebuilt, num_samples=5)()
    for name in ("mu", "tau", "theta"):
        assert torch.equal(got[name], expected[name]), (name, float((got[name] - expected[name]).abs().max()))


def _gamma_on_the_log_scale(u):
    # log-density of u = log x, x ~ Gamma(0.5, 1): skewed, its left tail heavy
    return 0.5 * u - u.exp() - math.lgamma(0.5)


def _gamma_model():
    pyro.sample("x", dist.Gamma(0.5, 1.0))


def _best_normal_kl() -> float:
    """KL(q || p) of the best normal q for the target above (a normal guide cannot go
    below it), by Gauss-Hermite quadrature, minimised over the location and log-scale."""
    from scipy.optimize import minimize

    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    weights = weights / weights.sum()

    def kl(m_log_s):
        m, log_s = m_log_s
        u = torch.tensor(m + math.exp(log_s) * nodes)
        log_q = -0.5 * torch.tensor(nodes) ** 2 - log_s - 0.5 * math.log(2 * math.pi)
        return float((torch.tensor(weights) * (log_q - _gamma_on_the_log_scale(u))).sum())

    return float(minimize(kl, np.array([-1.0, 0.0]), method="Nelder-Mead", options={"xatol": 1e-6}).fun)


def test_a_model_with_one_latent_dimension_gets_splines_not_a_normal():
    # with one coordinate there is nothing to couple: the guide used to drop every layer
    # and be a plain normal: KL 0.162 after the fit below (the best normal: 0.153), now 0.041
    assert [type(p).__name__ for p in guide_spline_flow(1, 4).parts] == ["ElementwiseSpline"] * 2
    assert len(guide_spline_flow(1, 2, layers="affine", linear=True).parts) == 0
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoSplineFlow(_gamma_model, num_layers=2, layers="spline", num_bins=6)
    guide()
    assert sum(isinstance(p, ElementwiseSpline) for p in guide.transform.parts) == 2
    elbo = Trace_ELBO(num_particles=16, vectorize_particles=True)
    svi = SVI(_gamma_model, guide, pyro.optim.Adam({"lr": 0.03}), elbo)
    for _ in range(150):
        svi.step()
    with torch.no_grad():
        q = guide.get_posterior()
        u = q.sample((20000,))
        kl = float((q.log_prob(u) - _gamma_on_the_log_scale(u[..., 0])).mean())
    best_normal = _best_normal_kl()
    assert 0.14 < best_normal < 0.16, best_normal
    assert kl < 0.5 * best_normal, (kl, best_normal)


# ---------------------------------------------------------------- ParameterAverage
def test_a_reshaped_parameter_is_refused_before_anything_is_written():
    # the mean of shape (2,) used to be broadcast silently into a parameter of shape (3,)
    # or, the other way round, to fail half-way and leave the earlier parameters averaged
    pyro.clear_param_store()
    store = pyro.get_param_store()
    pyro.param("a", torch.tensor(1.0))
    pyro.param("b", torch.tensor([1.0, 2.0]))
    average = ParameterAverage()
    average.update()
    store["a"].data.fill_(9.0)
    for new_b in (torch.tensor([5.0, 6.0, 7.0]), torch.tensor([5.0])):
        del store["b"]
        pyro.param("b", new_b)
        with pytest.raises(ValueError, match=r"'b' of shape \((3|1),\), but its mean has shape \(2,\)"):
            with average.applied():
                pass
        assert float(store["a"]) == 9.0
        assert torch.equal(store["b"], new_b)
    average.update()  # a new shape starts a new mean
    with average.applied():
        assert float(store["a"]) == 5.0 and torch.equal(store["b"], new_b)
    assert float(store["a"]) == 9.0


def test_a_parameter_created_inside_the_block_is_left_alone():
    # the restore used to look every averaged name up among those it had swapped: a
    # parameter deleted before the block and created in it raised KeyError at the exit
    pyro.clear_param_store()
    store = pyro.get_param_store()
    pyro.param("a", torch.tensor(1.0))
    pyro.param("b", torch.tensor(2.0))
    average = ParameterAverage()
    average.update()
    store["a"].data.fill_(3.0)
    average.update()
    del store["b"]
    with average.applied():
        assert float(store["a"]) == 2.0
        pyro.param("b", torch.tensor(7.0))
    assert float(store["a"]) == 3.0 and float(store["b"]) == 7.0


def test_the_mean_follows_a_store_moved_to_float64():
    # it stayed float32, so later float64 iterates were rounded: a mean of 1 + 1.5e-9 was 1
    pyro.clear_param_store()
    store = pyro.get_param_store()
    pyro.param("a", torch.tensor(1.0))
    average = ParameterAverage()
    average.update()
    del store["a"]
    pyro.param("a", torch.tensor(1.0, dtype=torch.float64))
    for step in (1, 2, 3):
        store["a"].data.fill_(1.0 + step * 1e-9)
        average.update()
    assert average.means["a"].dtype == torch.float64
    assert abs((float(average.means["a"]) - 1.0) - 1.5e-9) < 1e-15
    with average.applied():
        assert abs(float(store["a"]) - (1.0 + 1.5e-9)) < 1e-15
    assert float(store["a"]) == 1.0 + 3e-9


def test_a_constrained_parameter_is_averaged_unconstrained_as_documented():
    pyro.clear_param_store()
    store = pyro.get_param_store()
    average = ParameterAverage()
    for value in (1.0, 100.0):
        pyro.param("s", torch.tensor(value), constraint=constraints.positive)
        store._params["s"].data.fill_(math.log(value))
        average.update()
    with average.applied():
        assert math.isclose(float(pyro.param("s")), 10.0, rel_tol=1e-6)  # the geometric mean
    assert math.isclose(float(pyro.param("s")), 100.0, rel_tol=1e-6)


# ---------------------------------------------------------------- WeightAverage
def test_a_weight_average_of_another_decay_is_refused():
    # the decay in the state was ignored: the average went on with the new one's
    net = torch.nn.Linear(2, 1)
    average = WeightAverage(net, decay=0.99)
    for _ in range(3):
        with torch.no_grad():
            net.weight.add_(1.0)
        average.update()
    state = average.state_dict()
    other = WeightAverage(net, decay=0.5)
    with pytest.raises(ValueError, match="decay 0.99, this average's is 0.5"):
        other.load_state_dict(state)
    assert other.num_updates == 0 and other.shadow == []
    same = WeightAverage(net, decay=0.99)
    same.load_state_dict(state)
    assert same.num_updates == 3
    assert all(torch.equal(a, b) for a, b in zip(same.shadow, average.shadow, strict=True))


# ---------------------------------------------------------------- PSIS k-hat
def _standard_normal():
    pyro.sample("z", dist.Normal(0.0, 1.0))


def test_khat_of_a_guide_equal_to_the_posterior_is_minus_infinity():
    # every log-weight is 0: ArviZ finds no tail above its cutoff and answers inf, the
    # verdict of a guide missing the posterior's mass
    pyro.clear_param_store()
    guide = AutoNormal(
        _standard_normal, init_loc_fn=init_to_value(values={"z": torch.tensor(0.0)}), init_scale=1.0
    )
    from pyro_flows.infer import importance_log_weights

    lw = importance_log_weights(_standard_normal, guide, num_particles=200, max_plate_nesting=0)
    assert float(lw.abs().max()) == 0.0
    assert az.psislw(lw.double().numpy())[1] == np.inf
    assert psis_khat(_standard_normal, guide, log_weights=lw) == -math.inf
    # the same with the tail tied at the maximum and lower weights below it
    tied = torch.cat([torch.zeros(100), -1.0 - torch.rand(900, generator=torch.Generator().manual_seed(0))])
    assert psis_khat(None, None, log_weights=tied) == -math.inf


@pytest.mark.parametrize("n", [5, 20])
def test_khat_from_too_few_draws_is_an_error(n):
    # fewer than 21 draws leave ArviZ fewer than 5 tail values: inf whatever the guide
    lw = torch.randn(n, generator=torch.Generator().manual_seed(0))
    assert az.psislw(lw.double().numpy())[1] == np.inf
    with pytest.raises(ValueError, match=f"at least 21 log-weights.*got {n}"):
        psis_khat(None, None, log_weights=lw)
    assert math.isfinite(psis_khat(None, None, log_weights=torch.randn(21)))


def test_khat_takes_zero_weights_and_agrees_with_arviz():
    # a -inf log-weight (no model density at that draw) is a weight of 0; it was refused
    lw = 0.5 * torch.randn(500, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lw[7] = -math.inf
    expected = float(az.psislw(lw.numpy())[1])
    assert math.isfinite(expected)
    assert psis_khat(None, None, log_weights=lw) == expected
    assert psis_khat(None, None, log_weights=lw[lw.isfinite()]) == float(
        az.psislw(lw[lw.isfinite()].numpy())[1]
    )
    with pytest.raises(ValueError, match=r"1 NaN, 1 \+inf"):
        psis_khat(None, None, log_weights=torch.cat([lw, torch.tensor([math.nan, math.inf])]))
    with pytest.raises(ValueError, match="all 30 log-weights are -inf"):
        psis_khat(None, None, log_weights=torch.full((30,), -math.inf))
