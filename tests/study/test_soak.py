"""The fault-injection soak test's short mode (issue 24 item 4): experiments/soak.py on the tiny generated qwen35moe,
16 recipes, 2 SQLite workers (and 2 PostgreSQL ones where $RECIPE_SEARCH_TEST_POSTGRES is set), at least 3 faults
of every kind; its long mode's figures are in experiments/reports/faults.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from paths import REPO

pytestmark = pytest.mark.llama  # quantizes and evaluates with llama.cpp

FAULTS = 3


@pytest.mark.slow
def test_soak_short_mode(tmp_path, qwen35_model) -> None:
    if os.geteuid() != 0:
        pytest.skip("the disk-full faults mount a tmpfs, which needs root (the CI machines run as root)")
    out = tmp_path / "soak.json"
    path = os.pathsep.join(p for p in (".", os.environ.get("PYTHONPATH")) if p)  # this checkout's recipe_search
    run = subprocess.run([sys.executable, "experiments/soak.py", str(qwen35_model), "--recipes", "16", "--workers", "2",
                          "--pg-workers", "2", "--rounds", "1", "--faults", str(FAULTS), "--interval", "0.5",
                          "--max-seconds", "200", "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": path})
    assert out.exists(), run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert len(result["runs"]) == 1 + bool(os.environ.get("RECIPE_SEARCH_TEST_POSTGRES"))
    for r in result["runs"]:
        assert r["problems"] == [], r
        assert all(n >= FAULTS for n in r["faults"].values()), r["faults"]
        assert r["trials"]["COMPLETE"] >= 16 and not r["trials"]["RUNNING"] and not r["trials"]["WAITING"]
    assert run.returncode == 0, run.stderr[-3000:]
