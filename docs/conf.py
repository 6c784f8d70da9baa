"""Sphinx configuration of the pyro-flows documentation.

Build (strict, warnings are errors)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

# Document the checkout this file lives in, not an installed copy.
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

import pyro_flows  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_api import _import_dotted  # noqa: E402  (one resolver for the build and the API check)

project = "pyro-flows"
author = "the pyro-flows authors"
copyright = "2026, the pyro-flows authors"
release = pyro_flows.__version__
version = release
# The repository, as in pyproject.toml's [project.urls] (linked from the home page too).
REPOSITORY = "https://github.com/pyro-flows/pyro-flows"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "_static/mathjax/README.md"]

# --- Markdown pages: $...$ and $$...$$ math, \begin{aligned} environments, heading anchors.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

# --- Math: a vendored MathJax 3 bundle (TeX in, SVG out), so the site renders offline.
mathjax_path = "mathjax/tex-svg.js"

# --- API reference from the docstrings (Pyro-style reStructuredText).
autodoc_member_order = "bysource"
# Types go into the parameter lists (as on Pyro's API pages), signatures stay readable,
# and defaults are shown as written in the source (``nn.ReLU``, not its repr).
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_preserve_defaults = True

# Strict references: any unresolved cross-reference is a warning (and -W makes it an
# error). Objects of torch, Pyro and NumPy are not documented here and there is no
# intersphinx inventory offline, so references to them stay plain text.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|pyro|numpy|np|nn|dist|constraints|arviz|matplotlib|torchdiffeq)(\..*)?"),
    # The standard library has no inventory offline either.
    (r"py:.*", r"(argparse|os|pathlib|io|json|dataclasses|collections|enum|functools|typing)\..*"),
    (r"py:.*", r"(Tensor|Module|Distribution|TransformModule|Generator|Size|dtype|device)"),
    # Docstrings inherited from torch (``set_extra_state``) name nn.Module's methods bare.
    (r"py:.*", r"(load_state_dict|state_dict)"),
    # ``:param callable f:`` names the builtin predicate, which has no page.
    (r"py:.*", r"callable"),
    # Sphinx splits ``Callable[[], nn.Module]`` in signatures into unresolvable pieces.
    (r"py:.*", r"typing\.Callable\[.*"),
]

# Plain ASCII in the output: "--epochs" stays two hyphens, quotes stay straight.
smartquotes = False

html_theme = "furo"
html_title = "pyro-flows"
html_static_path = ["_static"]
# Wide content (commands, doctest lines, equations, tables) scrolls instead of being cut off.
html_css_files = ["custom.css"]
html_theme_options = {
    "navigation_with_keys": True,
    "source_repository": REPOSITORY + "/",
    "source_branch": "main",
    "source_directory": "docs/",
}


# --- Public aliases. Objects are documented under their public path (as Pyro does:
# ``pyro_flows.transforms.AffineCoupling``), while docstrings may name them by the module
# that defines them (``pyro_flows.bases.base_distribution``) or by another public path
# (``pyro_flows.real_nvp``). Resolve such references to the documented object.
_DOCUMENTED: dict = {}


def _documented(domain) -> dict:
    """``id(obj) -> documented name`` of the library's documented objects, made once per
    build (references are resolved after every page is read, so the objects are all known)."""
    key = (id(domain), len(domain.objects))
    if _DOCUMENTED.get("key") != key:
        documented = {}
        for name, entry in domain.objects.items():
            if name.startswith("pyro_flows") and entry.objtype != "module":
                obj = _import_dotted(name)
                if obj is not None:
                    documented.setdefault(id(obj), name)
        _DOCUMENTED.update(key=key, value=documented)
    return _DOCUMENTED["value"]


def _resolve_alias(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    candidates = [target]
    for context in (node.get("py:module"), node.get("py:class")):
        if context:
            candidates.append(f"{context}.{target}")
    domain = env.get_domain("py")
    documented = _documented(domain)
    for candidate in candidates:
        if not candidate.startswith("pyro_flows"):
            continue
        obj = _import_dotted(candidate)
        name = documented.get(id(obj)) if obj is not None else None
        if name is not None and name != candidate:
            return domain.resolve_xref(env, node.get("refdoc"), app.builder, "obj", name, node, contnode)
    # A bare name in a docstring (``:data:`EXACT_TRACE_MAX_DIM```) may refer to an object
    # of the docstring's own module that is documented under its full path: accept a
    # unique documented match.
    if "." not in target:
        suffix = "." + target
        matches = [n for n in domain.objects if n.startswith("pyro_flows.") and n.endswith(suffix)]
        if len(matches) == 1:
            return domain.resolve_xref(
                env, node.get("refdoc"), app.builder, "obj", matches[0], node, contnode
            )
    return None


# --- Navigation. The home page (``docs/index.md``) is plain Markdown that reads well on
# GitHub too, so its tables of contents (hidden: they feed the sidebar) are added here when
# Sphinx reads it. A top-level page not listed below (``docs/<topic>.md``, e.g. written on
# another branch) joins "Topics and tutorials", so a strict build never fails with
# "document isn't included in any toctree".
NAVIGATION = [
    (
        "User guide",
        2,
        [
            "guide/density-models",
            "guide/change-of-variables",
            "guide/one-d-flows",
            "guide/high-dimensional",
            "guide/coupling",
            "guide/partitions",
            "guide/batch-norm",
            "guide/glow",
            "guide/continuous",
        ],
    ),
    ("Topics and tutorials", 1, ["tutorials", "one-d", "images", "inference", "ffjord", "cli", "benchmarks"]),
    ("Reference", 2, ["api/index"]),
    ("Project", 1, ["contributing", "changelog"]),
]
TOPICS = "Topics and tutorials"


def _add_navigation(app, docname, source):
    if docname != root_doc:
        return
    listed = {page for _, _, pages in NAVIGATION for page in pages}
    others = sorted(d for d in app.env.found_docs if "/" not in d and d != root_doc and d not in listed)
    blocks = []
    for caption, depth, pages in NAVIGATION:
        pages = [p for p in pages if p in app.env.found_docs] + (others if caption == TOPICS else [])
        entries = "\n".join(pages)
        blocks.append(
            f"```{{toctree}}\n:caption: {caption}\n:maxdepth: {depth}\n:hidden:\n\n{entries}\n```\n"
        )
    source[0] = source[0] + "\n\n" + "\n".join(blocks)


# --- Example scripts that the tutorials page does not describe yet are listed at its
# end with their docstrings and a link to their source, so a new script is never missing
# from the site.
def _list_other_examples(app, docname, source):
    if docname != "tutorials":
        return
    scripts = sorted(p for p in (Path(ROOT) / "examples").glob("*.py") if not p.name.startswith("_"))
    text = source[0]
    missing = [p for p in scripts if f"examples/{p.name}" not in text and f"examples.{p.stem}" not in text]
    if not missing:
        return
    parts = ["\n## More example scripts\n"]
    for script in missing:
        doc = ast.get_docstring(ast.parse(script.read_text())) or "(no description)"
        source_url = f"{REPOSITORY}/blob/main/examples/{script.name}"
        parts.append(f"[`examples/{script.name}`]({source_url})\n\n```text\n{doc.strip()}\n```\n")
    source[0] = text + "\n".join(parts)


def _always_reread(app, env, added, changed, removed):
    """Pages to re-read even when unchanged, so that incremental builds stay right: the
    generated lists on every build, and every page (whose sidebar holds the table of
    contents) when pages were added or removed."""
    if added or removed:
        return sorted(env.found_docs)
    return [root_doc, "tutorials"]


# --- Short inline code spans (option names such as ``--hidden-dims``, short calls) get the
# class "nowrap", so that the browser never breaks them at a hyphen (see _static/custom.css).
NOWRAP_MAX_CHARS = 32


def _mark_short_literals(app, doctree):
    from docutils import nodes

    for node in doctree.findall(nodes.literal):
        if len(node.astext()) <= NOWRAP_MAX_CHARS:
            node["classes"].append("nowrap")


def setup(app):
    app.connect("doctree-read", _mark_short_literals)
    app.connect("missing-reference", _resolve_alias)
    app.connect("source-read", _add_navigation)
    app.connect("source-read", _list_other_examples)
    app.connect("env-get-outdated", _always_reread)
