"""Flow matching for FFJORD: the loss against the published reference (torchcfm), the
closed-form optimum of a Gaussian, the OT pairing, small end-to-end fits (plain and
conditional), the separate sampling solver and the ``--objective flow-matching`` runs.

The torchcfm comparison needs ``torchcfm`` and POT (the README's test command installs
both: POT with the ``test`` extra, ``torchcfm`` without its own requirements, which pull
heavy packages it does not import for the matchers).
"""

from __future__ import annotations

import itertools
import json
import math
import os

import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyro_flows
from pyro_flows.cli import main
from pyro_flows.train.checkpoint import load_checkpoint
from pyro_flows.train.config import RunConfig
from pyro_flows.train.flow_matching import (
    OT_BLOCK,
    TIME_EXPONENT,
    FlowMatching,
    conditional_path,
    flow_matching_loss,
    ot_pairing,
    sample_times,
)
from pyro_flows.train.run import fit_run
from pyro_flows.transforms import FFJORD

from .helpers import Interrupt, interrupt_at


def normal_base(dim, dtype=torch.float64):
    return dist.Normal(torch.zeros(dim, dtype=dtype), torch.ones(dim, dtype=dtype)).to_event(1)


def field(dim=2, hidden=(16,), seed=0, context_dim=0):
    torch.manual_seed(seed)
    return pyro_flows.nn.DynamicsNet(dim, hidden, "tanh", zero_init=False, context_dim=context_dim).double()


# --------------------------------------------------------------- the reference
def test_loss_matches_torchcfm_independent_path_with_noise():
    import torchcfm.conditional_flow_matching as cfm

    torch.manual_seed(0)
    x, z = torch.randn(64, 2, dtype=torch.float64) * 2 + 1, torch.randn(64, 2, dtype=torch.float64)
    net = field()
    # torchcfm's source x0 is our data (t = 0), its target x1 our base sample (t = 1)
    t, x_t, u, eps = cfm.ConditionalFlowMatcher(sigma=0.1).sample_location_and_conditional_flow(
        x, z, return_noise=True
    )
    reference = torch.mean((net(t, x_t) - u) ** 2)
    ours = flow_matching_loss(net, x, z, path="independent", sigma=0.1, t=t, noise=eps)
    assert ours.shape == (64,)
    assert torch.allclose(ours.mean(), reference, rtol=1e-12, atol=0)
    assert reference > 0.1  # not trivially zero


def test_ot_pairing_is_torchcfm_exact_plan_and_loss_agrees():
    import torchcfm.conditional_flow_matching as cfm

    torch.manual_seed(1)
    x, z = torch.randn(32, 2, dtype=torch.float64) + 3, torch.randn(32, 2, dtype=torch.float64)
    plan = cfm.OTPlanSampler(method="exact").get_map(x, z)  # (32, 32), 1/32 on the matching
    assert (plan > 0).sum() == 32
    perm = ot_pairing(x, z)
    assert perm.tolist() == plan.argmax(1).tolist()
    # torchcfm's OT matcher then resamples pairs from the plan; on the matched pairs its
    # path and target are the plain ones, which ours uses after the pairing
    net = field()
    t = torch.rand(32, dtype=torch.float64)
    _, x_t, u = cfm.ConditionalFlowMatcher(sigma=0.0).sample_location_and_conditional_flow(x, z[perm], t=t)
    reference = torch.mean((net(t, x_t) - u) ** 2)
    ours = flow_matching_loss(net, x, z, path="ot", t=t).mean()
    assert torch.allclose(ours, reference, rtol=1e-12, atol=0)


# ------------------------------------------------------------- the OT pairing
def test_ot_pairing_is_the_exact_minimum_and_beats_identity():
    torch.manual_seed(2)
    x, z = torch.randn(7, 2), torch.randn(7, 2)

    def cost(perm):
        return float((x - z[list(perm)]).square().sum())

    perm = ot_pairing(x, z)
    brute = min(itertools.permutations(range(7)), key=cost)
    assert math.isclose(cost(perm.tolist()), cost(brute), rel_tol=1e-6)
    # on a batch of 256: the total squared distance drops well below the identity pairing's
    x, z = torch.randn(256, 2) + torch.tensor([2.0, 0.0]), torch.randn(256, 2)
    perm = ot_pairing(x, z)
    assert sorted(perm.tolist()) == list(range(256))
    identity, matched = (x - z).square().sum(), (x - z[perm]).square().sum()
    assert matched < 0.6 * identity, (float(matched), float(identity))


