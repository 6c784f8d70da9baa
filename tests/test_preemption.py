"""A run stopped by its scheduler (SIGTERM, or SIGUSR1 ahead of time) finishes its step,
saves it, says how to go on and exits with 128 + the signal; a first Ctrl-C in the loop
does the same (status 130), a second one stops at once. Resumed, a run ends exactly as an
uninterrupted run. The handlers live only as long as the run, in the main thread."""

import json
import os
import signal
import subprocess
import sys
import threading

import pytest
import torch

import pyro_flows.train.loop as loop
import pyro_flows.train.run as run_module
from pyro_flows.cli import main
from pyro_flows.train.checkpoint import load_checkpoint
from pyro_flows.train.config import RunConfig
from pyro_flows.train.distributed import DistContext
from pyro_flows.train.run import evaluate_run, fit_run

from .helpers import Interrupt, interrupt_at, run_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 480 training points in batches of 50: 9 steps an epoch, so step 7 and step 3 are mid-epoch;
# the training noise and the moving average make every step draw random numbers and carry state
OPTIONS = dict(flow="real_nvp", num_layers=2, hidden_dims=(16,), num_samples=600, batch_size=50, steps=15)
OPTIONS.update(eval_every=5, lr=5e-3, noise=0.1, ema=0.9, patience=0)
ARGV = ["fit", "--flow", "real_nvp", "--num-layers", "2", "--hidden-dims", "16", "--num-samples", "600"]
ARGV += ["--batch-size", "50", "--steps", "15", "--eval-every", "5", "--lr", "5e-3", "--noise", "0.1"]
ARGV += ["--ema", "0.9", "--patience", "0", "--no-plots", "--quiet"]


def tiny(out, **changes) -> RunConfig:
    return run_config(out, **{**OPTIONS, **changes})


class Signalled(Exception):
    """Raised by the test process's own handlers (see ``user_handlers``)."""


