"""The training loop and checkpoints: resume bit-exactness, the loss guard, safe loading."""

import json
import math
import os
import pickle

import numpy as np
import pytest
import torch

import pyro_flows
from pyro_flows.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pyro_flows.train.config import RunConfig
from pyro_flows.train.loop import NonFiniteLossError, lr_factor
from pyro_flows.train.registry import check_flow_options
from pyro_flows.train.run import fit_run

from .helpers import Interrupt, interrupt_at


def tiny(tmp_path, name="run", **changes) -> RunConfig:
    options = dict(
        num_layers=2,
        hidden_dims=(16,),
        num_samples=600,
        batch_size=50,
        steps=20,
        eval_every=5,
        lr=5e-3,
        out=str(tmp_path / name),
        quiet=True,
        plots=False,
        patience=0,
    )
    options.update(changes)
    return RunConfig(**options)


def _model(run_dir, which="checkpoint.pt"):
    return load_checkpoint(os.path.join(run_dir, which))


@pytest.mark.parametrize("flow", ["real_nvp", "spline"])
@pytest.mark.parametrize("discrete", [False, True], ids=["continuous", "dequantized"])
def test_interrupted_and_resumed_run_ends_bit_identical(tmp_path, discrete, flow):
    # Batch norm (real_nvp) makes the running averages part of the state, as do the
    # ActNorms' data-dependent initialisation (spline); the cosine schedule
    # makes the scheduler state matter; float32 with shuffled batches makes order matter;
    # dequantization noise makes the generator state matter.
    data = {}
    if discrete:
        import numpy as np

        np.save(tmp_path / "levels.npy", np.random.default_rng(0).integers(0, 5, size=(600, 2)))
        data = dict(data=str(tmp_path / "levels.npy"), levels=5, logit_alpha=0.0)
    if not discrete:  # training noise makes the global generator's state matter too
        data = dict(noise=0.1)
    config = tiny(tmp_path, "whole", flow=flow, batch_norm=flow == "real_nvp", warmup_steps=3, **data)
    fit_run(config)
    split = config.replace(out=str(tmp_path / "split"))

    with pytest.raises(Interrupt):
        fit_run(split, on_step=interrupt_at(12))
    assert _model(split.out)["step"] == 10  # the last checkpoint before the interruption
    fit_run(RunConfig(quiet=True), resume_dir=split.out)

    whole, resumed = _model(config.out), _model(split.out)
    assert whole["step"] == resumed["step"] == 20
    for key, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for key, value in _model(config.out, "best.pt")["model"].items():
        assert torch.equal(value, _model(split.out, "best.pt")["model"][key]), key
    # The metrics of the resumed run are the uninterrupted run's (no duplicated steps).
    lines = [json.loads(x) for x in open(os.path.join(split.out, "metrics.jsonl"))]
    steps = [r["step"] for r in lines if r["split"] == "val"]
    assert steps == [5, 10, 15, 20]
    # ... including the running mean of the training loss, which the resumed run carries on
    whole_lines = [json.loads(x) for x in open(os.path.join(config.out, "metrics.jsonl"))]
    running = [
        [(r["step"], r["running_nll"]) for r in ls if r["split"] == "train"] for ls in (whole_lines, lines)
    ]
    assert running[0] == running[1] and len(running[0]) == 2
    whole_results = json.load(open(os.path.join(config.out, "results.json")))
    resumed_results = json.load(open(os.path.join(split.out, "results.json")))
    assert whole_results["test_nll"] == resumed_results["test_nll"]
    # resuming a finished run scores it again without logging a second test score
    fit_run(RunConfig(quiet=True), resume_dir=config.out)
    tests = [json.loads(x) for x in open(os.path.join(config.out, "metrics.jsonl")) if '"test"' in x]
    assert [r["nll"] for r in tests] == [whole_results["test_nll"]]