def test_conditional_path_ends_and_velocity():
    x, z = torch.randn(5, 3), torch.randn(5, 3)
    for t, end in ((0.0, x), (1.0, z)):
        x_t, u = conditional_path(x, z, torch.full((5,), t))
        assert torch.allclose(x_t, end) and torch.allclose(u, z - x)


# ------------------------------------------------- the optimum of a Gaussian
class GaussianOptimalField(nn.Module):
    r"""The minimiser of the independent-coupling loss for data N(m, s^2 I) and base N(0, I):
    :math:`h^*(t, y) = -m + \frac{t - (1-t)s^2}{(1-t)^2 s^2 + t^2}(y - (1-t)m)`."""

    def __init__(self, loc, log_scale):
        super().__init__()
        self.loc = nn.Parameter(torch.as_tensor(loc, dtype=torch.float64))
        self.log_scale = nn.Parameter(torch.as_tensor(log_scale, dtype=torch.float64))

    def forward(self, t, y):
        t = torch.as_tensor(t, dtype=y.dtype).reshape(-1, 1)
        s2 = torch.exp(2 * self.log_scale)
        var = (1 - t) ** 2 * s2 + t**2
        return -self.loc + (t - (1 - t) * s2) / var * (y - (1 - t) * self.loc)


def test_gaussian_optimal_field_is_a_stationary_point_of_the_loss():
    loc, scale = torch.tensor([1.0, -0.5]), 0.5
    torch.manual_seed(3)
    n = 200_000
    x = loc + scale * torch.randn(n, 2, dtype=torch.float64)
    z = torch.randn(n, 2, dtype=torch.float64)
    t = torch.rand(n, dtype=torch.float64)

    def gradient(field):
        loss = flow_matching_loss(field, x, z, path="independent", t=t).mean()
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(field.parameters()))])

    at_optimum = gradient(GaussianOptimalField(loc, math.log(scale)))
    off_optimum = gradient(GaussianOptimalField(loc + 0.3, math.log(scale) + 0.3))
    assert at_optimum.abs().max() < 0.01, at_optimum
    assert off_optimum.abs().max() > 0.1, off_optimum


def test_gaussian_optimal_field_through_ffjord_gives_the_gaussian_density():
    # the direction check: the field the loss trains, integrated by FFJORD's log_prob
    # (data at t = 0 to base at t = 1), is the exact change of variables to the data law
    loc, scale = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.5
    flow = FFJORD(GaussianOptimalField(loc, math.log(scale)), 2, rtol=1e-8, atol=1e-8).eval()
    d = dist.TransformedDistribution(normal_base(2), [flow])
    x = loc + torch.randn(50, 2, dtype=torch.float64)
    with torch.no_grad():
        expected = dist.Normal(loc, scale).to_event(1).log_prob(x)
        assert torch.allclose(d.log_prob(x), expected, atol=1e-5)
        torch.manual_seed(4)
        samples = d.sample((4000,))
    assert torch.allclose(samples.mean(0), loc, atol=0.05)
    assert torch.allclose(samples.std(0), torch.full((2,), scale, dtype=torch.float64), atol=0.03)


# ------------------------------------------------------------------ end to end
def _train(flow_or_field, data, steps, batch=128, lr=1e-2, context=None, path="ot"):
    params = list(flow_or_field.parameters())
    optimizer = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(len(data), (batch,), generator=g)
        x = data[idx]
        c = None if context is None else context[idx]
        loss = flow_matching_loss(flow_or_field, x, torch.randn_like(x), path=path, context=c).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_fit_by_flow_matching_beats_the_untrained_flow():
    # an anisotropic, shifted Gaussian: its entropy is known, so "good" is a number
    torch.manual_seed(5)
    loc, scale = torch.tensor([1.5, -1.0]), torch.tensor([0.4, 1.2])
    data = (loc + scale * torch.randn(4000, 2)).double()
    test = (loc + scale * torch.randn(500, 2)).double()
    entropy = float(dist.Normal(loc, scale).entropy().sum())
    torch.manual_seed(0)
    flow = pyro_flows.ffjord(2, (32,), "tanh", rtol=1e-5, atol=1e-5).double()
    model = dist.TransformedDistribution(normal_base(2), [flow])

    def nll():
        flow.eval()
        with torch.no_grad():
            return float(-model.log_prob(test.clone()).mean())

    before = nll()
    _train(flow, data, steps=300)
    after = nll()
    assert before - entropy > 1.0, (before, entropy)
    assert after - entropy < 0.1, (after, entropy)  # within 0.1 nats of the truth
    assert flow.nfe > 0
    # samples through the ODE match the data law
    with torch.no_grad():
        torch.manual_seed(6)
        samples = model.sample((4000,))
    assert torch.allclose(samples.mean(0), loc.double(), atol=0.1)
    assert torch.allclose(samples.std(0), scale.double(), atol=0.1)


