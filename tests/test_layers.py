"""The package's layers, checked in fresh interpreters: the pure core loads neither llama.cpp nor Optuna,
the engine does not load Optuna, and reading a finished study (pareto, picks, report) never loads libllama."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PURE_CORE = ("recipe_search", "recipe_search.errors", "recipe_search.ggml_types", "recipe_search.gguf_header",
             "recipe_search.inventory", "recipe_search.recipe", "recipe_search.resolve", "recipe_search.size",
             "recipe_search.kld", "recipe_search.metrics", "recipe_search.pareto", "recipe_search.compare",
             "recipe_search.imatrix_file", "recipe_search.kld_base_file", "recipe_search.export",
             "recipe_search.importer", "recipe_search.tensor_map", "recipe_search.text", "recipe_search.locations",
             "recipe_search.trial_record", "recipe_search.dialects", "recipe_search.coverage",
             "recipe_search.gguf_write")
ENGINE = ("recipe_search.llama", "recipe_search.quantize", "recipe_search.imatrix", "recipe_search.score",
          "recipe_search.worker", "recipe_search.sensitivity", "recipe_search.tensor_cache", "recipe_search.assemble",
          "recipe_search.weight_error", "recipe_search.estimate")
STUDY = ("recipe_search.space", "recipe_search.surrogate", "recipe_search.search", "recipe_search.study",
         "recipe_search.selector")


def _loaded_after(code: str) -> set[str]:
    """Top-level packages in sys.modules after running ``code`` in a fresh interpreter."""
    probe = textwrap.dedent(code) + "\nimport sys\nprint('MODULES', *sorted({m.split('.')[0] for m in sys.modules}))\n"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return set(run.stdout.splitlines()[-1].split()[1:])


@pytest.mark.parametrize("module", PURE_CORE)
def test_pure_core_loads_neither_llama_nor_optuna(module: str) -> None:
    loaded = _loaded_after(f"import {module}")
    assert not loaded & {"llama_cpp", "optuna"}, f"{module} loads {loaded & {'llama_cpp', 'optuna'}}"


@pytest.mark.parametrize("module", ENGINE)
def test_engine_does_not_load_optuna(module: str) -> None:
    assert "optuna" not in _loaded_after(f"import {module}")


def test_library_modules_do_not_import_the_cli() -> None:
    """The CLI is a shell over the library, never the other way round."""
    _loaded_after("\n".join(f"import {m}" for m in (*PURE_CORE, *ENGINE, *STUDY)) + "\nimport sys\n"
                  "assert not [m for m in sys.modules if m.startswith('recipe_search.cli')], 'the CLI was imported'")


def test_public_api_resolves_lazily() -> None:
    _loaded_after("import recipe_search\nfor name in recipe_search.__all__:\n    assert getattr(recipe_search, name)")
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
