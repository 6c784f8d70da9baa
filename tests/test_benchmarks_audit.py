"""The benchmark harness compares libraries fairly: the same data and preprocessing for
every model, figures in the same units, settings that hold for everyone, and statistics
that are what the tables say they are."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import contenders, fit, speed
from benchmarks.toy_targets import BANANA10

ROOT = Path(__file__).resolve().parents[1]


class _FixedNormal(torch.nn.Module):
    """A "flow" that is a standard Normal whatever it is trained on (its one parameter has
    no effect), and that records the batches it is trained on."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))
        self.batches = []

    def log_prob(self, x):
        if self.training:
            self.batches.append(x.detach().clone())
        return torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1) + 0 * self.unused


def test_fit_standardises_the_data_for_every_model_and_scores_in_the_data_units(monkeypatch, tmp_path):
    # zuko's NSF acts on [-5, 5] and its documentation asks for standardised features;
    # the banana's coordinates have standard deviations near 2.5 and reach 20-40
    models = []

    def build_fixed(name, dim, *args, **kwargs):
        model = _FixedNormal()
        models.append(model)
        return contenders.Contender(name, model, model.log_prob, None)

    monkeypatch.setattr(fit, "build_fit", build_fixed)
    argv = ["--targets", "banana10", "--libs", "zuko_nsf", "--steps", "3", "--eval-every", "3"]
    argv += ["--batch", "256", "--train", "2000", "--test", "500", "--seeds", "0", "--no-cpu"]
    data = fit.main([*argv, "--out", str(tmp_path)])
    (model,) = models
    seen = torch.cat(model.batches)
    assert float(seen.mean(0).abs().max()) < 0.15
    assert float((seen.std(0) - 1).abs().max()) < 0.15
    # the figure is the NLL of the data, not of the standardised data: here that of the
    # Normal with the training mean and standard deviations
    train, test = BANANA10.sample(2000, seed=2).double(), BANANA10.sample(500, seed=3).double()
    expected = -torch.distributions.Normal(train.mean(0), train.std(0)).log_prob(test).sum(-1).mean()
    ((step, _, nll),) = data["results"]["banana10"]["checkpoints"][0]["zuko_nsf"]
    assert step == 3 and nll == pytest.approx(float(expected), abs=1e-4)
    assert "standardised" in (tmp_path / "fit.md").read_text()


def test_fit_validation_flag_holds_for_every_library(tmp_path):
    # `import zuko` turns torch's distribution validation off: with --validate every model,
    # built after ours, must still train with it on
    script = """
import sys, torch
from benchmarks import fit
flags = []
build = fit.build_fit
def recording(*args, **kwargs):
    contender = build(*args, **kwargs)
    flags.append(torch.distributions.Distribution._validate_args)
    return contender
fit.build_fit = recording
fit.main(["--targets", "checkerboard", "--libs", "ours_real_nvp", "zuko_real_nvp", "--steps", "1",
          "--eval-every", "1", "--layers", "2", "--hidden", "8", "--batch", "16", "--train", "100",
          "--test", "50", "--seeds", "0", "--no-cpu", "--validate", "--out", sys.argv[1]])
print("FLAGS", flags)
"""
    pytest.importorskip("zuko")
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        check=True,
    ).stdout
    (line,) = [line for line in out.splitlines() if line.startswith("FLAGS")]
    assert line == "FLAGS [True, True]"


def _record(path, train=1000, standardize=None, nll=2.5, seed=0):
    settings = {"layers": 8, "hidden": [128, 128], "batch": 512, "lr": 1e-3, "train": train, "test": 500}
    settings["seeds"] = [seed]
    if standardize is not None:
        settings["standardize"] = standardize
    result = {"entropy": 2.0, "entropy_se": 0.0, "gaussian": 3.0, "checkpoints": [{"ours": [[10, 1.0, nll]]}]}
    path.write_text(json.dumps({"settings": settings, "results": {"moons": result}}))
    return str(path)


def test_fit_merge_refuses_runs_on_other_data(tmp_path):
    same = [_record(tmp_path / "a.json"), _record(tmp_path / "b.json", nll=2.4, seed=1)]
    merged = fit.merge(same, ["ours"], [10])["moons"]
    assert merged["summary"]["ours"]["steps"][10][0] == pytest.approx(0.45)
    # other training points, or standardised data against raw data (records from before
    # the option hold raw data), are not the same comparison
    with pytest.raises(ValueError, match="train"):
        fit.merge([same[0], _record(tmp_path / "c.json", train=2000)], ["ours"], [10])
    with pytest.raises(ValueError, match="standardize"):
        fit.merge([same[0], _record(tmp_path / "d.json", standardize=True)], ["ours"], [10])
    fit.merge([same[0], _record(tmp_path / "e.json", standardize=False)], ["ours"], [10])


def test_speed_statistics_are_paired_medians_and_quartiles():
    # four repetitions; the machine slows down by 2x in the last two, which paired ratios cancel
    times = {
        "train": {
            "ours": [1.0, 1.1, 2.0, 2.4],
            "zuko": [1.2, 1.2, 2.6, 2.4],
            "nflows": [1.5, 1.6, 3.0, 3.2],
            speed.FLOOR: [1.0, 1.0, 2.0, 2.0],
        }
    }
    summary = speed.summarize(times)["train"]
    assert summary["fastest_peer"] == "zuko"
    ours = summary["by_name"]["ours"]
    # ours / floor per repetition: 1.0, 1.1, 1.0, 1.2 -> median 1.05, quartiles 1.0 and 1.125
    assert ours["to_floor"] == pytest.approx(1.05)
    assert ours["to_floor_iqr"] == pytest.approx([1.0, 1.125])
    # ours / zuko per repetition: 0.8333, 0.9167, 0.7692, 1.0
    ratios = sorted([1.0 / 1.2, 1.1 / 1.2, 2.0 / 2.6, 1.0])
    assert ours["to_fastest_peer"] == pytest.approx((ratios[1] + ratios[2]) / 2)
    q1 = ratios[0] + 0.75 * (ratios[1] - ratios[0])
    q3 = ratios[2] + 0.25 * (ratios[3] - ratios[2])
    assert ours["to_fastest_peer_iqr"] == pytest.approx([q1, q3])
    assert speed.verdict(ours) == "ahead"  # q3 = 0.9375 < 1
    assert speed.verdict({"to_fastest_peer_iqr": [0.9, 1.01]}) == "tie"
    assert speed.verdict({"to_fastest_peer_iqr": [1.01, 1.2]}) == "behind"
    assert ours["median_ms"] == pytest.approx(1e3 * 1.55)
    assert math.isclose(summary["by_name"]["zuko"]["to_fastest_peer"], 1.0)