def test_conditional_flow_matching_learns_a_conditional_density():
    # x | c ~ N(2c (1, 1), 0.5^2 I) with c = +-1: a conditional field must tell them apart
    torch.manual_seed(7)
    c = (torch.randint(0, 2, (4000, 1)) * 2 - 1).double()
    data = 2 * c * torch.ones(1, 2, dtype=torch.float64) + 0.5 * torch.randn(4000, 2, dtype=torch.float64)
    cflow = pyro_flows.conditional_ffjord(
        2, context_dim=1, hidden_dims=(32,), activation="tanh", rtol=1e-6, atol=1e-6
    )
    cflow = cflow.double()
    model = dist.ConditionalTransformedDistribution(normal_base(2), [cflow])
    with pytest.raises(ValueError, match="independent"):
        flow_matching_loss(cflow, data[:8], data[:8], path="ot", context=c[:8])
    _train(cflow, data, steps=300, context=c, path="independent")
    test_c = (torch.randint(0, 2, (500, 1)) * 2 - 1).double()
    test = 2 * test_c * torch.ones(1, 2, dtype=torch.float64) + 0.5 * torch.randn(500, 2, dtype=torch.float64)
    entropy = 2 * (0.5 * math.log(2 * math.pi * math.e) + math.log(0.5))
    with torch.no_grad():
        nll = float(-model.condition(test_c).log_prob(test).mean())
        wrong = float(-model.condition(-test_c).log_prob(test.clone()).mean())
        assert nll - entropy < 0.15, (nll, entropy)
        assert wrong - entropy > 5, (wrong, entropy)
        # 2000 samples for each of two contexts, through the ODE
        torch.manual_seed(8)
        right = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
        samples = model.condition(right).sample((2000, 1))
    assert samples.shape == (2000, 2, 2)
    assert torch.allclose(samples.mean(0), 2 * right.expand(2, 2), atol=0.15)
    assert torch.allclose(samples.std(0), torch.full((2, 2), 0.5, dtype=torch.float64), atol=0.1)


# --------------------------------------------------------- sampling solver
def test_sampling_solver_is_separate_from_scoring():
    torch.manual_seed(9)
    flow = pyro_flows.ffjord(
        2, (8,), "tanh", sample_method="rk4", sample_options={"step_size": 0.25}, rtol=1e-8, atol=1e-8
    ).double()
    for p in flow.parameters():
        p.data.normal_(0, 0.5)
    flow.eval()
    z = torch.randn(10, 2, dtype=torch.float64)
    with torch.no_grad():
        x = flow(z)
        assert flow.nfe == 4 * 4  # four rk4 steps of four evaluations
        z_back = flow.inv(x.clone())  # a new tensor, not the cached output: dopri5 at 1e-8
        assert flow.nfe > 16
    # 4 fixed steps are close, but not to 1e-8: it was not the scoring solver
    error = (z_back - z).abs().max()
    assert 1e-7 < error < 0.05, float(error)
    assert flow.solver_settings(sampling=True)["method"] == "rk4"
    assert flow.solver_settings(sampling=False)["method"] == "dopri5"


def test_changing_the_solver_invalidates_the_cached_log_det():
    torch.manual_seed(10)
    flow = pyro_flows.ffjord(2, (8,), "tanh", method="euler", options={"step_size": 0.5}).double()
    for p in flow.parameters():
        p.data.normal_(0, 0.5)
    flow.eval()
    x = torch.randn(4, 2, dtype=torch.float64)
    with torch.no_grad():
        coarse = flow.inv(x)
        flow.method, flow.options = "dopri5", {}
        fine = flow.inv(x)  # the same tensor: must be solved again
    assert (coarse - fine).abs().max() > 1e-4


