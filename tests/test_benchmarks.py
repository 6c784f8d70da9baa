"""Smoke tests that keep the benchmark harness from rotting (no timing assertions:
speed is measured by ``python -m benchmarks.speed``, never asserted in tests)."""

import json
import math

import pytest
import torch

from benchmarks import contenders, fit, speed
from benchmarks.toy_targets import BANANA10, CHECKERBOARD, EIGHT_GAUSSIANS, MIXTURE10, MOONS, RINGS

TINY = ["--dims", "4", "--reps", "1", "--warmup", "0", "--batch", "16", "--points", "32"]
TINY += ["--layers", "2", "--hidden", "8", "--no-compile"]


def _run_speed(tmp_path, libs):
    data = speed.main([*TINY, "--libs", *libs, "--out", str(tmp_path), "--stem", "smoke"])
    on_disk = json.loads((tmp_path / "smoke.json").read_text())
    assert "| 4 |" in (tmp_path / "smoke.md").read_text()
    assert (
        on_disk["command"].startswith("python -m benchmarks.")
        or "python -m benchmarks." in on_disk["command"]
    )
    return data


def test_speed_smoke_ours_alone(tmp_path):
    data = _run_speed(tmp_path, ["ours"])
    summary = data["results"][4]["summary"]
    for op in speed.OPS:
        rows = summary[op]["by_name"]
        assert set(rows) == {"ours", speed.FLOOR}
        assert rows[speed.FLOOR]["to_floor"] == 1.0
        assert math.isfinite(rows["ours"]["to_floor"]) and rows["ours"]["to_floor"] > 0
        assert summary[op]["fastest_peer"] is None


@pytest.mark.parametrize("peer", ["pyro", "nflows", "normflows", "zuko"])
def test_speed_smoke_with_peer(tmp_path, peer):
    pytest.importorskip(contenders.PACKAGES[peer])
    data = _run_speed(tmp_path, ["ours", peer])
    result = data["results"][4]
    # The matched architectures have exactly the same number of trainable parameters.
    assert result["parameters"][peer] == result["parameters"]["ours"] == result["parameters"][speed.FLOOR]
    train = result["summary"]["train"]
    assert train["fastest_peer"] == peer
    assert train["by_name"][peer]["to_fastest_peer"] == 1.0


@pytest.mark.parametrize("name", contenders.NAMES)
def test_contenders_start_as_a_normalized_density(name):
    pytest.importorskip(contenders.PACKAGES[name])
    torch.manual_seed(0)
    model = contenders.build(name, 2, num_layers=2, hidden_dims=(8,))
    # Quadrature of the model density over a box holding nearly all its mass.
    grid = torch.linspace(-7, 7, 281)
    xy = torch.cartesian_prod(grid, grid)
    with torch.no_grad():
        mass = model.log_prob(xy).exp().sum() * (grid[1] - grid[0]) ** 2
    assert abs(float(mass) - 1.0) < 0.02
    assert model.sample(11).shape == (11, 2)


def test_toy_target_densities_integrate_to_one_and_entropies():
    for target in (CHECKERBOARD, EIGHT_GAUSSIANS):
        assert abs(_grid_mass(target.log_prob, 3.5, 701) - 1.0) < 0.02, target.name
    x = CHECKERBOARD.sample(4000, seed=3)
    assert bool(torch.isfinite(CHECKERBOARD.log_prob(x)).all())
    assert CHECKERBOARD.entropy() == (math.log(8), 0.0)
    # Well separated components: entropy ~ log 8 + that of one 2-D Gaussian (std 0.2).
    entropy, se = EIGHT_GAUSSIANS.entropy(num_samples=20_000)
    assert abs(entropy - (math.log(8) + 1 + math.log(2 * math.pi * 0.2**2))) < 0.03
    assert 0 < se < 0.02


