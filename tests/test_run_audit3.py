"""Regressions of the third run audit: a failed write says what the folder still holds
and how to go on (and under torchrun stops every process together), a resumed run keeps
the best model its checkpoint names, and a run goes on when its data or its machine
moved (the same data, checked by their SHA-256), never on other data."""

import errno
import json
import os
import shutil

import numpy as np
import pytest
import torch

import pyro_flows.train.loop as loop
from pyro_flows.train.checkpoint import load_checkpoint, save_checkpoint
from pyro_flows.train.config import RunConfig
from pyro_flows.train.distributed import DistContext
from pyro_flows.train.run import fit_run

from .helpers import Interrupt, interrupt_at, run_cli, run_config


def tiny(out, **changes) -> RunConfig:
    options = dict(num_layers=2, hidden_dims=(16,), num_samples=600, batch_size=50, steps=15, eval_every=5)
    return run_config(out, **{**options, "lr": 5e-3, "flow": "real_nvp", **changes})


def weights(run_dir, which="checkpoint.pt") -> dict:
    return load_checkpoint(os.path.join(run_dir, which))["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def full_disk_at(monkeypatch, fail_on: str, step: int) -> None:
    """``save_checkpoint`` of the training loop fails as a full disk does when it writes
    the file ``fail_on`` of step ``step`` (after writing part of it)."""
    real = loop.save_checkpoint

    def save(path, state):
        if os.path.basename(path) == fail_on and state["step"] == step:

            def partial(obj, fh):
                fh.write(b"half a checkpoint")
                raise OSError(errno.ENOSPC, "No space left on device")

            monkeypatch.setattr(torch, "save", partial)
            try:
                return real(path, state)
            finally:
                monkeypatch.undo()
        return real(path, state)

    monkeypatch.setattr(loop, "save_checkpoint", save)


# 1. a failed write ----------------------------------------------------------------------------


def test_a_full_disk_says_which_checkpoint_is_kept_and_the_run_resumes_exactly(tmp_path, monkeypatch, capsys):
    whole = tmp_path / "whole"
    fit_run(tiny(whole))
    out = tmp_path / "full"
    config = tiny(out)
    argv = ["fit", "--flow", "real_nvp", "--num-layers", "2", "--hidden-dims", "16", "--num-samples", "600"]
    argv += ["--batch-size", "50", "--steps", "15", "--eval-every", "5", "--lr", "5e-3", "--patience", "0"]
    argv += ["--no-plots", "--quiet", "--out", out]
    full_disk_at(monkeypatch, "checkpoint.pt", 10)  # best.pt of step 10 is written, checkpoint.pt is not
    code, _, err = run_cli(capsys, *argv)
    monkeypatch.undo()
    assert code == 1
    # what failed, where, and what is kept: not a bare "[Errno 28] No space left on device"
    assert f"No space left on device (writing {out / 'checkpoint.pt'} at step 10)" in err, err
    assert f"the checkpoint of step 5 in {out / 'checkpoint.pt'} is complete and kept" in err, err
    assert "once there is space on the disk again" in err and f"`pyro-flows fit --resume {out}`" in err, err
    assert load_checkpoint(str(out / "checkpoint.pt"))["step"] == 5  # the previous one, whole
    assert not [name for name in os.listdir(out) if name.startswith(".tmp-")]
    # best.pt ran ahead of checkpoint.pt (step 10 against 5): the resumed run repeats that
    # evaluation and ends as the uninterrupted run
    assert load_checkpoint(str(out / "best.pt"))["step"] == 10
    code, _, err = run_cli(capsys, "fit", "--resume", out, "--quiet")
    assert code == 0, err
    assert_same_weights(weights(whole), weights(out))
    assert_same_weights(weights(whole, "best.pt"), weights(out, "best.pt"))
    results = [json.loads((d / "results.json").read_text()) for d in (whole, out)]
    assert results[0]["test_nll"] == results[1]["test_nll"]
    assert config.out == str(out)


def test_a_full_disk_before_the_first_checkpoint_says_there_is_none(tmp_path, monkeypatch):
    full_disk_at(monkeypatch, "best.pt", 5)
    with pytest.raises(OSError, match="no checkpoint had been written yet") as caught:
        fit_run(tiny(tmp_path / "run"))
    assert f"writing {tmp_path / 'run' / 'best.pt'} at step 5" in str(caught.value)
    assert caught.value.errno == errno.ENOSPC
    assert not (tmp_path / "run" / "best.pt").exists() and not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_failed_metrics_write_under_torchrun_stops_every_process_at_the_next_evaluation(
    tmp_path, monkeypatch
):
    # Rank 0 of two processes (the collectives stand in for the other one). A metrics
    # line that fails to be written between evaluations must not stop rank 0 on its own:
    # the other process would wait for it in the next step's collectives. It stops
    # every process together at the next evaluation (fail_together), with its message.
    shared = []

    def fail_together(error, context):
        shared.append((error, loop_step[0]))
        if error is not None:
            raise error

    loop_step = [0]
    monkeypatch.setattr(loop, "all_reduce_mean", lambda tensor, context: tensor)
    monkeypatch.setattr(loop, "gather_objects", lambda obj, context: [obj, obj])
    monkeypatch.setattr(loop, "sync_buffers", lambda flow, context: None)
    monkeypatch.setattr(loop, "separate_random_streams", lambda context: None)
    monkeypatch.setattr(loop, "wrap_model", lambda module, context, device: module)
    monkeypatch.setattr(loop, "fail_together", fail_together)
    real_write = loop.MetricsLog.write

    def write(self, **record):
        if record.get("split") == "train" and record["step"] == 10:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, **record)

    monkeypatch.setattr(loop.MetricsLog, "write", write)
    from pyro_flows.data import Splits, make_moons
    from pyro_flows.train.registry import build_model

    config = tiny(tmp_path / "run", steps=20, eval_every=15)
    os.makedirs(config.out)
    x = make_moons(600)
    torch.manual_seed(0)
    flow = build_model(config, (2,))

    def on_step(step):
        loop_step[0] = step

    with pytest.raises(OSError, match="No space left on device") as caught:
        loop.train(
            flow,
            Splits("moons", x[:500], x[500:550], x[550:]),
            config,
            config.out,
            context=DistContext(rank=0, world_size=2),
            on_step=on_step,
        )
    assert loop_step[0] == 14  # it trained on, with the other process, up to the evaluation
    assert [step for _, step in shared] == [14]  # where every process learns of the failure
    assert shared[0][0] is caught.value
    assert f"writing {tmp_path / 'run' / 'metrics.jsonl'} at step 10" in str(caught.value)
    assert not os.path.exists(os.path.join(config.out, "checkpoint.pt"))  # nothing written after it


