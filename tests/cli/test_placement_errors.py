"""Bad placements on the command line: a pattern that places nothing and a budget no recipe fits are one-line errors;
a GPU budget, placement or speed objective on a build that cannot offload is a warning; CPU-only speed says so."""

from __future__ import annotations

import json
import re

import optuna
import pytest
import yaml

from recipe_search.cli import main
from recipe_search.cli import study as study_cli
from recipe_search.core.config import StudyConfig

SMALL = {"ctx": 64, "chunks": 2, "surrogate_seeds": 0, "refit_every": 0, "space": {"ladder": ["Q8_0", "Q4_0"]},
         "references": {"uniform": ["Q8_0"], "presets": []}}


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line(code: int, err: str) -> str:
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("offload, config, expected", [
    (False, {"max_gpu_bytes": 1 << 30}, ["cannot offload to a GPU: the study budgets"]),
    (False, {"placement": "-ot exps=CPU"}, ["cannot offload to a GPU: the study budgets"]),
    (False, {"objectives": ["size", "speed"]}, ["speed is CPU-only: .* not under the placement -ngl all"]),
    (False, {"objectives": ["size", "speed"], "placement": "-ot exps=CPU -ngl 4", "max_gpu_bytes": 1 << 30},
     ["cannot offload", "speed is CPU-only: .*-ot .*-ngl 4"]),
    (False, {"objectives": ["size", "speed"], "placement": "-ngl 0"}, ["cannot offload"]),  # speed on the CPU anyway
    (False, {}, []),
    (True, {"objectives": ["size", "speed"], "max_gpu_bytes": 1 << 30}, []),
])
def test_cpu_only_warnings(monkeypatch, capsys, offload, config, expected) -> None:
    from recipe_search.engine import allocation

    monkeypatch.setattr(allocation, "gpu_offload_supported", lambda: offload)
    study_cli._warn_cpu_only(StudyConfig.model_validate(config))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == len(expected), lines
    for line, pattern in zip(lines, expected):
        assert line.startswith("warning: ") and re.search(pattern, line), line


@pytest.mark.llama
def test_bad_placements_in_a_study_are_one_line_errors(tmp_path, capsys, dense_model) -> None:
    for extra, message in (({"placement": "-ot nothing_here=CPU"}, "'-ot nothing_here=CPU' places no tensor"),
                           ({"placement": "-ngl 0", "max_cpu_bytes": 1000},
                            "no recipe of the space fits the device budget: the smallest needs .* on the CPU > "
                            "max_cpu_bytes")):
        (tmp_path / "c.yaml").write_text(yaml.safe_dump({**SMALL, **extra}))
        err = _one_line(*_run(capsys, "search", dense_model, "--config", tmp_path / "c.yaml", "--dir", tmp_path / "s",
                              "--cache-dir", tmp_path / "cache", "--trials", "1")[::2])
        assert re.search(message, err), err
        assert not optuna.get_all_study_names(f"sqlite:///{tmp_path / 's' / 'study.db'}")  # refused before it exists


@pytest.mark.llama
def test_score_speed_under_a_placement(tmp_path, capsys, dense_model) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "x", "unmatched": {"type": "Q8_0"}}))
    common = [dense_model, recipe, "--ctx", "128", "--chunks", "2", "--threads", "1", "--cache-dir", tmp_path / "cache"]
    err = _one_line(*_run(capsys, "score", *common, "--speed", "--placement", "-ot nothing_here=CPU")[::2])
    assert "'-ot nothing_here=CPU' places no tensor" in err
    assert "needs --speed" in _one_line(*_run(capsys, "score", *common, "--placement", "-ngl 1")[::2])
    from recipe_search.engine.allocation import gpu_offload_supported

    if gpu_offload_supported():
        pytest.skip("a build that offloads times under the placement")
    code, out, _ = _run(capsys, "score", *common, "--speed", "--placement", "-ot attn_q=CPU -ngl 1")
    speed = [line for line in out.splitlines() if line.startswith("speed:")]
    assert code == 0 and len(speed) == 1 and "CPU only: this llama.cpp build cannot offload" in speed[0]
    code, out, _ = _run(capsys, "score", *common, "--speed", "--json")
    measured = json.loads(out)["speed"]
    assert code == 0 and measured["cpu_only"] is True and measured["placement"] == "-ngl 0"
    assert measured["tg_tokens_per_s"] > 0
