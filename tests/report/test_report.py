"""Report plots and page from a small real study on the tiny dense model."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recipe_search.cli import main
from recipe_search.core.pareto import parse_targets
from recipe_search.core.recipe import load_recipe
from recipe_search.report.page import read_sensitivity, sensitivity_csvs
from recipe_search.report.plots import plot_frontier, plot_sensitivity
from recipe_search.study._selection import select
from recipe_search.study._storage import load_study, storage_url

pytestmark = pytest.mark.llama  # quantizes or evaluates with llama.cpp

CONFIG = {"ctx": 128, "chunks": 4, "objectives": ["size", "kld_p99"], "surrogate_seeds": 0, "refit_every": 0,
          "space": {"tensor_types": ["ffn_up", "ffn_gate", "ffn_down", "attn_q", "attn_output"],
                    "ladder": ["Q8_0", "Q5_0", "Q4_0", "Q3_K", "Q2_K"], "tied": [["ffn_up", "ffn_gate"]]},
          "references": {"uniform": ["Q8_0", "Q4_0", "Q2_K"], "presets": ["Q4_K_M"]}}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory, dense_model) -> Path:
    """Three uniform references, a preset and a few searched trials (about 12 s)."""
    root = tmp_path_factory.mktemp("report-study")
    (root / "study.yaml").write_text(yaml.safe_dump(CONFIG))
    run = subprocess.run([sys.executable, "-m", "recipe_search.cli", "search", str(dense_model), "--config",
                          str(root / "study.yaml"), "--dir", str(root / "s"), "--study", "s", "--cache-dir",
                          str(root / "cache"), "--trials", "6", "--quiet"], check=False, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return root / "s"


@pytest.fixture(scope="module")
def selection(study_dir):
    url = storage_url(None, study_dir, None)
    return select(load_study(url, None), url, None, parse_targets("5.5bpw,800KiB"), n_boot=300)


@pytest.fixture()
def sweep_dir(tmp_path) -> Path:
    """A sensitivity sweep's CSV: two tensor types over three ggml types."""
    rows = [("attn_q", "Q8_0", 8.5, 1e-4), ("attn_q", "Q4_0", 4.5, 2e-3), ("attn_q", "Q2_K", 2.625, 3e-2),
            ("ffn_down", "Q8_0", 8.5, 3e-4), ("ffn_down", "Q4_0", 4.5, 8e-3), ("ffn_down", "Q2_K", 2.625, 0.2)]
    directory = tmp_path / "sweep"
    directory.mkdir()
    with open(directory / "sensitivity.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["tensor_type", "ggml_type", "bpw", "kld_mean", "kld_p99", "kld_p999"])
        for kind, t, bpw, kld in rows:
            w.writerow([kind, t, bpw, kld / 10, kld / 2, kld])
    (directory / "notes.csv").write_text("a,b\n1,2\n")  # another CSV there is not a sweep
    return directory


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


@pytest.mark.slow
def test_frontier_plot(selection, tmp_path) -> None:
    path = tmp_path / "frontier.png"
    fig = plot_frontier(selection, path)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "bits per weight"
    assert "99% KLD" in ax.get_ylabel() and "kld_p99" in ax.get_ylabel()
    assert ax.get_yscale() == "log"
    top = [a for a in ax.child_axes if a.get_xlabel()]
    assert top and top[0].get_xlabel() == "file size (MiB)"  # up to 1.2 MiB
    legend = _legend(ax)
    assert legend[0] == f"measured trials ({len(selection.candidates)})"
    assert {"Pareto frontier", "uniform recipes", "llama.cpp presets", "pick at a size target"} <= set(legend)
    labels = {t.get_text() for t in ax.texts}
    assert {"Q8_0", "Q4_0", "Q2_K", "Q4_K_M", "≤ 5.50bpw", "≤ 800KiB"} <= labels
    searched = [c for c in selection.candidates if c.reference is None]
    on_front = {selection.candidates[p.candidate].number for p in selection.frontier}
    assert {f"#{c.number}" for c in searched if c.number in on_front} <= labels
    # the step line passes through every frontier point, by size
    step = ax.get_lines()[0]
    assert step.get_drawstyle() == "steps-post"
    assert list(step.get_xdata()) == sorted(selection.candidates[p.candidate].bpw for p in selection.frontier)
    assert path.read_bytes()[:8] == PNG and path.stat().st_size < 200_000


def test_sensitivity_plot(sweep_dir, tmp_path) -> None:
    [csv_path] = sensitivity_csvs(sweep_dir)
    rows = read_sensitivity(csv_path)
    fig = plot_sensitivity(rows, tmp_path / "s.png")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert ax.get_xlabel() == "bits per weight of the ggml type" and "kld_p999" in ax.get_ylabel()
    assert _legend(ax) == ["attn_q", "ffn_down"] and ax.get_legend().get_title().get_text() == "tensor type"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["ffn_down"].get_xdata()) == [2.625, 4.5, 8.5]
    assert list(lines["ffn_down"].get_ydata()) == [0.2, 8e-3, 3e-4]
    top = ax.child_axes[0]
    assert [t.get_text() for t in top.get_xticklabels()] == ["Q2_K", "Q4_0", "Q8_0"]
    fig = plot_sensitivity(rows, None, metric="kld_mean")
    assert "mean KLD" in fig.axes[0].get_ylabel()


def test_report_command(study_dir, sweep_dir, tmp_path, capsys) -> None:
    out = tmp_path / "report"
    assert main(["report", "--dir", str(study_dir), "-o", str(out), "--sensitivity", str(sweep_dir),
                 "--targets", "5.5bpw,800KiB,1bpw"]) == 0
    assert "wrote" in capsys.readouterr().out
    page = (out / "report.md").read_text()
    assert "![Pareto frontier](frontier.png)" in page
    assert "![sensitivity](sensitivity-sweep-sensitivity.png)" in page
    assert "| trial | name | size | bpw | kld_p99 | mean KLD | vs next smaller |" in page
    assert "| 1.00bpw | | nothing measured fits |" in page
    for png in ("frontier.png", "sensitivity-sweep-sensitivity.png"):
        data = (out / png).read_bytes()
        assert data[:8] == PNG and len(data) < 200_000
    recipes = sorted((out / "recipes").iterdir())
    assert [p.name for p in recipes] == ["dense-f16-5.50bpw-kld_p99.yaml", "dense-f16-800KiB-kld_p99.yaml"]
    for p in recipes:
        assert f"[recipes/{p.name}](recipes/{p.name})" in page
        assert load_recipe(p).metrics["bpw"] > 0
    # a second report over the first replaces it
    assert main(["report", "--dir", str(study_dir), "-o", str(out), "--targets", "5.5bpw"]) == 0


def test_report_without_sweep_csv(study_dir, tmp_path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", "--dir", str(study_dir), "-o", str(tmp_path / "r"), "--sensitivity", str(empty)]) == 2
    assert "no sensitivity CSV" in capsys.readouterr().err
