"""Run folders under stress: locks, existing runs, interrupted writes, changed data,
damaged or hand-edited checkpoints, huge requests and failing solvers."""

import json
import os
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

import pyro_flows.train.loop as loop
import pyro_flows.train.run as run_module
from pyro_flows.train.checkpoint import TRAINER_FIELDS, CheckpointError, load_checkpoint, save_checkpoint
from pyro_flows.train.config import RunConfig
from pyro_flows.train.loop import LoopState, MetricsLog, NonFiniteLossError, read_metrics
from pyro_flows.train.run import fit_run
from pyro_flows.train.rundir import RunLock, RunLockedError, locked_temporary

from .helpers import Interrupt, interrupt_at, run_cli, run_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = [
    "--num-layers",
    "2",
    "--hidden-dims",
    "8",
    "--num-samples",
    "300",
    "--batch-size",
    "40",
    "--steps",
    "6",
    "--eval-every",
    "3",
    "--plot-samples",
    "100",
    "--quiet",
]


run = run_cli


def tiny(out, **changes) -> RunConfig:
    options = dict(num_layers=2, hidden_dims=(8,), num_samples=300, batch_size=40, steps=6, eval_every=3)
    return run_config(out, **{**options, **changes})


def snapshot(folder) -> dict:
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


# 1. one writer per run folder ------------------------------------------------------------


def test_a_second_writer_is_refused_while_a_run_holds_the_folder(tmp_path, capsys):
    out = tmp_path / "run"
    seen = []

    def second_writer(step):
        if step == 2:
            with pytest.raises(RunLockedError, match=r"is in use by another pyro-flows process \(pid \d+\)"):
                fit_run(tiny(out, seed=1), overwrite=True)
            seen.append(step)

    fit_run(tiny(out), on_step=second_writer)
    assert seen == [2]
    records = read_metrics(str(out / "metrics.jsonl"))
    assert [r["step"] for r in records if r["split"] == "val"] == [3, 6]  # one run's lines only
    assert ".lock" not in os.listdir(out)  # released and removed at the end

    # The command line says the same, and touches nothing.
    before = snapshot(out)
    with RunLock(str(out)):
        code, _, err = run(capsys, "fit", *TINY, "--out", out, "--overwrite")
        assert code == 1 and "is in use by another pyro-flows process" in err
        code, _, err = run(capsys, "fit", "--resume", out)
        assert code == 1 and "is in use" in err
    assert snapshot(out) == before


def test_the_lock_dies_with_the_process_that_held_it(tmp_path):
    # Load the lock module on its own (no torch import) so the child starts fast.
    path = os.path.join(ROOT, "pyro_flows", "train", "rundir.py")
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import importlib.util, sys, time\n"
            f"spec = importlib.util.spec_from_file_location('rundir', {path!r})\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            f"held = m.RunLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"pid {child.pid}"):
            RunLock(str(tmp_path)).acquire()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()
    assert os.path.exists(tmp_path / ".lock")  # left by the killed process, but not locked
    RunLock(str(tmp_path)).acquire().release()  # free again after a crash
    assert not os.path.exists(tmp_path / ".lock")


# 2. a fresh fit never mixes with an existing run -----------------------------------------


def test_fit_into_an_existing_run_is_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(capsys, "fit", *TINY, "--out", out)
    assert code == 0, err
    before = snapshot(out)
    assert "samples.png" in before
    # A new fit with other options: refused before anything is written.
    code, _, err = run(capsys, "fit", *TINY, "--out", out, "--flow", "nice", "--no-plots")
    assert code == 1 and f"--out {out} already holds a run (config.toml" in err
    assert "--resume" in err and "--overwrite" in err
    assert snapshot(out) == before
    # The old run is still whole: it resumes with its own options.
    code, _, err = run(capsys, "fit", "--resume", out)
    assert code == 0, err
    assert load_checkpoint(str(out / "checkpoint.pt"))["config"]["flow"] == "spline"

    # --overwrite replaces it: none of the old run's files survive, other files do.
    assert run(capsys, "sample", out, "-n", "5")[0] == 0
    (out / "notes.txt").write_text("mine")
    (out / ".tmp-old.pt").write_bytes(b"partial")
    code, _, err = run(capsys, "fit", *TINY, "--out", out, "--flow", "nice", "--no-plots", "--overwrite")
    assert code == 0, err
    assert not (out / "samples.png").exists() and not (out / "nll_curves.png").exists()
    assert not (out / ".tmp-old.pt").exists() and (out / "notes.txt").read_text() == "mine"
    assert not (out / "samples.npy").exists()
    assert load_checkpoint(str(out / "checkpoint.pt"))["config"]["flow"] == "nice"
    code, _, err = run(capsys, "fit", "--resume", out, "--overwrite")
    assert code == 1 and "drop --overwrite" in err