def test_training_beats_the_best_gaussian(tmp_path):
    config = tiny(tmp_path, num_layers=4, hidden_dims=(32, 32), steps=150, eval_every=50, lr=5e-3)
    results = fit_run(config)
    # Held-out NLL of the maximum-likelihood Gaussian fitted to the same training split.
    from pyro_flows.data.registry import load_splits

    splits = load_splits(config)
    mean, cov = splits.train.mean(0), torch.cov(splits.train.T)
    gaussian = torch.distributions.MultivariateNormal(mean, cov)
    gaussian_nll = float(-gaussian.log_prob(splits.test).mean())
    assert gaussian_nll > 2.5  # two moons are far from Gaussian
    assert results["test_nll"] < gaussian_nll - 0.3, (results["test_nll"], gaussian_nll)


def test_loss_guard_stops_on_nan_and_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny(tmp_path)
    flows = []

    def poison_after_7(step):
        if step == 7:
            # What a diverging run looks like: a parameter becomes NaN.
            flow_param = flows[0]
            with torch.no_grad():
                flow_param.fill_(float("nan"))

    import pyro_flows.train.run as run

    original = run.build_model

    def capture(*args, **kwargs):
        model = original(*args, **kwargs)
        flows.append(next(model.parameters()))
        return model

    run.build_model = capture
    try:
        with pytest.raises(NonFiniteLossError) as err:
            fit_run(config, on_step=poison_after_7)
    finally:
        run.build_model = original
    message = str(err.value)
    assert "stopped at step 8" in message and "nan" in message.lower()
    assert "checkpoint.pt" in message and "--lr" in message
    kept = _model(config.out)
    assert kept["step"] == 5
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "c.pt")
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "step": 1, "config": {}})

    def broken_save(obj, fh):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "step": 2, "config": {}})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1  # the old checkpoint is intact
    assert os.listdir(tmp_path) == ["c.pt"]  # no temporary file left behind


class _Exploit:
    def __reduce__(self):
        return (os.makedirs, ("/tmp/pyro_flows_exploit_ran",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_corrupt_and_foreign_checkpoints_get_clear_errors(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="not a readable pyro-flows checkpoint"):
        load_checkpoint(str(garbage))

    good = tmp_path / "good.pt"
    save_checkpoint(str(good), {"model": {"w": torch.ones(3)}, "step": 4, "config": {}})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        load_checkpoint(str(truncated))

    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}}, foreign)
    with pytest.raises(CheckpointError, match="not a pyro-flows checkpoint"):
        load_checkpoint(str(foreign))

    hostile = tmp_path / "hostile.pt"
    with open(hostile, "wb") as fh:
        pickle.dump({"format": "pyro-flows-checkpoint", "payload": _Exploit()}, fh)
    with pytest.raises(CheckpointError):
        load_checkpoint(str(hostile))
    assert not os.path.exists("/tmp/pyro_flows_exploit_ran")  # nothing was unpickled

    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(str(tmp_path / "missing.pt"))


