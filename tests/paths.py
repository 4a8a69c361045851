"""Where the tests find the repository and the read-only shared data beside it."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
QWEN_TABLES = SHARED_DATA / "qwen3.5-35b-a3b"