def test_a_fit_that_fails_before_writing_leaves_no_folder(tmp_path, capsys):
    code, _, err = run(capsys, "fit", *TINY, "--data", tmp_path / "missing.csv", "--out", tmp_path / "new")
    assert code == 1 and "missing.csv does not exist" in err
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made stays
    code, _, err = run(capsys, "fit", *TINY, "--data", tmp_path / "missing.csv", "--out", tmp_path / "mine")
    assert code == 1 and (tmp_path / "mine").is_dir()


# 3 and 7. metrics.jsonl survives interruptions -------------------------------------------


def test_metrics_rewrite_on_resume_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"split": "train", "step": s, "nll": 1.0}) + "\n" for s in (10, 20, 30)]
    path.write_text("".join(lines))
    calls = []

    def dies_midway(record):
        calls.append(record)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while rewriting
        return json.JSONEncoder().encode(record)

    monkeypatch.setattr(loop.json, "dumps", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        MetricsLog(str(path), keep_until_step=20)
    monkeypatch.undo()
    assert path.read_text() == "".join(lines)  # untouched, not emptied
    assert os.listdir(tmp_path) == ["metrics.jsonl"]  # no temporary file left
    MetricsLog(str(path), keep_until_step=20)
    assert [r["step"] for r in read_metrics(str(path))] == [10, 20]


def test_resume_recovers_from_a_torn_metrics_line_and_stale_temporaries(tmp_path, capsys):
    config = tiny(tmp_path / "run", steps=9)

    with pytest.raises(Interrupt):
        fit_run(config, on_step=interrupt_at(4))
    out = tmp_path / "run"
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"split": "train", "st')  # the process died mid-line
    (out / ".tmp-abc123.pt").write_bytes(b"half a checkpoint")
    (out / ".tmp-def456.npy").write_bytes(b"a sample that was killed")
    held, live = locked_temporary(str(out), ".npy")  # a sample writing now holds its file locked
    try:
        code, _, err = run(capsys, "fit", "--resume", out)
        assert code == 0, err
        # The killed writes' files are gone; the running sample's stays.
        assert [name for name in os.listdir(out) if name.startswith(".tmp-")] == [os.path.basename(live)]
    finally:
        held.close()
    records = read_metrics(str(out / "metrics.jsonl"))
    assert [r["step"] for r in records if r["split"] == "val"] == [3, 6, 9]

    # A damaged line elsewhere is an error that names the file and the line.
    text = (out / "metrics.jsonl").read_text().splitlines()
    text[1] = text[1][:15]
    (out / "metrics.jsonl").write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not a JSON record"):
        read_metrics(str(out / "metrics.jsonl"), drop_torn_line=True)


# 4. the run's data are recognised, wherever the command starts ---------------------------


def test_evaluate_and_resume_check_the_data_file(tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(0)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    np.save(tmp_path / "a" / "data.npy", rng.normal(size=(300, 2)))
    np.save(tmp_path / "b" / "data.npy", rng.normal(size=(300, 2)) * 10 + 5)  # same name, other data
    monkeypatch.chdir(tmp_path / "a")
    out = tmp_path / "run"
    code, _, err = run(capsys, "fit", *TINY, "--data", "data.npy", "--out", out, "--no-plots")
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert RunConfig.from_dict(load_checkpoint(str(out / "best.pt"))["config"]).data == str(
        tmp_path / "a" / "data.npy"
    )
    # From another folder holding another data.npy: still the run's own file.
    monkeypatch.chdir(tmp_path / "b")
    code, out_text, err = run(capsys, "evaluate", out, "--json")
    assert code == 0, err
    assert json.loads(out_text)["nll"] == pytest.approx(results["test_nll"], abs=1e-9)
    # The file changes: evaluate and --resume refuse, naming it.
    np.save(tmp_path / "a" / "data.npy", rng.normal(size=(300, 2)))
    code, _, err = run(capsys, "evaluate", out)
    assert code == 1 and f"{tmp_path / 'a' / 'data.npy'} has changed since the run was trained" in err
    code, _, err = run(capsys, "fit", "--resume", out)
    assert code == 1 and "has changed since the run was trained" in err
    os.unlink(tmp_path / "a" / "data.npy")
    code, _, err = run(capsys, "evaluate", out)
    assert code == 1 and "which no longer exists" in err
    # Other data on purpose: --data.
    code, _, err = run(capsys, "evaluate", out, "--data", tmp_path / "b" / "data.npy", "--split", "all")
    assert code == 0, err


def test_folder_data_sets_are_fingerprinted_too(tmp_path, capsys):
    data_dir = tmp_path / "maf"
    (data_dir / "power").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 200), ("val", 40), ("test", 40)):
        np.save(data_dir / "power" / f"{split}.npy", rng.normal(size=(n, 6)))
    out = tmp_path / "run"
    code, _, err = run(
        capsys, "fit", *TINY, "--data", "power", "--data-dir", data_dir, "--out", out, "--no-plots"
    )
    assert code == 0, err
    assert run(capsys, "evaluate", out)[0] == 0
    np.save(data_dir / "power" / "test.npy", rng.normal(size=(40, 6)))
    code, _, err = run(capsys, "evaluate", out)
    assert code == 1 and "differs from what the run was trained on" in err