# ------------------------------------------------------------- API and CLI
def test_flow_matching_objective_needs_an_ffjord():
    with pytest.raises(ValueError, match="--flow ffjord"):
        RunConfig(flow="real_nvp", objective="flow-matching")
    with pytest.raises(ValueError, match="single FFJORD"):
        FlowMatching(pyro_flows.Flow(pyro_flows.real_nvp(2, num_layers=2, hidden_dims=(8,))))
    assert RunConfig(flow="ffjord", objective="flow_matching").objective == "flow-matching"


def test_fit_run_by_flow_matching_logs_the_loss_and_scores_through_the_ode(tmp_path):
    config = RunConfig(
        flow="ffjord",
        objective="flow_matching",
        path="ot",
        hidden_dims=(16,),
        num_samples=600,
        data="8gaussians",
        batch_size=64,
        steps=60,
        eval_every=30,
        lr=1e-2,
        plots=True,
        plot_samples=100,
        quiet=True,
        out=str(tmp_path / "run"),
        patience=0,
    )
    results = fit_run(config)
    assert results["objective"] == "flow-matching" and results["test_nfe"] > 0
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    assert train and all("fm_loss" in r and "nll" not in r for r in train)
    assert [r["step"] for r in val] == [30, 60] and all(r["nfe"] > 0 for r in val)
    # a model that learnt something: the untrained flow is the standard normal base, whose
    # NLL on 8gaussians is log(2 pi) + E|x|^2 / 2 = 1.84 + 2.04 = 3.88
    assert results["test_nll"] < 3.75 and results["best_val_nll"] < 3.8, results
    assert os.path.exists(tmp_path / "run" / "nll_curves.png")


def test_runs_save_the_state_features_they_used_and_older_runs_rebuild_without(tmp_path):
    from pyro_flows.train.config import SAVED_BEFORE
    from pyro_flows.train.registry import build_model, check_flow_options

    common = dict(flow="ffjord", objective="flow_matching", hidden_dims=(8,), num_samples=300, data="moons")
    common.update(batch_size=64, steps=4, eval_every=4, quiet=True, plots=False, patience=0)
    fit_run(RunConfig(**common, out=str(tmp_path / "run")))
    saved = (tmp_path / "run" / "config.toml").read_text()
    assert "state_features = 128" in saved  # the default, written as the number it was
    weights = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["model"]
    assert weights["transform.dynamics.state_matrix"].shape == (128, 2)
    fit_run(RunConfig(**common, state_features=4, state_frequency=0.5, out=str(tmp_path / "small")))
    assert "state_features = 4" in (tmp_path / "small" / "config.toml").read_text()
    # data of more than 2 dimensions get none by default
    csv = tmp_path / "three.csv"
    csv.write_text("\n".join(",".join(f"{v:.4f}" for v in row) for row in torch.randn(300, 3).tolist()))
    fit_run(RunConfig(**{**common, "data": str(csv)}, out=str(tmp_path / "three")))
    assert "state_features = 0" in (tmp_path / "three" / "config.toml").read_text()
    # a run saved before the option existed was trained without the features
    old = {k: v for k, v in RunConfig(**common).to_dict().items() if k != "state_features"}
    assert SAVED_BEFORE["state_features"] == 0
    rebuilt = build_model(RunConfig.from_saved(old), (2,))
    assert rebuilt.transform.dynamics.state_features == 0
    # maximum likelihood's concat-squash field has none: asking for them is refused
    with pytest.raises(ValueError, match="--state-features does not apply"):
        check_flow_options(RunConfig(flow="ffjord", objective="likelihood", state_features=8), (2,))
    with pytest.raises(ValueError, match="--state-frequency"):
        RunConfig(flow="ffjord", objective="flow_matching", state_frequency=-1.0)


