"""Regressions of the run-folder audit: runs never lost to --overwrite or to files named as
a run's, numbers that fit and evaluate agree on, options refused rather than ignored,
problems found before the folder is touched, and messages that say what is true."""

import json
import math
import os
import signal

import numpy as np
import pytest
import torch

import pyro_flows.train.run as run_module
from pyro_flows.cli import main
from pyro_flows.data.registry import load_splits
from pyro_flows.data.tabular import load_array
from pyro_flows.train.checkpoint import CheckpointError, load_checkpoint
from pyro_flows.train.config import RunConfig
from pyro_flows.train.registry import check_flow_options
from pyro_flows.train.run import evaluate_run, fit_run, resolve_device
from pyro_flows.train.rundir import locked_temporary

from .helpers import Interrupt, run_cli, run_config

TINY = ["--num-layers", "2", "--hidden-dims", "8", "--num-samples", "300", "--batch-size", "40"]
TINY += ["--steps", "4", "--eval-every", "2", "--no-plots", "--quiet"]
IMAGE = ["--flow", "real_nvp_image", "--num-scales", "1", "--hidden-channels", "4", "--num-blocks", "1"]
IMAGE += ["--batch-size", "32", "--steps", "4", "--eval-every", "2", "--no-plots", "--quiet"]


def tiny(out, **changes) -> RunConfig:
    options = dict(num_layers=2, hidden_dims=(8,), num_samples=300, batch_size=40, steps=4, eval_every=2)
    return run_config(out, **{**options, **changes})


def snapshot(folder) -> dict:
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def strict_json(text: str):
    """``json.loads`` that refuses NaN and infinities (which are not JSON)."""

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny moons run, copied by the tests that change it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    fit_run(tiny(out))
    return out


def copy_of(run, tmp_path, name="run"):
    import shutil

    return shutil.copytree(run, tmp_path / name)


# 1. --overwrite deletes nothing before the new run is known to start ----------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "nosuch.csv"], "nosuch.csv does not exist"),
        (["--batch-norm"], "--batch-norm does not apply to --flow spline"),
        (["--batch-size", "5000"], "--batch-size 5000 is larger than the 240 training points"),
        (["--flow", "ffjord", "--objective", "flow-matching", "--base", "uniform"], "--base uniform"),
    ],
    ids=["missing-data", "ignored-option", "batch", "flow-matching-base"],
)
def test_overwrite_keeps_the_old_run_when_the_new_one_is_refused(finished, tmp_path, capsys, args, message):
    out = copy_of(finished, tmp_path)
    before = snapshot(out)
    code, _, err = run_cli(capsys, "fit", *TINY, "--out", out, "--overwrite", *args)
    assert code == 1 and message in err
    assert snapshot(out) == before


# 2. files named as a run's are the user's unless a run wrote them -------------------------


