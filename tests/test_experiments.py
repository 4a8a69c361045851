"""Every experiment script runs end to end: ``python experiments/SCRIPT.py --smoke`` (its code path on a tiny
model, in a temporary directory; see experiments/smoke.py) exits 0. The scripts are the files of experiments/
with a ``__main__`` block; the modules they share (smoke.py, h2h_*.py) have none."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.llama

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.name for p in (ROOT / "experiments").glob("*.py")
                 if 'if __name__ == "__main__":' in p.read_text(encoding="utf-8"))
#: far above any smoke mode's time (the slowest, head_to_head.py, takes well under a minute)
TIMEOUT_S = 300


def test_scripts_are_found() -> None:
    assert "head_to_head.py" in SCRIPTS and "smoke.py" not in SCRIPTS and "h2h_methods.py" not in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke_mode(script: str) -> None:
    path = os.pathsep.join(p for p in (".", os.environ.get("PYTHONPATH")) if p)  # this checkout's recipe_search
    run = subprocess.run([sys.executable, f"experiments/{script}", "--smoke"], cwd=ROOT, capture_output=True,
                         text=True, timeout=TIMEOUT_S, env={**os.environ, "PYTHONPATH": path})
    assert run.returncode == 0, f"{script} --smoke exited {run.returncode}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
