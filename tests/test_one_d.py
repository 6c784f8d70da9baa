"""1-D flows: the mixture CDF, its inverse, base CDFs, training and sampling.

Specific checks beyond the conformance suite (entries_elementwise.py): monotonicity and
the log-derivative, inverse accuracy at extreme targets, normalization by quadrature,
the trained flow against the EM-fitted GMM, Kolmogorov-Smirnov checks of samples and
latents for every base, and rsample gradients against finite differences.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
from scipy import stats

import pyro_flows
from pyro_flows import Flow, GaussianMixture, cdf_flow, inverse_cdf_sample, mixture_cdf
from pyro_flows.data import make_bimodal
from pyro_flows.transforms import BaseCDF, MixtureCDF, change_of_base

BASES = ["normal", "uniform", "beta"]


def spread_mixture(component="gaussian", num_components=4, dtype=torch.float64) -> MixtureCDF:
    """A mixture with far-apart, very narrow and very wide components."""
    t = mixture_cdf(num_components, component=component).to(dtype)
    with torch.no_grad():
        t.loc.copy_(torch.tensor([-300.0, -1.0, 0.5, 40.0])[:num_components])
        t.log_scale.copy_(torch.tensor([-3.0, 0.0, 2.0, -6.0])[:num_components])
        t.logits.copy_(torch.tensor([0.5, -1.0, 0.0, 1.0])[:num_components])
    return t


def train(flow: Flow, data: torch.Tensor, steps: int = 150, lr: float = 0.05) -> Flow:
    flow.transform.mixture.init_from_data(data)
    optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
    for _ in range(steps):
        loss = -flow.log_prob(data).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return flow


@pytest.fixture(scope="module")
def fitted():
    """A 4-component CDF flow trained on the bimodal data, and its held-out data."""
    torch.manual_seed(0)
    train_x, test_x = make_bimodal(1000, seed=0), make_bimodal(1000, seed=1)
    flow = train(Flow(cdf_flow(4)).double(), train_x)
    return flow, train_x, test_x


def with_base(fitted_flow: Flow, base: str) -> Flow:
    """The same learned mixture, targeting another base."""
    flow = Flow(cdf_flow(4, base=base)).double()
    flow.transform.mixture.load_state_dict(fitted_flow.transform.mixture.state_dict())
    return flow


# ---------------------------------------------------------- the mixture CDF
@pytest.mark.parametrize("component", ["gaussian", "logistic"])
def test_monotone_and_log_derivative_matches_autograd(component):
    t = spread_mixture(component)
    x = torch.linspace(-400.0, 100.0, 20001, dtype=torch.float64, requires_grad=True)
    log_cdf, log_sf, log_pdf = t.log_parts(x)
    # never decreasing; strictly increasing wherever the step changes the smaller of F
    # and 1 - F by more than 1e-12 relatively (on the plateau between the components at
    # -300 and -1 it changes by exp(-40000), which no float can show)
    assert (log_cdf.diff() >= 0).all() and (log_sf.diff() <= 0).all()
    resolvable = (log_pdf - torch.minimum(log_cdf, log_sf))[:-1] + math.log(0.025) > math.log(1e-12)
    assert resolvable.float().mean() > 0.4
    assert ((log_cdf.diff() > 0) | (log_sf.diff() < 0))[resolvable].all()
    assert torch.isfinite(log_pdf).all()
    # d/dx log F = F'/F and d/dx log(1-F) = -F'/(1-F), exact in float64
    grad_cdf = torch.autograd.grad(log_cdf.sum(), x, retain_graph=True)[0]
    grad_sf = torch.autograd.grad(log_sf.sum(), x)[0]
    assert torch.allclose(grad_cdf, torch.exp(log_pdf - log_cdf), rtol=1e-8, atol=1e-300)
    assert torch.allclose(grad_sf, -torch.exp(log_pdf - log_sf), rtol=1e-8, atol=1e-300)
    # the closed-form CDF itself against autograd of the CDF value
    y = torch.linspace(-5.0, 5.0, 101, dtype=torch.float64, requires_grad=True)
    u = t.inv(y)
    dudy = torch.autograd.grad(u.sum(), y)[0]
    assert torch.allclose(dudy.log(), t.log_parts(y.detach())[2], atol=1e-10)


@pytest.mark.parametrize("component", ["gaussian", "logistic"])
def test_inverse_at_extreme_targets(component):
    t = spread_mixture(component)
    u = torch.tensor(
        [1e-300, 1e-100, 1e-12, 1e-6, 0.01, 0.3, 0.5, 0.7, 0.99, 1 - 1e-6, 1 - 1e-12, 1 - 2**-53],
        dtype=torch.float64,
    )
    x = t(u)
    assert torch.isfinite(x).all()

    def residual(v):  # increasing in v, zero at the root, on the accurate tail
        log_cdf, log_sf, _ = t.log_parts(v)
        return torch.where(u <= 0.5, log_cdf - u.log(), torch.log1p(-u) - log_sf)

    # backward error: x is the exact root of a target within what 16 ulps of x can
    # resolve, |r(x)| <= 16 eps |x| r'(x) (conditioning-aware; r' from autograd)
    xg = x.detach().requires_grad_()
    r = residual(xg)
    slope = torch.autograd.grad(r.sum(), xg)[0]
    bound = 16 * torch.finfo(x.dtype).eps * (1 + x.abs()) * slope + 1e-14
    assert (r.abs() <= bound).all(), (r, bound)
    assert (x.diff() > 0).all()


def test_edges_and_far_tails_give_no_nan():
    for dtype in (torch.float32, torch.float64):
        t = spread_mixture(dtype=dtype)
        u = torch.tensor([0.0, 1e-30, 1e-7, 0.5, 1 - 1e-7, 1.0], dtype=dtype)
        x = t(u)
        assert torch.isfinite(x).all() and (x.diff() >= 0).all()
        assert torch.isfinite(t.log_abs_det_jacobian(u, x)).all()
        far = torch.tensor([-1e8, -1e4, 1e4, 1e8], dtype=dtype)
        back = t.inv(far)
        assert torch.isfinite(back).all() and ((back > 0) & (back < 1)).all()
        d = pyro_flows.Flow(cdf_flow(4)).to(dtype)
        assert torch.isfinite(d.log_prob(far)).all()
        # float32 sampling with the smallest and largest uniforms stays finite
        assert torch.isfinite(d().transforms[0].inv(u.clamp(1e-30, 1 - 1e-7))).all()


def test_out_of_range_input_is_a_clear_error():
    t = mixture_cdf(3)
    with pytest.raises(ValueError, match=r"unit interval \[0, 1\]"):
        t(torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="component must be one of"):
        mixture_cdf(3, component="cauchy")
    with pytest.raises(ValueError, match="expected input of shape"):
        mixture_cdf(3, event_shape=(2,))(torch.rand(4, 3))


# --------------------------------------------------------------- base CDFs
@pytest.mark.parametrize(
    "base, params, reference",
    [
        ("normal", {}, stats.norm()),
        ("uniform", {}, stats.uniform()),
        ("beta", {"a": 5.0, "b": 5.0}, stats.beta(5, 5)),
        ("beta", {"a": 0.6, "b": 3.0}, stats.beta(0.6, 3.0)),
        ("beta", {"a": 40.0, "b": 1.5}, stats.beta(40.0, 1.5)),
    ],
)
def test_base_cdf_and_quantile_match_scipy(base, params, reference):
    if params:  # parameters made in float64 (0.6 is not a float32 number)
        a, b = (torch.tensor(params[k], dtype=torch.float64) for k in "ab")
        base = dist.Beta(a, b)
    g = BaseCDF(base).double()
    u = torch.tensor([1e-12, 1e-4, 0.1, 0.5, 0.9, 1 - 1e-4, 1 - 1e-9], dtype=torch.float64)
    z = g.inv(u)
    expected = torch.tensor(reference.ppf(u.numpy()))
    assert torch.allclose(z, expected, rtol=1e-9, atol=1e-12)
    assert torch.allclose(g(z), u, rtol=1e-9, atol=1e-15)


# --------------------------------------------------- a trained 1-D flow
@pytest.mark.parametrize("base", BASES)
def test_fitted_density_integrates_to_one(fitted, base):
    flow = with_base(fitted[0], base)
    # the density vanishes at both ends, where the trapezoid rule is spectrally accurate
    grid = torch.linspace(-15.0, 25.0, 8001, dtype=torch.float64)
    with torch.no_grad():
        density = flow.log_prob(grid).exp()
    assert abs(torch.trapezoid(density, grid).item() - 1.0) < 1e-6
    # the base changes the latent, not the density (Concept 10.13)
    with torch.no_grad():
        assert torch.allclose(flow.log_prob(grid[::97]), fitted[0].log_prob(grid[::97]), atol=1e-9)


def test_cdf_flow_matches_or_beats_em_gmm_on_held_out_nll(fitted):
    flow, train_x, test_x = fitted
    gmm = GaussianMixture(4).double().fit_em(train_x)
    with torch.no_grad():
        flow_nll = -flow.log_prob(test_x).mean().item()
        gmm_nll = -gmm.log_prob(test_x).mean().item()
    # both are 4-component models; a flow stuck in a bad optimum would lose by >> 0.01 nat
    assert flow_nll <= gmm_nll + 0.01, (flow_nll, gmm_nll)
    # and both are far better than a single Gaussian
    single = -torch.distributions.Normal(train_x.mean(), train_x.std()).log_prob(test_x).mean().item()
    assert flow_nll < single - 0.2


@pytest.mark.parametrize("base", BASES)
def test_samples_and_latents_pass_ks(fitted, base):
    flow = with_base(fitted[0], base)
    test_x = fitted[2]
    torch.manual_seed(1)
    samples = flow.sample((1000,))
    assert stats.ks_2samp(samples.numpy(), test_x.numpy()).pvalue > 0.01
    # data mapped to the latent follow the base (Example 10.10's z histograms)
    with torch.no_grad():
        z = flow().transforms[0].inv(flow().transforms[1].inv(test_x))
    reference = {"normal": stats.norm(), "uniform": stats.uniform(), "beta": stats.beta(5, 5)}[base]
    assert stats.kstest(z.numpy(), reference.cdf).pvalue > 0.01


def test_inverse_cdf_sample(fitted):
    flow, _, test_x = fitted
    x = inverse_cdf_sample(flow, 1000, torch.Generator().manual_seed(3))
    assert x.shape == (1000,) and x.dtype == torch.float64
    assert stats.ks_2samp(x.numpy(), test_x.numpy()).pvalue > 0.01
    # any increasing CDF given as a function: the logistic law
    y = inverse_cdf_sample(
        torch.sigmoid, 2000, torch.Generator().manual_seed(4), bracket=(-60.0, 60.0), dtype=torch.float64
    )
    assert stats.kstest(y.numpy(), stats.logistic().cdf).pvalue > 0.01
    with pytest.raises(ValueError, match="bracket"):
        inverse_cdf_sample(torch.sigmoid, 10)


def test_inverse_cdf_sample_refuses_layers_that_change_the_cdf():
    # a scaling after the mixture changes the model's CDF: inverting the mixture alone
    # would return samples of another law
    scaled = Flow([cdf_flow(3, event_shape=(2,)), pyro_flows.scaling(2)])
    with pytest.raises(ValueError, match="also has Scaling, which change the model's CDF"):
        inverse_cdf_sample(scaled, 10)
    # a Beta base feeding a bare mixture is not carried to Uniform(0, 1) first
    with pytest.raises(ValueError, match="a base other than Uniform"):
        inverse_cdf_sample(Flow(spread_mixture(), base="beta", a=2.0, b=3.0), 10)
    # bridges that carry the base to Uniform(0, 1) leave the mixture's CDF the model's
    mixture = spread_mixture()
    for flow in (Flow(mixture, base="uniform"), Flow(mixture), Flow(cdf_flow(3, base="beta"))):
        torch.manual_seed(0)
        own = flow.sample((4000,))
        x = inverse_cdf_sample(flow, 4000, torch.Generator().manual_seed(5))
        assert stats.ks_2samp(x.numpy(), own.numpy()).pvalue > 0.01


# ------------------------------------------------------ rsample gradients
@pytest.mark.parametrize("base", BASES)
def test_rsample_gradients_match_finite_differences(base):
    torch.manual_seed(0)
    flow = Flow(cdf_flow(3, base=base, component="logistic")).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.4 * torch.randn_like(p))
    z = flow.base().sample((7,))
    weights = torch.randn(7, dtype=torch.float64)

    def objective():
        x = flow().transforms[1](flow().transforms[0](z.clone()))  # base -> u -> data
        return (weights * x).sum()

    value = objective()
    grads = torch.autograd.grad(value, list(flow.parameters()))
    h = 1e-6
    for p, g in zip(flow.parameters(), grads, strict=True):
        for i in range(p.numel()):
            with torch.no_grad():
                p.view(-1)[i] += h
            up = objective().item()
            with torch.no_grad():
                p.view(-1)[i] -= 2 * h
            down = objective().item()
            with torch.no_grad():
                p.view(-1)[i] += h
            assert math.isclose(g.view(-1)[i].item(), (up - down) / (2 * h), rel_tol=1e-5, abs_tol=1e-6)


# ------------------------------------------------------- choice of base
@pytest.mark.parametrize("base", ["uniform", "beta"])
def test_base_is_a_choice_for_real_nvp_too(base):
    torch.manual_seed(0)
    normal = Flow(pyro_flows.real_nvp(2, num_layers=2, hidden_dims=(8,))).double()
    with torch.no_grad():
        for p in normal.parameters():
            p.add_(0.3 * torch.randn_like(p))
    other = Flow(normal.transform, base=base).double()
    x = torch.randn(5, 2, dtype=torch.float64)
    # same density (the bridge to N(0, 1) cancels), latent on (0, 1)
    assert torch.allclose(other.log_prob(x), normal.log_prob(x), atol=1e-9)
    with torch.no_grad():
        latent = other().transforms[0].inv(other().transforms[1].inv(x))
    assert ((latent > 0) & (latent < 1)).all()
    assert other.sample((3,)).shape == (3, 2)


def test_bare_mixture_cdf_with_a_normal_base_gets_bridged():
    flow = Flow(mixture_cdf(3), base="normal").double()
    assert isinstance(flow.bridge, BaseCDF)
    x = torch.linspace(-30.0, 30.0, 20001, dtype=torch.float64)
    with torch.no_grad():
        assert abs(torch.trapezoid(flow.log_prob(x).exp(), x).item() - 1) < 1e-6


@pytest.mark.parametrize("base", ["normal", "uniform"])  # torch's Beta has no cdf/icdf
@torch.no_grad()
def test_cdf_and_icdf_of_a_1d_flow(base):
    """The transforms are increasing (``sign``), so torch's TransformedDistribution.cdf
    is the flow's CDF: it matches the integral of the density, and icdf inverts it."""
    transform = cdf_flow(3, base=base).double()
    transform.mixture.loc.copy_(torch.tensor([-2.0, 0.5, 3.0]))
    transform.mixture.log_scale.copy_(torch.tensor([-0.5, 0.2, -1.0]))
    transform.mixture.logits.copy_(torch.tensor([0.3, -0.2, 0.5]))
    d = Flow(transform)()
    assert transform.sign == 1
    grid = torch.linspace(-12.0, 10.0, 44001, dtype=torch.float64)
    integral = torch.cumulative_trapezoid(d.log_prob(grid).exp(), grid)
    for x in (-3.0, -1.0, 0.4, 2.0, 4.5):
        i = int((grid - x).abs().argmin())
        assert abs(float(d.cdf(grid[i])) - float(integral[i - 1])) < 1e-6, x
    q = torch.tensor([1e-4, 0.05, 0.3, 0.5, 0.9, 0.999], dtype=torch.float64)
    assert torch.allclose(d.cdf(d.icdf(q)), q, atol=1e-9)
    x = torch.tensor([-3.0, 0.0, 2.5], dtype=torch.float64)
    assert torch.allclose(d.icdf(d.cdf(x)), x, atol=1e-7)