# 5. data a flow cannot model ---------------------------------------------------------------


@pytest.mark.parametrize(
    "rows, message",
    [
        ([[float(i), 3.0, i % 7] for i in range(60)], "column 1 (0-based) holds the same value (3)"),
        ([[1.0, 2.0, 3.0]] * 60, "all 48 training points are identical"),
    ],
    ids=["constant-column", "identical-rows"],
)
def test_constant_data_get_a_clear_error(tmp_path, capsys, rows, message):
    np.savetxt(tmp_path / "x.csv", np.array(rows), delimiter=",")
    code, _, err = run(capsys, "fit", *TINY, "--data", tmp_path / "x.csv", "--out", tmp_path / "r")
    assert code == 1 and message in err and "x.csv" in err
    # Discrete data are dequantized, so a constant integer column is fine there.
    np.save(tmp_path / "levels.npy", np.array([[i % 4, 2] for i in range(300)]))
    code, _, err = run(
        capsys, "fit", *TINY, "--data", tmp_path / "levels.npy", "--levels", "4", "--out", tmp_path / "d"
    )
    assert code == 0, err


# 6 and 11. damaged and hand-edited checkpoints ---------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    fit_run(tiny(out))
    return out


def copy_run(trained, tmp_path):
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(trained, target)
    return target


def test_a_flipped_bit_in_the_weights_is_detected(trained, tmp_path, capsys):
    out = copy_run(trained, tmp_path)
    path = out / "best.pt"
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        member = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size >= 16)
    # The member's bytes start after its local header (30 bytes, its name and extra field).
    name_len = int.from_bytes(data[member.header_offset + 26 : member.header_offset + 28], "little")
    extra_len = int.from_bytes(data[member.header_offset + 28 : member.header_offset + 30], "little")
    start = member.header_offset + 30 + name_len + extra_len
    data[start + 5] ^= 0x40
    path.write_bytes(bytes(data))
    code, _, err = run(capsys, "evaluate", out)
    assert code == 1 and "best.pt is corrupt" in err and "checksum" in err
    code, _, err = run(capsys, "sample", out, "-n", "3")
    assert code == 1 and "is corrupt" in err


def test_non_finite_weights_are_an_error(tmp_path):
    path = str(tmp_path / "c.pt")
    save_checkpoint(
        path, {"model": {"layer.weight": torch.tensor([1.0, float("inf")])}, "step": 1, "config": {}}
    )
    with pytest.raises(CheckpointError, match=r"non-finite model weights \(NaN or inf in layer.weight"):
        load_checkpoint(path)


