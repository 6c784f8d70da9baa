"""Regressions of the fourth run audit of ``pyro-flows fit / evaluate / sample`` and
:func:`pyro_flows.train.fit`."""

import json
import os
import shutil

import numpy as np
import torch

from pyro_flows.train.checkpoint import load_checkpoint
from pyro_flows.train.config import RunConfig
from pyro_flows.train.run import fit_run

from .helpers import Interrupt, interrupt_at, run_cli, run_config


def tiny(out, **changes) -> RunConfig:
    options = dict(flow="real_nvp", num_layers=2, hidden_dims=(16,), batch_size=50, steps=12, eval_every=4)
    return run_config(out, **{**options, "lr": 5e-3, **changes})


def same_weights(a: str, b: str, which: str = "checkpoint.pt") -> bool:
    wa = load_checkpoint(os.path.join(a, which))["model"]
    wb = load_checkpoint(os.path.join(b, which))["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_resumed_run_on_discrete_vectors_with_training_noise_ends_as_an_uninterrupted_one(tmp_path):
    # --noise scales by the sd of the dequantized training points; that dequantization drew
    # from the global generator, after a resumed run had restored it, so the resumed run drew
    # other batches' noise and ended elsewhere (test NLL 6.3297 against 6.3310 uninterrupted)
    data = tmp_path / "counts.npy"
    np.save(data, np.random.default_rng(0).integers(0, 8, size=(400, 3)).astype(np.float64))
    options = dict(data=str(data), levels=8, noise=0.1)
    full = fit_run(tiny(tmp_path / "full", **options))
    try:
        fit_run(tiny(tmp_path / "cut", **options), on_step=interrupt_at(6))
    except Interrupt:
        pass
    resumed = fit_run(RunConfig(quiet=True), resume_dir=str(tmp_path / "cut"))
    assert resumed["test_nll"] == full["test_nll"]
    assert same_weights(tmp_path / "full", tmp_path / "cut")


def test_resume_refuses_the_best_model_of_another_run_of_the_same_step(tmp_path, capsys):
    # two runs of one model (other learning rates), each stopped after its last checkpoint
    # (step 8 of 8, its best) and before its test score; best.pt of the second copied into
    # the first was taken as the first's (the same step): the resumed run reported the test
    # NLL of the other run's weights (2.6656) beside its own best validation NLL (3.1307)
    full = fit_run(tiny(tmp_path / "full", steps=8, lr=5e-3))
    for name, lr in (("a", 5e-3), ("b", 2e-3)):
        try:
            fit_run(tiny(tmp_path / name, steps=8, lr=lr), on_step=interrupt_at(8))
        except Interrupt:
            pass
        assert load_checkpoint(str(tmp_path / name / "checkpoint.pt"))["trainer"]["best_step"] == 8
    own = tmp_path / "own-best.pt"
    shutil.move(str(tmp_path / "a" / "best.pt"), own)
    shutil.copy(tmp_path / "b" / "best.pt", tmp_path / "a" / "best.pt")
    code, _, err = run_cli(capsys, "fit", "--resume", tmp_path / "a", "--quiet")
    assert code == 1, err
    assert (
        f"{tmp_path / 'a' / 'best.pt'} holds a model of step 8, but its validations differ from those" in err
    )
    assert not (tmp_path / "a" / "results.json").exists()

    shutil.move(str(own), tmp_path / "a" / "best.pt")  # its own: scored as the uninterrupted run
    code, _, err = run_cli(capsys, "fit", "--resume", tmp_path / "a", "--quiet")
    assert code == 0, err
    assert json.loads((tmp_path / "a" / "results.json").read_text())["test_nll"] == full["test_nll"]


def test_the_density_plot_of_discrete_data_draws_the_density_at_the_grid_not_at_jittered_points(
    tmp_path, monkeypatch
):
    # the 2-D plot scored its grid through Splits.prepare, which dequantizes: each grid point
    # got uniform noise, so the "model density" panel showed the density at random points
    # (speckled; two calls on one grid differed)
    from pyro_flows import plot
    from pyro_flows.train.loop import nll_per_point
    from pyro_flows.train.run import _load_run, _restore_flow

    data = tmp_path / "counts.npy"
    np.save(data, np.random.default_rng(0).integers(0, 5, size=(300, 2)).astype(np.float64))
    captured = {}
    monkeypatch.setattr(
        plot, "plot_2d", lambda d, s, log_density, path, title: captured.setdefault("f", log_density)
    )
    out = tmp_path / "run"
    fit_run(tiny(out, data=str(data), levels=5, steps=4, batch_size=20, plots=True, plot_samples=10))
    grid = torch.tensor([[0.5, 1.5], [2.0, 2.0], [4.9, 0.1]], dtype=torch.float64)
    first, second = captured["f"](grid), captured["f"](grid)
    assert torch.equal(first, second)
    state, config = _load_run(str(out))
    flow = _restore_flow(state, config, torch.device("cpu"), (2,))
    expected = -nll_per_point(flow, (grid / 5).float()) - 2 * np.log(5)
    assert torch.allclose(first, expected, rtol=0, atol=1e-6)