# 2. the best model of a resumed run -----------------------------------------------------------


def test_resume_refuses_a_best_model_that_is_missing_or_of_another_step(tmp_path, capsys):
    # a run whose best validation NLL is at step 8 of 12
    out = tmp_path / "run"
    fit_run(tiny(out, steps=12, eval_every=4, lr=5e-2, seed=5))
    saved = load_checkpoint(str(out / "checkpoint.pt"))["trainer"]
    assert (saved["step"], saved["best_step"]) == (12, 8), saved["history"]
    results = (out / "results.json").read_text()

    # best.pt lost: resuming (here: scoring the finished run again) would score the
    # weights of step 12 and report them as the best of step 8
    moved = tmp_path / "best.pt"
    shutil.move(str(out / "best.pt"), moved)
    code, _, err = run_cli(capsys, "fit", "--resume", out, "--quiet")
    assert code == 1, err
    assert f"{out / 'best.pt'} is missing: the run's best model (step 8) is kept only there" in err, err
    assert (out / "results.json").read_text() == results

    # a best.pt of another step of the same model (an earlier copy)
    early = tmp_path / "early"
    with pytest.raises(Interrupt):
        fit_run(tiny(early, steps=12, eval_every=4, lr=5e-2, seed=5), on_step=interrupt_at(5))
    shutil.copy(early / "best.pt", out / "best.pt")
    code, _, err = run_cli(capsys, "fit", "--resume", out, "--quiet")
    assert code == 1, err
    assert "holds the model of step 4, but the run's checkpoint.pt (step 12) names step 8 as the best" in err
    assert (out / "results.json").read_text() == results

    # the run's own best.pt back: scored as before
    shutil.move(str(moved), out / "best.pt")
    code, _, err = run_cli(capsys, "fit", "--resume", out, "--quiet")
    assert code == 0, err
    assert json.loads((out / "results.json").read_text())["test_nll"] == json.loads(results)["test_nll"]