def _edit(path, change):
    state = load_checkpoint(str(path))
    change(state)
    state.pop("format")
    state.pop("version")
    save_checkpoint(str(path), state)


def _shrink_weight(state):
    key = next(k for k, v in state["model"].items() if v.dim() == 2)
    state["model"][key] = state["model"][key][:-1].clone()


@pytest.mark.parametrize(
    "command, which, change, message",
    [
        ("evaluate", "best.pt", lambda s: s.pop("data"), "'data' is missing"),
        ("sample", "best.pt", lambda s: s["data"].update(event_shape="2"), "data.event_shape must be"),
        ("evaluate", "best.pt", lambda s: s["data"].update(scale=[1.0]), "data.scale must be a tensor"),
        ("evaluate", "best.pt", lambda s: s.update(step="3"), "'step' must be a non-negative integer"),
        ("evaluate", "best.pt", lambda s: s.update(config=[1]), "'config' must be a table"),
        ("evaluate", "best.pt", _shrink_weight, "weights do not fit"),
        ("resume", "checkpoint.pt", lambda s: s.pop("trainer"), "'trainer' is missing"),
        (
            "resume",
            "checkpoint.pt",
            lambda s: s["trainer"].update(best_step="x"),
            "trainer.best_step has a value",
        ),
        ("resume", "checkpoint.pt", lambda s: s["trainer"].pop("history"), "trainer.history is missing"),
        (
            "resume",
            "checkpoint.pt",
            lambda s: s["trainer"].update(extra=1),
            "trainer has unknown entries extra",
        ),
        ("resume", "checkpoint.pt", lambda s: s.update(rng={"torch": [1, 2]}), "rng must hold"),
        (
            "resume",
            "checkpoint.pt",
            lambda s: s.update(rng={"torch": torch.zeros(3, dtype=torch.uint8)}),
            "random",
        ),
        ("resume", "checkpoint.pt", lambda s: s.update(optimizer={"state": {}}), "'optimizer' must hold"),
        ("resume", "checkpoint.pt", lambda s: s["optimizer"].update(param_groups=[]), "optimizer state"),
        ("resume", "checkpoint.pt", _shrink_weight, "model weights do not fit"),
    ],
)
def test_hand_edited_checkpoints_get_clear_errors(trained, tmp_path, capsys, command, which, change, message):
    out = copy_run(trained, tmp_path)
    _edit(out / which, change)
    argv = ["fit", "--resume", out] if command == "resume" else [command, out]
    code, _, err = run(capsys, *argv)
    assert code == 1, err
    assert message in err, err
    assert "Traceback" not in err


def test_trainer_fields_match_the_loop_state():
    import dataclasses

    assert [f.name for f in dataclasses.fields(LoopState)] == list(TRAINER_FIELDS)


# 8. many samples -----------------------------------------------------------------------------


def test_sample_refuses_what_the_disk_cannot_hold(trained, tmp_path, capsys, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**10, 9 * 10**9, 10**9))
    code, _, err = run(capsys, "sample", trained, "-n", "1000000000", "-o", tmp_path / "s.npy")
    assert code == 1
    assert "need 16.0 GB on disk" in err and "1.0 GB free" in err
    assert not os.listdir(tmp_path)


def test_sample_draws_in_batches_into_the_file(trained, tmp_path, capsys, monkeypatch):
    from pyro_flows.flow import Flow

    sizes = []
    original = Flow.sample

    def recording(self, sample_shape=()):
        sizes.append(tuple(sample_shape))
        return original(self, sample_shape)

    monkeypatch.setattr(Flow, "sample", recording)
    monkeypatch.setattr(run_module, "SAMPLE_BATCH", 7)
    code, _, err = run(capsys, "sample", trained, "-n", "20", "-o", tmp_path / "s.npy")
    assert code == 0, err
    assert sizes == [(7,), (7,), (6,)]
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (20, 2) and np.isfinite(samples).all() and np.unique(samples[:, 0]).size == 20
    assert os.listdir(tmp_path) == ["s.npy"]


# 9. the loss guard --------------------------------------------------------------------------


