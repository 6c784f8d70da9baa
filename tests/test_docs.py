"""The documentation builds strictly and documents every public name with an example."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _load_check_api():
    spec = importlib.util.spec_from_file_location("check_api", DOCS / "check_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_public_name_is_documented_with_an_example():
    problems = _load_check_api().find_problems()
    assert problems == [], "\n".join(problems)


def test_api_check_reports_undocumented_names(tmp_path):
    # With an empty API reference every public name is missing: the check can fail.
    (tmp_path / "api").mkdir()
    problems = _load_check_api().find_problems(api_dir=tmp_path / "api")
    import pyro_flows

    missing = {p.split(":")[0] for p in problems if "not in the API reference" in p}
    assert {f"pyro_flows.{name}" for name in pyro_flows.__all__} <= missing


def _python_blocks(page: Path):
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), re.MULTILINE | re.DOTALL)


GUIDE_PAGES = [DOCS / "index.md"] + sorted((DOCS / "guide").glob("*.md"))


@pytest.mark.parametrize("page", GUIDE_PAGES, ids=lambda p: p.stem)
def test_code_samples_run(page, capsys):
    # The samples of a page run in order in one namespace, as a reader would paste them.
    namespace = {"__name__": f"docs_{page.stem}"}
    for block in _python_blocks(page):
        exec(compile(block, str(page), "exec"), namespace)


def test_docs_build_strictly(tmp_path):
    for module in ("sphinx", "myst_parser", "furo"):
        pytest.importorskip(module)
    out = tmp_path / "html"
    cmd = [
        sys.executable,
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        "-q",
        "-b",
        "html",
        "-d",
        str(tmp_path / "doctrees"),
        str(DOCS),
        str(out),
    ]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"sphinx failed (warnings are errors):\n{result.stderr}\n{result.stdout}"
    index = (out / "index.html").read_text()
    # Math is rendered by the vendored MathJax bundle, not a CDN (the site works offline).
    assert "_static/mathjax/tex-svg.js" in index
    assert (out / "_static" / "mathjax" / "tex-svg.js").stat().st_size > 1_000_000
    # autodoc rendered the classes with their math and examples.
    coupling = (out / "api" / "coupling.html").read_text()
    assert 'id="pyro_flows.transforms.AffineCoupling"' in coupling
    assert "log|\\det J|" in coupling or "\\log|\\det J|" in coupling
    assert "&gt;&gt;&gt;" in coupling
    # Wide content scrolls or wraps (custom CSS), option names are not typeset with dashes.
    assert "_static/custom.css" in index
    cli = (out / "cli.html").read_text()
    assert "--epochs" in cli and "\u2013epochs" not in cli
    # The FFJORD page: equations are math, and the Directions table keeps its log-det cell.
    ffjord = (out / "ffjord.html").read_text()
    assert "\\lvert" in ffjord and "dz_t/dt" not in ffjord
    # The sidebar's tables of contents come from docs/conf.py, index.md has none.
    assert "Topics and tutorials" in index and 'href="tutorials.html"' in index
