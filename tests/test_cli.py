"""The ``pyro-flows`` command end to end on tiny runs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pyro_flows.cli import main
from pyro_flows.train.registry import flow_names

from .helpers import run_cli

TINY = [
    "--num-layers",
    "2",
    "--hidden-dims",
    "16",
    "--num-samples",
    "400",
    "--batch-size",
    "40",
    "--steps",
    "12",
    "--eval-every",
    "6",
    "--plot-samples",
    "200",
    "--quiet",
]


run = run_cli


def test_fit_evaluate_sample_end_to_end(tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, err = run(capsys, "fit", *TINY, "--out", str(out_dir), "--data", "circles", "--no-quiet")
    assert code == 0, err
    assert "test NLL:" in out and "train 320, validation 40, test 40" in out
    for name in (
        "config.toml",
        "metrics.jsonl",
        "results.json",
        "checkpoint.pt",
        "best.pt",
        "nll_curves.png",
        "samples.png",
    ):
        assert (out_dir / name).stat().st_size > 0, name
    records = [json.loads(line) for line in open(out_dir / "metrics.jsonl")]
    assert {r["split"] for r in records} == {"train", "val", "test"}
    assert [r["step"] for r in records if r["split"] == "val"] == [6, 12]
    results = json.loads((out_dir / "results.json").read_text())
    assert results["data"] == "circles" and results["steps"] == 12 and results["test_nll_se"] > 0

    code, out, err = run(capsys, "evaluate", str(out_dir), "--json")
    assert code == 0, err
    evaluation = json.loads(out)
    assert evaluation["nll"] == pytest.approx(results["test_nll"], abs=1e-9)
    assert evaluation["points"] == 40

    code, out, err = run(capsys, "sample", str(out_dir), "-n", "25", "-o", str(tmp_path / "s.npy"))
    assert code == 0, err
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (25, 2) and np.isfinite(samples).all()


def test_toml_config_and_command_line_precedence(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('flow = "nice"\nsteps = 6\nbatch_size = 20\nhidden_dims = [8, 8]\n[fit]\nlr = 0.002\n')
    out_dir = tmp_path / "run"
    code, _, err = run(
        capsys,
        "fit",
        *TINY,
        "--config",
        str(config),
        "--steps",
        "4",
        "--eval-every",
        "2",
        "--out",
        str(out_dir),
        "--no-plots",
    )
    assert code == 0, err
    import tomllib

    resolved = tomllib.loads((out_dir / "config.toml").read_text())
    assert resolved["flow"] == "nice" and resolved["lr"] == 0.002  # from the file
    assert resolved["steps"] == 4 and resolved["batch_size"] == 40  # the command line wins
    assert resolved["hidden_dims"] == [16] and resolved["seed"] == 0  # every option written
    # The written file is itself a valid config: it reproduces the run's options.
    code, _, err = run(
        capsys, "fit", "--config", str(out_dir / "config.toml"), "--out", str(tmp_path / "again")
    )
    assert code == 0, err
    assert tomllib.loads((tmp_path / "again" / "config.toml").read_text()) == {
        **resolved,
        "out": str(tmp_path / "again"),
    }

    config.write_text("stepz = 3\n")
    code, _, err = run(capsys, "fit", "--config", str(config))
    assert code == 1 and "unknown option(s) stepz" in err
    config.write_text('steps = "many"\n')
    code, _, err = run(capsys, "fit", "--config", str(config))
    assert code == 1 and "option steps expects an integer" in err
    code, _, err = run(capsys, "fit", "--config", str(tmp_path / "none.toml"))
    assert code == 1 and "does not exist" in err


def test_help_names_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for expected in (
        "--flow",
        "(default: spline)",
        "--steps",
        "(default: 2000)",
        "--batch-size",
        "(default: 256)",
        "--hidden-dims",
        "(default: 128,128)",
        "--device",
        "(default: auto)",
        "--resume",
        "--config",
        "--dtype",
        "(default: float32)",
        "--quiet",
    ):
        assert expected in text, expected
    assert main([]) == 2  # no subcommand: usage


def test_bad_options_and_paths_get_clear_errors(tmp_path, capsys):
    code, _, err = run(capsys, "fit", "--lr", "-1", "--out", str(tmp_path / "a"))
    assert code == 1 and "--lr must be a finite number > 0, got -1.0" in err
    code, _, err = run(capsys, "fit", "--hidden-dims", "16,x")
    assert code == 1 and "comma-separated integers" in err
    code, _, err = run(
        capsys, "fit", *TINY, "--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "b")
    )
    assert code == 1 and "missing.csv does not exist" in err
    code, _, err = run(capsys, "fit", *TINY, "--data", "nonsense", "--out", str(tmp_path / "c"))
    assert code == 1 and "unknown data 'nonsense'" in err
    code, _, err = run(capsys, "fit", *TINY, "--data", "power", "--out", str(tmp_path / "d"))
    assert code == 1 and "--data-dir" in err
    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, "fit", *TINY, "--out", str(tmp_path / "file"))
    assert code == 1 and "exists and is not a folder" in err
    code, _, err = run(capsys, "evaluate", str(tmp_path / "no-run"))
    assert code == 1 and "does not exist" in err
    code, _, err = run(capsys, "sample", str(tmp_path))
    assert code == 1 and "has no best.pt" in err
    code, _, err = run(capsys, "fit", *TINY, "--batch-size", "1000", "--out", str(tmp_path / "e"))
    assert code == 1 and "larger than the 320 training points" in err
    code, _, err = run(capsys, "fit", "--resume", str(tmp_path / "e"), "--steps", "3")
    assert code == 1 and "drop --steps" in err
    code, _, err = run(capsys, "fit", "--resume", str(tmp_path / "no-run"))
    assert code == 1 and "does not exist" in err


@pytest.mark.parametrize(
    "content, message",
    [
        ("a,b\n1,2\n3,nan\n4,5\n", "1 of 3 rows contain NaN or infinite values (first: row 1)"),
        ("a,b\n1,2\n3,4,5\n", "line 3 has 3 columns, expected 2"),
        ("", "is empty (0 bytes)"),
        ("a,b\n", "is empty (no data rows)"),
        ("a,b\n1,2\n3,oops\n", "non-numeric value 'oops'"),
        # no header: an empty cell in the first row is a missing value, not a header
        ("1.0,\n3,4\n5,6\n", "1 of 3 rows contain NaN or infinite values (first: row 0)"),
    ],
    ids=["nan-row", "wrong-columns", "empty-file", "header-only", "non-numeric", "first-row-missing"],
)
def test_bad_data_files_get_clear_errors(tmp_path, capsys, content, message):
    path = tmp_path / "data.csv"
    path.write_text(content)
    code, _, err = run(capsys, "fit", *TINY, "--data", str(path), "--out", str(tmp_path / "run"))
    assert code == 1
    assert message in err and str(path) in err


def test_columns_with_a_large_mean_keep_their_detail_in_a_float32_run(tmp_path, capsys):
    # mean 1.6e7, sd 3: float32 holds such values only to 1 or 2 units, so standardizing
    # after rounding to float32 would leave a column about 20 distinct values
    rng = np.random.default_rng(0)
    data = rng.normal(size=(600, 2)) * 3.0 + 1.6e7
    path = tmp_path / "big.csv"
    np.savetxt(path, data, delimiter=",", header="a,b", comments="")
    from pyro_flows.data import load_splits
    from pyro_flows.train import RunConfig

    splits = load_splits(RunConfig(data=str(path)))
    prepared = splits.prepare(splits.train, dtype=torch.float32)
    assert prepared.dtype == torch.float32
    assert len(torch.unique(prepared[:, 0])) == len(splits.train)
    assert torch.allclose(prepared.double(), (splits.train - splits.shift) / splits.scale, atol=1e-6)
    code, _, err = run(capsys, "fit", *TINY, "--data", path, "--no-plots", "--out", tmp_path / "r")
    assert code == 0, err
    code, _, err = run(capsys, "sample", tmp_path / "r", "-n", "500", "-o", tmp_path / "s.npy")
    assert code == 0, err
    samples = np.load(tmp_path / "s.npy")
    # in data units, with the detail of the data (not rounded to float32's spacing of 2 there)
    assert len(np.unique(samples[:, 0])) > 450
    assert abs(samples[:, 0].mean() - 1.6e7) < 10 and 1 < samples[:, 0].std() < 10


def test_an_option_the_flow_would_ignore_is_refused_before_anything_is_written(tmp_path, capsys):
    code, _, err = run(capsys, "fit", *TINY, "--batch-norm", "--no-plots", "--out", str(tmp_path / "r"))
    assert (
        code == 1
        and "--batch-norm does not apply to --flow spline (it reads --num-layers, --hidden-dims, --num-bins, --tail-bound, --dropout)"
        in err
    )
    assert not (tmp_path / "r").exists()
    code, _, err = run(
        capsys, "fit", *TINY, "--flow", "real_nvp", "--batch-norm", "--no-plots", "--out", str(tmp_path / "r")
    )
    assert code == 0, err


def test_evaluate_on_a_file_with_the_wrong_columns(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "train.npy", rng.normal(size=(400, 3)))
    code, _, err = run(
        capsys,
        "fit",
        *TINY,
        "--data",
        str(tmp_path / "train.npy"),
        "--out",
        str(tmp_path / "r"),
        "--no-plots",
    )
    assert code == 0, err
    np.save(tmp_path / "other.npy", rng.normal(size=(50, 2)))
    code, _, err = run(capsys, "evaluate", str(tmp_path / "r"), "--data", str(tmp_path / "other.npy"))
    assert code == 1 and "(2,)" in err and "(3,)" in err
    # Another file of the right shape, every point, in the run's units: the NLL of points
    # far from the training data is much higher.
    np.save(tmp_path / "far.npy", rng.normal(size=(50, 3)) * 5 + 20)
    code, out, err = run(
        capsys,
        "evaluate",
        str(tmp_path / "r"),
        "--data",
        str(tmp_path / "far.npy"),
        "--split",
        "all",
        "--json",
    )
    assert code == 0, err
    far = json.loads(out)
    code, out, err = run(capsys, "evaluate", str(tmp_path / "r"), "--json")
    assert far["points"] == 50 and far["nll"] > json.loads(out)["nll"] + 50


def test_python_dash_m_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "pyro_flows", "sample", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert result.returncode == 0 and "--num-samples" in result.stdout


def test_docs_list_every_fit_option():
    import dataclasses

    from pyro_flows.train.config import RunConfig

    docs = open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "cli.md")).read()
    for f in dataclasses.fields(RunConfig):
        assert f"`--{f.name.replace('_', '-')}`" in docs, f.name


def test_progress_bar_only_on_a_terminal(tmp_path, capsys, monkeypatch):
    def args(name, *extra):
        quiet_free = [a for a in TINY if a != "--quiet"]
        return [
            "fit",
            *quiet_free,
            "--steps",
            "6",
            "--eval-every",
            "3",
            "--no-plots",
            "--out",
            str(tmp_path / name),
            *extra,
        ]

    assert main(args("a")) == 0
    assert capsys.readouterr().err == ""  # not a terminal: no bar
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(args("b")) == 0
    err = capsys.readouterr().err
    assert "step/s" in err and "nll=" in err  # running loss and step rate
    assert main(args("c", "--quiet")) == 0
    assert capsys.readouterr().err == ""  # --quiet wins


def test_discrete_data_are_scored_in_bits_per_dim(tmp_path, capsys):
    # 4-level data concentrated on a few values: a trained flow must beat the uniform
    # model's log2(4) = 2 bits/dim.
    rng = np.random.default_rng(0)
    first = rng.choice([0, 3], size=600, p=[0.7, 0.3])
    data = np.stack([first, np.where(rng.random(600) < 0.9, first, 1)], axis=1)
    np.save(tmp_path / "levels.npy", data)
    out_dir = tmp_path / "run"
    code, out, err = run(
        capsys,
        "fit",
        *TINY,
        "--steps",
        "150",
        "--eval-every",
        "50",
        "--lr",
        "0.01",
        "--data",
        str(tmp_path / "levels.npy"),
        "--levels",
        "4",
        "--logit-alpha",
        "0",
        "--out",
        str(out_dir),
        "--no-plots",
    )
    assert code == 0, err
    results = json.loads((out_dir / "results.json").read_text())
    assert results["test_bits_per_dim"] == pytest.approx(results["test_nll"] / (2 * np.log(2)))
    assert results["test_bits_per_dim"] < 1.6, results
    code, out, err = run(capsys, "evaluate", str(out_dir), "--json")
    assert json.loads(out)["bits_per_dim"] == pytest.approx(results["test_bits_per_dim"], abs=1e-9)


def test_plots_write_pngs(tmp_path):
    import torch
    from matplotlib.image import imread

    from pyro_flows import plot

    normal = torch.distributions.Normal(0.0, 1.0)
    x = torch.randn(500, 1)
    path = plot.plot_1d(
        x, lambda t: normal.log_prob(t).sum(-1), str(tmp_path / "d.png"), samples=torch.randn(300, 1)
    )
    assert imread(path).shape[2] == 4
    grid = plot.plot_image_grid(torch.rand(10, 1, 8, 8), str(tmp_path / "g.png"), nrow=5)
    assert imread(grid).ndim == 3
    records = [{"split": "train", "step": 10, "nll": 2.0}, {"split": "val", "step": 10, "nll": 2.1}]
    assert os.path.getsize(plot.plot_nll_curves(records, str(tmp_path / "c.png"))) > 1000


def _flow_case(name, tmp_path):
    """Data and size options for a tiny run of each registered flow."""
    rng = np.random.default_rng(0)
    if name == "cdf":
        np.save(
            tmp_path / "scalar.npy", np.concatenate([rng.normal(-2, 0.5, 200), rng.normal(1.5, 1.0, 200)])
        )
        return ["--data", str(tmp_path / "scalar.npy"), "--num-components", "3"], "density.png"
    # only the options each flow reads: fit refuses the others
    size = ["--num-scales", "1", "--hidden-channels", "4", "--num-blocks", "1"]
    if name == "real_nvp_image":  # the built-in digits, 17 levels
        return ["--data", "digits", *size], "samples.png"
    if name == "glow":  # discrete images from a file
        np.save(tmp_path / "images.npy", rng.integers(0, 4, size=(300, 1, 4, 4)))
        return [
            "--data",
            str(tmp_path / "images.npy"),
            "--levels",
            "4",
            *size,
            "--steps-per-scale",
            "1",
        ], "samples.png"
    size = ["--hidden-dims", "8"] if name == "ffjord" else ["--num-layers", "2", "--hidden-dims", "8"]
    return ["--data", "moons", "--num-samples", "300", *size], "samples.png"


@pytest.mark.parametrize("name", flow_names())
def test_every_flow_trains_evaluates_and_samples(tmp_path, capsys, name):
    options, picture = _flow_case(name, tmp_path)
    out_dir = tmp_path / "run"
    code, out, err = run(
        capsys,
        "fit",
        "--flow",
        name,
        "--batch-size",
        "50",
        "--steps",
        "4",
        "--eval-every",
        "2",
        "--plot-samples",
        "100",
        "--quiet",
        "--out",
        str(out_dir),
        *options,
    )
    assert code == 0, err
    results = json.loads((out_dir / "results.json").read_text())
    assert np.isfinite(results["test_nll"]) and (out_dir / picture).stat().st_size > 0
    code, out, err = run(capsys, "evaluate", str(out_dir), "--json")
    assert code == 0, err
    assert json.loads(out)["nll"] == pytest.approx(results["test_nll"], rel=1e-6)
    code, out, err = run(capsys, "sample", str(out_dir), "-n", "6", "-o", str(tmp_path / "s.npy"))
    assert code == 0, err
    assert np.load(tmp_path / "s.npy").shape[0] == 6
    if name in ("real_nvp_image", "glow"):
        assert (tmp_path / "s_grid.png").exists() and "test_bits_per_dim" in results
        # Sampling into the run folder leaves the samples.png that fit wrote alone.
        picture_written = (out_dir / picture).read_bytes()
        code, out, err = run(capsys, "sample", str(out_dir), "-n", "4")
        assert code == 0, err
        assert (out_dir / "samples_grid.png").exists() and (out_dir / picture).read_bytes() == picture_written


def test_loss_guard_exit_status_and_message(tmp_path, capsys):
    # Values near 1e30 squared overflow float32: the first loss is infinite.
    np.save(tmp_path / "huge.npy", np.random.default_rng(0).normal(size=(300, 2)) * 1e30)
    code, _, err = run(
        capsys,
        "fit",
        *TINY,
        "--data",
        str(tmp_path / "huge.npy"),
        "--no-standardize",
        "--flow",
        "real_nvp",  # the spline flow's ActNorm layers rescale such data and train on
        "--out",
        str(tmp_path / "r"),
    )
    assert code == 3
    assert "stopped at step 1: the training loss is inf" in err
    assert "no checkpoint had been written yet" in err and "--dtype float64" in err