def test_an_ode_solver_failure_is_stopped_by_the_loss_guard(tmp_path, capsys, monkeypatch):
    original = loop.NegativeLogLikelihood.forward
    calls = []

    def underflows_at_step_4(self, x):
        calls.append(1)
        if len(calls) == 4:
            raise AssertionError("underflow in dt nan")  # torchdiffeq's words
        return original(self, x)

    monkeypatch.setattr(loop.NegativeLogLikelihood, "forward", underflows_at_step_4)
    code, _, err = run(capsys, "fit", *TINY, "--out", tmp_path / "r")
    assert code == 3
    assert "stopped at step 4: the ODE solver failed" in err and "Traceback" not in err
    assert "checkpoint (step 3)" in err

    # Any other assertion is not the guard's business: it is raised as it is.
    def fails(self, x):
        raise AssertionError("something else")

    monkeypatch.setattr(loop.NegativeLogLikelihood, "forward", fails)
    with pytest.raises(AssertionError, match="something else"):
        fit_run(tiny(tmp_path / "r2"))


def test_solver_failures_when_scoring_or_sampling_are_clear_errors(trained, tmp_path, capsys, monkeypatch):
    from pyro_flows.flow import Flow

    def underflow(*args, **kwargs):
        raise AssertionError("underflow in dt nan")

    monkeypatch.setattr(run_module, "nll_per_point", underflow)
    code, _, err = run(capsys, "evaluate", trained)
    assert code == 1 and "scoring the test split: the ODE solver failed" in err
    monkeypatch.setattr(Flow, "sample", underflow)
    code, _, err = run(capsys, "sample", trained, "-n", "3", "-o", tmp_path / "s.npy")
    assert code == 1 and "sampling: the ODE solver failed" in err
    assert not os.listdir(tmp_path)  # no partial file


def test_the_validation_guard_names_the_step_it_evaluated(tmp_path, monkeypatch):
    original = loop.nll_per_point
    calls = []

    def diverges_at_second_evaluation(flow, x, *args, **kwargs):
        calls.append(1)
        values = original(flow, x, *args, **kwargs)
        return values * np.inf if len(calls) == 2 else values

    monkeypatch.setattr(loop, "nll_per_point", diverges_at_second_evaluation)
    with pytest.raises(NonFiniteLossError, match=r"stopped at step 6: evaluating the parameters it produced"):
        fit_run(tiny(tmp_path / "r", dtype="float64"))


def test_ffjord_solver_underflow_in_float64_goes_through_the_guard(tmp_path, monkeypatch):
    pytest.importorskip("torchdiffeq")
    import torchdiffeq

    original = torchdiffeq.odeint
    calls = []

    def odeint(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise AssertionError("underflow in dt 0.0")
        return original(*args, **kwargs)

    monkeypatch.setattr(torchdiffeq, "odeint", odeint)
    with pytest.raises(NonFiniteLossError, match=r"stopped at step 3: the ODE solver failed"):
        fit_run(
            tiny(
                tmp_path / "r",
                flow="ffjord",
                objective="likelihood",
                num_layers=8,
                dtype="float64",
                steps=4,
                eval_every=4,
                batch_size=50,
            )
        )


# 10. threads ----------------------------------------------------------------------------------


def test_threads_are_bounded_by_the_machine(tmp_path, capsys):
    cpus = os.cpu_count()
    code, _, err = run(capsys, "fit", *TINY, "--threads", "100000", "--out", tmp_path / "r")
    assert code == 1 and f"--threads 100000 is more than the {cpus} CPUs of this machine" in err
    assert not (tmp_path / "r").exists()


# 21. what fit tells the user ---------------------------------------------------------------


def test_fit_names_its_folder_and_files_and_logs_progress_without_a_terminal(tmp_path, capsys, monkeypatch):
    quiet_free = [a for a in TINY if a != "--quiet"]
    code, out, err = run(capsys, "fit", *quiet_free, "--out", tmp_path / "r")
    assert code == 0, err
    assert f"wrote {tmp_path / 'r'}: config.toml, metrics.jsonl, results.json, checkpoint.pt, best.pt" in out
    assert "nll_curves.png, samples.png" in out
    progress = [line for line in out.splitlines() if line.startswith("step ")]
    assert progress[0].startswith("step 3/6: train NLL") and "validation NLL" in progress[0]
    assert progress[-1].startswith("step 6/6") and "steps/s" in progress[-1]
    monkeypatch.setattr(loop, "PROGRESS_SECONDS", 0.0)
    code, out, err = run(capsys, "fit", *quiet_free, "--out", tmp_path / "r2", "--no-plots")
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("step ")] == [
        f"step {k}/6" for k in range(1, 7)
    ]
    assert "about" in out and "left" in out


