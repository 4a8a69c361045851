"""Child processes that may abort: a fresh interpreter, killed with its parent, deaf to Ctrl-C, its abort explained.

Not multiprocessing's spawn, which runs the parent's ``__main__`` again in the child: a script without an
``if __name__ == "__main__":`` guard would start its work again there. The child is ``python -c PROGRAM``;
it takes the parent's ``sys.path`` from its stdin, then calls ``module.function()``, which reads its work
from the same stdin.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def program(module: str, function: str) -> list[str]:
    """The command line of a child that runs ``module.function()`` after reading the parent's sys.path."""
    code = ("import pickle, sys\n"
            "sys.path[:] = pickle.load(sys.stdin.buffer)\n"
            f"from {module} import {function}\n"
            f"{function}()\n")
    return [sys.executable, "-c", code]


def parent_path() -> list[str]:
    """What the child's first read from stdin must be: the parent's sys.path."""
    return [p for p in sys.path if isinstance(p, str)]


def die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when its parent dies (Linux ``PR_SET_PDEATHSIG``), so a SIGKILLed
    worker leaves no orphan writing a file nobody waits for; exit now if the parent is already gone."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the parent decides


def start_ignoring_sigint(start: Callable[[], subprocess.Popen]) -> subprocess.Popen:
    """Start a process with SIGINT ignored from its first instruction (an ignored signal stays ignored
    across exec), so a Ctrl-C while it imports cannot kill it. The parent blocks SIGINT meanwhile:
    one that arrives then stays pending and reaches the parent's own handler afterwards."""
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")  # ggml would otherwise fork a debugger and wait on it
    if threading.current_thread() is not threading.main_thread():
        return start()
    masked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return start()
    finally:
        signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, masked)


def abort_reason(log: Path, returncode: int | None) -> str:
    """Why a child died, from its stderr log: ggml's GGML_ASSERT line or the last error, else its exit status."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    status = (f"signal {signal.Signals(-returncode).name}" if returncode is not None and returncode < 0
              else f"exit code {returncode}")
    return next((ln for ln in reversed(lines) if "GGML_ASSERT" in ln or "error" in ln.lower()),
                lines[-1] if lines else status)
