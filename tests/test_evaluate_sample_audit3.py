"""``sample`` and the run's plots with samples that are not numbers, the run's own data
file as the output of ``sample``, and seeds that torch would wrap around."""

import numpy as np
import pytest
import torch

from pyro_flows import plot
from pyro_flows.flow import Flow
from pyro_flows.train.run import fit_run, sample_run

from .helpers import run_cli, run_config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished spline run on a file of standardized 3-D data (mean 3, sd 5), the file
    kept in the run's folder."""
    folder = tmp_path_factory.mktemp("finished")
    np.save(folder / "data.npy", np.random.default_rng(0).normal(size=(300, 3)) * 5 + 3)
    data = str(folder / "data.npy")
    options = dict(num_layers=2, hidden_dims=(8,), batch_size=40, steps=4, eval_every=2)
    fit_run(run_config(folder, flow="spline", data=data, **options))
    return folder


def with_bad_rows(monkeypatch, rows, value):
    """``Flow.sample`` with ``value`` in the last two coordinates of the given rows of each draw."""
    original = Flow.sample

    def sample(self, sample_shape=()):
        x = original(self, sample_shape).clone()
        x[rows, 1:] = value
        return x

    monkeypatch.setattr(Flow, "sample", sample)


def test_samples_that_are_not_numbers_are_counted_and_named(finished, tmp_path, capsys, monkeypatch):
    with_bad_rows(monkeypatch, [3, 7], float("nan"))
    code, out, err = run_cli(capsys, "sample", finished, "-n", "10", "-o", tmp_path / "s.npy")
    assert code == 0, err
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (10, 3)
    assert np.isnan(samples[[3, 7], 1:]).all() and np.isfinite(np.delete(samples, [3, 7], axis=0)).all()
    # samples, not values: each of the two holds two NaNs
    assert "warning: 2 of the 10 samples" in err and "(first: sample 3)" in err
    # from Python too, counted in the result
    monkeypatch.undo()
    with_bad_rows(monkeypatch, [0], float("inf"))
    result = sample_run(str(finished), 4, out=str(tmp_path / "t.npy"), quiet=True)
    assert result["non_finite"] == 1 and "warning: 1 of the 4 samples" in capsys.readouterr().err
    monkeypatch.undo()
    assert sample_run(str(finished), 4, out=str(tmp_path / "u.npy"), quiet=True)["non_finite"] == 0
    assert capsys.readouterr().err == ""


def test_sample_refuses_to_write_over_the_runs_own_data(finished, capsys, monkeypatch):
    before = np.load(finished / "data.npy")
    monkeypatch.chdir(finished)  # the same file by another name
    code, _, err = run_cli(capsys, "sample", ".", "-n", "5", "-o", "data.npy")
    assert code == 1
    assert "data.npy is the data file the run was trained on" in err
    np.testing.assert_array_equal(np.load(finished / "data.npy"), before)
    assert before.shape == (300, 3)


@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_a_seed_torch_would_wrap_around_is_refused(finished, tmp_path, capsys, seed):
    # -1 would draw exactly what 2**64 - 1 draws; 2**64 would fail with torch's own words
    code, _, err = run_cli(capsys, "sample", finished, "-n", "3", "-o", tmp_path / "s.npy", "--seed", seed)
    assert code == 1
    assert f"--seed must be an integer from 0 to 2**64 - 1, got {seed}" in err
    assert not (tmp_path / "s.npy").exists()


def capture_figures(monkeypatch):
    figures = []

    def save(fig, path):
        figures.append(fig)
        return path

    monkeypatch.setattr(plot, "_save", save)
    return figures


def test_the_1d_plot_leaves_out_infinite_samples_and_says_so(tmp_path, monkeypatch):
    # an infinite sample made the histogram's range infinite: the plot, and so the end of
    # `fit` of a 1-D run, failed
    torch.manual_seed(0)
    samples = torch.randn(300, 1)
    samples[:4] = float("inf")
    samples[4] = float("nan")
    path = plot.plot_1d(
        torch.randn(300, 1), lambda t: -0.5 * t.pow(2).sum(-1), str(tmp_path / "d.png"), samples=samples
    )
    assert (tmp_path / "d.png").stat().st_size > 1000 and path == str(tmp_path / "d.png")
    figures = capture_figures(monkeypatch)
    plot.plot_1d(torch.randn(300, 1), lambda t: -0.5 * t.pow(2).sum(-1), "unused.png", samples=samples)
    labels = figures[0].axes[0].get_legend_handles_labels()[1]
    assert "model samples (5 of 300 not finite, not shown)" in labels
    bars = [p for p in figures[0].axes[0].patches if p.get_label() == labels[1]]
    assert len(bars) == 1  # the step histogram of the 295 finite samples
    plot.plot_1d(torch.randn(300, 1), lambda t: -0.5 * t.pow(2).sum(-1), "unused.png", samples=samples[:4])
    assert "model samples (4 of 4 not finite, not shown)" in figures[1].axes[0].get_legend_handles_labels()[1]


def test_the_2d_plot_says_how_many_samples_it_cannot_draw(monkeypatch):
    torch.manual_seed(0)
    samples = torch.randn(200, 2)
    samples[10, 0] = float("nan")
    samples[11:13, 1] = float("-inf")
    figures = capture_figures(monkeypatch)
    plot.plot_2d(torch.randn(200, 2), samples, lambda t: -0.5 * t.pow(2).sum(-1), "unused.png", resolution=20)
    titles = [ax.get_title() for ax in figures[0].axes]
    assert "model samples (3 of 200 not finite, not shown)" in titles
    plot.plot_2d(
        torch.randn(200, 2), samples[20:], lambda t: -0.5 * t.pow(2).sum(-1), "unused.png", resolution=20
    )
    assert "model samples" in [ax.get_title() for ax in figures[1].axes]


def test_image_grids_show_discrete_samples_at_the_level_of_their_cell():
    """A sample in [k, k + 1) is level k (``floor``, as ``sample`` documents); with 4
    levels, 2.9 is shown as 2/3 of full brightness, not as 2.9/3."""
    from pyro_flows.train.run import _unit_range

    x = torch.tensor([-0.3, 0.0, 0.99, 1.0, 2.9, 3.99, 4.2])
    shown = _unit_range(x, levels=4)
    assert torch.equal(shown, torch.tensor([0.0, 0.0, 0.0, 1 / 3, 2 / 3, 1.0, 1.0]))
    assert torch.equal(_unit_range(torch.tensor([-0.5, 0.25, 1.5]), None), torch.tensor([0.0, 0.25, 1.0]))