def test_image_runs_plot_their_nll_in_bits_per_dim(tmp_path, monkeypatch):
    from pyro_flows import plot

    seen = {}
    original = plot.plot_nll_curves

    def spy(records, path, title="", unit="nats per point", scale=1.0):
        seen.update(unit=unit, scale=scale, records=records)
        return original(records, path, title, unit, scale)

    monkeypatch.setattr(plot, "plot_nll_curves", spy)
    np.save(tmp_path / "levels.npy", np.random.default_rng(0).integers(0, 4, size=(300, 3)))
    results = fit_run(tiny(tmp_path / "r", data=str(tmp_path / "levels.npy"), levels=4, plots=True))
    assert seen["unit"] == "bits/dim" and seen["scale"] == pytest.approx(1 / (3 * np.log(2)))
    figure = plot._nll_figure(seen["records"], "", seen["unit"], seen["scale"])
    assert figure.axes[0].get_ylabel() == "NLL (bits/dim)"
    val_line = figure.axes[0].get_lines()[1].get_ydata()
    assert val_line[-1] == pytest.approx(results["best_val_nll"] / (3 * np.log(2)), rel=0.5)
    assert max(val_line) < 10  # bits per dimension of 4-level data, not nats per point


def test_the_2d_figure_has_a_colour_bar_and_a_clear_title():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from pyro_flows.plot import _figure_2d

    x = torch.randn(300, 2)
    normal = torch.distributions.Normal(0.0, 1.0)
    fig = _figure_2d(x, x, lambda t: normal.log_prob(t).sum(-1), "real_nvp on moons", 20)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    assert len(fig.axes) == 4 and fig.axes[3].get_ylabel() == "p(x)"  # the colour bar
    top_of_panel_titles = max(ax.title.get_window_extent(renderer).y1 for ax in fig.axes[:3])
    assert fig._suptitle.get_window_extent(renderer).y0 >= top_of_panel_titles


# 22. missing dependencies and data -----------------------------------------------------------


def test_ffjord_without_torchdiffeq_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchdiffeq", None)
    code, _, err = run(capsys, "fit", *TINY, "--flow", "ffjord", "--out", tmp_path / "r")
    assert code == 1 and "Traceback" not in err
    assert "--flow ffjord needs torchdiffeq, which is not installed" in err
    assert "pip install torchdiffeq" in err and 'pip install -e ".[ode]"' in err
    assert "pyro-flows[ode]" not in err


def test_missing_maf_data_say_where_they_come_from(tmp_path, capsys):
    code, _, err = run(capsys, "fit", *TINY, "--data", "power", "--out", tmp_path / "a")
    assert code == 1 and "pass --data-dir DIR" in err and "zenodo.org/record/1161203" in err
    code, _, err = run(
        capsys, "fit", *TINY, "--data", "power", "--data-dir", tmp_path, "--out", tmp_path / "b"
    )
    assert code == 1
    assert "Papamakarios et al., 2017" in err and "DIR/power/train.npy" in err and "power.npz" in err


def test_under_torchrun_a_data_error_is_reported_once(tmp_path):
    pytest.importorskip("torch.distributed.run")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
        + ["-m", "pyro_flows", "fit", "--data", "power", "--data-dir", str(tmp_path), "--device", "cpu"]
        + ["--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(tmp_path),
        env=env,
    )
    assert result.returncode == 1
    text = result.stdout + result.stderr
    assert text.count("pyro-flows fit: error: power: found neither") == 1, text
    # every process stops with status 1 (the launcher may end the slower one first: SIGTERM)
    assert "exitcode  : 1" in text and "exitcode  : 2" not in text, text
    assert text.count("Traceback") <= 1, text  # the launcher's own summary at most, none from a worker


