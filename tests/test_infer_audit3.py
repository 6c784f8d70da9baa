"""Flow guides and their diagnostics as a demanding Pyro user drives them: constant sites
in moment comparisons, float64 starting points, importance weights of models whose
supports depend on other latents, latent shapes that change on the plain path, and
Predictive's vectorized draws for models whose plates only the observed sites use."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import init_to_value
from pyro.infer.importance import vectorized_importance_weights

from pyro_flows.infer import (
    AutoRealNVP,
    AutoSplineFlow,
    LocScale,
    compare_moments,
    guide_samples,
    importance_log_weights,
    psis_khat,
)

from .helpers import log_normal_sized_model, plated_model


def _guide(guide_cls, model, **kwargs):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    return guide_cls(model, num_layers=2, hidden_dims=(8,), **kwargs)


# ------------------------------------------------------------------ compare_moments
def test_compare_moments_of_a_site_the_reference_holds_constant():
    # a reference sd of 0 gave sd_rel_error NaN, whether the samples agreed or not
    samples = {"c": torch.full((50,), 0.25), "v": torch.linspace(-1.0, 1.0, 50)}
    rows = compare_moments(samples, {"c": {"mean": 0.25, "sd": 0.0}, "v": {"mean": 0.0, "sd": 0.0}})
    by_site = {row["site"]: row for row in rows}
    assert by_site["c"]["sd"] == 0.0 and by_site["c"]["sd_rel_error"] == 0.0
    assert by_site["v"]["sd"] > 0.5 and by_site["v"]["sd_rel_error"] == math.inf
    # a NUTS-like reference with a coordinate that never moved, against samples
    reference = {"x": torch.stack([torch.full((40,), 2.0), torch.linspace(0.0, 1.0, 40)], -1)}
    rows = compare_moments({"x": reference["x"]}, reference)
    assert [row["sd_rel_error"] for row in rows] == [0.0, 0.0]
    # a positive reference sd is unchanged
    (row,) = compare_moments({"v": torch.tensor([0.0, 2.0])}, {"v": {"mean": 1.0, "sd": 2.0}})
    assert row["sd_rel_error"] == pytest.approx(math.sqrt(2.0) / 2.0 - 1.0)


# ------------------------------------------------------------------------- LocScale
def test_loc_scale_keeps_a_float64_location_and_makes_its_scale_like_it():
    # the location was rounded to the default dtype: 1 + 1e-12 became 1.0 in float32
    loc = torch.tensor([1.0 + 1e-12, -3.0], dtype=torch.float64)
    layer = LocScale(loc, init_scale=0.5)
    assert layer.loc.dtype == layer.log_scale.dtype == torch.float64
    assert float(layer.loc[0]) - 1.0 == pytest.approx(1e-12, rel=1e-3, abs=0)
    y = layer(torch.zeros(2, dtype=torch.float64))
    assert torch.equal(y, loc)
    assert [name for name, _ in layer.named_parameters()] == ["log_scale", "loc"]
    # anything but a floating tensor is read in the default dtype, as before
    assert LocScale([1, 2]).loc.dtype == torch.get_default_dtype()
    assert LocScale(torch.tensor([1, 2])).log_scale.dtype == torch.get_default_dtype()


@pytest.mark.parametrize("guide_cls", [AutoRealNVP, AutoSplineFlow])
def test_a_float64_model_starts_the_guide_exactly_at_its_initial_point(guide_cls):
    # the guide's location went through LocScale's float32 rounding before .to(float64)
    start = torch.tensor(1.0 + 1e-12, dtype=torch.float64)

    def model():
        pyro.sample("a", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 2.0))
        pyro.sample("b", dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1))

    guide = _guide(guide_cls, model, noncentered=False, init_loc_fn=init_to_value(values={"a": start}))
    guide()
    loc = guide.transform.parts[-1].loc
    assert loc.dtype == torch.float64
    assert float(loc[0]) - 1.0 == pytest.approx(1e-12, rel=1e-3, abs=0)


# ----------------------------------------------- importance weights, dependent support
Y = torch.tensor(0.3, dtype=torch.float64)


def _bounded_by_a_latent():
    t = pyro.sample("t", dist.LogNormal(torch.tensor(0.0, dtype=torch.float64), 0.5))
    u = pyro.sample("u", dist.Uniform(torch.zeros((), dtype=torch.float64), t))
    x = pyro.sample("x", dist.Normal(u, t))
    pyro.sample("y", dist.Normal(x, 1.0), obs=Y)


def _log_evidence_by_quadrature() -> float:
    # p(y) = int p(t) int_0^t 1/t N(y; u, sqrt(t^2 + 1)) du dt (x integrated out)
    t = torch.linspace(1e-6, 12.0, 20001, dtype=torch.float64).unsqueeze(-1)
    u = torch.linspace(0.0, 1.0, 401, dtype=torch.float64) * t
    inner = torch.trapezoid(dist.Normal(u, (t.square() + 1).sqrt()).log_prob(Y).exp(), u, dim=-1) / t[:, 0]
    prior = dist.LogNormal(0.0, 0.5).log_prob(t[:, 0]).exp()
    return math.log(float(torch.trapezoid(prior * inner, t[:, 0])))


@pytest.mark.parametrize("noncentered", ["auto", False])
def test_importance_weights_of_a_support_that_depends_on_a_latent(noncentered):
    # a check (it held before): each log-weight is log p(y, t, u, x) - log q(t, u, x) of
    # its own draw, q with u mapped into (0, t) of that draw, and their log-mean-exp
    # estimates log p(y) as quadrature gives it
    guide = _guide(AutoRealNVP, _bounded_by_a_latent, noncentered=noncentered)
    svi = SVI(_bounded_by_a_latent, guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
    for _ in range(60):
        svi.step()
    pyro.set_rng_seed(1)
    with torch.no_grad():
        log_w, _, guide_trace = vectorized_importance_weights(
            _bounded_by_a_latent, guide, num_samples=400, max_plate_nesting=0, normalized=False
        )
    t, u, x = (guide_trace.nodes[name]["value"] for name in "tux")
    latent = guide_trace.nodes["_AutoRealNVP_latent"]["value"]
    log_p = (
        dist.LogNormal(0.0, 0.5).log_prob(t)
        - t.log()
        + dist.Normal(u, t).log_prob(x)
        + dist.Normal(x, 1.0).log_prob(Y)
    )
    theta_t, theta_u = latent[..., 0], latent[..., 1]
    log_det = theta_t + (t * torch.sigmoid(theta_u) * torch.sigmoid(-theta_u)).log()
    centered = guide.site_centeredness().get("x", torch.tensor(1.0, dtype=torch.float64))
    log_det = log_det + (1 - (0.0 if centered is None else centered)) * t.log()
    with torch.no_grad():
        log_q = guide.get_posterior().log_prob(latent) - log_det
    torch.testing.assert_close(log_w, log_p - log_q, rtol=1e-6, atol=1e-6)
    assert bool(((u > 0) & (u < t)).all())
    pyro.set_rng_seed(2)
    log_w = importance_log_weights(_bounded_by_a_latent, guide, num_particles=20000, max_plate_nesting=0)
    estimate = float(log_w.logsumexp(0)) - math.log(log_w.numel())
    assert estimate == pytest.approx(_log_evidence_by_quadrature(), abs=0.02)
    assert psis_khat(_bounded_by_a_latent, guide, log_weights=log_w) < 0.7


# --------------------------------------- latent shapes that change, on the plain path
@pytest.mark.parametrize("guide_cls", [AutoRealNVP, AutoSplineFlow])
@pytest.mark.parametrize("model", [plated_model, log_normal_sized_model])
def test_the_plain_path_refuses_latent_shapes_that_changed_naming_the_site(guide_cls, model):
    # with noncentered=False the guide returned b of shape (3,) for n=5, and SVI or
    # Predictive failed later inside Pyro ("shape '[2, 5]' is invalid for input of size
    # 6", "Model and guide shapes disagree at site 'b'")
    guide = _guide(guide_cls, model, noncentered=False)
    guide(3)
    assert not guide.dependent_support_sites
    message = r"site 'b' has shape \(5,\) in this run of the model, but \(3,\) when the guide was built"
    with pytest.raises(ValueError, match=message):
        guide(5)
    with pytest.raises(ValueError, match=message):
        SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO()).step(5)
    for parallel in (False, True):
        with pytest.raises(ValueError, match=message):
            Predictive(model, guide=guide, num_samples=2, parallel=parallel)(5)
    # the size it was built with still works, and draws as before
    assert guide(3)["b"].shape == (3,)


def test_the_plain_path_takes_new_data_sizes_when_the_latents_keep_their_shapes():
    # only the observed site changes size: nothing to refuse, and the model runs once per
    # new size of the arguments to check, not once per step
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", y.shape[0]):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    calls = []

    def counted(y):
        calls.append(y.shape[0])
        return model(y)

    guide = _guide(AutoRealNVP, counted, noncentered=False)
    svi = SVI(counted, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    svi.step(torch.zeros(4))
    before = len(calls)
    for _ in range(3):
        svi.step(torch.ones(4))
    assert len(calls) - before == 3  # the model's own runs under the ELBO only
    pyro.set_rng_seed(0)
    draws = Predictive(counted, guide=guide, num_samples=6, parallel=True)(torch.zeros(9))
    assert draws["mu"].shape == (6, 1) and draws["y"].shape == (6, 9)


# ------------------------------------ Predictive's draws and the model's own plates
X = torch.linspace(-1.0, 1.0, 30).unsqueeze(-1) * torch.tensor([1.0, -0.5, 2.0])


def _regression(x, y=None):
    # global latents only; the plate of the data is the model's
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    s = pyro.sample("s", dist.HalfNormal(1.0))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal((x * w.unsqueeze(-2)).sum(-1), s), obs=y)


def _nested(z):
    # latents in plate j (dim -1), the data also in plate i (dim -2)
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("j", 4, dim=-1):
        theta = pyro.sample("theta", dist.Normal(mu, 1.0))
        with pyro.plate("i", 2, dim=-2):
            pyro.sample("z", dist.Normal(theta, 1.0), obs=z)


@pytest.mark.parametrize("guide_cls", [AutoRealNVP, AutoSplineFlow])
@pytest.mark.parametrize("noncentered", ["auto", "learn"])
def test_predictive_vectorized_draws_with_plates_only_the_data_use(guide_cls, noncentered):
    # Predictive places its draws left of the guide's plates only, at -1 here: the guide
    # ran the model with them there, and the model's plate of the data collided with
    # them ("The size of tensor a (30) must match the size of tensor b (5)"); so did
    # guide_samples, parallel by default
    y = (X * torch.tensor([1.0, -2.0, 0.5])).sum(-1)
    guide = _guide(guide_cls, _regression, noncentered=noncentered)
    svi = SVI(_regression, guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
    for _ in range(3):
        svi.step(X, y)
    draws = Predictive(_regression, guide=guide, num_samples=5, parallel=True)(X)
    assert draws["w"].shape == (5, 1, 3) and draws["s"].shape == (5, 1) and draws["y"].shape == (5, 30)
    assert guide_samples(_regression, guide, 7, X)["w"].shape == (7, 3)
    # the same draws, values and densities as with the draws left of the model's plates
    traces = []
    for dim in (-1, -2):
        pyro.set_rng_seed(3)
        with torch.no_grad(), pyro.plate("draws", 5, dim=dim):
            trace = poutine.trace(guide).get_trace(X, y)
        trace.compute_log_prob()
        traces.append(trace)
    for name in ("w", "s"):
        at_1, at_2 = (trace.nodes[name] for trace in traces)
        assert at_1["value"].shape == ((5, 3) if name == "w" else (5,))
        torch.testing.assert_close(at_1["value"].reshape(-1), at_2["value"].reshape(-1))
        torch.testing.assert_close(at_1["log_prob"].reshape(-1), at_2["log_prob"].reshape(-1))


def test_predictive_vectorized_draws_of_a_model_with_a_plate_the_guide_lacks():
    # Predictive placed its draws at -2, left of the guide's plate j but on the data's
    # plate i: the model run inside the guide failed ("plates 'i' and
    # '_num_predictive_samples' collide at dim=-2")
    z = torch.arange(8.0).reshape(2, 4)
    guide = _guide(AutoRealNVP, _nested)
    guide(z)
    draws = Predictive(_nested, guide=guide, num_samples=5, parallel=True)(z)
    assert (
        draws["mu"].shape == (5, 1, 1) and draws["theta"].shape == (5, 1, 4) and draws["z"].shape == (5, 2, 4)
    )
    assert guide._model_plate_nesting == 2
    # an enclosing plate on the latent plate's own dimension is refused by name
    with pytest.raises(ValueError, match="overlap the plates of site 'theta'"):
        with pyro.plate("draws", 5, dim=-1):
            guide(z)
