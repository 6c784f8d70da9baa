"""Smoke test of the guide step-time benchmark (no timing assertions: step time is
measured by ``python -m benchmarks.guide_speed``, never asserted in tests)."""

import json
import math

from benchmarks import guide_speed


def test_guide_speed_smoke(tmp_path):
    data = guide_speed.main(["--smoke", "--models", "funnel", "--out", str(tmp_path), "--stem", "smoke"])
    on_disk = json.loads((tmp_path / "smoke.json").read_text())
    assert "python -m benchmarks." in on_disk["command"]
    assert "| funnel | Trace_ELBO |" in (tmp_path / "smoke.md").read_text()
    rows = data["results"]["funnel"]
    assert set(rows) == set(guide_speed.ELBOS)
    eager = rows["Trace_ELBO"]
    # both guides take a plain step, so both have a time and their ratio is reported
    assert set(eager["median_ms"]) == set(guide_speed.GUIDES) and not eager["errors"]
    assert math.isfinite(eager["ratio"]) and eager["ratio"] > 0
    for elbo in ("JitTrace_ELBO", "JitTraceGraph_ELBO"):
        row = rows[elbo]
        # our guide runs under both JIT ELBOs; a guide that fails is reported, not dropped
        assert "AutoRealNVP" in row["median_ms"] and row["jit_gain"]["AutoRealNVP"] > 0
        assert set(row["median_ms"]) | set(row["errors"]) == set(guide_speed.GUIDES)


def test_guide_speed_passes_flow_kwargs_to_our_guide(tmp_path, monkeypatch):
    seen = []
    real = guide_speed.GUIDES["AutoRealNVP"]
    monkeypatch.setitem(
        guide_speed.GUIDES, "AutoRealNVP", lambda model, **kw: seen.append(kw) or real(model, **kw)
    )
    argv = ["--smoke", "--models", "funnel", "--elbos", "Trace_ELBO", "--out", str(tmp_path), "--stem", "kw"]
    data = guide_speed.main([*argv, "--flow-kwargs", '{"input_bound": null}'])
    assert seen == [{"input_bound": None}]
    assert data["flow_kwargs"] == {"input_bound": None}


def test_guide_speed_times_the_banana_on_request(tmp_path):
    """The banana (2-D) is timed when asked for, beside IAF, and is not in the default set."""
    argv = ["--smoke", "--models", "banana", "--elbos", "Trace_ELBO", "--out", str(tmp_path), "--stem", "b"]
    data = guide_speed.main(argv)
    eager = data["results"]["banana"]["Trace_ELBO"]
    assert set(eager["median_ms"]) == set(guide_speed.GUIDES) and not eager["errors"]
    assert math.isfinite(eager["ratio"]) and eager["ratio"] > 0
    assert "| banana | Trace_ELBO |" in (tmp_path / "b.md").read_text()
    default = guide_speed.main(["--smoke", "--elbos", "Trace_ELBO", "--out", str(tmp_path), "--stem", "d"])
    assert set(default["results"]) == {"funnel", "eight_schools"}


def test_count_ops_counts_top_level_aten_calls():
    import torch

    # torch.ones calls empty and fill_ inside itself: one top-level operator, and one add
    assert guide_speed.count_ops(lambda: torch.ones(3) + 1) == 2
    assert guide_speed.count_ops(lambda: None) == 0


def test_guide_speed_floor_times_autonormal_and_counts_operators(tmp_path):
    argv = ["--smoke", "--models", "funnel", "--elbos", "Trace_ELBO", "--floor"]
    data = guide_speed.main([*argv, "--out", str(tmp_path), "--stem", "floor"])
    row = data["results"]["funnel"]["Trace_ELBO"]
    assert set(row["median_ms"]) == {*guide_speed.GUIDES, "AutoNormal"}
    ops = row["aten_ops"]
    assert set(ops) == set(row["median_ms"]) and all(isinstance(n, int) and n > 0 for n in ops.values())
    # a flow guide's step dispatches more operators than the step without a flow
    assert ops["AutoRealNVP"] > ops["AutoNormal"]
    assert "ATen ops per step (RealNVP / IAF / Normal)" in (tmp_path / "floor.md").read_text()
    # the ratio stays that of the two guides compared, AutoNormal is not part of it
    ms = row["median_ms"]
    assert math.isclose(row["ratio"], ms["AutoRealNVP"] / ms["AutoIAFNormal"])


def test_guide_speed_compile_flow_routes_only_the_compiled_guide(tmp_path, monkeypatch):
    # torch.compile itself is slow to run here: a stand-in records what it is given and
    # counts the calls that reach it, so the test checks the routing, not inductor
    calls = {}

    def fake_compile(fn, dynamic=None):
        assert dynamic is False
        name = fn.__name__
        calls[name] = 0

        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(guide_speed.torch, "compile", fake_compile)
    argv = ["--smoke", "--models", "funnel", "--elbos", "Trace_ELBO", "JitTrace_ELBO", "--compile-flow"]
    data = guide_speed.main([*argv, "--out", str(tmp_path), "--stem", "compiled"])
    eager = data["results"]["funnel"]["Trace_ELBO"]
    assert set(eager["median_ms"]) == {*guide_speed.GUIDES, guide_speed.COMPILED}
    ms = eager["median_ms"]
    assert math.isclose(eager["compiled_ratio"], ms[guide_speed.COMPILED] / ms["AutoIAFNormal"])
    # both passes were handed over; the sampling pass (with the score) runs in every step of
    # the compiled guide only: first step, 2 warm-up and 3 timed steps
    assert set(calls) == {"_forward", "_inverse_and_ladj"}
    assert calls["_forward"] == 6
    # the JIT rows time the guides as they are
    assert guide_speed.COMPILED not in data["results"]["funnel"]["JitTrace_ELBO"]["median_ms"]
    assert "compiled ratio" in (tmp_path / "compiled.md").read_text()


def test_compile_fused_refuses_a_guide_without_fused_couplings():
    from types import SimpleNamespace

    import pytest

    with pytest.raises(ValueError, match="no fused couplings"):
        guide_speed.compile_fused(SimpleNamespace(transform=SimpleNamespace(parts=[])))


def test_make_step_refuses_to_compile_what_it_cannot_time():
    import pytest

    with pytest.raises(ValueError, match="AutoIAFNormal under Trace_ELBO"):
        guide_speed.make_step(guide_speed.MODELS["funnel"], "AutoIAFNormal", "Trace_ELBO", compile_flow=True)
    with pytest.raises(ValueError, match="AutoRealNVP under JitTrace_ELBO"):
        guide_speed.make_step(guide_speed.MODELS["funnel"], "AutoRealNVP", "JitTrace_ELBO", compile_flow=True)
