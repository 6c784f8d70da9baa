"""The inference examples run end to end in their --smoke mode (so they never rot) and
write their figure and table."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["funnel", "banana", "eight_schools", "vae_digits"])
def test_inference_example_smoke(name, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, "-m", f"examples.{name}", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    written = {p.suffix for p in tmp_path.rglob("*")}
    assert ".png" in written, sorted(p.name for p in tmp_path.rglob("*"))
    assert written & {".md", ".json", ".csv", ".txt"}, sorted(p.name for p in tmp_path.rglob("*"))