def test_learning_rate_schedule():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(99, 100, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert lr_factor(99, 100, 0, "constant") == 1.0


def test_early_stopping_and_epochs(tmp_path):
    # lr so small that nothing improves after the first evaluation: patience 2 stops at
    # the third evaluation.
    config = tiny(tmp_path, lr=1e-9, patience=2, steps=100, eval_every=2, schedule="constant")
    results = fit_run(config)
    assert results["stopped_early"] and results["steps"] < 100
    # --epochs overrides --steps: 480 training points / batch 48 = 10 steps per epoch.
    results = fit_run(tiny(tmp_path, "ep", epochs=2, batch_size=48, steps=999))
    assert results["steps"] == 20 and results["splits"] == {"train": 480, "val": 60, "test": 60}


def test_float64_run(tmp_path):
    config = tiny(tmp_path, dtype="float64", steps=10)
    fit_run(config)
    state = _model(config.out)
    assert all(v.dtype == torch.float64 for v in state["model"].values() if v.is_floating_point())


def test_regularization_terms_join_the_loss():
    # A submodule that regularizes (as FFJORD's transform does) adds its penalty.
    from pyro_flows import Flow, real_nvp
    from pyro_flows.train.loop import NegativeLogLikelihood

    flow = Flow(real_nvp(2, num_layers=1, hidden_dims=(4,)))
    objective = NegativeLogLikelihood(flow)
    x = torch.randn(5, 2)
    nll, penalty = objective(x)
    assert torch.allclose(nll, -flow.log_prob(x)) and float(penalty) == 0.0
    flow.transform.regularizes = True
    flow.transform.regularization = torch.tensor(0.25)
    assert float(objective(x)[1]) == 0.25


@pytest.mark.cuda
def test_fit_on_cuda_matches_the_run_folder_contract(tmp_path):
    config = tiny(tmp_path, device="auto", dtype="float64", steps=10)
    results = fit_run(config)
    assert results["device"].startswith("cuda")
    state = _model(config.out)  # loaded onto the CPU
    assert all(v.device.type == "cpu" for v in state["model"].values())
    assert math.isfinite(results["test_nll"])


def test_resume_names_the_missing_run_or_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="run folder .* does not exist"):
        fit_run(RunConfig(quiet=True), resume_dir=str(tmp_path / "none"))
    with pytest.raises(CheckpointError, match="has no checkpoint.pt; is it the output folder"):
        fit_run(RunConfig(quiet=True), resume_dir=str(tmp_path))


def test_a_run_stopped_before_its_first_checkpoint_says_how_to_start_again(tmp_path, capsys):
    from pyro_flows.cli import main

    config = tiny(tmp_path, eval_every=10)
    with pytest.raises(Interrupt):
        fit_run(config, on_step=interrupt_at(3))
    assert not os.path.exists(os.path.join(config.out, "checkpoint.pt"))
    toml = os.path.join(config.out, "config.toml")
    with pytest.raises(
        CheckpointError, match=f"stopped before its first checkpoint; start it again with .*--config {toml}"
    ):
        fit_run(RunConfig(quiet=True), resume_dir=config.out)
    with pytest.raises(
        ValueError,
        match="stopped before its first checkpoint .* cannot be resumed; start it again with --overwrite",
    ):
        fit_run(config)
    # the command the first message gives runs the whole run
    assert main(["fit", "--config", toml, "--out", config.out, "--overwrite"]) == 0
    capsys.readouterr()
    assert _model(config.out)["step"] == config.steps


def test_negative_threads_is_refused_with_the_other_options():
    with pytest.raises(ValueError, match="--threads must be >= 0, got -1"):
        RunConfig(threads=-1)
    with pytest.raises(ValueError, match="--threads must be >= 0, got -2"):
        RunConfig.from_dict({"threads": -2}, source="run.toml")
    # one level would train and then fail at scoring, losing the run
    with pytest.raises(ValueError, match="--levels must be 0 .* or at least 2 .* got 1"):
        RunConfig(levels=1)
    # on a built-in continuous set it would be ignored
    from pyro_flows.data import load_splits

    with pytest.raises(
        ValueError, match="--levels 16 applies to data files .* moons is a built-in continuous set"
    ):
        load_splits(RunConfig(data="moons", levels=16))


def test_flow_kind_checks_the_shape_of_the_data():
    from pyro_flows.train.registry import build_model

    with pytest.raises(ValueError, match=r"--flow spline models vectors, but .* shape \(1, 4, 4\)"):
        build_model(RunConfig(num_layers=2, hidden_dims=(8,)), (1, 4, 4))
    with pytest.raises(ValueError, match=r"--flow glow models images \(C, H, W\), but .* shape \(2,\)"):
        build_model(RunConfig(flow="glow"), (2,))


def test_sample_checks_its_options_before_reading_the_run(tmp_path):
    from pyro_flows.train.run import sample_run

    with pytest.raises(ValueError, match="--output must end in .npy, got s.txt"):
        sample_run(str(tmp_path / "none"), 5, out="s.txt")