def test_change_of_base_and_base_cdf_are_increasing():
    for t in (BaseCDF("beta", a=2.0, b=3.0), change_of_base("uniform", "normal"), mixture_cdf(2)):
        assert t.sign == 1 and t.inv.sign == 1
        u = torch.linspace(0.05, 0.95, 7)
        out = t(u) if not isinstance(t, BaseCDF) else t.inv(u)
        assert (out.diff() > 0).all()


def test_numerical_quantile_has_exact_second_derivatives():
    """The root of Phi((x - m) / s) = u, found numerically, has the closed form
    x = m + s * z with z = ndtri(u): its second derivatives in (u, s) are
    d2x/du2 = s * z / phi(z)^2, d2x/(du ds) = 1 / phi(z) and d2x/ds2 = 0."""
    from pyro_flows.transforms.monotone_inverse import solve_monotone

    u = torch.tensor([1e-6, 0.2, 0.5, 0.9, 1 - 1e-6], dtype=torch.float64, requires_grad=True)
    m = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(1.9, dtype=torch.float64, requires_grad=True)

    def log_parts(x):
        z = (x - m) / s
        return (
            torch.special.log_ndtr(z),
            torch.special.log_ndtr(-z),
            -0.5 * z**2 - 0.5 * math.log(2 * math.pi) - torch.log(s),
        )

    x = solve_monotone(log_parts, u, torch.full_like(u, -60.0), torch.full_like(u, 60.0))
    z = torch.special.ndtri(u.detach())
    phi = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    assert torch.allclose(x, m.detach() + s.detach() * z, rtol=1e-12)
    du, ds = torch.autograd.grad(x.sum(), (u, s), create_graph=True)
    assert torch.allclose(du, s.detach() / phi, rtol=1e-9)
    assert torch.allclose(ds, z.sum(), rtol=1e-9)
    # each element's x depends on its own u only: the row sums of the Hessian block
    duu, dus = torch.autograd.grad(du.sum(), (u, s), retain_graph=True)
    assert torch.allclose(duu, s.detach() * z / phi**2, rtol=1e-7)
    assert torch.allclose(dus, (1 / phi).sum(), rtol=1e-9)
    (dss,) = torch.autograd.grad(ds, s)
    assert abs(float(dss)) < 1e-9