def test_exact_densities_of_the_new_targets():
    # smooth densities inside the box: the Riemann sum is exact to 1e-14 on 151 nodes
    for target in (RINGS, MOONS):
        assert abs(_grid_mass(target.log_prob, 3.5, 151) - 1.0) < 0.01, target.name
    # the 10-D targets: Monte Carlo entropy with the exact density; banana's is exact
    x = BANANA10.sample(40_000, seed=4).double()
    mc = -BANANA10.log_prob(x)
    assert abs(float(mc.mean()) - BANANA10.exact_entropy) < 4 * float(mc.std()) / 200
    assert float(BANANA10.sample(20_000).abs().max()) > 20  # coordinates reach 20
    entropy, se = MIXTURE10.entropy(num_samples=20_000)
    assert 0 < se < 0.05 and math.isfinite(entropy)


def test_fit_smoke(tmp_path):
    args = ["--targets", "checkerboard", "--libs", "ours", "ours_real_nvp", "--steps", "30", "60"]
    args += ["--layers", "2", "--hidden", "16", "--eval-every", "30", "--seeds", "0", "1"]
    args += ["--train", "2000", "--test", "2000", "--out", str(tmp_path)]
    data = fit.main(args)
    board = data["results"]["checkerboard"]
    ours = board["summary"]["ours"]
    gap, se = ours["steps"][60]
    # 60 steps of a small spline flow beat the best Gaussian, and no model beats the
    # true entropy (a negative gap beyond the noise)
    assert -0.05 < gap < board["gaussian"] - board["entropy"]
    assert se >= 0
    # at equal CPU time the first contender's own figure is its figure at that step
    assert ours["cpu"][60][0] == gap
    assert (tmp_path / "fit.md").read_text().count("## KL gap") == 4


def test_fit_scores_plus_fit_contenders_with_their_best_validation_weights(tmp_path):
    # 200 training points and 400 steps: the recipe alone overfits them, while `NAME+fit`
    # (10% held out, validated every 50 steps) keeps the weights of its best validation
    args = ["--targets", "moons", "--libs", "ours+fit", "ours+recipe", "--steps", "100", "400"]
    args += ["--layers", "2", "--hidden", "64", "--eval-every", "50", "--fit-val-every", "50", "--seeds", "0"]
    args += [
        "--train",
        "200",
        "--test",
        "2000",
        "--entropy-samples",
        "20000",
        "--no-cpu",
        "--out",
        str(tmp_path),
    ]
    data = fit.main(args)
    moons = data["results"]["moons"]
    (run,) = moons["checkpoints"]
    selected = [nll for _, _, nll in run["ours+fit"]]
    last_step = [nll for _, _, nll in run["ours+recipe"]]
    assert last_step[-1] > min(last_step) + 0.1  # the recipe alone overfits ...
    assert selected[-1] < last_step[-1] - 0.1  # ... and the selected weights do not
    # a figure changes only when the validation NLL improves: once the best is passed, it stays
    assert selected[-1] == selected[-2] == selected[-3]
    summary = moons["summary"]
    assert summary["ours+fit"]["steps"][400][0] == selected[-1] - moons["entropy"]
    assert "10% of the training points held out" in (tmp_path / "fit.md").read_text()
    assert fit.split_name("ours+fit") == ("ours", True, True)
    assert fit.split_name("zuko_nsf") == ("zuko_nsf", False, False)


def _grid_mass(log_prob, half_width: float, points: int) -> float:
    """The integral of ``exp(log_prob)`` over the square ``[-half_width, half_width]^2`` by a
    Riemann sum on ``points`` x ``points`` nodes (float64)."""
    grid = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    return float(log_prob(torch.cartesian_prod(grid, grid)).exp().sum()) * float(grid[1] - grid[0]) ** 2