def test_cli_flow_matching_runs_and_resumes(tmp_path, capsys):
    out = str(tmp_path / "run")
    argv = [
        "fit",
        "--flow",
        "ffjord",
        "--objective",
        "flow-matching",
        "--path",
        "independent",
        "--hidden-dims",
        "8",
        "--num-samples",
        "400",
        "--batch-size",
        "40",
        "--steps",
        "6",
        "--eval-every",
        "3",
        "--no-plots",
        "--quiet",
        "--out",
        out,
    ]
    assert main(argv) == 0
    state = load_checkpoint(os.path.join(out, "checkpoint.pt"))
    assert state["step"] == 6 and state["config"]["objective"] == "flow-matching"
    assert state["config"]["path"] == "independent"
    # continue the finished run with more steps: not allowed to change options...
    assert main(["fit", "--resume", out, "--steps", "9"]) == 1
    # ...but an interrupted one resumes from its checkpoint with the same objective
    config = RunConfig.from_dict({**state["config"], "steps": 9, "out": str(tmp_path / "split")})

    with pytest.raises(Interrupt):
        fit_run(config, on_step=interrupt_at(7))
    assert main(["fit", "--resume", config.out, "--quiet"]) == 0
    whole = fit_run(config.replace(out=str(tmp_path / "whole")))
    resumed = json.load(open(os.path.join(config.out, "results.json")))
    assert resumed["steps"] == 9 and resumed["objective"] == "flow-matching"
    assert resumed["test_nll"] == whole["test_nll"]  # bit-identical resume


# ------------------------------------------- blocks, time law, the velocity field
def test_ot_pairing_in_blocks_pairs_each_block_exactly():
    torch.manual_seed(7)
    x, z = torch.randn(300, 2) + 1, torch.randn(300, 2)
    perm = ot_pairing(x, z, block_size=128)
    assert sorted(perm.tolist()) == list(range(300))  # still a permutation: both marginals kept
    for start in (0, 128, 256):
        block = slice(start, min(start + 128, 300))
        inside = perm[block]
        assert bool(((inside >= start) & (inside < block.stop)).all())
        # each block is the exact assignment of its own rows
        local = ot_pairing(x[block], z[block]) + start
        assert inside.tolist() == local.tolist()
    # a block at least the batch is the whole-batch assignment
    assert ot_pairing(x, z, block_size=300).tolist() == ot_pairing(x, z).tolist()
    matched, identity = (x - z[perm]).square().sum(), (x - z).square().sum()
    assert matched < 0.7 * identity
    with pytest.raises(ValueError, match="block_size"):
        ot_pairing(x, z, block_size=0)


def test_time_exponent_draws_the_power_law_and_reaches_the_loss():
    t = sample_times(200_000, exponent=2.0, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    # t = u^2: P(t < s) = sqrt(s), mean 1/3
    assert abs(float(t.mean()) - 1 / 3) < 3e-3
    assert abs(float((t < 0.25).double().mean()) - 0.5) < 3e-3
    with pytest.raises(ValueError, match="exponent"):
        sample_times(3, exponent=0.0)
    # the loss draws its times with the exponent: the same seed, the same times
    net = field()
    x, z = torch.randn(64, 2, dtype=torch.float64), torch.randn(64, 2, dtype=torch.float64)
    torch.manual_seed(3)
    drawn = flow_matching_loss(net, x, z, path="independent", time_exponent=3.0)
    torch.manual_seed(3)
    given = flow_matching_loss(net, x, z, path="independent", t=torch.rand(64, dtype=torch.float64) ** 3)
    assert torch.equal(drawn, given)


def test_velocity_net_times_context_and_exact_log_det():
    torch.manual_seed(0)
    net = pyro_flows.nn.VelocityNet(2, (16, 16), frequencies=(1, 3)).double()
    z = torch.randn(5, 2, dtype=torch.float64)
    # one time for the batch and the same time per row give the same field
    assert torch.allclose(net(torch.tensor(0.3), z), net(torch.full((5,), 0.3, dtype=torch.float64), z))
    features = net.time_features(torch.tensor(0.5), 1)
    assert torch.allclose(
        features, torch.tensor([[0.5, 1.0, -1.0, 0.0, 0.0]], dtype=torch.float64), atol=1e-12
    )
    assert pyro_flows.nn.VelocityNet(2, (8,), zero_init=True)(0.1, z.float()).abs().max() == 0
    conditional = pyro_flows.nn.VelocityNet(2, (8,), context_dim=3)
    assert conditional(torch.rand(5), z.float(), torch.randn(5, 3)).shape == (5, 2)
    with pytest.raises(ValueError, match="context"):
        conditional(torch.rand(5), z.float())
    # through FFJORD: log|det| of the solved map against the autograd Jacobian
    flow = FFJORD(net, 2, rtol=1e-10, atol=1e-10).eval()
    x = torch.randn(3, 2, dtype=torch.float64)
    y, ladj = flow._inverse_and_ladj(x)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: flow._inverse_and_ladj(v[None])[0][0], x[i])
        assert math.isclose(float(ladj[i].detach()), -float(torch.linalg.slogdet(jac)[1]), abs_tol=1e-7)