def test_beta_cdf_under_vmap_matches_the_batched_values_and_slopes():
    """The Beta CDF's own vmap rule (the batch evaluated as one more batch dimension, so
    the continued fraction can stop once converged) against scipy and the batched call:
    a, b mapped or not, nested maps, and the slope pdf / cdf by grad inside vmap."""
    from pyro_flows.transforms.cdf_functions import beta_log_cdf

    z = torch.tensor([[0.05, 0.3], [0.6, 0.97], [0.5, 0.01]], dtype=torch.float64)
    a = torch.tensor([0.7, 2.0, 5.0], dtype=torch.float64)
    b = torch.tensor([3.5, 1.3, 0.9], dtype=torch.float64)
    expected = torch.as_tensor(stats.beta.logcdf(z.numpy(), a[:, None].numpy(), b[:, None].numpy()))
    expected_sf = torch.as_tensor(stats.beta.logsf(z.numpy(), a[:, None].numpy(), b[:, None].numpy()))
    log_cdf, log_sf = torch.func.vmap(beta_log_cdf)(z, a, b)
    assert torch.allclose(log_cdf, expected, rtol=1e-10, atol=1e-12)
    assert torch.allclose(log_sf, expected_sf, rtol=1e-10, atol=1e-12)
    # a and b shared (not mapped), and a map of maps over single points
    shared = torch.func.vmap(lambda v: beta_log_cdf(v, a[1], b[1])[0])(z)
    assert torch.allclose(shared, torch.as_tensor(stats.beta.logcdf(z.numpy(), 2.0, 1.3)), rtol=1e-10)
    nested = torch.func.vmap(torch.func.vmap(lambda v: beta_log_cdf(v, a[0], b[0])[0]))(z)
    assert torch.allclose(nested, torch.as_tensor(stats.beta.logcdf(z.numpy(), 0.7, 3.5)), rtol=1e-10)
    # d log G / dz = g / G, per point by grad under vmap, and the batched gradient of vmap
    slope = torch.func.vmap(torch.func.grad(lambda v: beta_log_cdf(v, a[2], b[2])[0]))(z.reshape(-1))
    ratio = stats.beta.pdf(z.numpy(), 5.0, 0.9) / stats.beta.cdf(z.numpy(), 5.0, 0.9)
    assert torch.allclose(slope, torch.as_tensor(ratio).reshape(-1), rtol=1e-8)
    zz = z.clone().requires_grad_()
    torch.func.vmap(lambda v: beta_log_cdf(v, a[2], b[2])[0])(zz).sum().backward()
    assert torch.allclose(zz.grad, torch.as_tensor(ratio), rtol=1e-8)
