"""FFJORD-specific tests (the generic transform checks are in tests/conformance).

Every numeric tolerance is tied to the solver tolerance it is run with; every check would
fail with a wrong sign, a missing term or a biased estimator.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import pathlib
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormalizingFlow
from torch import nn

import pyro_flows
from pyro_flows.data import make_moons
from pyro_flows.nn.odefunc import hutchinson_trace, trace_noise
from pyro_flows.transforms import FFJORD

from .helpers import autograd_logdet, randomize

ROOT = pathlib.Path(__file__).resolve().parents[1]


def normal_base(dim, dtype=torch.float64):
    return dist.Normal(torch.zeros(dim, dtype=dtype), torch.ones(dim, dtype=dtype)).to_event(1)


def random_flow(dim, tol, hidden_dims=(16, 16), activation="tanh", scale=0.5, seed=0, **kwargs):
    """A float64 FFJORD whose dynamics are far from zero (the builder starts at h = 0)."""
    torch.manual_seed(seed)
    flow = pyro_flows.ffjord(dim, hidden_dims, activation, rtol=tol, atol=tol, **kwargs).double()
    return randomize(flow, scale, seed)


class LinearDynamics(nn.Module):
    """h(t, z) = A z: the flow is expm(tA), its log-det tr(A), its Jacobian norm ||A||_F."""

    def __init__(self, matrix):
        super().__init__()
        self.matrix = nn.Parameter(matrix)

    def forward(self, t, z):
        return z @ self.matrix.T


# ------------------------------------------------------------- round trip, log-det
@pytest.mark.parametrize("tol", [1e-4, 1e-8])
def test_round_trip_to_solver_tolerance(tol):
    flow = random_flow(3, tol).eval()
    x = torch.randn(16, 3, dtype=torch.float64)
    with torch.no_grad():
        z = flow.inv(x)
        assert (z - x).abs().max() > 0.1, "the map should be far from the identity"
        error = (flow(z.clone()) - x).abs().max().item()
    # the global error of an adaptive solve is a small multiple of its tolerances
    assert error < 100 * tol, error


def test_exact_trace_log_det_matches_autograd_jacobian():
    # with the regularisers' extra states on (they must not disturb the log-det); the
    # conformance suite checks the plain flow the same way
    flow = random_flow(3, 1e-10, hidden_dims=(8,), kinetic_weight=0.1, frobenius_weight=0.1).eval()
    assert flow.uses_exact_trace()
    z = torch.randn(1, 3, dtype=torch.float64)
    x = flow(z)
    ladj = flow.log_abs_det_jacobian(z, x)
    assert ladj.abs().min() > 0.05, "the map should not preserve volume"
    # sampling map z -> x (t: 1 -> 0) and scoring map x -> z (t: 0 -> 1)
    assert torch.allclose(ladj, autograd_logdet(flow, z, 1), atol=1e-7, rtol=0)
    assert torch.allclose(-ladj, autograd_logdet(flow.inv, x.detach(), 1), atol=1e-7, rtol=0)


# ------------------------------------------------------------------- Hutchinson
@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_unbiased_for_a_fixed_jacobian(noise):
    torch.manual_seed(1)
    dim, probes = 5, 40_000
    matrix = torch.randn(dim, dim, dtype=torch.float64)
    z = torch.randn(1, dim, dtype=torch.float64).expand(probes, dim).clone().requires_grad_(True)
    h = z @ matrix.T
    eps = trace_noise(noise, z.detach())
    if noise == "rademacher":
        assert set(eps.unique().tolist()) == {-1.0, 1.0}
    trace, frobenius = hutchinson_trace(h, z, eps, create_graph=False)
    for estimate, exact in [(trace, torch.trace(matrix)), (frobenius, matrix.square().sum())]:
        standard_error = estimate.std() / math.sqrt(probes)
        assert (estimate.mean() - exact).abs() < 4 * standard_error, (estimate.mean(), exact)
        assert estimate.std() > 0.1, "single probes must be noisy, or the check proves nothing"


def test_hutchinson_log_det_of_a_solve_is_unbiased():
    """One probe per sample, fixed for the whole solve: the mean over many samples of the
    same point is the exact integrated trace."""
    flow = random_flow(3, 1e-6, trace="hutchinson").eval()
    assert not flow.uses_exact_trace()
    probes = 4000
    x = torch.randn(1, 3, dtype=torch.float64).expand(probes, 3).clone()
    with torch.no_grad():
        z_est, ladj_est = flow._inverse_and_ladj(x)
        flow.trace = "exact"
        z_exact, ladj_exact = flow._inverse_and_ladj(x[:1])
    # the trajectory does not depend on the probes, only the trace does
    assert torch.allclose(z_est, z_exact.expand_as(z_est), atol=1e-5)
    standard_error = ladj_est.std() / math.sqrt(probes)
    assert ladj_est.std() > 0.05
    assert (ladj_est.mean() - ladj_exact[0]).abs() < 4 * standard_error


def test_trace_default_by_dimension():
    small, large = pyro_flows.ffjord(2, (4,)), pyro_flows.ffjord(20, (4,))
    assert small.uses_exact_trace() and not large.uses_exact_trace()
    large.eval()
    assert large.uses_exact_trace(), "eval mode scores with the exact trace"
    assert not pyro_flows.ffjord(2, (4,), trace="hutchinson").eval().uses_exact_trace()
    assert pyro_flows.ffjord(20, (4,), trace="exact").uses_exact_trace()


# -------------------------------------------------------------- density, training
def test_density_integrates_to_one():
    flow = random_flow(2, 1e-6, hidden_dims=(8,), scale=0.6).eval()
    d = dist.TransformedDistribution(normal_base(2), [flow])
    step = 0.1
    axis = torch.arange(-7.0, 7.0 + step / 2, step, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        log_p = d.log_prob(grid)
        # volume change of the map (else a wrong log-det could still integrate to 1)
        ladj = flow.log_abs_det_jacobian(grid[:200], flow(grid[:200]))
    assert ladj.std() > 0.1
    mass = log_p.exp().sum().item() * step**2
    # solver error ~1e-5 in log p; the rectangle rule on a smooth density at h = 0.1 is
    # accurate to ~1e-4 and the mass beyond |x| = 7 is negligible for these dynamics
    assert abs(mass - 1) < 2e-3, mass


def test_short_training_on_moons_beats_a_gaussian():
    train, test = make_moons(512, seed=0), make_moons(512, seed=1)
    gaussian = dist.MultivariateNormal(train.mean(0), torch.cov(train.T))
    gaussian_nll = -gaussian.log_prob(test).mean().item()
    torch.manual_seed(0)
    flow = pyro_flows.ffjord(2, hidden_dims=(16, 16), activation="tanh", rtol=1e-3, atol=1e-3)
    d = dist.TransformedDistribution(normal_base(2, torch.float32), [flow])
    optimizer = torch.optim.Adam(flow.parameters(), lr=3e-2)
    for _ in range(40):
        batch = train[torch.randint(0, len(train), (128,))]
        optimizer.zero_grad()
        (-d.log_prob(batch).mean()).backward()
        optimizer.step()
    flow.eval()
    with torch.no_grad():
        flow_nll = -d.log_prob(test).mean().item()
    assert flow_nll < gaussian_nll - 0.05, (flow_nll, gaussian_nll)


def test_svi_guide_transform():
    """As Pyro's AutoNormalizingFlow transform: the guide moves to a shifted posterior."""
    data = torch.full((8,), 3.0)

    def model():
        loc = pyro.sample("loc", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Normal(loc.sum(), 1.0), obs=data)

    guide = AutoNormalizingFlow(
        model, functools.partial(pyro_flows.ffjord, hidden_dims=(8,), rtol=1e-3, atol=1e-3)
    )
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    losses = [svi.step() for _ in range(20)]
    assert all(math.isfinite(v) for v in losses)
    assert isinstance(guide.transform, FFJORD) and guide.transform.nfe > 0
    with torch.no_grad():
        loc = guide.get_posterior().sample((500,))
    # posterior of loc_1 + loc_2 is N(8 * 3 / 10, ...) = N(2.4, ...); the base has mean 0
    assert loc.sum(-1).mean() > 1.0, loc.sum(-1).mean()