def test_ffjord_builder_fields():
    assert isinstance(pyro_flows.ffjord(2).dynamics, pyro_flows.nn.DynamicsNet)
    velocity = pyro_flows.ffjord(2, field="velocity")
    assert isinstance(velocity.dynamics, pyro_flows.nn.VelocityNet)
    widths = [m.out_features for m in velocity.dynamics.net if isinstance(m, nn.Linear)]
    assert widths == [256, 256, 256, 2] and isinstance(velocity.dynamics.net[1], nn.SiLU)
    # a new flow is the identity (the last layer starts at zero)
    x = torch.randn(4, 2)
    assert torch.allclose(velocity._inverse_and_ladj(x)[0], x)
    cflow = pyro_flows.conditional_ffjord(2, 3, (8,), field="velocity")
    assert isinstance(cflow.dynamics, pyro_flows.nn.VelocityNet) and cflow.dynamics.context_dim == 3
    with pytest.raises(ValueError, match="field"):
        pyro_flows.ffjord(2, field="resnet")


def test_velocity_net_state_features_are_fourier_features_of_z_saved_with_the_network():
    torch.manual_seed(0)
    net = pyro_flows.nn.VelocityNet(2, (8,), state_features=5, state_frequency=0.5)
    assert net.state_matrix.shape == (5, 2) and "state_matrix" in net.state_dict()
    assert 0.1 < float(net.state_matrix.std()) < 1.0  # drawn with sd 0.5
    z = torch.randn(4, 2)
    angles = 2 * math.pi * z @ net.state_matrix.T
    assert torch.allclose(net.state_features_of(z), torch.cat([angles.sin(), angles.cos()], -1), atol=1e-5)
    # the first layer reads z, the 2m features and the time's
    assert net.net[0].in_features == 2 + 10 + 1 + 2 * 5
    # the frequencies travel with the state_dict: a rebuilt network is the same map
    torch.manual_seed(1)
    other = pyro_flows.nn.VelocityNet(2, (8,), state_features=5, state_frequency=0.5)
    assert not torch.equal(other.state_matrix, net.state_matrix)
    other.load_state_dict(net.state_dict())
    t = torch.rand(4)
    assert torch.equal(other(t, z), net(t, z))
    # without features there is no buffer, so state_dicts saved before them still load
    plain = pyro_flows.nn.VelocityNet(2, (8,), state_features=0)
    assert "state_matrix" not in plain.state_dict() and plain.net[0].in_features == 2 + 1 + 2 * 5
    # the default: 128 up to 2 dimensions (where they were measured to help), none above
    assert pyro_flows.nn.VelocityNet(2, (8,)).state_features == 128
    assert pyro_flows.nn.VelocityNet(1, (8,)).state_features == 128
    assert pyro_flows.nn.VelocityNet(3, (8,)).state_features == 0
    assert pyro_flows.nn.VelocityNet(10, (8,), state_features=16).state_matrix.shape == (16, 10)
    for bad in (dict(state_features=-1), dict(state_features=2.0), dict(state_frequency=0.0)):
        with pytest.raises(ValueError, match="state_f"):
            pyro_flows.nn.VelocityNet(2, (8,), **bad)
    # the builders pass them on, for the velocity field only
    few = pyro_flows.ffjord(2, (8,), field="velocity", state_features=3)
    assert few.dynamics.state_matrix.shape == (3, 2)
    cflow = pyro_flows.conditional_ffjord(2, 3, (8,), field="velocity", state_features=0)
    assert cflow.dynamics.state_features == 0
    with pytest.raises(ValueError, match="field='velocity'"):
        pyro_flows.ffjord(2, state_features=8)


def test_state_features_fit_a_sharp_density_closer_by_flow_matching():
    # the checkerboard: a density with edges, which an MLP on z alone learns slowly
    from pyro_flows.data import make_checkerboard

    data, test = make_checkerboard(4000, seed=0).double(), make_checkerboard(400, seed=1).double()
    entropy = math.log(8.0)  # uniform on 8 unit squares
    gaps = {}
    for count in (0, 128):
        torch.manual_seed(0)
        flow = pyro_flows.ffjord(2, (64, 64), field="velocity", state_features=count, rtol=1e-4, atol=1e-4)
        flow = flow.double()
        optimizer = torch.optim.Adam(flow.parameters(), lr=3e-3)
        generator = torch.Generator().manual_seed(0)
        for _ in range(400):
            x = data[torch.randint(len(data), (256,), generator=generator)]
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            loss = flow_matching_loss(flow, x, z, path="ot").mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model = dist.TransformedDistribution(normal_base(2), [flow.eval()])
        with torch.no_grad():
            gaps[count] = float(-model.log_prob(test.clone()).mean()) - entropy
    assert gaps[128] < gaps[0] - 0.1, gaps