def test_a_folder_with_files_named_as_a_runs_but_no_run_is_refused_and_kept(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "w"
    folder.mkdir()
    np.save(folder / "samples.npy", np.random.default_rng(0).normal(size=(300, 3)))
    (folder / "results.json").write_text('{"mine": true}')
    before = snapshot(folder)
    monkeypatch.chdir(folder)
    for extra in ([], ["--overwrite"]):
        code, _, err = run_cli(capsys, "fit", *TINY, "--data", "samples.npy", "--out", ".", *extra)
        assert code == 1 and "holds results.json, samples.npy, which no pyro-flows run wrote" in err
        assert "--overwrite" not in err  # it would not help
        assert snapshot(folder) == before
    # A TOML file of the user's named config.toml is the user's too.
    (folder / "results.json").unlink()
    (folder / "config.toml").write_text("steps = 4\n")
    code, _, err = run_cli(capsys, "fit", *TINY, "--config", "config.toml", "--out", ".", "--overwrite")
    assert code == 1 and "holds config.toml, samples.npy, which no pyro-flows run wrote" in err
    assert (folder / "config.toml").read_text() == "steps = 4\n"


def test_overwrite_never_deletes_the_data_of_the_new_run(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    assert run_cli(capsys, "sample", out, "-n", "300")[0] == 0  # out/samples.npy, a file of the run
    drawn = (out / "samples.npy").read_bytes()
    code, _, err = run_cli(capsys, "fit", *TINY, "--data", out / "samples.npy", "--out", out, "--overwrite")
    assert code == 0, err
    assert (out / "samples.npy").read_bytes() == drawn
    assert load_checkpoint(str(out / "best.pt"))["config"]["data"] == str(out / "samples.npy")


# 3. variational dequantization: held-out noise fixed, so fit and evaluate agree -----------


def test_variational_dequantization_scores_held_out_data_the_same_in_fit_and_evaluate(tmp_path, capsys):
    np.save(tmp_path / "img.npy", np.random.default_rng(0).integers(0, 4, size=(200, 1, 4, 4)))
    out = tmp_path / "vq"
    code, _, err = run_cli(
        capsys, "fit", "--data", tmp_path / "img.npy", "--levels", "4", *IMAGE,
        "--dequantization", "variational", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    for split, expected in (("test", results["test_nll"]), ("val", results["best_val_nll"])):
        torch.manual_seed(123)  # the global generator plays no part
        assert evaluate_run(str(out), split=split, quiet=True)["nll"] == expected


# 4. options the objective would ignore --------------------------------------------------


def test_flow_matching_refuses_penalties_and_likelihood_refuses_flow_matching_options(tmp_path, capsys):
    fm = ["--flow", "ffjord", "--objective", "flow-matching"]
    code, _, err = run_cli(capsys, "fit", *TINY, *fm, "--kinetic-weight", "10", "--out", tmp_path / "a")
    assert code == 1 and "--kinetic-weight 10.0 regularizes the ODE solves of maximum likelihood" in err
    assert not (tmp_path / "a").exists()
    with pytest.raises(ValueError, match="--frobenius-weight 1.0 regularizes"):
        check_flow_options(RunConfig(flow="ffjord", objective="flow-matching", frobenius_weight=1.0), (2,))
    code, _, err = run_cli(capsys, "fit", *TINY, "--fm-sigma", "0.1", "--out", tmp_path / "b")
    assert code == 1 and "--fm-sigma 0.1 applies to flow matching" in err
    for option in (dict(path="independent"), dict(fm_ot_block=0), dict(fm_time_exponent=2.0)):
        with pytest.raises(ValueError, match="applies to flow matching"):
            check_flow_options(RunConfig(flow="ffjord", objective="likelihood", **option), (2,))
    # the Python API goes through the same check
    from pyro_flows.train import fit

    with pytest.raises(ValueError, match="--kinetic-weight 1.0 regularizes"):
        fit(torch.randn(50, 2), flow="ffjord", objective="flow_matching", steps=1, kinetic_weight=1.0)


# 5. problems found before config.toml is written ------------------------------------------


def test_a_batch_larger_than_the_data_is_refused_before_anything_is_written(tmp_path, capsys):
    np.savetxt(tmp_path / "small.csv", np.random.default_rng(0).normal(size=(200, 2)), delimiter=",")
    args = ["fit", "--data", tmp_path / "small.csv", "--steps", "2", "--eval-every", "2", "--no-plots"]
    code, _, err = run_cli(capsys, *args, "--quiet", "--out", tmp_path / "o")
    assert code == 1 and "--batch-size 256 is larger than the 160 training points" in err
    assert not (tmp_path / "o").exists()
    code, _, err = run_cli(capsys, *args, "--quiet", "--batch-size", "64", "--out", tmp_path / "o")
    assert code == 0, err


def test_flow_matching_base_is_named_and_its_default_batch_fits_the_data(tmp_path, capsys):
    fm = [
        "--flow",
        "ffjord",
        "--hidden-dims",
        "8",
        "--steps",
        "2",
        "--eval-every",
        "2",
        "--no-plots",
        "--quiet",
    ]
    code, _, err = run_cli(
        capsys, "fit", *fm, "--objective", "flow-matching", "--base", "uniform", "--out", tmp_path / "u"
    )
    assert code == 1 and "cannot train with --base uniform" in err and not (tmp_path / "u").exists()
    # 400 training points and no --batch-size: the flow-matching batch of 512 is capped, as in fit()
    code, _, err = run_cli(capsys, "fit", *fm, "--num-samples", "500", "--out", tmp_path / "f")
    assert code == 0, err
    assert load_checkpoint(str(tmp_path / "f" / "best.pt"))["config"]["batch_size"] == 400
    # a batch that was asked for is not changed
    code, _, err = run_cli(
        capsys, "fit", *fm, "--num-samples", "500", "--batch-size", "512", "--out", tmp_path / "g"
    )
    assert code == 1 and "--batch-size 512 is larger than the 400 training points" in err


# 6. no NaN reported as a result ----------------------------------------------------------


def test_evaluate_checks_a_file_against_the_levels_of_an_image_run(tmp_path, capsys):
    out = tmp_path / "digits"
    code, _, err = run_cli(capsys, "fit", "--data", "digits", *IMAGE, "--out", out)
    assert code == 0, err
    np.save(tmp_path / "bad.npy", np.random.default_rng(0).normal(size=(20, 1, 8, 8)) * 100)
    code, text, err = run_cli(
        capsys, "evaluate", out, "--data", tmp_path / "bad.npy", "--split", "all", "--json"
    )
    assert code == 1 and "expects integer values 0..16" in err and text == ""
    np.save(tmp_path / "good.npy", np.random.default_rng(0).integers(0, 17, size=(20, 1, 8, 8)))
    code, text, err = run_cli(
        capsys, "evaluate", out, "--data", tmp_path / "good.npy", "--split", "all", "--json"
    )
    assert code == 0 and math.isfinite(strict_json(text)["nll"])


def test_a_single_point_has_no_standard_error_and_no_nan_is_written(tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(0)
    parts = dict(train=rng.normal(size=(200, 2)), val=rng.normal(size=(20, 2)), test=rng.normal(size=(1, 2)))
    np.savez(tmp_path / "d.npz", **parts)
    out = tmp_path / "run"
    code, text, err = run_cli(capsys, "fit", *TINY, "--data", tmp_path / "d.npz", "--out", out, "--no-quiet")
    assert code == 0, err
    assert "(one point: no standard error)" in text and "nan" not in text
    results = strict_json((out / "results.json").read_text())
    assert results["test_nll_se"] is None and math.isfinite(results["test_nll"])
    test_line = [strict_json(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert test_line["split"] == "test" and test_line["se"] is None
    code, text, err = run_cli(capsys, "evaluate", out, "--json")
    assert code == 0 and strict_json(text)["nll_se"] is None
    # a NaN NLL is an error that says so, not a number
    monkeypatch.setattr(run_module, "nll_per_point", lambda flow, x: torch.full((len(x),), math.nan))
    code, text, err = run_cli(capsys, "evaluate", out, "--json")
    assert code == 1 and text == "" and "the NLL of 1 of its 1 points is nan" in err


# 7. devices ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mps", "meta", "xpu"])
def test_devices_other_than_cpu_and_cuda_are_refused(name, capsys, finished):
    with pytest.raises(ValueError, match=f"--device {name}: pyro-flows runs on cpu, cuda, cuda:N or auto"):
        resolve_device(name)
    code, _, err = run_cli(capsys, "evaluate", finished, "--device", name)
    assert code == 1 and "runs on cpu, cuda" in err


# 8. an interrupted or running run is described as it is -----------------------------------


_TRAIN = run_module.train


def _interrupted_train(at_step):
    original = _TRAIN

    def train(*args, **kwargs):
        def on_step(step):
            if step == at_step:
                raise KeyboardInterrupt

        return original(*args, **{**kwargs, "on_step": on_step})

    return train


def test_ctrl_c_says_whether_there_is_a_checkpoint_to_resume(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(run_module, "train", _interrupted_train(1))  # before the first checkpoint
    code, _, err = run_cli(capsys, "fit", *TINY, "--out", out)
    assert code == 130 and "nothing to resume" in err and "--resume" not in err
    assert f"--config {out / 'config.toml'} --out {out} --overwrite" in err
    monkeypatch.setattr(run_module, "train", _interrupted_train(3))  # after the checkpoint of step 2
    code, _, err = run_cli(capsys, "fit", *TINY, "--out", out, "--overwrite")
    assert code == 130 and f"continue from the last checkpoint with `pyro-flows fit --resume {out}`" in err
    monkeypatch.undo()
    code, _, err = run_cli(capsys, "fit", "--resume", out)
    assert code == 0, err


def test_a_run_in_progress_before_its_first_checkpoint_is_not_called_stopped(tmp_path):
    config = tiny(tmp_path / "run", eval_every=10, steps=10)
    seen = []

    def look(step):
        if step == 1:
            for which, resume in (("best.pt", False), ("checkpoint.pt", True)):
                with pytest.raises(CheckpointError, match=r"still in progress \(pid \d+\)"):
                    run_module._load_run(config.out, which, resume=resume)
            seen.append(step)
        if step == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit_run(config, on_step=look)
    assert seen == [1]
    with pytest.raises(CheckpointError, match="stopped before its first checkpoint"):
        evaluate_run(config.out, quiet=True)


# 9. --levels of a built-in image set ---------------------------------------------------


def test_levels_other_than_a_built_in_image_sets_own_are_refused():
    with pytest.raises(ValueError, match="--levels 5 .* digits comes with its own 17 levels"):
        load_splits(RunConfig(data="digits", levels=5))
    assert load_splits(RunConfig(data="digits", levels=17)).levels == 17


# 10. a CSV with a byte-order mark -------------------------------------------------------


def test_a_csv_with_a_byte_order_mark_keeps_its_first_row(tmp_path):
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf1.5,2\n3,4\n5,6\n")
    assert load_array(str(tmp_path / "bom.csv"))["data"].tolist() == [[1.5, 2.0], [3.0, 4.0], [5.0, 6.0]]
    (tmp_path / "bomh.csv").write_bytes(b"\xef\xbb\xbfa,b\n3,4\n5,6\n")
    assert load_array(str(tmp_path / "bomh.csv"))["data"].tolist() == [[3.0, 4.0], [5.0, 6.0]]


# 11. seconds over resumes; temporaries of a killed sample -------------------------------


def test_results_count_the_seconds_of_every_process_of_the_run(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    saved = load_checkpoint(str(out / "checkpoint.pt"))["trainer"]["seconds"]
    assert saved > 0
    results = fit_run(RunConfig(quiet=True), resume_dir=str(out))  # resuming the finished run
    assert results["seconds"] > saved
    assert json.loads((out / "results.json").read_text())["seconds"] == results["seconds"]


def test_a_killed_samples_temporary_is_removed_and_a_live_ones_kept(finished, tmp_path, capsys, monkeypatch):
    out = copy_of(finished, tmp_path)
    (out / ".tmp-killed.npy").write_bytes(b"\0" * 1000)  # no process holds it
    held, live = locked_temporary(str(out), ".npy")  # a sample writing now
    try:
        assert run_cli(capsys, "sample", out, "-n", "5")[0] == 0
        assert not (out / ".tmp-killed.npy").exists() and os.path.exists(live)
    finally:
        held.close()
    # SIGTERM while drawing: the partial file goes with the process
    monkeypatch.setattr(run_module, "SAMPLE_BATCH", 2)
    calls = []
    real = run_module._solver_errors

    def terminated_midway(what):
        calls.append(what)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(what)

    monkeypatch.setattr(run_module, "_solver_errors", terminated_midway)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", str(out), "-n", "20", "-o", str(tmp_path / "s.npy")])
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")]
    assert signal.getsignal(signal.SIGTERM) is handler  # restored


# 12. what the docs and help say ----------------------------------------------------------


def test_docs_state_the_exit_status_and_the_default_flow_as_they_are(tmp_path, capsys):
    import pyro_flows.cli as cli

    docs = open(os.path.join(os.path.dirname(__file__), "..", "docs", "cli.md")).read()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--no-such-option"])
    assert exit_info.value.code == 2
    capsys.readouterr()
    assert "`2` the command line could not be parsed" in docs
    assert RunConfig().flow == "spline" and "trains ``spline``" in cli.__doc__
    assert "fm_loss" in docs and "running_fm_loss" in docs
    assert "`pyro-flows fit --config DIR/config.toml --out NEW` repeats the run" in docs


def test_a_saved_config_repeats_the_run_in_a_new_folder(finished, tmp_path, capsys):
    code, _, err = run_cli(capsys, "fit", "--config", finished / "config.toml", "--out", tmp_path / "again")
    assert code == 0, err
    first = json.loads((finished / "results.json").read_text())
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert again["test_nll"] == first["test_nll"]


# 13. smaller messages ------------------------------------------------------------------


def test_one_dimensional_data_with_a_coupling_flow_points_to_cdf(tmp_path, capsys):
    np.save(tmp_path / "one.npy", np.random.default_rng(0).normal(size=(300, 1)))
    code, _, err = run_cli(capsys, "fit", *TINY, "--data", tmp_path / "one.npy", "--out", tmp_path / "o")
    assert code == 1 and "use --flow cdf for 1-D data" in err and "MixtureCDF" not in err


def test_resume_of_a_file_says_it_is_a_file(tmp_path, capsys):
    (tmp_path / "tab.csv").write_text("1,2\n")
    code, _, err = run_cli(capsys, "fit", "--resume", tmp_path / "tab.csv")
    assert code == 1 and "tab.csv is a file, not a run folder" in err


def test_resume_with_a_best_model_of_another_shape_is_a_clear_error(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    other = tmp_path / "other"
    fit_run(tiny(other, hidden_dims=(16,)))
    (out / "best.pt").write_bytes((other / "best.pt").read_bytes())
    before = snapshot(out)
    code, _, err = run_cli(capsys, "fit", "--resume", out)
    assert code == 1 and "best.pt does not fit the model of the run's checkpoint.pt" in err
    assert snapshot(out) == before


def test_columns_of_few_values_warn_in_one_line_of_the_run(tmp_path, capsys):
    # integers 0..2 in two columns: a continuous flow's NLL can fall forever on them
    data = tmp_path / "ints.csv"
    values = torch.randint(0, 3, (300, 2), generator=torch.Generator().manual_seed(0))
    np.savetxt(data, values.numpy(), delimiter=",")
    code, out, err = run_cli(capsys, "fit", "--data", data, "--out", tmp_path / "run", *TINY)
    assert code == 0, err
    assert "warning: ints.csv: columns 0, 1 (0-based) take only 3, 3 distinct values" in err
    assert "UserWarning" not in err and "check_spread" not in err
