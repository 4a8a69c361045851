"""The experiments use the public API only. Read with `ast`: every import of recipe_search in experiments/*.py is
``import recipe_search``, ``from recipe_search import NAME`` or ``from recipe_search.LAYER import NAME`` for a
layer folder, and every NAME is one that the package or folder re-exports (its ``_API``): no module path below
a folder, no private module, no private name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "recipe_search"
#: the folders that re-export a public API (the CLI is a command, not a library)
LAYERS = ("formats", "core", "engine", "sensitivity", "study", "report")
SCRIPTS = sorted((ROOT / "experiments").glob("*.py"))


def exported(init: Path) -> set[str]:
    """The names a package's ``__init__.py`` re-exports: the keys of its ``_API`` dict."""
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_API" for t in node.targets):
            assert isinstance(node.value, ast.Dict)
            return {k.value for k in node.value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    raise AssertionError(f"{init} has no _API dict")


PUBLIC = {"recipe_search": exported(PACKAGE / "__init__.py") | {"__version__"},
          **{f"recipe_search.{layer}": exported(PACKAGE / layer / "__init__.py") for layer in LAYERS}}


def violations(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [f"line {node.lineno}: import {a.name}" for a in node.names
                    if a.name.startswith("recipe_search.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and \
                node.module.split(".")[0] == "recipe_search":
            if node.module not in PUBLIC:
                out.append(f"line {node.lineno}: from {node.module} import ... (not the package or a layer folder)")
                continue
            out += [f"line {node.lineno}: from {node.module} import {a.name} (not re-exported there)"
                    for a in node.names if a.name not in PUBLIC[node.module]]
    return out


def test_experiments_are_found() -> None:
    assert {"head_to_head.py", "h2h_profiles.py", "h2h_methods.py", "h2h_report.py"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_experiment_imports_only_public_names(path: Path) -> None:
    assert not violations(path)


def test_the_check_catches_private_and_deep_imports(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import recipe_search.core.pareto\n"
                   "from recipe_search.study._records import TrialRecord\n"
                   "from recipe_search.core.pareto import frontier_2d\n"
                   "from recipe_search.study import _objective\n"
                   "from recipe_search import core, read_inventory\n")
    found = violations(bad)
    assert [line.split(":")[0] for line in found] == ["line 1", "line 2", "line 3", "line 4", "line 5"]
    assert "read_inventory" not in found[-1]