def _tiny_spline_run(tmp_path, points: np.ndarray, **options) -> RunConfig:
    """Fit a two-coupling spline flow on ``points`` into ``tmp_path / "r"``."""
    np.save(tmp_path / "x.npy", points)
    config = RunConfig(
        flow="spline",
        data=str(tmp_path / "x.npy"),
        num_layers=2,
        hidden_dims=(8,),
        plots=False,
        quiet=True,
        out=str(tmp_path / "r"),
        **options,
    )
    fit_run(config)
    return config


@pytest.mark.parametrize("length, rate", [({"epochs": 1}, 0.0), ({"steps": 120}, 0.1), ({"epochs": 30}, 0.2)])
def test_spline_dropout_grows_with_the_passes_over_the_data_and_the_run_saves_it(tmp_path, length, rate):
    from pyro_flows.train.run import _load_run, evaluate_run

    # 400 points less 10% validation and 10% test: 320 to train on, 8 batches of 40 a
    # pass; 120 steps are 15 passes (12 dimensions: up to 10 the training noise replaces dropout)
    points = np.random.default_rng(0).normal(size=(400, 12))
    _tiny_spline_run(tmp_path, points, batch_size=40, eval_every=4, **length)
    state, saved = _load_run(str(tmp_path / "r"))
    assert saved.dropout == rate
    # evaluating rebuilds the trained layout (dropout layers shift the networks' keys)
    assert math.isfinite(evaluate_run(str(tmp_path / "r"), quiet=True)["nll"])
    flow, history = pyro_flows.train.fit(
        torch.randn(400, 12), num_layers=2, hidden_dims=(8,), batch_size=40, val_fraction=0.2, **length
    )
    assert {m.p for m in flow.modules() if isinstance(m, torch.nn.Dropout)} == ({rate} if rate else set())


def test_training_noise_by_dimension_is_saved_and_widens_the_fit_by_its_level(tmp_path):
    from pyro_flows.train.run import _load_run

    rng = np.random.default_rng(0)
    for dim, level in ((2, 0.0), (3, 0.05), (12, 0.0)):
        (tmp_path / f"d{dim}").mkdir()
        _tiny_spline_run(
            tmp_path / f"d{dim}", rng.normal(size=(300, dim)), batch_size=40, steps=4, eval_every=2
        )
        assert _load_run(str(tmp_path / f"d{dim}" / "r"))[1].noise == level
    # noise of S sds on each coordinate at a constant rate: the fitted variance is the
    # data's times 1 + S^2; on the cosine schedule the noise fades with the rate, and the
    # flow ends near the data's own
    torch.manual_seed(0)
    x = 2.0 * torch.randn(3000, 3)
    options = dict(
        flow="real_nvp", steps=400, num_layers=2, hidden_dims=(16,), batch_size=200, eval_every=400
    )
    plain, _ = pyro_flows.train.fit(x, noise=0.0, schedule="constant", **options)
    noisy, _ = pyro_flows.train.fit(x, noise=1.0, schedule="constant", **options)
    faded, _ = pyro_flows.train.fit(x, noise=1.0, **options)
    with torch.no_grad():
        sd_plain, sd_noisy, sd_faded = (
            float(f.sample((20000,)).std(0).mean()) for f in (plain, noisy, faded)
        )
    assert abs(sd_plain - 2.0) < 0.15 and abs(sd_noisy - 2.0 * math.sqrt(2.0)) < 0.2, (sd_plain, sd_noisy)
    assert abs(sd_faded - 2.0) < 0.3, sd_faded
    with pytest.raises(ValueError, match="--noise must be a finite number"):
        RunConfig(noise=float("nan"))


