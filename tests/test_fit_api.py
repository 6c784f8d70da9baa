"""``pyro_flows.train.fit``, the training API on a tensor: its RNG, its defaults and its options."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

import pyro_flows
from pyro_flows.data import Splits, make_bimodal, make_moons
from pyro_flows.train import RunConfig, fit, train
from pyro_flows.train.registry import build_model, with_resolved_options
from pyro_flows.train.run import fit_run

SMALL = dict(flow="real_nvp", num_layers=2, hidden_dims=(8,))


def _equal_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(
        torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


# 1. the caller's RNG ------------------------------------------------------------------------


def test_fit_leaves_the_global_rng_alone():
    x = make_moons(300)
    for seed in (1, 2):
        torch.manual_seed(seed)
        expected = torch.rand(3)
        torch.manual_seed(seed)
        fit(x, steps=2, batch_size=50, **SMALL)
        assert torch.equal(torch.rand(3), expected)


def test_fit_is_reproducible_from_its_seed_and_trains_as_with_the_global_seed():
    # what fit did before it forked the RNG: torch.manual_seed(seed), then build and train
    x, seed = make_moons(300), 3
    options = dict(steps=6, batch_size=50, eval_every=3, **SMALL)
    flow, history = fit(x, seed=seed, **options)
    again, _ = fit(x, seed=seed, **options)
    assert _equal_weights(flow, again)

    n_val = round(0.1 * len(x))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    splits = Splits("data", x[order[n_val:]], x[order[:n_val]], x[order[:n_val]])
    config = RunConfig(seed=seed, dtype="float32", device="cpu", quiet=True, plots=False, **options)
    config = with_resolved_options(config, splits)
    torch.manual_seed(seed)
    reference = build_model(config, splits.event_shape)
    state = train(reference, splits, config, None)
    assert _equal_weights(flow, reference) and history == state.history


@pytest.mark.cuda
def test_fit_on_cuda_is_reproducible_and_leaves_both_generators_alone():
    x = make_moons(300)
    options = dict(steps=4, batch_size=50, eval_every=2, device="cuda", noise=0.1, **SMALL)
    torch.manual_seed(5)
    cpu, cuda = torch.rand(2), torch.rand(2, device="cuda")
    torch.manual_seed(5)
    flow, _ = fit(x, seed=1, **options)
    assert torch.equal(torch.rand(2), cpu) and torch.equal(torch.rand(2, device="cuda"), cuda)
    again, _ = fit(x, seed=1, **options)
    assert next(flow.parameters()).device.type == "cuda" and _equal_weights(flow, again)


# 2. the mixture-CDF flow --------------------------------------------------------------------


def test_fit_of_the_cdf_flow_starts_at_the_quantiles_and_is_level_with_em():
    train_x, test_x = make_bimodal(4000), make_bimodal(4000, seed=1)
    with torch.no_grad():
        em = -float(pyro_flows.GaussianMixture(5).double().fit_em(train_x).log_prob(test_x).mean())
    flow, _ = fit(train_x.float()[:, None], flow="cdf", num_components=5, steps=400)
    with torch.no_grad():
        nll = -float(flow.log_prob(test_x.float()[:, None]).mean())
    # from the constructor's start at the earlier default rate 1e-3: 1.62 after 400 steps
    assert nll < em + 0.003, (nll, em)


def test_the_command_starts_a_cdf_flow_at_the_quantiles_of_its_standardized_training_data(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", np.concatenate([rng.normal(40, 0.5, 300), rng.normal(45, 1.0, 300)]))
    config = RunConfig(
        flow="cdf",
        data=str(tmp_path / "x.npy"),
        num_components=3,
        steps=1,
        eval_every=1,
        lr=1e-9,
        out=str(tmp_path / "run"),
        plots=False,
        quiet=True,
    )
    fit_run(config)
    state = torch.load(os.path.join(config.out, "best.pt"), weights_only=True)["model"]
    loc, log_scale = state["transform.1.loc"], state["transform.1.log_scale"]  # the mixture's
    # quantiles 1/6, 1/2, 5/6 of the standardized bimodal data (not the constructor's -2, 0, 2),
    # and the scale of standardized data over sqrt(3) (not 1)
    assert loc.shape == (1, 3) and float((loc - torch.tensor([[-2.0, 0.0, 2.0]])).abs().max()) > 0.5
    assert -1.2 < float(loc[0, 0]) < -0.5 and 0.5 < float(loc[0, 2]) < 1.2
    assert torch.allclose(log_scale, torch.full_like(log_scale, -0.5 * math.log(3)), atol=0.05)


def test_the_command_trains_a_cdf_flow_at_its_own_rate(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=300))
    config = RunConfig(
        flow="cdf",
        data=str(tmp_path / "x.npy"),
        num_components=2,
        steps=10,
        eval_every=10,
        batch_size=50,
        schedule="constant",
        out=str(tmp_path / "run"),
        plots=False,
        quiet=True,
    )
    fit_run(config)
    with open(os.path.join(config.out, "metrics.jsonl")) as fh:
        records = [json.loads(line) for line in fh]
    assert [r["lr"] for r in records if r["split"] == "train"] == [0.05]


def test_a_mixture_the_caller_placed_is_not_placed_again():
    x = make_bimodal(400).float()[:, None]
    config = RunConfig(
        flow="cdf", num_components=3, steps=1, eval_every=1, lr=1e-9, batch_size=50, quiet=True
    )
    flow = build_model(config, (1,))
    flow.transform.mixture.init_from_data(x + 100.0)
    placed = flow.transform.mixture.loc.detach().clone()
    train(flow, Splits("d", x[:300], x[300:], x[300:]), config, None)
    assert torch.allclose(flow.transform.mixture.loc, placed, atol=1e-5)


# 3. the batch of small data sets ------------------------------------------------------------


def test_the_default_batch_fits_a_small_data_set_and_a_larger_one_given_is_refused_by_its_name():
    x = make_moons(250)
    _, history = fit(x, steps=5, eval_every=5, **SMALL)  # 225 training points, default batch 256
    assert [r["step"] for r in history] == [5]
    with pytest.raises(ValueError, match="batch_size 256 is larger than the 225 training points") as err:
        fit(x, steps=5, batch_size=256, **SMALL)
    assert "--batch-size" not in str(err.value)


# 4. data that require gradients -------------------------------------------------------------


def test_data_that_require_gradients_are_detached():
    x = make_moons(300).requires_grad_()
    _, history = fit(x, steps=3, batch_size=50, eval_every=3, **SMALL)
    assert len(history) == 1 and x.grad is None


# 5. threads, device, dtype, val_fraction ----------------------------------------------------


def test_threads_apply_for_the_fit_and_are_restored(monkeypatch):
    import importlib

    fit_module = importlib.import_module("pyro_flows.train.fit")  # the module, not the function
    seen = []

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return train(*args, **kwargs)

    monkeypatch.setattr(fit_module, "train", recording)
    before = torch.get_num_threads()
    threads = 2 if before == 1 else 1
    fit(make_moons(300), steps=2, batch_size=50, threads=threads, **SMALL)
    assert seen == [threads] and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="fit: threads=100000 is more than the"):
        fit(make_moons(300), steps=2, threads=100_000, **SMALL)


def test_device_and_dtype_move_and_cast_the_data():
    flow, _ = fit(make_moons(300), steps=2, batch_size=50, device="cpu", dtype="float64", **SMALL)
    assert {p.dtype for p in flow.parameters()} == {torch.float64}
    flow, _ = fit(make_moons(300).double(), steps=2, batch_size=50, dtype=torch.float32, **SMALL)
    assert {p.dtype for p in flow.parameters()} == {torch.float32}
    with pytest.raises(ValueError, match="fit: device=mps: pyro-flows runs on cpu"):
        fit(make_moons(300), steps=2, device="mps", **SMALL)
    with pytest.raises(ValueError, match="fit: dtype must be float32 or float64"):
        fit(make_moons(300), steps=2, dtype="float16", **SMALL)


def test_a_large_val_fraction_is_fits_own_option():
    _, history = fit(make_moons(250), steps=2, eval_every=2, val_fraction=0.95, **SMALL)
    assert len(history) == 1  # 12 training points, batches of 12
    with pytest.raises(ValueError, match=r"fit: 2 points leave none to train on with val_fraction=0.8"):
        fit(make_moons(250)[:2], steps=2, val_fraction=0.8, **SMALL)


# 6. samples of a dequantized flow -----------------------------------------------------------


class _Fixed(torch.nn.Module):
    """A stand-in flow whose samples are given values."""

    def __init__(self, values: torch.Tensor):
        super().__init__()
        self.values = values
        self.event_shape = values.shape[1:]

    def sample(self, sample_shape=()):
        return self.values


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("levels", [2, 17, 256])
def test_dequantized_samples_lie_in_the_unit_cube_and_give_levels_0_to_k_minus_1(levels, dtype):
    below_one = torch.nextafter(torch.ones((), dtype=dtype), torch.zeros((), dtype=dtype))
    values = torch.tensor([[-0.021, 0.0, 0.5, 0.999, float(below_one), 1.0, 1.03]], dtype=dtype).T
    y = pyro_flows.DequantizedFlow(_Fixed(values), levels).sample((7,))
    level = torch.floor(levels * y)
    assert bool((y >= 0).all() and (y < 1).all())
    assert level.min() == 0 and level.max() == levels - 1
    assert torch.equal(y[1:4], values[1:4])  # values inside are kept as they are

    # a flow ending in the logit layer samples beyond [0, 1)
    flow = pyro_flows.Flow(pyro_flows.transforms.Logit((2,), alpha=0.05)).to(dtype)
    torch.manual_seed(0)
    y = pyro_flows.DequantizedFlow(flow, levels).sample((20000,))
    assert bool((y >= 0).all() and (y < 1).all())
    assert set(torch.floor(levels * y).unique().tolist()) == set(map(float, range(levels)))


# 7. the data a mixture is placed at ---------------------------------------------------------


def test_init_from_data_checks_the_dtype_against_the_parameters():
    mixture = pyro_flows.mixture_cdf(3)
    with pytest.raises(
        ValueError, match="the data has dtype torch.float64 but the transform's parameters are"
    ):
        mixture.init_from_data(make_bimodal(100))
    assert torch.equal(mixture.log_scale, torch.zeros(3))  # left as it was
    mixture.init_from_data(make_bimodal(100).float())
    assert mixture.double().init_from_data(make_bimodal(100)).loc.dtype == torch.float64