# -------------------------------------------------------------- regularisers, NFE
@pytest.mark.parametrize("direction", ["sample", "score"])
def test_regularizers_of_linear_dynamics(direction):
    torch.manual_seed(2)
    matrix = 0.5 * torch.randn(2, 2, dtype=torch.float64)
    flow = FFJORD(LinearDynamics(matrix), 2, rtol=1e-10, atol=1e-10, kinetic_weight=2.0, frobenius_weight=3.0)
    start = torch.randn(4, 2, dtype=torch.float64)
    times = torch.linspace(0, 1, 2001, dtype=torch.float64)
    if direction == "score":  # z_0 = start, z_t = expm(tA) z_0
        end, ladj = flow._inverse_and_ladj(start)
        path = torch.stack([start @ torch.linalg.matrix_exp(t * matrix).T for t in times])
        assert torch.allclose(end, path[-1], atol=1e-8)
    else:  # z_1 = start, z_t = expm(-(1 - t)A) z_1
        end, ladj = flow._call_and_ladj(start)
        path = torch.stack([start @ torch.linalg.matrix_exp(-(1 - t) * matrix).T for t in times])
        assert torch.allclose(end, path[0], atol=1e-8)
    # both return log|det| of the sampling map z_1 -> z_0 = expm(-A)
    assert torch.allclose(ladj, -torch.trace(matrix).expand(4), atol=1e-8)
    speed = (path @ matrix.T).square().sum(-1)  # ||h||^2 along the path, (times, batch)
    kinetic = torch.trapezoid(speed, times, dim=0)
    assert torch.allclose(flow.kinetic_energy, kinetic, rtol=1e-6)
    frobenius = matrix.square().sum().expand(4)
    assert torch.allclose(flow.jacobian_frobenius, frobenius, rtol=1e-8)
    assert torch.allclose(flow.regularization, 2.0 * kinetic.mean() + 3.0 * frobenius.mean(), rtol=1e-6)
    flow.regularization.backward()
    assert flow.dynamics.matrix.grad.abs().sum() > 0