def test_spline_learning_rate_by_dimension_and_a_resumed_run_keeps_its_own(tmp_path):
    import numpy as np

    from pyro_flows.train.checkpoint import load_checkpoint, save_checkpoint

    rng = np.random.default_rng(0)
    for dim, rate in ((2, 3e-3), (3, 2e-2)):
        np.save(tmp_path / f"x{dim}.npy", rng.normal(size=(300, dim)))
        config = RunConfig(
            flow="spline",
            data=str(tmp_path / f"x{dim}.npy"),
            num_layers=2,
            hidden_dims=(8,),
            batch_size=40,
            steps=20,
            eval_every=10,
            plots=False,
            quiet=True,
            out=str(tmp_path / f"r{dim}"),
        )
        with pytest.raises(Interrupt):
            fit_run(config, on_step=interrupt_at(12))
        path = os.path.join(config.out, "checkpoint.pt")
        state = load_checkpoint(path)
        assert state["scheduler"]["base_lrs"] == [rate]
        assert RunConfig.from_saved(state["config"]).lr == 0.0  # "the flow's"
    # A run saved when the rule gave another rate (here 5e-4) resumes at its own rate.
    state["scheduler"]["base_lrs"] = [5e-4]
    for group in state["optimizer"]["param_groups"]:
        group["initial_lr"] = 5e-4
    save_checkpoint(path, state)
    fit_run(RunConfig(quiet=True), resume_dir=config.out)
    lines = [json.loads(x) for x in open(os.path.join(config.out, "metrics.jsonl"))]
    rates = {r["step"]: r["lr"] for r in lines if "lr" in r}
    assert sorted(rates) == [10, 20]
    assert rates[10] > 1e-3  # before the interruption: 2e-2 on the cosine
    assert 0 < rates[20] < 5e-4  # after: the checkpoint's 5e-4 on the cosine


def test_spline_defaults_by_dimension_and_runs_saved_before_them_rebuild_as_trained():
    from pyro_flows.train.registry import build_model

    def bins_bound_and_dropout(model):
        couplings = [m for m in model.modules() if isinstance(m, pyro_flows.transforms.SplineCoupling)]
        rates = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
        return couplings[0].num_bins, couplings[0].tail_bound, rates

    config = RunConfig(flow="spline", num_layers=2, hidden_dims=(8,))
    assert bins_bound_and_dropout(build_model(config, (2,))) == (16, 2.0, set())
    assert bins_bound_and_dropout(build_model(config, (5,))) == (8, 3.0, {0.2})
    told = config.replace(num_bins=4, dropout=0.0, tail_bound=5.0)
    assert bins_bound_and_dropout(build_model(told, (5,))) == (4, 5.0, set())
    # a run saved before --num-bins, --tail-bound and --dropout existed was trained with
    # 8 bins on [-3, 3] and no dropout
    saved = {k: v for k, v in config.to_dict().items() if k not in ("num_bins", "dropout", "tail_bound")}
    old = RunConfig.from_saved(saved)
    assert (old.num_bins, old.tail_bound, old.dropout) == (8, 3.0, 0.0)
    assert bins_bound_and_dropout(build_model(old, (2,))) == (8, 3.0, set())
    with pytest.raises(ValueError, match="--dropout"):
        RunConfig(dropout=1.0)
    with pytest.raises(ValueError, match="--num-bins"):
        RunConfig(num_bins=-1)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="--tail-bound"):
            RunConfig(tail_bound=bad)
    with pytest.raises(ValueError, match="--tail-bound does not apply to --flow real_nvp"):
        check_flow_options(RunConfig(flow="real_nvp", tail_bound=2.0), (2,))


def test_a_run_saves_the_spline_options_it_picked_so_a_new_default_cannot_change_it(tmp_path):
    """The bins and the bound that 0 picks by the data are saved as numbers: evaluating the
    run after the defaults changed rebuilds the network it trained, with its NLL."""
    import pyro_flows.builders.vector as vector
    from pyro_flows.train import evaluate_run

    points = np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32)
    config = _tiny_spline_run(tmp_path, points, batch_size=50, steps=10, eval_every=5)
    saved = load_checkpoint(os.path.join(config.out, "best.pt"))["config"]
    assert (saved["num_bins"], saved["tail_bound"]) == (16, 2.0)
    before = evaluate_run(config.out, quiet=True)["nll"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vector, "_default_tail_bound", lambda input_dim: 4.0)
        patch.setattr(vector, "_default_spline_bins", lambda input_dim: 4)
        assert evaluate_run(config.out, quiet=True)["nll"] == before
