"""What a new user meets in a checkout: only source, docs, the figures the docs show and
small test data are tracked; examples write nowhere tracked; user-facing text cites
papers, not course notes or the project's development history."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Tracked entries allowed at the top level of the repository.
ROOT_FILES = {
    ".gitignore",
    "CHANGELOG.md",
    "CONTRIBUTING.md",
    "LICENSE",
    "README.md",
    "conftest.py",
    "pyproject.toml",
}
ROOT_DIRS = {".ci", ".github", "benchmarks", "docs", "examples", "pyro_flows", "tests"}


def _tracked(*paths: str) -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    result = subprocess.run(
        ["git", "ls-files", "-z", "--", *paths], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return [p for p in result.stdout.split("\0") if p and (ROOT / p).exists()]


def test_no_stray_files_at_the_root():
    top = {p.split("/")[0] for p in _tracked()}
    files = {t for t in top if (ROOT / t).is_file()}
    dirs = top - files
    assert files <= ROOT_FILES, f"unexpected tracked files at the root: {sorted(files - ROOT_FILES)}"
    assert dirs <= ROOT_DIRS, f"unexpected tracked folders at the root: {sorted(dirs - ROOT_DIRS)}"


def test_no_example_outputs_are_tracked():
    assert _tracked("outputs", "runs", "examples/output") == []
    # examples/ holds the scripts only
    assert [p for p in _tracked("examples") if not p.endswith(".py")] == []


def test_tracked_figures_are_exactly_those_the_docs_show_and_make_figures_writes():
    from examples.make_figures import documented_figures

    tracked = {p.removeprefix("docs/img/") for p in _tracked("docs/img")}
    assert tracked == documented_figures()
    pages = "\n".join(p.read_text() for p in (ROOT / "docs").rglob("*.md"))
    unused = sorted(f for f in tracked if f"img/{f}" not in pages)
    assert unused == [], f"figures no page shows: {unused}"


EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_examples_write_into_the_ignored_output_folder_by_default(script):
    text = script.read_text()
    for line in re.findall(r'add_argument\(\s*"--out".*', text):
        assert "OUTPUT_DIR" in line, f"{script.name}: --out must default to examples.OUTPUT_DIR: {line}"
    if script.stem != "make_figures":
        assert "docs/img" not in text, f"{script.name} writes into docs/img"


def test_the_default_output_folder_is_ignored_by_git():
    from examples import OUTPUT_DIR

    # under the repository root whatever the working directory (a run from tests/ once
    # left an untracked tests/outputs/)
    assert OUTPUT_DIR == ROOT / "outputs" / "examples"
    _tracked()  # skips outside a checkout
    for name in ("banana.png", "banana.md", "figures/one_d/one_d_beta.png", "digits/glow_samples.png"):
        path = (OUTPUT_DIR / name).relative_to(ROOT).as_posix()
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert ignored.returncode == 0, f"{path} is not ignored by git"


def test_benchmarks_write_into_an_ignored_folder_by_default():
    from benchmarks import report

    _tracked()  # skips outside a checkout
    for name in ("speed_cpu.json", "guide_speed.md", "fit_800_seed0/fit.json"):
        path = (report.RESULTS / name).relative_to(ROOT).as_posix()
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert ignored.returncode == 0, f"{path} is not ignored by git"
    assert report.RECORDED != report.RESULTS
    # benchmarks.sbi writes next to the others, not relative to the working directory
    from benchmarks import sbi

    assert sbi.OUT == report.RESULTS.parent / "sbi" and sbi.OUT.is_absolute()


def test_running_examples_leaves_the_checkout_clean(tmp_path):
    # A copy of the checkout as its own git repository, so the real one is not touched.
    copy = tmp_path / "checkout"
    for rel in _tracked():
        target = copy / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=copy, check=True)
    subprocess.run([*git, "add", "-A"], cwd=copy, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "copy"], cwd=copy, check=True)
    env = {**os.environ, "PYTHONPATH": str(copy), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    for argv in (["unnormalized", "--smoke"], ["banana", "--smoke", "--guides", "AutoNormal"]):
        result = subprocess.run(
            [sys.executable, "-m", f"examples.{argv[0]}", *argv[1:]],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-2000:]
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=copy, capture_output=True, text=True
    )
    assert status.stdout == "", status.stdout
    written = sorted(p.name for p in (copy / "outputs" / "examples").iterdir())
    assert written == ["banana.md", "banana.png", "unnormalized.png"]


# ---------------------------------------------------------------- user-facing text
HISTORY = re.compile(
    r"\blecture\b|\bconcepts? \d+\.\d+|\bdefs?\. ?\d+\.\d+|\bexample 10\.\d+|\bissue #?\d+|"
    r"\bthe issue\b|\bcommit `?[0-9a-f]{7,40}\b|\bmain at \d|\bnot done yet\b",
    re.IGNORECASE,
)


def _user_facing_files():
    yield from (ROOT / "docs").rglob("*.md")
    yield from (ROOT / "docs").rglob("*.rst")
    yield from (ROOT / "pyro_flows").rglob("*.py")
    yield from (ROOT / "examples").glob("*.py")
    yield ROOT / "README.md"
    yield ROOT / "CONTRIBUTING.md"


def test_docs_and_docstrings_cite_papers_not_notes_or_history():
    hits = []
    for path in _user_facing_files():
        if "_static" in path.parts or "_build" in path.parts:
            continue
        # whitespace collapsed, so that a phrase broken across lines is found too
        text = re.sub(r"\s+", " ", path.read_text())
        for match in HISTORY.finditer(text):
            context = text[max(match.start() - 40, 0) : match.end() + 40]
            hits.append(f"{path.relative_to(ROOT)}: ...{context}...")
    assert hits == [], "\n".join(hits)


def test_readme_names_import_from_where_the_readme_says():
    names = re.findall(r"`(pyro_flows(?:\.\w+)+)", (ROOT / "README.md").read_text())
    assert len(names) > 20
    missing = []
    for dotted in names:
        module, _, attr = dotted.rpartition(".")
        try:
            ok = hasattr(importlib.import_module(module), attr)
        except ImportError:
            ok = False
        if not ok:
            try:
                importlib.import_module(dotted)
                ok = True
            except ImportError:
                pass
        if not ok:
            missing.append(dotted)
    assert missing == []


def test_tutorials_link_every_example_they_describe_to_its_source():
    # (docs/conf.py lists the scripts the page does not describe, with their links.)
    text = (ROOT / "docs" / "tutorials.md").read_text()
    base = "https://github.com/pyro-flows/pyro-flows/blob/main/examples/"
    described = [p.name for p in EXAMPLES if f"examples/{p.name}" in text]
    assert len(described) >= 10
    unlinked = [name for name in described if f"]({base}{name})" not in text]
    assert unlinked == []


def test_the_repository_url_is_the_one_in_pyproject():
    url = re.search(r'^Repository = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert url, "pyproject.toml has no [project.urls] Repository"
    assert url.group(1) in (ROOT / "docs" / "index.md").read_text()
    assert f'REPOSITORY = "{url.group(1)}"' in (ROOT / "docs" / "conf.py").read_text()


def test_a_guide_comparison_rerun_prints_the_same_numbers(tmp_path):
    # The examples seed everything they draw, so the committed tables reproduce (the
    # times per step aside).
    from examples import banana

    argv = ["--smoke", "--guides", "AutoNormal,AutoRealNVP"]
    first = banana.main([*argv, "--out", str(tmp_path / "a")])
    second = banana.main([*argv, "--out", str(tmp_path / "b")])
    keys = ("elbo", "khat", "mean_err", "sd")
    assert {g: [m[k] for k in keys] for g, m in first.items()} == {
        g: [m[k] for k in keys] for g, m in second.items()
    }


def test_the_home_page_reads_as_plain_markdown():
    # docs/index.md is also what GitHub shows for docs/: no MyST directives, roles or
    # placeholders (docs/conf.py adds the tables of contents when Sphinx reads it).
    text = (ROOT / "docs" / "index.md").read_text()
    assert "```{" not in text and ":::{" not in text
    assert not re.search(r"\{[a-z]+:[a-z]+\}`", text)
    assert "TOPIC_PAGES_PRESENT" not in text


def test_every_torch_load_is_weights_only():
    """Checkpoints load safely everywhere, tests included: a test that needed
    ``weights_only=False`` would hide a checkpoint the library itself could not load."""
    unsafe = []
    for path in sorted(ROOT.glob("**/*.py")):
        if any(
            part in {"outputs", ".venv", "build"} or part.startswith(".")
            for part in path.relative_to(ROOT).parts
        ):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line and "weights_only=True" not in line:
                unsafe.append(f"{path.relative_to(ROOT)}:{number}")
    assert unsafe == [], unsafe
