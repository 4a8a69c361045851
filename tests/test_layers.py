"""The package's layers are its folders. Read with `ast` (type-only imports count): every module sits in
exactly one layer, imports only its own layer or those below, and no import cycle exists. Checked in
fresh interpreters: formats and core load neither llama.cpp nor Optuna, the engine and the sensitivity
layer never load Optuna, and reading a finished study (pareto, picks, report) never loads libllama."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from paths import REPO

PACKAGE = REPO / "recipe_search"
#: bottom to top; "base" is the package's own small modules that every layer may use
LAYERS = ("base", "formats", "core", "engine", "sensitivity", "study", "report", "cli", "facade")
BASE = {"errors", "version", "_lazy"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str:
    """The layer of a module of the package; an AssertionError for one that is in none."""
    parts = module.split(".")
    if len(parts) == 1:
        return "facade"  # the package root re-exports every layer's public names
    if parts[1] in LAYERS:
        return parts[1]
    assert len(parts) == 2 and parts[1] in BASE, f"{module} is in no layer (a folder of {LAYERS[1:-1]} or {BASE})"
    return "base"


def imports_of(module: str) -> set[str]:
    """The package's modules that ``module`` imports anywhere in its file (functions and TYPE_CHECKING too);
    ``from pkg import name`` counts as importing the submodule ``pkg.name`` where there is one."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source for a in node.names]
        else:
            continue
        out.update(t for t in targets if t.split(".")[0] == "recipe_search" and t in MODULES)
    out.discard(module)
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_is_in_exactly_one_layer() -> None:
    for module in MODULES:
        assert layer_of(module) in LAYERS


def test_no_module_imports_a_higher_layer() -> None:
    upward = [f"{m} ({layer_of(m)}) imports {t} ({layer_of(t)})" for m, targets in GRAPH.items() for t in sorted(targets)
              if LAYERS.index(layer_of(t)) > LAYERS.index(layer_of(m))]
    assert upward == []


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components over the module graph: every one a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_checks_see_an_upward_and_a_circular_import() -> None:
    """The graph the tests above read is real: the CLI imports the study layer, the study imports the engine."""
    assert "recipe_search.study.study" in GRAPH["recipe_search.cli.study"]
    assert "recipe_search.engine.worker" in GRAPH["recipe_search.study.study"]
    assert layer_of("recipe_search.engine.worker") == "engine" and layer_of("recipe_search.errors") == "base"


def _in(*layers: str) -> list[str]:
    return [m for m in MODULES if layer_of(m) in layers and not m.endswith("__main__")]


def _loaded_after(code: str) -> set[str]:
    """Top-level packages in sys.modules after running ``code`` in a fresh interpreter."""
    probe = textwrap.dedent(code) + "\nimport sys\nprint('MODULES', *sorted({m.split('.')[0] for m in sys.modules}))\n"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return set(run.stdout.splitlines()[-1].split()[1:])


def test_formats_and_core_load_neither_llama_nor_optuna() -> None:
    loaded = _loaded_after("\n".join(f"import {m}" for m in ("recipe_search", *_in("base", "formats", "core"))))
    assert not loaded & {"llama_cpp", "optuna"}


@pytest.mark.slow
@pytest.mark.llama  # imports the engine in a subprocess
def test_engine_and_sensitivity_do_not_load_optuna() -> None:
    assert "optuna" not in _loaded_after("\n".join(f"import {m}" for m in _in("engine", "sensitivity")))


@pytest.mark.slow
@pytest.mark.llama  # imports the engine in a subprocess
def test_library_modules_do_not_import_the_cli() -> None:
    """The CLI is a shell over the library, never the other way round."""
    library = _in("base", "formats", "core", "engine", "sensitivity", "study", "report")
    _loaded_after("\n".join(f"import {m}" for m in library) + "\nimport sys\n"
                  "assert not [m for m in sys.modules if m.startswith('recipe_search.cli')], 'the CLI was imported'")


def _api_case(package: str) -> object:
    """Resolving every public name of a package that re-exports the engine loads llama.cpp (in a subprocess)."""
    loads_llama = package in ("recipe_search", "recipe_search.engine", "recipe_search.sensitivity", "recipe_search.study")
    return pytest.param(package, marks=[pytest.mark.slow, pytest.mark.llama] if loads_llama else [])


@pytest.mark.parametrize("package", [_api_case(p) for p in ("recipe_search", *(f"recipe_search.{x}" for x in LAYERS[1:-2]))])
def test_public_api_resolves_lazily(package: str) -> None:
    _loaded_after(f"import {package} as p\nfor name in p.__all__:\n    assert getattr(p, name) is not None")
    assert not _loaded_after("import recipe_search; recipe_search.read_inventory; recipe_search.predict_size") \
        & {"llama_cpp", "optuna"}


def test_pareto_on_a_finished_study_loads_no_libllama(synthetic_study, tmp_path) -> None:
    """`pareto` (frontier, picks written as recipes) and `report` read a finished study without llama.cpp."""
    out = tmp_path / "picks"
    loaded = _loaded_after(f"""
        from recipe_search.cli import main
        assert main(["pareto", "--dir", {str(synthetic_study)!r}, "--targets", "4.5bpw", "--out", {str(out)!r}]) == 0
        assert main(["report", "--dir", {str(synthetic_study)!r}, "-o", {str(tmp_path / 'report')!r}]) == 0
    """)
    assert list(out.glob("*.yaml"))
    assert "llama_cpp" not in loaded


def test_no_public_name_is_also_a_module_of_its_folder() -> None:
    """Importing ``recipe_search.core.resolve`` (a module) set the package's attribute ``resolve`` to the module,
    so ``from recipe_search.core import resolve`` returned the module and never the function."""
    clashes = []
    for layer in LAYERS[1:-2]:
        init = MODULES[f"recipe_search.{layer}"].read_text(encoding="utf-8")
        names = set(ast.literal_eval(init.split("_API = ", 1)[1].split("\n}", 1)[0] + "\n}"))
        modules = {m.rsplit(".", 1)[1] for m in MODULES if m.startswith(f"recipe_search.{layer}.")}
        clashes += [f"recipe_search.{layer}.{n}" for n in sorted(names & modules)]
    assert clashes == []