def test_adjoint_gradients_match_backpropagation():
    x = torch.randn(5, 2, dtype=torch.float64)
    grads = {}
    for adjoint in (False, True):
        flow = random_flow(2, 1e-9, hidden_dims=(8,), adjoint=adjoint)
        d = dist.TransformedDistribution(normal_base(2), [flow])
        d.log_prob(x).sum().backward()
        grads[adjoint] = torch.cat([p.grad.flatten() for p in flow.parameters()])
        assert (flow.nfe_backward > 0) == adjoint
    assert torch.allclose(grads[True], grads[False], atol=1e-6, rtol=1e-5)


def test_nfe_reported_and_sample_scored_without_a_new_solve():
    flow = random_flow(2, 1e-5, scale=0.3)
    calls = []
    flow.dynamics.register_forward_hook(lambda *args: calls.append(1))
    d = dist.TransformedDistribution(normal_base(2), [flow])
    x = d.sample((7,))
    assert flow.nfe == len(calls) > 0
    solved = len(calls)
    with torch.no_grad():  # sample() ran without gradients: scoring without them reuses its solve
        d.log_prob(x)
    assert len(calls) == solved, "scoring the sample just drawn must reuse the cached solve"
    d.log_prob(x.clone())
    assert len(calls) > solved
    solved = len(calls)
    assert d.log_prob(x).requires_grad  # with gradients: solved again, the cached one had no graph
    assert len(calls) > solved
    r = d.rsample((3,))
    solved = len(calls)
    assert d.log_prob(r).requires_grad and len(calls) == solved  # rsample keeps its graph: reused
    assert flow.regularization.item() == 0.0 and flow.kinetic_energy is None, "not regularising"


def test_float32_solve_with_tolerance_below_its_precision():
    torch.manual_seed(0)
    flow = randomize(pyro_flows.ffjord(2, (8,), rtol=1e-12, atol=1e-12), 0.3)
    x = torch.randn(10, 2)
    with torch.no_grad():
        z = flow.inv(x)
        assert flow.nfe < 2000
        error = (flow(z.clone()) - x).abs().max()
    # the tolerances were raised to 64 * eps(float32) = 7.6e-6
    assert error < 100 * 64 * torch.finfo(torch.float32).eps, error


# --------------------------------------------------------------------- errors
def test_bad_inputs_name_the_problem():
    flow = pyro_flows.ffjord(2, (4,))
    with pytest.raises(ValueError, match=r"event shape \(2,\), got shape \(3, 3\)"):
        flow(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="floating-point"):
        flow.inv(torch.zeros(3, 2, dtype=torch.long))
    with pyro.validation_enabled(True), pytest.raises(ValueError, match="non-finite"):
        flow(torch.tensor([[0.0, math.nan]]))
    with pytest.raises(ValueError, match="unknown solver 'dopri7'"):
        pyro_flows.ffjord(2, method="dopri7")
    with pytest.raises(ValueError, match="trace"):
        pyro_flows.ffjord(2, trace="approximate")
    with pytest.raises(ValueError, match="noise"):
        pyro_flows.ffjord(2, noise="uniform")
    with pytest.raises(ValueError, match="activation"):
        pyro_flows.ffjord(2, activation="sigmoid-ish")
    with pytest.raises(ValueError, match="input_dim"):
        pyro_flows.ffjord(0)


def test_missing_torchdiffeq_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchdiffeq", None)
    with pytest.raises(ImportError, match="pip install torchdiffeq"):
        pyro_flows.ffjord(2)


# --------------------------------------------------------------------- example
def test_example_script_smoke(capsys):
    path = ROOT / "examples" / "ffjord_vs_realnvp.py"
    spec = importlib.util.spec_from_file_location("ffjord_vs_realnvp", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    rows = example.main(["--smoke"])
    out = capsys.readouterr().out
    assert {row["model"] for row in rows} == {"ffjord", "ffjord_reg", "real_nvp", "gaussian"}
    assert all(math.isfinite(row["test_nll"]) for row in rows)
    assert "moons" in out and "nfe" in out