def test_the_spirals_density_integrates_to_one_and_its_quadrature_has_converged():
    from benchmarks.toy_targets import SPIRALS, _spirals_log_prob

    # a grid at half the noise's std integrates the smooth density to 1 (2000 nodes keep
    # the curve spacing below half the noise)
    assert abs(_grid_mass(lambda xy: _spirals_log_prob(xy, nodes=2000), 4.0, 161) - 1.0) < 1e-4
    # the benchmark's 20,000 nodes against 2000: the quadrature has converged at the samples
    x = SPIRALS.sample(300, seed=5).double()
    assert float((_spirals_log_prob(x) - _spirals_log_prob(x, nodes=2000)).abs().max()) < 0.01
    # samples of the target are where its density is: far above a uniform on the square
    assert float(SPIRALS.log_prob(x).mean()) > -math.log(64) + 1


def test_the_pinwheel_density_integrates_to_one_with_all_its_preimages():
    from benchmarks.toy_targets import PINWHEEL, _pinwheel_log_prob

    assert abs(_grid_mass(lambda xy: _pinwheel_log_prob(xy, grid=256), 6.0, 151) - 1.0) < 1e-3
    x = PINWHEEL.sample(500, seed=5).double()
    log_p = PINWHEEL.log_prob(x)
    assert bool(torch.isfinite(log_p).all())
    # a coarser grid of angles finds the same preimages
    assert float((log_p - _pinwheel_log_prob(x, grid=256)).abs().max()) < 1e-8


def test_gpu_images_script_runs_on_cpu(tmp_path):
    from benchmarks import gpu_images

    args = ["--device", "cpu", "--shape", "3", "8", "8", "--batch", "2", "--steps", "1", "--warmup", "0"]
    args += ["--builders", "glow", "--precisions", "float32", "--out", str(tmp_path)]
    result = gpu_images.main(args)["results"]["glow"]["float32"]
    assert "error" not in result, result.get("error")
    assert result["images_per_s"] > 0 and math.isfinite(result["final_loss"])


def test_gpu_images_smoke_times_memory_saving(tmp_path):
    from benchmarks import gpu_images

    args = [
        "--device",
        "cpu",
        "--smoke",
        "--builders",
        "glow",
        "--precisions",
        "float32",
        "--out",
        str(tmp_path),
    ]
    results = gpu_images.main(args)["results"]["glow"]
    assert set(results) == {"float32", "float32/saving_on"}
    assert all("error" not in r and r["images_per_s"] > 0 for r in results.values()), results
    # the same model and data: memory saving changes the memory, not the loss
    assert abs(results["float32"]["final_loss"] - results["float32/saving_on"]["final_loss"]) < 1e-3


def test_memory_benchmark_smoke(tmp_path):
    from benchmarks import memory

    rows = memory.main(["--smoke", "--out", str(tmp_path)])["results"]
    assert [(r["depth"], r["memory_saving"]) for r in rows] == [(1, False), (1, True), (2, False), (2, True)]
    assert all(r["s_per_step"] > 0 and math.isfinite(r["loss"]) for r in rows)
    assert (tmp_path / "memory_cpu.md").read_text().count("couplings") == 2


def test_memory_benchmark_smoke_class_conditional(tmp_path):
    from benchmarks import memory

    rows = memory.main(["--smoke", "--context-dim", "3", "--out", str(tmp_path)])["results"]
    assert all(r["context_dim"] == 3 and math.isfinite(r["loss"]) for r in rows)
    # the same model and data with and without memory saving: the same loss
    by = {(r["depth"], r["memory_saving"]): r["loss"] for r in rows}
    assert all(abs(by[(d, False)] - by[(d, True)]) < 1e-4 for d in (1, 2))
    assert "class-conditional Glow" in (tmp_path / "memory_cpu_conditional.md").read_text()


def test_digits_ablation_smoke_with_recipe_options(tmp_path):
    from benchmarks import digits_ablation

    argv = ["--smoke", "--out", str(tmp_path), "--models", "real_nvp_image", "+ both"]
    argv += ["--schedule", "cosine", "--warmup", "2", "--ema", "0.9", "--coupling", "spline"]
    argv += ["--deq-couplings", "2", "--deq-blocks", "1", "--alpha", "0.01"]
    results = digits_ablation.main(argv)["results"]
    assert set(results) == {"real_nvp_image", "+ both"}
    assert all(
        r["steps"] == 4 and math.isfinite(r["bound"]) and r["iw"] <= r["bound"] + 1 for r in results.values()
    )
    assert "cosine" in (tmp_path / "digits_ablation.md").read_text()