def test_run_config_picks_the_velocity_field_for_flow_matching():
    from pyro_flows.train.flow_matching import fm_options
    from pyro_flows.train.registry import build_model

    fm = build_model(RunConfig(flow="ffjord", objective="flow_matching", hidden_dims=(8,)), (2,))
    ml = build_model(RunConfig(flow="ffjord", objective="likelihood", hidden_dims=(8,)), (2,))
    assert isinstance(fm.transform.dynamics, pyro_flows.nn.VelocityNet)
    assert isinstance(ml.transform.dynamics, pyro_flows.nn.DynamicsNet)
    # the default objective of an ffjord is flow matching, with its field
    auto = build_model(RunConfig(flow="ffjord", hidden_dims=(8,)), (2,))
    assert isinstance(auto.transform.dynamics, pyro_flows.nn.VelocityNet)
    forced = RunConfig(flow="ffjord", objective="flow_matching", field="concat-squash", hidden_dims=(8,))
    assert isinstance(build_model(forced, (2,)).transform.dynamics, pyro_flows.nn.DynamicsNet)
    config = RunConfig(flow="ffjord", objective="flow_matching")
    assert fm_options(config) == ("ot", 0.0, OT_BLOCK, TIME_EXPONENT)
    assert fm_options(config.replace(fm_ot_block=0, fm_time_exponent=2.0))[2:] == (None, 2.0)
    with pytest.raises(ValueError, match="--fm-time-exponent"):
        RunConfig(flow="ffjord", objective="flow_matching", fm_time_exponent=0.0)
    with pytest.raises(ValueError, match="--fm-ot-block"):
        RunConfig(flow="ffjord", objective="flow_matching", fm_ot_block=-1)


# ------------------------------------------------------------------ fit()
def test_fit_trains_an_ffjord_both_ways_in_memory():
    from pyro_flows.train import fit

    torch.manual_seed(5)
    loc, scale = torch.tensor([1.5, -1.0]), torch.tensor([0.4, 1.2])
    data = loc + scale * torch.randn(3000, 2)
    test = loc + scale * torch.randn(500, 2)
    entropy = float(dist.Normal(loc, scale).entropy().sum())
    common = dict(hidden_dims=(32,), batch_size=128, lr=1e-2, eval_every=50, patience=0)
    flow, history = fit(data, flow="ffjord", objective="flow_matching", steps=150, **common)
    assert isinstance(flow.transform.dynamics, pyro_flows.nn.VelocityNet) and not flow.training
    assert [r["step"] for r in history] == [50, 100, 150] and all(r["nfe"] > 0 for r in history)
    with torch.no_grad():
        gap = float(-flow.log_prob(test).mean()) - entropy
    assert gap < 0.15, gap  # the untrained flow (the standard normal) is 1.5 nats off
    # without options, flow matching takes the measured recipe: the 256-256-256 field
    default, _ = fit(data[:1000], flow="ffjord", objective="flow_matching", steps=2, eval_every=2)
    widths = [m.out_features for m in default.transform.dynamics.net if isinstance(m, nn.Linear)]
    assert widths == [256, 256, 256, 2]
    # without an objective, an ffjord is trained by flow matching, with its recipe
    auto, _ = fit(data[:1000], flow="ffjord", steps=2, eval_every=2)
    widths = [m.out_features for m in auto.transform.dynamics.net if isinstance(m, nn.Linear)]
    assert widths == [256, 256, 256, 2]
    # by maximum likelihood when asked, and other families too
    ml, ml_history = fit(
        data, flow="ffjord", objective="likelihood", steps=20, **{**common, "eval_every": 10}
    )
    assert isinstance(ml.transform.dynamics, pyro_flows.nn.DynamicsNet) and len(ml_history) == 2
    nvp, _ = fit(data.double(), flow="real_nvp", steps=5, num_layers=2, hidden_dims=(8,), eval_every=5)
    assert next(nvp.parameters()).dtype == torch.float64
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        fit(torch.zeros(10), flow="real_nvp")
    with pytest.raises(ValueError, match="NaN"):
        fit(torch.full((10, 2), math.nan), flow="real_nvp")
    with pytest.raises(ValueError, match="--flow ffjord"):
        fit(data, flow="real_nvp", objective="flow_matching")


