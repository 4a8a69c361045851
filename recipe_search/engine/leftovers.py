"""Leftovers of killed runs: temporary GGUFs and half-built references whose process is gone.

Every command removes them from the cache when it starts; a study's worker also cleans its own work
directory. A leftover names its process (``trial-PID-...``, ``references/.KEY.PID.xxxx``, and the temporary
files of atomic writes, ``.NAME.PID-xxxx.tmp``, in the tensor cache, the measurements and the task caches), so
files of a run that is still going are kept.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

TRIAL_PREFIX = "trial-"


def clean_workdir(workdir: Path) -> list[Path]:
    """Remove temporary GGUFs a killed worker left behind (a trial file whose process is gone), and the temporary
    files of its atomic writes there (a split trial's first file)."""
    removed: list[Path] = []
    if not workdir.is_dir():
        return removed
    for path in workdir.glob(f"{TRIAL_PREFIX}*.gguf*"):
        pid = path.name.removeprefix(TRIAL_PREFIX).split("-")[0]
        if not pid.isdigit() or _left_behind(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed + clean_temporary(workdir, f".{TRIAL_PREFIX}*.tmp")


def clean_references(references: Path) -> list[Path]:
    """Remove temporary reference directories (``.KEY.PID.xxxx``) of dead processes, and empty ones without a pid."""
    removed: list[Path] = []
    if not references.is_dir():
        return removed
    for path in references.glob(".*"):
        if not path.is_dir():
            continue
        parts = path.name.split(".")  # "", KEY, PID, random
        pid = parts[2] if len(parts) > 3 and parts[2].isdigit() else None
        dead = _left_behind(int(pid)) if pid else not any(path.iterdir())
        if dead:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def clean_temporary(directory: Path, pattern: str = ".*.tmp") -> list[Path]:
    """Remove the temporary files of atomic writes (``.NAME.PID-RANDOM.tmp``) of dead processes matching
    ``pattern`` under ``directory``."""
    removed: list[Path] = []
    for path in directory.glob(pattern) if directory.is_dir() else ():
        pid = path.name.removesuffix(".tmp").rpartition(".")[2].split("-")[0]
        if pid.isdigit() and _left_behind(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def remove_stale(cache: Path) -> list[Path]:
    """What killed runs left in the cache directory: trial GGUFs in work/, temporary references, the half-written
    entries of the tensor cache, the measurements and the task caches."""
    return (clean_workdir(cache / "work") + clean_references(cache / "references")
            + clean_temporary(cache / "tensors", "*/.*.tmp") + clean_temporary(cache / "tensors")  # entries, stats
            + clean_temporary(cache / "measurements") + clean_temporary(cache / "tasks"))


def _left_behind(pid: int) -> bool:
    """A file named for process ``pid`` is a leftover: that process is gone, or it is this one (which has not
    made it yet: the name is an earlier process's, reused)."""
    return not _alive(pid) or pid == os.getpid()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True