def test_digits_smoke(tmp_path, capsys):
    pytest.importorskip("normflows")
    from benchmarks import digits

    data = digits.main(["--smoke", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    results = data["results"]
    assert set(results) == {"glow", "real_nvp_image", digits.PEER}
    for name, r in results.items():
        assert r["steps"] == 4
        assert math.isfinite(r["test_bpd"]) and math.isfinite(r["train_bpd"]) and r["test_se"] > 0
        assert f"{name} {r['parameters']:,}" in out  # the parameter counts are printed
    assert results[digits.PEER]["delta_vs_peer"] == 0.0
    # normflows' width is chosen so that its parameter count matches our Glow's.
    assert abs(results[digits.PEER]["parameters"] / results["glow"]["parameters"] - 1) < 0.2
    assert json.loads((tmp_path / "digits_bpd.json").read_text())["results"] == results
    table = (tmp_path / "digits_bpd.md").read_text()
    assert "| glow | " in table and f"| {digits.PEER} | " in table and "python -m benchmarks." in table


def test_digits_scores_every_model_on_the_same_density():
    nf = pytest.importorskip("normflows")
    from benchmarks import digits
    from examples.digits import test_bits_per_dim
    from pyro_flows.data import load_digits

    model = digits.NormflowsGlow(steps_per_level=1, hidden_channels=8)
    levels = load_digits("test")[:20]
    model.log_prob(torch.rand(16, 1, 8, 8))  # ActNorm's data-dependent initialisation
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # away from the identity start
    # Our Logit around normflows' model = normflows' own logit preprocessing (same alpha).
    reference = nf.MultiscaleFlow(
        model.flow.q0, model.flow.flows, model.flow.merges, nf.transforms.Logit(0.05), class_cond=False
    )
    x = torch.rand(7, 1, 8, 8)
    assert torch.allclose(model.log_prob(x.clone()), reference.log_prob(x.clone(), None), atol=1e-4)
    # One draw of the per-image scorer averages to the examples' test bits/dim.
    bits = digits.per_image_bits(model, levels, draws=1, seed=5)
    assert bits.shape == (20,) and abs(float(bits.mean()) - test_bits_per_dim(model, levels, seed=5)) < 1e-5


def test_spline_lr_smoke(tmp_path):
    from benchmarks import spline_lr

    x = spline_lr.curved_gaussian(5, 1000, 0)

    # an odd coordinate is half the square of the even one before it plus a linear part
    def corr(a, b):
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    assert corr(x[:, 0] ** 2, x[:, 1]) > 0.2
    assert abs(corr(x[:, 0] ** 2, x[:, 1] - 0.5 * x[:, 0] ** 2)) < 0.1
    spline_lr.main(
        [
            "--dims",
            "3",
            "--lrs",
            "3e-3",
            "1e-2",
            "--steps",
            "20",
            "--train",
            "600",
            "--test",
            "200",
            "--out",
            str(tmp_path),
        ]
    )
    text = (tmp_path / "spline_lr.md").read_text()
    assert "| 3 |" in text and "lr 0.01" in text


def test_guide_tails_smoke(capsys):
    from benchmarks import guide_tails

    tables = guide_tails.main(
        ["--model", "banana", "--guide", "AutoRealNVP", "--steps", "5", "--draws", "500"]
    )
    assert sorted(tables) == [3, 4]  # the last two steps' parameters
    for rows in tables.values():
        assert rows[-1][0] == "LocScale"
        for _, (median, q99, q9999), largest in rows:
            assert 0 <= median <= q99 <= q9999 <= largest < 1e3
    assert "finite to the end" in capsys.readouterr().out


def test_ffjord_fm_benchmarks_take_the_state_feature_options(tmp_path):
    from benchmarks import ffjord_fm, ffjord_fm_dims

    argv = ["--targets", "moons", "--models", "ffjord_fm", "--fm-seconds", "0.5", "--marks", "0.5"]
    argv += [
        "--train",
        "600",
        "--test",
        "100",
        "--entropy-samples",
        "2000",
        "--skip-solvers",
        "--fm-hidden",
        "8",
    ]
    ffjord_fm.main([*argv, "--fm-state-features", "4", "--out", str(tmp_path), "--stem", "fm"])
    record = json.loads((tmp_path / "fm.json").read_text())
    assert record["args"]["fm_state_features"] == 4
    assert "velocity field, 8, 4 state features" in (tmp_path / "fm.md").read_text()
    (curve,) = [
        m["curve"] if isinstance(m, dict) else m for m in record["results"]["moons"]["models"].values()
    ]
    assert curve and all(math.isfinite(row["nll"]) for row in curve)
    rows = ffjord_fm_dims.main(
        [
            "--targets",
            "banana10",
            "--features",
            "0",
            "4",
            "--steps",
            "2",
            "--entropy-samples",
            "2000",
            "--test",
            "100",
            "--train",
            "1000",
            "--out",
            str(tmp_path),
            "--stem",
            "dims",
        ]
    )
    assert [r["state_features"] for r in rows] == [0, 4] and all(math.isfinite(r["gap"]) for r in rows)
    assert "| banana10 | flow matching | 4 | 2 |" in (tmp_path / "dims.md").read_text()
    # maximum likelihood beside flow matching with the field's default features
    small = ["--targets", "banana10", "--steps", "2", "--entropy-samples", "2000", "--test", "100"]
    rows = ffjord_fm_dims.main(
        [*small, "--train", "300", "--objectives", "likelihood", "flow_matching", "--features", "-1"]
        + ["--out", str(tmp_path), "--stem", "both"]
    )
    assert [(r["objective"], r["state_features"]) for r in rows] == [
        ("likelihood", None),
        ("flow_matching", -1),
    ]
    text = (tmp_path / "both.md").read_text()
    assert (
        "| banana10 | likelihood | - | 2 |" in text and "| banana10 | flow matching | default | 2 |" in text
    )


def test_ffjord_fm_generalization_is_the_paired_kl_on_train_and_test_points(tmp_path):
    from benchmarks import ffjord_fm
    from benchmarks.toy_targets import TARGETS

    argv = ["--targets", "8gaussians", "--models", "spline_flow", "--nvp-seconds", "0.5", "--marks", "0.5"]
    argv += ["--train", "600", "--test", "150", "--entropy-samples", "2000", "--skip-solvers"]
    argv += ["--generalization", "200", "--spline-bins", "4", "--out", str(tmp_path), "--stem", "gen"]
    ffjord_fm.main(argv)
    record = json.loads((tmp_path / "gen.json").read_text())
    result = record["results"]["8gaussians"]
    g = result["generalization"]["spline_flow"]
    # 600 training points: the estimate on them uses the first 200 of them
    assert g["train"]["points"] == 200 and g["test"]["points"] == 150
    # on the test points it is the final held-out NLL plus the mean true log-density there
    test = TARGETS["8gaussians"].sample(150, seed=1).float()
    final_nll = result["models"]["spline_flow"][-1]["nll"]
    expected = final_nll + float(TARGETS["8gaussians"].log_prob(test.double()).mean())
    assert abs(g["test"]["kl"] - expected) < 1e-4
    assert g["train"]["se"] > 0 and math.isfinite(g["train"]["kl"])
    assert "Fit and generalization" in (tmp_path / "gen.md").read_text()
    with pytest.raises(SystemExit):  # more training points than there are
        ffjord_fm.main([*argv, "--generalization", "601"])  # the last one given counts
    # a merged record keeps the estimates
    ffjord_fm.main(["--merge", str(tmp_path / "gen.json"), "--out", str(tmp_path), "--stem", "merged"])
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged["results"]["8gaussians"]["generalization"]["spline_flow"] == g
    assert "| 8gaussians | spline_flow |" in (tmp_path / "merged.md").read_text()
    assert merged["command"] == record["command"] and merged["args"] == record["args"]


def test_ffjord_fm_merged_record_describes_each_model_by_its_own_run(tmp_path):
    # a RealNVP run and a spline run with other options, merged: each model's settings are
    # those of the run that trained it (not the last record's), also when merged again
    from benchmarks import ffjord_fm

    argv = ["--targets", "moons", "--nvp-seconds", "0.3", "--marks", "0.3", "--train", "300"]
    argv += ["--test", "100", "--entropy-samples", "1000", "--skip-solvers", "--out", str(tmp_path)]
    ffjord_fm.main([*argv, "--models", "real_nvp", "--nvp-lr", "0.002", "--batch", "64", "--stem", "nvp"])
    ffjord_fm.main([*argv, "--models", "spline_flow", "--spline-bins", "4", "--stem", "spline"])
    paths = [str(tmp_path / "nvp.json"), str(tmp_path / "spline.json")]
    ffjord_fm.main(["--merge", *paths, "--out", str(tmp_path), "--stem", "both"])
    ffjord_fm.main(["--merge", str(tmp_path / "both.json"), "--out", str(tmp_path), "--stem", "again"])
    for stem in ("both", "again"):
        settings = next(
            line
            for line in (tmp_path / f"{stem}.md").read_text().splitlines()
            if line.startswith("- settings:")
        )
        assert "RealNVP: 8 couplings 64-64, Adam lr 0.002, batch 64;" in settings, settings
        assert "spline flow: 4 bins on [-3, 3], Adam lr 0.001, batch 256;" in settings, settings
        assert "ML:" not in settings and "FM:" not in settings  # no model that did not run


def test_ffjord_fm_screen_draws_times_above_tmin(monkeypatch):
    from benchmarks import ffjord_fm_screen

    times, loss = [], ffjord_fm_screen.flow_matching_loss

    def recording_loss(*args, t, **kwargs):
        times.append(t)
        return loss(*args, t=t, **kwargs)

    monkeypatch.setattr(ffjord_fm_screen, "flow_matching_loss", recording_loss)
    results = ffjord_fm_screen.main(
        ["--targets", "8gaussians", "--variants", "rff", "--budget", "0.3", "--set", "tmin=0.5", "hidden=[8]"]
    )
    (curve,) = results.values()
    assert curve[-1]["cpu"] >= 0.3 and math.isfinite(curve[-1]["gap"])
    t = torch.cat(times)
    assert len(times) >= 5 and float(t.min()) >= 0.5 and float(t.max()) <= 1.0
    assert float(t.mean()) == pytest.approx(0.75, abs=0.05)  # uniform on [0.5, 1]


def test_ffjord_fm_pairs_models_on_the_same_test_points_only(tmp_path):
    from benchmarks import ffjord_fm

    argv = ["--targets", "moons", "--models", "ffjord_fm", "spline_flow", "--fm-seconds", "0.5"]
    argv += ["--nvp-seconds", "0.5", "--marks", "0.5", "--train", "600", "--test", "120"]
    argv += ["--entropy-samples", "2000", "--skip-solvers", "--fm-hidden", "8", "--spline-bins", "4"]
    argv += ["--generalization", "100", "--out", str(tmp_path)]
    ffjord_fm.main([*argv, "--stem", "s0"])
    result = json.loads((tmp_path / "s0.json").read_text())["results"]["moons"]
    fm, spline = (result["generalization"][m] for m in ("ffjord_fm", "spline_flow"))
    assert len(fm["test_nlls"]) == 120 and fm["test_key"] == spline["test_key"]
    # the paired mean is the difference of the two final held-out NLLs
    nll = {m: result["models"][m][-1]["nll"] for m in ("ffjord_fm", "spline_flow")}
    paired = (tmp_path / "s0.md").read_text().split("## Flow matching against each model")[1]
    (row,) = [line for line in paired.splitlines() if line.startswith("| moons | spline_flow | ")]
    mean, se = (float(v) for v in row.split("|")[3].split("(")[0].split("±"))
    assert abs(mean - (nll["ffjord_fm"] - nll["spline_flow"])) < 2e-4 and se > 0
    # another seed's test points are not paired with these: the merge keeps the last
    # spline run, whose points differ from flow matching's
    ffjord_fm.main([*argv, "--models", "spline_flow", "--seed", "1", "--stem", "s1"])
    ffjord_fm.main(
        [
            "--merge",
            str(tmp_path / "s0.json"),
            str(tmp_path / "s1.json"),
            "--out",
            str(tmp_path),
            "--stem",
            "m",
        ]
    )
    assert "## Flow matching against each model" not in (tmp_path / "m.md").read_text()
    ffjord_fm.main(["--merge", str(tmp_path / "s0.json"), "--out", str(tmp_path), "--stem", "m0"])
    assert row in (tmp_path / "m0.md").read_text().split("## Flow matching against each model")[1]
    # --paired: one option against another, model by model, on the shared test points
    ffjord_fm.main([*argv, "--models", "spline_flow", "--nvp-lr", "3e-3", "--stem", "s0b"])
    other = json.loads((tmp_path / "s0b.json").read_text())["results"]["moons"]["models"]["spline_flow"]
    rows = ffjord_fm.main(
        ["--paired", str(tmp_path / "s0.json"), str(tmp_path / "s0b.json")] + ["--out", str(tmp_path)]
    )
    ((target, model, cell),) = rows  # flow matching is in one record only
    mean, se = (float(v) for v in cell.split("(")[0].split("±"))
    assert (target, model) == ("moons", "spline_flow") and se > 0
    assert abs(mean - (other[-1]["nll"] - nll["spline_flow"])) < 2e-4
    assert "- command: `" in (tmp_path / "ffjord_fm.md").read_text()  # the record names its own command
    with pytest.raises(SystemExit, match="share no model"):  # seed 1's test points differ
        ffjord_fm.main(
            ["--paired", str(tmp_path / "s0.json"), str(tmp_path / "s1.json"), "--out", str(tmp_path)]
        )
    # a missing file or a file that is not a record is named, not a KeyError
    with pytest.raises(SystemExit, match="no record at .*absent.json"):
        ffjord_fm.main(["--paired", str(tmp_path / "s0.json"), str(tmp_path / "absent.json")])
    (tmp_path / "other.json").write_text('{"rows": []}')
    with pytest.raises(SystemExit, match="other.json is not a record of this benchmark: it has no command"):
        ffjord_fm.main(["--merge", str(tmp_path / "other.json"), "--out", str(tmp_path)])


def test_ffjord_fm_training_noise_follows_the_learning_rate(monkeypatch):
    # --fm-noise: each batch moves by noise_sd times the current rate over the initial
    # one, so the last steps of the cosine see the data as they are
    import benchmarks.ffjord_fm as bench

    def run(rate_factor):
        monkeypatch.setattr(bench, "cosine", lambda lr, fraction, warmup=0.0: lr * rate_factor)
        seen = []
        weight = torch.nn.Parameter(torch.zeros(1))

        def loss_fn(x):
            seen.append(x.clone())
            return (weight * x.sum()).square()

        bench.run_budget(
            "fm",
            torch.nn.Linear(1, 1),
            loss_fn,
            [weight],
            1e-2,
            0.02,
            torch.zeros(64, 2),
            256,
            lambda m: (0.0, 0.0, 0),
            0,
            lambda msg: None,
            marks=[0.02],
            noise_sd=torch.tensor([1.0, 0.001]),
        )
        return torch.cat(seen).std(0)

    full, quarter = run(1.0), run(0.25)
    assert 0.9 < float(full[0]) < 1.1 and float(full[1]) < 0.002  # per coordinate
    assert 0.2 < float(quarter[0]) < 0.3
