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
