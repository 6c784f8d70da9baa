"""Regressions of the audit of ``evaluate``, ``sample``, ``fit --resume`` and ``fit --config``:
every point of a file scored, samples of discrete data that are points of the data's cells,
and other data refused when it is not the kind the run was trained on."""

import json
import math

import numpy as np
import pytest

from pyro_flows.train.config import RunConfig
from pyro_flows.train.run import fit_run

from .helpers import run_cli, run_config

IMAGE = dict(flow="glow", num_scales=1, steps_per_scale=1, hidden_channels=4, num_blocks=1)


def tiny(out, **changes) -> RunConfig:
    return run_config(out, **{"batch_size": 40, "steps": 4, "eval_every": 2, **changes})


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    """A finished spline run on standardized 3-D data (mean 3, sd 5)."""
    folder = tmp_path_factory.mktemp("vectors")
    np.save(folder / "data.npy", np.random.default_rng(0).normal(size=(300, 3)) * 5 + 3)
    out = folder / "run"
    fit_run(tiny(out, flow="spline", num_layers=2, hidden_dims=(8,), data=str(folder / "data.npy")))
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A finished glow run on 4-level images of shape (1, 4, 4), uniformly dequantized
    through the default logit preprocessing."""
    folder = tmp_path_factory.mktemp("images")
    np.save(folder / "data.npy", np.random.default_rng(0).integers(0, 4, size=(200, 1, 4, 4)))
    out = folder / "run"
    fit_run(tiny(out, data=str(folder / "data.npy"), levels=4, **IMAGE))
    return out


def evaluate_json(capsys, *argv):
    code, out, err = run_cli(capsys, "evaluate", *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_evaluate_all_scores_every_point_of_a_file_of_a_few_points(vectors, tmp_path, capsys):
    # `--split all` splits nothing, so a file too small to split three ways is scored too
    points = np.random.default_rng(1).normal(size=(3, 3)) * 5 + 3
    np.save(tmp_path / "three.npy", points)
    np.save(tmp_path / "one.npy", points[:1])
    np.save(tmp_path / "tiled.npy", np.tile(points, (4, 1)))  # 12 points: enough to split
    three = evaluate_json(capsys, vectors, "--data", tmp_path / "three.npy", "--split", "all")
    tiled = evaluate_json(capsys, vectors, "--data", tmp_path / "tiled.npy", "--split", "all")
    assert three["points"] == 3 and tiled["points"] == 12
    assert three["nll"] == pytest.approx(tiled["nll"], rel=1e-6) and 8 < three["nll"] < 20
    one = evaluate_json(capsys, vectors, "--data", tmp_path / "one.npy", "--split", "all")
    assert one["points"] == 1 and one["nll_se"] is None and 8 < one["nll"] < 20
    # a CSV of two rows, and its points' own NLLs average to the file's
    np.savetxt(tmp_path / "two.csv", points[1:], delimiter=",")
    two = evaluate_json(capsys, vectors, "--data", tmp_path / "two.csv", "--split", "all")
    assert two["points"] == 2 and (two["nll"] * 2 + one["nll"]) / 3 == pytest.approx(three["nll"], rel=1e-6)
    # the run's own units, not a standardization of the new file: the same points moved by
    # 50 of the data's standard deviations are far less likely
    np.save(tmp_path / "far.npy", points + 250.0)
    far = evaluate_json(capsys, vectors, "--data", tmp_path / "far.npy", "--split", "all")
    assert far["nll"] > three["nll"] + 100
    # a row that is not finite is still named
    np.save(tmp_path / "nan.npy", np.array([[1.0, 2.0, 3.0], [1.0, np.nan, 3.0]]))
    code, _, err = run_cli(capsys, "evaluate", vectors, "--data", tmp_path / "nan.npy", "--split", "all")
    assert code == 1 and "1 of 2 rows contain NaN" in err


def test_evaluate_all_of_a_discrete_file_of_a_few_points_checks_its_levels(images, tmp_path, capsys):
    np.save(tmp_path / "two.npy", np.random.default_rng(2).integers(0, 4, size=(2, 1, 4, 4)))
    two = evaluate_json(capsys, images, "--data", tmp_path / "two.npy", "--split", "all")
    assert two["points"] == 2 and two["bits_per_dim"] == pytest.approx(two["nll"] / (16 * math.log(2)))
    assert 1.0 < two["bits_per_dim"] < 4.0
    np.save(tmp_path / "five.npy", np.full((2, 1, 4, 4), 5))
    code, _, err = run_cli(capsys, "evaluate", images, "--data", tmp_path / "five.npy", "--split", "all")
    assert code == 1 and "expects integer values 0..3, found 5" in err


def test_samples_of_uniformly_dequantized_images_lie_in_the_cells_of_the_levels(images, tmp_path, capsys):
    # The logit preprocessing samples (-0.056, 1.056) of the unit interval: values outside
    # [0, K) are moved into the nearest edge cell, as for a learned dequantizer
    code, _, err = run_cli(capsys, "sample", images, "-n", "2000", "-o", tmp_path / "s.npy", "--seed", "1")
    assert code == 0, err
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (2000, 1, 4, 4) and samples.min() >= 0 and samples.max() < 4
    assert sorted(np.unique(np.floor(samples))) == [0, 1, 2, 3]
    # an edge value is still on its level: the largest value below 4
    assert samples.max() == np.nextafter(np.float32(4), np.float32(0))
    # and inside the cells, samples are the model's, not moved
    inside = (samples > 0) & (samples < samples.max())
    assert inside.mean() > 0.9 and len(np.unique(samples[inside])) > 1000


def test_evaluate_refuses_a_built_in_set_of_other_levels_without_blaming_an_option(images, tmp_path, capsys):
    # a 4-level run of 8x8 images scoring the digits (17 levels, shape (1, 8, 8))
    np.save(tmp_path / "levels4.npy", np.random.default_rng(0).integers(0, 4, size=(200, 1, 8, 8)))
    out = tmp_path / "run"
    fit_run(tiny(out, data=str(tmp_path / "levels4.npy"), levels=4, **IMAGE))
    code, _, err = run_cli(capsys, "evaluate", out, "--data", "digits")
    assert code == 1 and "drop --levels" not in err
    assert "digits holds discrete data of 17 levels, but the run was trained on data of 4 levels" in err
    # a run on continuous data of the same shape does not score the digits as if continuous
    np.save(tmp_path / "real.npy", np.random.default_rng(0).random(size=(200, 1, 8, 8)))
    out = tmp_path / "continuous"
    fit_run(tiny(out, data=str(tmp_path / "real.npy"), **IMAGE))
    code, _, err = run_cli(capsys, "evaluate", out, "--data", "digits")
    assert (
        code == 1 and "digits holds discrete data of 17 levels, but the run was trained on continuous" in err
    )
    # a built-in continuous set given to a discrete run is refused for its shape, not for --levels
    code, _, err = run_cli(capsys, "evaluate", images, "--data", "moons")
    assert code == 1 and "drop --levels" not in err and "points of shape (2,)" in err


@pytest.mark.parametrize(
    "file_text, options",
    [
        ('objective = "flow-matching"\n', ["--flow", "ffjord", "--hidden-dims", "8"]),
        ("test_fraction = 0.9\n", ["--val-fraction", "0.05", "--num-layers", "2", "--hidden-dims", "8"]),
    ],
    ids=["flow-matching-with-the-flow-on-the-command-line", "fractions"],
)
def test_config_file_options_are_checked_with_the_command_line_that_overrides_them(
    tmp_path, capsys, file_text, options
):
    # the file alone would be refused (flow matching of the default spline; fractions
    # summing past 1); with the command line's options it describes a valid run
    (tmp_path / "run.toml").write_text(file_text + "num_samples = 600\nsteps = 2\neval_every = 2\n")
    out = tmp_path / "run"
    code, _, err = run_cli(
        capsys,
        "fit",
        "--config",
        tmp_path / "run.toml",
        *options,
        "--batch-size",
        "20",
        "--out",
        out,
        "--quiet",
    )
    assert code == 0, err
    import tomllib

    saved = tomllib.loads((out / "config.toml").read_text())
    assert saved["steps"] == 2 and saved["batch_size"] == 20
    if saved["flow"] == "ffjord":
        assert saved["objective"] == "flow-matching"
    else:
        assert (saved["val_fraction"], saved["test_fraction"]) == (0.05, 0.9)
        assert json.loads((out / "results.json").read_text())["splits"] == {
            "train": 30,
            "val": 30,
            "test": 540,
        }
    # an unknown key and a value of the wrong type are still named with the file
    (tmp_path / "bad.toml").write_text("stepz = 3\n")
    code, _, err = run_cli(capsys, "fit", "--config", tmp_path / "bad.toml", *options)
    assert code == 1 and f"{tmp_path / 'bad.toml'}: unknown option(s) stepz" in err
    (tmp_path / "bad.toml").write_text('eval_every = "often"\n')
    code, _, err = run_cli(capsys, "fit", "--config", tmp_path / "bad.toml", *options)
    assert code == 1 and f"{tmp_path / 'bad.toml'}: option eval_every expects an integer, got 'often'" in err


def test_evaluate_prints_the_datas_warnings_as_lines(vectors, tmp_path, capsys):
    # a first row read as a header while it holds numbers: said once, as `fit` says it
    rows = np.random.default_rng(3).normal(size=(4, 3)) * 5 + 3
    (tmp_path / "na.csv").write_text("NA,1.5,2.5\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    code, out, err = run_cli(
        capsys, "evaluate", vectors, "--data", tmp_path / "na.csv", "--split", "all", "--json"
    )
    assert code == 0, err
    assert "warning: data file" in err and "line 1 was read as a header" in err
    assert "UserWarning" not in err and json.loads(out)["points"] == 4