@pytest.fixture
def user_handlers():
    """The process's own SIGTERM and SIGUSR1 handlers, which a run must put back. They
    raise :class:`Signalled`, so a signal that no run catches fails the test instead of
    ending pytest; ``calls`` lists what reached them."""
    calls = []

    def handler(signum, frame):
        calls.append(signum)
        raise Signalled(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGUSR1)}
    handler.calls = calls
    yield handler
    for signum, before in previous.items():
        signal.signal(signum, before)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The uninterrupted run of ``OPTIONS``."""
    out = tmp_path_factory.mktemp("whole") / "run"
    fit_run(tiny(out))
    return out


def signal_at(step: int, signum=signal.SIGTERM):
    """An ``on_step`` that sends ``signum`` to this process at the end of ``step``."""

    def on_step(current: int) -> None:
        if current == step:
            os.kill(os.getpid(), signum)

    return on_step


def handlers():
    return [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)]


def rank_0_of_two(monkeypatch):
    """``(run, reductions, agreements, other_signalled_at)``: ``run(out, on_step)`` trains
    20 steps as rank 0 of two processes, with collectives that stand in for the other
    one, which is signalled at the reduction ``other_signalled_at[0]`` (``None``: never);
    ``reductions`` lists the stop flag of each step's loss reduction, ``agreements`` the
    ``(reductions so far, error)`` of each ``fail_together``."""
    from pyro_flows.data import Splits, make_moons
    from pyro_flows.train.registry import build_model
    from pyro_flows.train.stopping import StopSignals

    other_signalled_at = [None]
    reductions, agreements = [], []

    def all_reduce_mean(tensor, context):
        if tensor.numel() == 3:  # a step's [NLL, penalty, stop flag]
            reductions.append(float(tensor[2]))
            if len(reductions) == other_signalled_at[0]:
                return tensor + torch.tensor([0.0, 0.0, 0.5], dtype=tensor.dtype)  # the other's flag: 1
        return tensor

    def fail_together(error, context):
        agreements.append((len(reductions), error))
        if error is not None:
            raise error

    monkeypatch.setattr(loop, "all_reduce_mean", all_reduce_mean)
    monkeypatch.setattr(loop, "gather_objects", lambda obj, context: [obj, obj])
    monkeypatch.setattr(loop, "sync_buffers", lambda flow, context: None)
    monkeypatch.setattr(loop, "separate_random_streams", lambda context: None)
    monkeypatch.setattr(loop, "wrap_model", lambda module, context, device: module)
    monkeypatch.setattr(loop, "fail_together", fail_together)
    x = make_moons(600)
    splits = Splits("moons", x[:500], x[500:550], x[550:])

    def run(out, on_step=None):
        config = tiny(out, steps=20, ema=0.0)
        os.makedirs(config.out)
        torch.manual_seed(0)
        flow = build_model(config, (2,))
        with StopSignals() as stop:
            loop.train(
                flow, splits, config, config.out, context=DistContext(0, 2), on_step=on_step, stop=stop
            )

    return run, reductions, agreements, other_signalled_at


def assert_same_run(a, b) -> None:
    """The same final and best weights, test NLL and metrics (but for the speed)."""
    for which in ("checkpoint.pt", "best.pt"):
        x, y = (load_checkpoint(str(d / which)) for d in (a, b))
        assert x["step"] == y["step"]
        assert x["model"].keys() == y["model"].keys()
        for key in x["model"]:
            assert torch.equal(x["model"][key], y["model"][key]), (which, key)
    results = [json.loads((d / "results.json").read_text()) for d in (a, b)]
    assert results[0]["test_nll"] == results[1]["test_nll"]
    assert results[0]["best_val_nll"] == results[1]["best_val_nll"]
    metrics = [
        [
            {k: v for k, v in json.loads(line).items() if k != "steps_per_s"}
            for line in open(d / "metrics.jsonl")
        ]
        for d in (a, b)
    ]
    assert metrics[0] == metrics[1]


def test_sigterm_between_evaluations_saves_that_step_and_the_resumed_run_ends_as_an_uninterrupted_one(
    whole, tmp_path, capsys, monkeypatch, user_handlers
):
    out = tmp_path / "run"
    real_train = run_module.train
    monkeypatch.setattr(run_module, "train", lambda *a, **k: real_train(*a, **{**k, "on_step": signal_at(7)}))
    code = main([*map(str, ARGV), "--out", str(out)])
    _, err = capsys.readouterr()
    monkeypatch.undo()
    assert code == 128 + signal.SIGTERM == 143
    assert (
        f"pyro-flows fit: stopped by SIGTERM after step 7 of 15; the run's state at that step is saved in "
        f"{out / 'checkpoint.pt'}: continue it with `pyro-flows fit --resume {out}`"
    ) in err, err
    assert handlers() == [user_handlers, user_handlers] and user_handlers.calls == []
    saved = load_checkpoint(str(out / "checkpoint.pt"))
    assert saved["step"] == saved["trainer"]["step"] == 7  # mid-epoch, between the evaluations of 5 and 10
    assert load_checkpoint(str(out / "best.pt"))["step"] == 5
    assert saved["ema"]["num_updates"] == 7
    assert not (out / "results.json").exists()
    assert not [name for name in os.listdir(out) if name.startswith(".tmp-")]

    code = main(["fit", "--resume", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert_same_run(whole, out)


def test_a_second_signal_while_saving_changes_nothing_and_sigusr1_stops_before_the_first_evaluation(
    whole, tmp_path, capsys, monkeypatch, user_handlers
):
    # SLURM's --signal=USR1@T at step 3, before any evaluation; SIGTERM again while the
    # checkpoint is written (SLURM and torchrun may both deliver one): it is ignored
    out = tmp_path / "run"
    real_save = loop.save_checkpoint
    writes = []

    def save(path, state):
        writes.append((os.path.basename(path), state["step"]))
        os.kill(os.getpid(), signal.SIGTERM)
        return real_save(path, state)

    monkeypatch.setattr(loop, "save_checkpoint", save)
    with pytest.raises(SystemExit) as caught:
        fit_run(tiny(out), on_step=signal_at(3, signal.SIGUSR1))
    monkeypatch.undo()
    assert caught.value.code == 128 + signal.SIGUSR1
    message = f"stopped by SIGUSR1 after step 3 of 15; the run's state at that step is saved in {out / 'checkpoint.pt'}"
    assert str(caught.value).startswith(message)
    assert f"pyro-flows fit: {message}" in capsys.readouterr().err
    assert writes == [("checkpoint.pt", 3)]
    assert handlers() == [user_handlers, user_handlers] and user_handlers.calls == []
    assert load_checkpoint(str(out / "checkpoint.pt"))["step"] == 3
    assert sorted(os.listdir(out)) == [
        "checkpoint.pt",
        "config.toml",
        "metrics.jsonl",
    ]  # whole, no temporaries
    with pytest.raises(ValueError, match=f"continue it with `pyro-flows fit --resume {out}`"):
        evaluate_run(str(out), quiet=True)  # no best model before the first evaluation

    fit_run(RunConfig(quiet=True), resume_dir=str(out))
    assert_same_run(whole, out)


def test_the_handlers_live_only_while_the_run_runs_in_the_main_thread(tmp_path, user_handlers):
    # importing installs nothing (checked in a new process, alongside the runs below)
    code = (
        "import signal; names = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)\n"
        "before = [signal.getsignal(s) for s in names]\n"
        "import pyro_flows, pyro_flows.cli, pyro_flows.train, pyro_flows.train.run\n"
        "assert [signal.getsignal(s) for s in names] == before, before"
    )
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    importing = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )

    during = []
    fit_run(tiny(tmp_path / "a", steps=2, eval_every=2), on_step=lambda step: during.append(handlers()))
    assert all(user_handlers not in seen for seen in during) and len(during) == 2  # the run's own
    assert handlers() == [user_handlers, user_handlers]
    with pytest.raises(Interrupt):  # an error in the loop
        fit_run(tiny(tmp_path / "b", steps=4, eval_every=2), on_step=interrupt_at(1))
    assert handlers() == [user_handlers, user_handlers]
    with pytest.raises(ValueError, match="does not exist"):  # refused before training
        fit_run(RunConfig(quiet=True), resume_dir=str(tmp_path / "none"))
    assert handlers() == [user_handlers, user_handlers]

    # a signal the process ignores stays ignored
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    during.clear()
    fit_run(tiny(tmp_path / "c", steps=2, eval_every=2), on_step=lambda step: during.append(handlers()[1]))
    assert during == [signal.SIG_IGN] * 2 and handlers()[1] is signal.SIG_IGN

    # another thread cannot install handlers: the run goes on there, unprotected
    signal.signal(signal.SIGUSR1, user_handlers)
    during.clear()
    errors = []

    def in_thread():
        try:
            fit_run(
                tiny(tmp_path / "d", steps=2, eval_every=2), on_step=lambda step: during.append(handlers())
            )
        except BaseException as err:  # reported below
            errors.append(err)

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert errors == [] and during == [[user_handlers, user_handlers]] * 2
    assert handlers() == [user_handlers, user_handlers]
    _, stderr = importing.communicate(timeout=120)
    assert importing.returncode == 0, stderr


def test_a_signal_outside_the_training_loop_stops_at_once_and_says_what_the_folder_holds(
    tmp_path, capsys, monkeypatch, user_handlers
):
    out = tmp_path / "run"
    real_score = run_module._score

    def score(*args, **kwargs):  # while scoring the test split, after training
        os.kill(os.getpid(), signal.SIGTERM)
        return real_score(*args, **kwargs)

    monkeypatch.setattr(run_module, "_score", score)
    with pytest.raises(SystemExit) as caught:
        fit_run(tiny(out, steps=4, eval_every=2))
    monkeypatch.undo()
    assert caught.value.code == 143
    assert (
        str(caught.value)
        == f"stopped by SIGTERM; continue from the last checkpoint with `pyro-flows fit --resume {out}`"
    )
    assert load_checkpoint(str(out / "checkpoint.pt"))["step"] == 4 and not (out / "results.json").exists()
    assert fit_run(RunConfig(quiet=True), resume_dir=str(out))["steps"] == 4  # scores and writes the results

    other = tmp_path / "other"
    real_load = run_module.load_splits

    def load(*args, **kwargs):  # while reading the data, before the folder is touched
        os.kill(os.getpid(), signal.SIGTERM)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(run_module, "load_splits", load)
    capsys.readouterr()
    code = main([*map(str, ARGV), "--out", str(other)])
    assert code == 143
    assert (
        f"pyro-flows fit: stopped by SIGTERM before the run began; {other} is as it was"
        in capsys.readouterr().err
    )
    assert not other.exists()
    assert handlers() == [user_handlers, user_handlers] and user_handlers.calls == []


def test_under_torchrun_a_signal_to_any_process_stops_every_process_at_the_same_step(
    tmp_path, monkeypatch, user_handlers
):
    # Rank 0 of two processes; the collectives stand in for the other one. The processes
    # learn of a signal from the loss reduction every step makes, so all stop at its step.
    from pyro_flows.train.stopping import RunTerminated

    run, reductions, agreements, other_signalled_at = rank_0_of_two(monkeypatch)

    # the signal reaches this process at the end of step 7: it tells the others at step 8
    with pytest.raises(RunTerminated) as caught:
        run(tmp_path / "here", on_step=signal_at(7))
    assert reductions[6:] == [0.0, 1.0] and len(reductions) == 8
    assert caught.value.step == 8 and caught.value.code == 143 and not caught.value.elsewhere
    saved = load_checkpoint(str(tmp_path / "here" / "checkpoint.pt"))
    assert saved["step"] == 8 and len(saved["rng"]["ranks"]) == 2
    assert agreements[-1] == (8, None)  # every process learns that rank 0's write succeeded

    # the signal reaches the other process only: this one stops with it, after step 12
    reductions.clear()
    other_signalled_at[0] = 12
    with pytest.raises(RunTerminated) as caught:
        run(tmp_path / "there")
    assert len(reductions) == 12 and caught.value.step == 12 and caught.value.elsewhere
    assert caught.value.code == 143
    assert "stopped by a signal to another process of the run after step 12 of 20" in str(caught.value)
    assert load_checkpoint(str(tmp_path / "there" / "checkpoint.pt"))["step"] == 12
    assert handlers() == [user_handlers, user_handlers] and user_handlers.calls == []


def test_stop_signals_record_one_signal_in_the_loop_and_raise_outside_it(user_handlers):
    from pyro_flows.train.stopping import RunTerminated, StopSignals

    # it stopped nothing: once the handlers are back, the process's own takes it
    with pytest.raises(Signalled):
        with StopSignals() as stop:
            with stop.deferred():
                os.kill(os.getpid(), signal.SIGUSR1)
                os.kill(os.getpid(), signal.SIGTERM)  # only the first counts
            assert stop.received == signal.SIGUSR1 and user_handlers.calls == []
    assert user_handlers.calls == [signal.SIGUSR1]

    with pytest.raises(RunTerminated) as caught:
        with StopSignals():
            os.kill(os.getpid(), signal.SIGTERM)
    assert caught.value.code == 143 and str(caught.value) == "stopped by SIGTERM before the run began"
    assert handlers() == [user_handlers, user_handlers] and user_handlers.calls == [signal.SIGUSR1]


# Ctrl-C ----------------------------------------------------------------------------------

INTERRUPTED = (
    "pyro-flows fit: interrupted; finishing step {} and saving it; press Ctrl-C again to stop at once"
)


def test_a_first_ctrl_c_between_evaluations_saves_that_step_and_the_resumed_run_ends_as_an_uninterrupted_one(
    whole, tmp_path, capsys, monkeypatch, user_handlers
):
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    out = tmp_path / "run"
    real_train = run_module.train
    monkeypatch.setattr(
        run_module, "train", lambda *a, **k: real_train(*a, **{**k, "on_step": signal_at(7, signal.SIGINT)})
    )
    code = main([*map(str, ARGV), "--out", str(out)])  # --quiet: the key press is answered all the same
    _, err = capsys.readouterr()
    monkeypatch.undo()
    assert code == 130
    saved = (
        f"pyro-flows fit: interrupted after step 7 of 15; the run's state at that step is saved in "
        f"{out / 'checkpoint.pt'}: continue it with `pyro-flows fit --resume {out}`"
    )
    assert err.splitlines() == [INTERRUPTED.format(7), saved], err  # said once, in this order
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert handlers() == [user_handlers, user_handlers] and user_handlers.calls == []
    checkpoint = load_checkpoint(str(out / "checkpoint.pt"))
    assert checkpoint["step"] == checkpoint["trainer"]["step"] == 7  # between the evaluations of 5 and 10
    assert load_checkpoint(str(out / "best.pt"))["step"] == 5
    assert checkpoint["ema"]["num_updates"] == 7
    assert not (out / "results.json").exists()
    assert not [name for name in os.listdir(out) if name.startswith(".tmp-")]

    code = main(["fit", "--resume", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert_same_run(whole, out)


def test_a_second_ctrl_c_while_the_step_is_saved_stops_at_once_and_leaves_the_previous_checkpoint_whole(
    whole, tmp_path, capsys, monkeypatch, user_handlers
):
    # the first Ctrl-C at step 7; the second in the middle of writing step 7's checkpoint
    out = tmp_path / "run"
    real_save, real_torch_save = loop.save_checkpoint, torch.save
    writes = []

    def save(path, state):
        writes.append((os.path.basename(path), state["step"]))
        return real_save(path, state)

    def torch_save(obj, fh, *args, **kwargs):
        if writes[-1][1] == 7:
            fh.write(b"the first bytes of step 7")
            os.kill(os.getpid(), signal.SIGINT)
        return real_torch_save(obj, fh, *args, **kwargs)

    monkeypatch.setattr(loop, "save_checkpoint", save)
    monkeypatch.setattr(torch, "save", torch_save)
    with pytest.raises(run_module.RunInterrupted) as caught:
        fit_run(tiny(out), on_step=signal_at(7, signal.SIGINT))
    monkeypatch.undo()
    assert capsys.readouterr().err.splitlines() == [INTERRUPTED.format(7)]
    assert writes == [("best.pt", 5), ("checkpoint.pt", 5), ("checkpoint.pt", 7)]
    assert isinstance(caught.value, KeyboardInterrupt) and caught.value.step is None
    assert (
        str(caught.value)
        == f"interrupted; continue from the last checkpoint with `pyro-flows fit --resume {out}`"
    )
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert handlers() == [user_handlers, user_handlers] and user_handlers.calls == []
    assert sorted(os.listdir(out)) == ["best.pt", "checkpoint.pt", "config.toml", "metrics.jsonl"]
    assert load_checkpoint(str(out / "checkpoint.pt"))["step"] == 5  # the evaluation's, whole

    fit_run(RunConfig(quiet=True), resume_dir=str(out))
    assert_same_run(whole, out)


def test_ctrl_c_is_taken_over_only_in_the_loop_of_a_run_in_the_main_thread_and_only_where_it_raises(
    tmp_path, capsys, monkeypatch
):
    default = signal.default_int_handler
    assert signal.getsignal(signal.SIGINT) is default
    during = []

    def look(step):
        during.append(signal.getsignal(signal.SIGINT))

    fit_run(tiny(tmp_path / "a", steps=2, eval_every=2), on_step=look)
    assert len(during) == 2 and default not in during  # the run's own
    assert signal.getsignal(signal.SIGINT) is default
    with pytest.raises(Interrupt):  # an error in the loop
        fit_run(tiny(tmp_path / "b", steps=4, eval_every=2), on_step=interrupt_at(1))
    assert signal.getsignal(signal.SIGINT) is default
    with pytest.raises(ValueError, match="does not exist"):  # refused before training
        fit_run(RunConfig(quiet=True), resume_dir=str(tmp_path / "none"))
    assert signal.getsignal(signal.SIGINT) is default

    # outside the loop (scoring the test split) Ctrl-C stops at once, as it always did
    real_score = run_module._score

    def score(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real_score(*args, **kwargs)

    monkeypatch.setattr(run_module, "_score", score)
    code = main([*map(str, ARGV), "--steps", "4", "--eval-every", "2", "--out", str(tmp_path / "c")])
    monkeypatch.undo()
    assert code == 130 and signal.getsignal(signal.SIGINT) is default
    assert capsys.readouterr().err.splitlines() == [
        f"pyro-flows fit: interrupted; continue from the last checkpoint with `pyro-flows fit --resume {tmp_path / 'c'}`"
    ]

    # ignored, or handled by the process itself: Ctrl-C is left as it is, in the loop too
    calls = []

    def own(signum, frame):
        calls.append(signum)

    for i, kept in enumerate((signal.SIG_IGN, own)):
        signal.signal(signal.SIGINT, kept)
        try:
            during.clear()
            out = tmp_path / f"kept-{i}"
            results = fit_run(
                tiny(out, steps=2, eval_every=2),
                on_step=lambda step: (look(step), signal_at(1, signal.SIGINT)(step)),
            )
            assert results["steps"] == 2 and during == [kept, kept]
            assert signal.getsignal(signal.SIGINT) is kept
        finally:
            signal.signal(signal.SIGINT, default)
    assert calls == [signal.SIGINT] and capsys.readouterr().err == ""

    # another thread cannot install handlers: there Ctrl-C stays the process's
    during.clear()
    thread = threading.Thread(
        target=fit_run, args=(tiny(tmp_path / "d", steps=2, eval_every=2),), kwargs={"on_step": look}
    )
    thread.start()
    thread.join()
    assert during == [default, default] and signal.getsignal(signal.SIGINT) is default


def test_under_torchrun_a_ctrl_c_stops_every_process_after_the_step_it_announces(
    tmp_path, capsys, monkeypatch, user_handlers
):
    # rank 0 of two: a Ctrl-C at the end of step 7 comes after that step's loss reduction,
    # so the other process learns of it from step 8's and both stop after step 8 (as for SIGTERM)
    run, reductions, agreements, _ = rank_0_of_two(monkeypatch)
    with pytest.raises(run_module.RunInterrupted) as caught:
        run(tmp_path / "here", on_step=signal_at(7, signal.SIGINT))
    assert reductions[6:] == [0.0, 1.0] and len(reductions) == 8
    assert caught.value.step == 8 and agreements[-1] == (8, None)
    assert capsys.readouterr().err.splitlines() == [INTERRUPTED.format(8)]
    saved = load_checkpoint(str(tmp_path / "here" / "checkpoint.pt"))
    assert saved["step"] == 8 and len(saved["rng"]["ranks"]) == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert handlers() == [user_handlers, user_handlers] and user_handlers.calls == []


def test_stop_signals_take_a_first_ctrl_c_in_the_loop_and_a_second_at_once(user_handlers, capsys):
    from pyro_flows.train.stopping import RunInterrupted, RunTerminated, StopSignals

    with pytest.raises(RunInterrupted) as caught:
        with StopSignals() as stop:
            stop.step = 4
            with stop.deferred():
                os.kill(os.getpid(), signal.SIGINT)
                assert stop.received == signal.SIGINT
                assert capsys.readouterr().err == INTERRUPTED.format(4) + "\n"
                with pytest.raises(KeyboardInterrupt):  # a second one
                    os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGTERM)  # a stop is under way: changes nothing
            raise stop.stopped("runs/a", 4, 9)
    assert (caught.value.step, caught.value.total_steps) == (4, 9)
    # recorded, it stopped nothing (the run ended): given back to the process's own handler
    with pytest.raises(KeyboardInterrupt):
        with StopSignals() as stop:
            with stop.deferred():
                os.kill(os.getpid(), signal.SIGINT)
    # Ctrl-C while a SIGTERM stops the run: at once
    with pytest.raises(RunTerminated):
        with StopSignals() as stop:
            with stop.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                with pytest.raises(KeyboardInterrupt):
                    os.kill(os.getpid(), signal.SIGINT)
            raise stop.stopped("runs/a", 4)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert handlers() == [user_handlers, user_handlers] and user_handlers.calls == []
    unknown = INTERRUPTED.replace("step {}", "this step")  # stop.step not set
    assert capsys.readouterr().err.splitlines() == [unknown]
