"""Check that every public name is documented in the API reference, with an example.

For each name in the ``__all__`` of the public namespaces below:

* classes and functions need a docstring containing a ``>>>`` example (the examples run
  as doctests in CI, so they also have to be right);
* modules need a docstring;
* the object must be rendered by an ``auto*`` directive in ``docs/api/`` (under any of
  its public or defining paths: the check compares objects, not names).

Run from the repository root::

    python docs/check_api.py

Exits with status 1 and lists the problems when there are any.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Dict, List

DOCS = Path(__file__).resolve().parent
PUBLIC_NAMESPACES = ["pyro_flows", "pyro_flows.transforms", "pyro_flows.nn", "pyro_flows.builders"]

_DIRECTIVE = re.compile(r"^\s*\.\.\s+(?:py:)?(auto\w+|currentmodule|module)::\s*(\S+)", re.MULTILINE)


@functools.lru_cache(maxsize=None)
def _import_dotted(path: str):
    """The object a dotted path names (module, then attributes), or ``None``. Remembered:
    the docs build asks for the same paths thousands of times, and each failed import
    of a path that is an attribute, not a module, searches the file system."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for name in parts[i:]:
                obj = getattr(obj, name)
        except AttributeError:
            return None
        return obj
    return None


def documented_objects(api_dir: Path = DOCS / "api") -> Dict[int, str]:
    """Objects rendered by ``auto*`` directives in ``api_dir``: ``id(obj) -> dotted name``.

    Names are resolved as Sphinx does: relative to the last ``currentmodule`` (or
    ``module``) directive of the page when they are not found as given. An
    ``automodule`` with a bare ``:members:`` option renders the names in the module's
    ``__all__``; with a list, those names.
    """
    found: Dict[int, str] = {}

    def record(obj, name):
        if obj is not None:
            found.setdefault(id(obj), name)

    for page in sorted(list(api_dir.rglob("*.rst")) + list(api_dir.rglob("*.md"))):
        module = None
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            match = _DIRECTIVE.match(line)
            if not match:
                continue
            kind, name = match.groups()
            if kind in ("currentmodule", "module"):
                module = name
                continue
            if kind == "automodule":
                module = name
            candidates = [name] if module is None or kind == "automodule" else [name, f"{module}.{name}"]
            obj = None
            for candidate in candidates:
                obj = _import_dotted(candidate)
                if obj is not None:
                    record(obj, candidate)
                    break
            if kind == "automodule" and obj is not None:
                for option in lines[i + 1 :]:
                    if not option.startswith("   :"):
                        break
                    if option.strip().startswith(":members:"):
                        listed = option.split(":members:", 1)[1].strip()
                        names = (
                            [n.strip() for n in listed.split(",")] if listed else getattr(obj, "__all__", [])
                        )
                        for member in names:
                            record(getattr(obj, member, None), f"{name}.{member}")
    return found


def find_problems(api_dir: Path = DOCS / "api") -> List[str]:
    """One line per public name that lacks a docstring, an example or an API entry."""
    documented = documented_objects(api_dir)
    problems = []
    for namespace in PUBLIC_NAMESPACES:
        module = importlib.import_module(namespace)
        for name in module.__all__:
            qualified = f"{namespace}.{name}"
            obj = getattr(module, name, None)
            if obj is None:
                problems.append(f"{qualified}: listed in __all__ but not defined")
                continue
            doc = inspect.getdoc(obj) or ""
            if not doc.strip():
                problems.append(f"{qualified}: no docstring")
            elif not inspect.ismodule(obj) and ">>>" not in doc:
                problems.append(f"{qualified}: docstring has no '>>>' example")
            if id(obj) not in documented:
                problems.append(f"{qualified}: not in the API reference ({api_dir})")
    return problems


def main() -> int:
    sys.path.insert(0, str(DOCS.parent))
    problems = find_problems()
    for line in problems:
        print(line)
    if problems:
        print(f"{len(problems)} problem(s)")
        return 1
    print("every public name is documented with an example")
    return 0


if __name__ == "__main__":
    sys.exit(main())