def test_cli_flow_matching_takes_the_recipe_of_fit_unless_told_otherwise(tmp_path):
    from pyro_flows.cli import build_parser, resolve_fit_config

    def config(*argv):
        return resolve_fit_config(build_parser().parse_args(["fit", "--data", "moons", *argv]))

    recipe = config("--flow", "ffjord", "--objective", "flow-matching", "--steps", "500")
    assert (recipe.hidden_dims, recipe.batch_size, recipe.lr, recipe.warmup_steps) == (
        (256, 256, 256),
        512,
        3e-3,
        10,
    )
    # each option given on the command line or in the TOML file replaces its part only
    told = config(
        "--flow", "ffjord", "--objective", "flow-matching", "--hidden-dims", "32,32", "--batch-size", "64"
    )
    assert (told.hidden_dims, told.batch_size, told.lr, told.warmup_steps) == ((32, 32), 64, 3e-3, 40)
    toml = tmp_path / "run.toml"
    toml.write_text('flow = "ffjord"\nobjective = "flow-matching"\nlr = 1e-3\n')
    from_file = config("--config", str(toml))
    assert (from_file.lr, from_file.hidden_dims) == (1e-3, (256, 256, 256))
    # without --objective an ffjord is trained by flow matching, with the same recipe
    auto = config("--flow", "ffjord", "--steps", "500")
    assert (auto.objective, auto.hidden_dims, auto.batch_size, auto.warmup_steps) == (
        "flow-matching",
        (256, 256, 256),
        512,
        10,
    )
    # a penalty of maximum likelihood's solves, or another base, keeps maximum likelihood
    assert config("--flow", "ffjord", "--kinetic-weight", "0.01").objective == "likelihood"
    assert config("--flow", "ffjord", "--base", "uniform").objective == "likelihood"
    # maximum likelihood and the other flows keep the shared defaults
    ml = config("--flow", "ffjord", "--objective", "likelihood")
    spline = config("--flow", "spline")
    assert spline.objective == "likelihood"
    assert (
        (ml.hidden_dims, ml.batch_size, ml.lr)
        == (spline.hidden_dims, spline.batch_size, spline.lr)
        == ((128, 128), 256, 0.0)
    )


def test_progress_lines_name_the_flow_matching_loss(tmp_path, capsys):
    # stdout is not a terminal under pytest, so the run prints plain progress lines
    argv = ["fit", "--flow", "ffjord", "--objective", "flow-matching", "--hidden-dims", "8"]
    argv += ["--num-samples", "200", "--batch-size", "40", "--steps", "3", "--eval-every", "3"]
    assert main([*argv, "--no-plots", "--out", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    assert "step 3/3: flow-matching loss " in printed and "train NLL" not in printed


def test_an_ffjord_trains_by_flow_matching_unless_told_or_penalized():
    """``objective="auto"``, the default, is flow matching for an ffjord on continuous data
    with a normal base and no penalty of its solves, and maximum likelihood otherwise; a
    run saved before the option existed was trained by maximum likelihood."""
    assert RunConfig(flow="ffjord").objective == "flow-matching"
    assert RunConfig(flow="ffjord", levels=256).objective == "likelihood"
    assert RunConfig(flow="ffjord", data="digits").objective == "likelihood"
    assert RunConfig(flow="ffjord", frobenius_weight=0.1).objective == "likelihood"
    assert RunConfig(flow="ffjord", base="beta").objective == "likelihood"
    assert RunConfig(flow="real_nvp").objective == RunConfig().objective == "likelihood"
    assert RunConfig(flow="ffjord", objective="likelihood").objective == "likelihood"
    old = {k: v for k, v in RunConfig(flow="ffjord").to_dict().items() if k != "objective"}
    assert RunConfig.from_saved(old).objective == "likelihood"
    assert RunConfig.from_dict(old).objective == "flow-matching"
    with pytest.raises(ValueError, match="--flow ffjord"):
        RunConfig(flow="spline", objective="flow-matching")
    with pytest.raises(ValueError, match="objective"):
        RunConfig(flow="ffjord", objective="regression")