# 13. builders refuse empty or degenerate flows -----------------------------------------------


@pytest.mark.parametrize(
    "build, message",
    [
        ("real_nvp(2, num_layers=0)", "real_nvp: num_layers must be an integer >= 1, got 0"),
        ("real_nvp(2, num_layers=-1)", "real_nvp: num_layers must be an integer >= 1, got -1"),
        ("real_nvp(2, num_layers=2.0)", "real_nvp: num_layers must be an integer >= 1, got 2.0"),
        ("real_nvp(2, hidden_dims=(0,))", "real_nvp: hidden_dims must be one or more positive integers"),
        ("real_nvp(2, hidden_dims=())", "real_nvp: hidden_dims must be one or more positive integers"),
        ("nice(2, num_layers=0)", "nice: num_layers must be"),
        ("nice(2, hidden_dims=(8, -1))", "nice: hidden_dims must be"),
        ("conditional_real_nvp(2, 3, num_layers=0)", "conditional_real_nvp: num_layers must be"),
        ("conditional_real_nvp(2, 3, hidden_dims=(0,))", "conditional_real_nvp: hidden_dims must be"),
        ("ffjord(2, hidden_dims=(0,))", "ffjord: hidden_dims must be"),
        ("glow((1, 4, 4), num_scales=1, steps_per_scale=0)", "glow: steps_per_scale must be"),
        ("glow((1, 4, 4), num_scales=1, hidden_channels=0)", "glow: hidden_channels must be"),
        ("glow((1, 4, 4), num_scales=1, num_blocks=-1)", "glow: num_blocks must be an integer >= 0"),
        ("real_nvp_image((1, 8, 8), num_scales=1, hidden_channels=0)", "real_nvp_image: hidden_channels"),
        ("real_nvp_image((1, 8, 8), num_scales=1, num_final_layers=-1)", "real_nvp_image: num_final_layers"),
        ("cdf_flow(0)", "num_components must be a positive integer"),
    ],
)
def test_builders_refuse_degenerate_sizes(build, message):
    import pyro_flows

    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        eval(build, vars(pyro_flows))


def test_empty_hidden_dims_are_refused_on_the_command_line(tmp_path, capsys):
    for value in ("", " ", "0", "16,0"):
        code, _, err = run(capsys, "fit", "--hidden-dims", value, "--out", tmp_path / "r")
        assert code == 1 and "--hidden-dims must be one or more positive integers" in err, (value, err)
    code, _, err = run(capsys, "fit", "--num-layers", "0", "--out", tmp_path / "r")
    assert code == 1 and "--num-layers must be >= 1, got 0" in err
    assert not (tmp_path / "r").exists()


def test_progress_lines_follow_standard_output_not_the_bar(tmp_path, capsys, monkeypatch):
    quiet_free = [a for a in TINY if a != "--quiet"]
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, err = run(capsys, "fit", *quiet_free, "--out", tmp_path / "r", "--no-plots")
    assert code == 0, err
    assert not [line for line in out.splitlines() if line.startswith("step ")]  # a terminal: no lines
    assert "test NLL:" in out


def test_requests_larger_than_memory_are_refused_or_reported(tmp_path, capsys, monkeypatch):
    code, _, err = run(capsys, "fit", "--num-samples", str(10**12), "--out", tmp_path / "r")
    assert (
        code == 1 and "--num-samples 1000000000000 of moons would need about" in err and "GB of memory" in err
    )
    code, _, err = run(capsys, "fit", "--plot-samples", str(10**9), "--out", tmp_path / "r")
    assert code == 1 and "--plot-samples must be at most 1000000" in err

    # An allocation that fails anyway is an error message, not a traceback.
    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(run_module, "train", no_memory)
    code, _, err = run(capsys, "fit", *TINY, "--out", tmp_path / "r")
    assert code == 1 and "error: out of memory (" in err and "--batch-size" in err


def test_a_gpu_the_machine_does_not_have_is_refused(monkeypatch):
    from pyro_flows.train.run import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(
        ValueError, match=r"--device cuda:7: this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"
    ):
        resolve_device("cuda:7")
