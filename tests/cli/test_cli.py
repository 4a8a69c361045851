"""The command line as a user runs it: output, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

pytestmark = pytest.mark.llama  # quantizes or evaluates with llama.cpp


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recipe_search.cli", *args], capture_output=True, text=True, timeout=300)


def test_inspect_json(qwen35_model) -> None:
    out = run("inspect", str(qwen35_model), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["architecture"] == "qwen35moe"
    assert {r["tensor_type"] for r in data["tensor_types"]} >= {"ssm_out", "ffn_down_exps"}


def test_inspect_demo_reports_fallbacks(demo_model) -> None:
    out = run("inspect", "demo")
    assert out.returncode == 0, out.stderr
    assert "token_embd" in out.stdout and "gemma3" in out.stdout
    assert "K- and I-quants fall back on: token_embd, attn_k, attn_q, attn_v, ffn_gate, ffn_up" in out.stdout


def test_errors_are_one_line(tmp_path, dense_model) -> None:
    missing = run("inspect", str(tmp_path / "nope.gguf"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "nope.gguf: no such file" in missing.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nunmatched: {type: Q8_0}\nrules:\n- {tensors: ffn_up, type: Q7}\n")
    out = run("size", str(dense_model), str(bad))
    assert out.returncode == 2 and "Traceback" not in out.stderr and "rules.0.type" in out.stderr


@pytest.mark.slow
def test_size_import_export_quantize(dense_model, tmp_path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "x", "unmatched": {"type": "Q8_0"},
                                      "rules": [{"tensors": "ffn_down", "type": "Q4_K"}]}))
    size = run("size", str(dense_model), str(recipe), "--json")
    assert size.returncode == 0, size.stderr
    predicted = json.loads(size.stdout)["file_bytes"]
    assert json.loads(size.stdout)["fallbacks"] == {"ffn_down": {"Q4_K->Q5_0": 2}}
    quant = tmp_path / "q.gguf"
    q = run("quantize", str(dense_model), str(recipe), "-o", str(quant))
    assert q.returncode == 0, q.stderr
    assert "fallback: ffn_down: 2 x Q4_K->Q5_0" in q.stdout
    assert quant.stat().st_size == predicted
    imported = tmp_path / "imported.yaml"
    assert run("import", str(quant), "-o", str(imported)).returncode == 0
    again = run("import", str(quant), "-o", str(imported))
    assert again.returncode == 2 and "exists already" in again.stderr
    ttf = run("export", str(imported), "--format", "tensor-type-file")
    assert ttf.returncode == 0 and "ffn_down" in ttf.stdout and "q5_0" in ttf.stdout
