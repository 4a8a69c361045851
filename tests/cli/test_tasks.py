"""`tasks`, `validate --tasks` and `pareto --tasks` as a user runs them, on the tiny dense model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recipe_search.formats.task_files import TaskItem, write_task_file

pytestmark = pytest.mark.llama  # evaluates with llama.cpp

SMALL = ["--cloze-items", "8", "--cloze-tokens", "24", "--prompts", "6", "--prompt-tokens", "16", "--new-tokens", "8"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recipe_search.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, prose_file: Path) -> dict[str, Path]:
    where = tmp_path_factory.mktemp("tasks")
    text = prose_file
    items = [TaskItem(f"The river {w} the", ("stone.", "garden.", "old man.", "quiet town."), (i % 4,))
             for i, w in enumerate(("saw", "met", "hid", "ran", "kept", "lost"))]
    return {"text": text, "hellaswag": write_task_file("hellaswag", items, where / "hs.txt")}


def _recipe(tmp_path: Path, t: str) -> Path:
    path = tmp_path / f"{t}.yaml"
    path.write_text(yaml.safe_dump({"name": t, "unmatched": {"type": t}}))
    return path


def test_base_against_itself_and_a_quant(dense_model, files, tmp_path) -> None:
    spec = ["--task", f"hellaswag:{files['hellaswag']}", "--task", "cloze,continuation", "--text", str(files["text"])]
    same = run("tasks", str(dense_model), str(dense_model), *spec, *SMALL, "--cache-dir", str(tmp_path), "--json")
    assert same.returncode == 0, same.stderr
    figures = json.loads(same.stdout)["tasks"]
    assert figures["hellaswag"]["hellaswag_n"] == 6 and figures["hellaswag"]["hellaswag_flips_lost"] == 0
    assert figures["cloze"]["cloze_flips_lost"] == figures["cloze"]["cloze_flips_gained"] == 0
    assert figures["continuation"]["continuation_identical"] == 1.0
    quant = [str(_recipe(tmp_path, "Q2_K")), *spec, *SMALL, "--cache-dir", str(tmp_path), "--json"]
    first, second = run("tasks", str(dense_model), *quant), run("tasks", str(dense_model), *quant)
    assert first.returncode == 0, first.stderr
    strip = [{k: v for k, v in task.items() if not k.endswith("_seconds")}
             for task in json.loads(first.stdout)["tasks"].values()]
    assert strip == [{k: v for k, v in task.items() if not k.endswith("_seconds")}
                     for task in json.loads(second.stdout)["tasks"].values()]
    assert not list((tmp_path / "work").glob("trial-*"))  # the built quants are removed


def test_validate_writes_the_figures_into_the_recipe(dense_model, files, tmp_path) -> None:
    recipe = _recipe(tmp_path, "Q4_0")
    out = run("validate", str(recipe), "--model", str(dense_model), "--holdout-text", str(files["text"]),
              "--ctx", "128", "--chunks", "2", "--tasks", "cloze", *SMALL, "--cache-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "cloze:" in out.stdout and "flips:" in out.stdout
    metrics = yaml.safe_load(recipe.read_text())["metrics"]["tasks"]["cloze"]
    assert metrics["source"] == str(files["text"]) and metrics["cloze_n"] >= 2


def test_pareto_scores_the_pick_and_what_it_ties_with(synthetic_study, files, tmp_path) -> None:
    out = run("pareto", "--dir", str(synthetic_study), "--targets", "4.8bpw", "--out", str(tmp_path / "picks"),
              "--tasks", f"continuation:{files['text']}", *SMALL)
    assert out.returncode == 0, out.stderr
    assert "tasks (against the base" in out.stdout
    assert "vs trial 0: continuation_agree_tokens" in out.stdout  # the twin the KLD cannot tell apart
    (picked,) = (tmp_path / "picks").glob("*.yaml")
    assert "continuation_identical" in yaml.safe_load(picked.read_text())["metrics"]["tasks"]["continuation"]


@pytest.mark.parametrize("spec, message", [
    ("nosuch:x", "unknown task 'nosuch'"),
    ("hellaswag", "needs its file"),
    ("cloze", "needs a text"),
    ("cloze:{text},cloze:{text}", "given twice"),
    ("hellaswag:{missing}", "cannot read the task file"),
])
def test_bad_task_specs_are_one_line(dense_model, files, tmp_path, spec, message) -> None:
    spec = spec.format(text=files["text"], missing=tmp_path / "nope.txt")
    out = run("tasks", str(dense_model), str(dense_model), "--task", spec, "--cache-dir", str(tmp_path))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and message in out.stderr, out.stderr


def test_validate_a_frontier_and_report_its_task_figures(synthetic_study, files, tmp_path) -> None:
    out = run("validate", "--dir", str(synthetic_study), "--holdout-text", str(files["text"]), "--ctx", "128",
              "--chunks", "2", "--tasks", "cloze", *SMALL, "--cache-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    report = run("report", "--dir", str(synthetic_study), "-o", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "report" / "report.md").read_text()
    assert "## Tasks" in page and "![task figures](tasks.png)" in page and "lost /" in page
    assert (tmp_path / "report" / "tasks.png").stat().st_size > 0


@pytest.mark.parametrize("name, content, message", [
    ("lines.txt", b"ctx\n0\na\nb\nc\nd\nextra\n", "not a multiple of 6"),
    ("label.txt", b"ctx\n7\na\nb\nc\nd\n", "label"),
    ("empty.txt", b"", "empty"),
    ("latin1.txt", "caf\u00e9\n0\na\nb\nc\nd\n".encode("latin-1"), "UTF-8"),
])
def test_bad_hellaswag_files_exit_2_with_one_line(dense_model, tmp_path, name, content, message) -> None:
    bad = tmp_path / name
    bad.write_bytes(content)
    out = run("tasks", str(dense_model), str(dense_model), "--task", f"hellaswag:{bad}", "--cache-dir", str(tmp_path))
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert name in out.stderr and message in out.stderr, out.stderr


def test_truncated_multiple_choice_and_a_task_longer_than_the_context(dense_model, tmp_path) -> None:
    from recipe_search.formats.task_files import task_file_bytes

    data = task_file_bytes("multiple-choice", [TaskItem("Which?", ("yes", "no"), (0,))] * 3)
    cut = tmp_path / "cut.bin"
    cut.write_bytes(data[:-3])
    out = run("tasks", str(dense_model), str(dense_model), "--task", f"multiple-choice:{cut}")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "cut.bin" in out.stderr, out.stderr
    long = write_task_file("hellaswag", [TaskItem("the river " * 200, ("a.", "b.", "c.", "d."), (0,))] * 2, tmp_path / "l")
    out = run("tasks", str(dense_model), str(dense_model), "--task", f"hellaswag:{long}", "--task-ctx", "64")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "more than the context" in out.stderr, out.stderr