def test_a_best_model_at_the_checkpoints_own_step_is_taken_from_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    config = tiny(out, ema=0.9)  # best.pt holds the average, which the checkpoint holds too
    results = fit_run(config)
    assert load_checkpoint(str(out / "checkpoint.pt"))["trainer"]["best_step"] == 15
    os.unlink(out / "best.pt")
    # scored again with the averaged weights of the checkpoint (the live ones score otherwise)
    code, _, err = run_cli(capsys, "fit", "--resume", out, "--quiet")
    assert code == 0, err
    assert json.loads((out / "results.json").read_text())["test_nll"] == results["test_nll"]


# 3. data and machines that moved --------------------------------------------------------------


def test_resume_goes_on_with_data_that_moved_and_refuses_other_data(tmp_path, capsys):
    (tmp_path / "old").mkdir()
    np.save(tmp_path / "old" / "x.npy", np.random.default_rng(0).normal(size=(600, 2)))
    np.save(tmp_path / "other.npy", np.random.default_rng(1).normal(size=(600, 2)))
    whole, out = tmp_path / "whole", tmp_path / "run"
    fit_run(tiny(whole, data=str(tmp_path / "old" / "x.npy")))
    with pytest.raises(Interrupt):
        fit_run(tiny(out, data=str(tmp_path / "old" / "x.npy")), on_step=interrupt_at(7))
    os.rename(tmp_path / "old", tmp_path / "new")

    code, _, err = run_cli(capsys, "fit", "--resume", out, "--quiet")
    assert code == 1
    assert f"the run was trained on {tmp_path / 'old' / 'x.npy'}, which no longer exists" in err, err
    assert "give their new place with --data" in err
    code, _, err = run_cli(capsys, "fit", "--resume", out, "--quiet", "--data", tmp_path / "other.npy")
    assert code == 1
    assert f"{tmp_path / 'other.npy'} is not the file the run was trained on" in err, err
    code, _, err = run_cli(capsys, "fit", "--resume", out, "--quiet", "--data", "moons")
    assert code == 1 and "--data gives the new place of that file" in err, err
    code, _, err = run_cli(capsys, "fit", "--resume", out, "--quiet", "--steps", "30")
    assert code == 1 and "drop --steps" in err, err
    assert load_checkpoint(str(out / "checkpoint.pt"))["step"] == 5  # the refusals changed nothing

    code, _, err = run_cli(capsys, "fit", "--resume", out, "--quiet", "--data", tmp_path / "new" / "x.npy")
    assert code == 0, err
    assert_same_weights(weights(whole), weights(out))
    state = load_checkpoint(str(out / "best.pt"))
    assert state["config"]["data"] == str(tmp_path / "new" / "x.npy")  # evaluate reads it there now
    assert state["data"]["source"]["path"] == str(tmp_path / "new" / "x.npy")
    code, text, err = run_cli(capsys, "evaluate", out, "--json")
    assert code == 0, err
    assert json.loads(text)["nll"] == json.loads((whole / "results.json").read_text())["test_nll"]


def test_resume_may_go_on_on_another_device(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(Interrupt):
        fit_run(tiny(out), on_step=interrupt_at(7))
    # as if trained on a GPU this machine does not have
    path = str(out / "checkpoint.pt")
    state = load_checkpoint(path)
    state["config"]["device"] = "cuda:99"
    save_checkpoint(path, {k: v for k, v in state.items() if k not in ("format", "version")})
    code, _, err = run_cli(capsys, "fit", "--resume", out, "--quiet")
    assert code == 1 and "--device cuda:99" in err, err
    code, _, err = run_cli(capsys, "fit", "--resume", out, "--quiet", "--device", "cpu")
    assert code == 0, err
    assert load_checkpoint(path)["step"] == 15
    assert load_checkpoint(path)["config"]["device"] == "cpu"


# 4. data files --------------------------------------------------------------------------------


def test_a_file_holding_a_single_number_is_not_called_empty(tmp_path, capsys):
    np.save(tmp_path / "one.npy", np.float64(3.5))
    code, _, err = run_cli(capsys, "fit", "--data", tmp_path / "one.npy", "--out", tmp_path / "run")
    assert code == 1
    assert f"data file {tmp_path / 'one.npy'} holds a single number (an array of shape ()), not points" in err
    assert "empty" not in err and not (tmp_path / "run").exists()
