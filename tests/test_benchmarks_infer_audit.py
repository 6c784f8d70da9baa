"""The inference benchmarks keep every guide's runs apart and every run in the record:
a ``--label`` that names the flow guides' settings is not given to AutoIAFNormal (which
never takes those settings), runs of two guides never share a resume key or a table row,
and a run that went non-finite stays in the coverage table."""

import math

from benchmarks import guide_accuracy, guide_coverage


def test_a_label_for_the_flow_guides_leaves_autoiafnormal_under_its_own_name(tmp_path):
    argv = ["--smoke", "--models", "banana", "--guides", "AutoRealNVP", "AutoIAFNormal"]
    rows = guide_accuracy.main([*argv, "--label", "AutoRealNVP, tiny", "--out", str(tmp_path), "--stem", "l"])
    labels = {r["guide"]: r["label"] for r in rows}
    assert labels == {"AutoRealNVP": "AutoRealNVP, tiny", "AutoIAFNormal": "AutoIAFNormal"}
    # the two guides' runs are two resume keys and two rows of the table, one seed each
    assert len({guide_accuracy._key(r) for r in rows}) == 2
    text = (tmp_path / "l.md").read_text()
    assert "| banana | AutoRealNVP, tiny | 0.01 | 3 | 0 |" in text
    assert "| banana | AutoIAFNormal | 0.01 | 3 | 0 |" in text
    for r in rows:
        assert math.isfinite(r["kl"]) and r["nonfinite"] == 0


def test_two_flow_guides_under_one_label_are_not_merged():
    """``--guides AutoRealNVP AutoSplineFlow --label X`` gives both the label; their runs
    must still be resumed and summarized apart (not averaged as one guide's seeds)."""
    base = {"model": "banana", "label": "X", "lr": 0.01, "seed": 0, "steps": 3, "nonfinite": 0}
    rows = [
        {**base, "guide": "AutoRealNVP", "kl": 0.1, "khat": 0.5, "sd": 3.0, "cpu_ms_per_step": 1.0},
        {**base, "guide": "AutoSplineFlow", "kl": 0.3, "khat": 0.7, "sd": 2.0, "cpu_ms_per_step": 2.0},
    ]
    assert guide_accuracy._key(rows[0]) != guide_accuracy._key(rows[1])
    text = guide_accuracy.table(rows, {})
    assert text.count("| banana | X |") == 2
    assert "| 0.100 |" in text and "| 0.300 |" in text  # each guide's own KL, not their mean 0.200


def test_coverage_keeps_the_runs_that_went_non_finite(tmp_path):
    # lr 10 makes both guides' losses non-finite within the first steps on the funnel
    argv = ["--smoke", "--models", "funnel", "--lr", "10", "--out", str(tmp_path), "--stem", "nan"]
    rows = guide_coverage.main(argv)
    assert {r["guide"] for r in rows} == {"AutoRealNVP", "AutoIAFNormal"}
    assert all(r["nonfinite"] == 1 and r["stopped_at"] == 1 for r in rows)
    text = (tmp_path / "nan.md").read_text()
    assert "| funnel | AutoRealNVP | 10 | 0 | non-finite at step 1 |" in text
    assert "| funnel | AutoIAFNormal | 10 | 0 | non-finite at step 1 |" in text


def test_coverage_label_is_not_given_to_autoiafnormal(tmp_path):
    argv = ["--smoke", "--models", "funnel", "--label", "AutoRealNVP, tiny"]
    rows = guide_coverage.main([*argv, "--out", str(tmp_path), "--stem", "cl"])
    assert {r["guide"] for r in rows} == {"AutoRealNVP, tiny", "AutoIAFNormal"}
    for r in rows:
        assert 0 <= r["exact_below"] <= 1 and 0 <= r["weight_below"] <= 1
