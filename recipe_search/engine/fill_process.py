"""Cache misses quantized in a child process: a GGML_ASSERT there is one failed trial naming the pair.

One child per process, started on the first miss and kept for the next ones (its start, an interpreter
with numpy and libggml-base, is paid once; `prefill` keeps a `FillChild` of its own); it reads `FillJob`s
pickled on its stdin, runs `tensor_fill.fill` on each (the shard and record are written by the child,
atomically, as in process) and answers through a pipe. A child that dies is replaced at the next miss. It dies with its parent
and ignores Ctrl-C (see `child`); Ctrl-C while it quantizes kills it, leaving no entry half-written.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO

from ..errors import RecipeSearchError
from . import child
from .tensor_fill import FillJob, fill


class FillChild:
    """A running child, its stdin, the pipe it answers through and its stderr log."""

    def __init__(self) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="recipe-search-fill-", suffix=".log")  # noqa: SIM115
        read_fd, write_fd = os.pipe()
        try:
            self.proc = child.start_ignoring_sigint(lambda: subprocess.Popen(
                child.program(__name__, "_serve"), stdin=subprocess.PIPE, stdout=self.log, stderr=self.log,
                pass_fds=(write_fd,)))
        finally:
            os.close(write_fd)
        self.replies: IO[bytes] = os.fdopen(read_fd, "rb")
        assert self.proc.stdin is not None
        self.jobs: IO[bytes] = self.proc.stdin
        self._send(child.parent_path())
        self._send((os.getpid(), write_fd))

    def _send(self, item: object) -> None:
        pickle.dump(item, self.jobs)
        self.jobs.flush()

    def run(self, job: FillJob) -> None:
        """Fill ``job`` in the child; its error is a `RecipeSearchError`, its death `Died` (start another)."""
        try:
            self._send(job)
            status, message = pickle.load(self.replies)
        except (BrokenPipeError, EOFError, pickle.UnpicklingError):
            self.proc.wait()
            why = child.abort_reason(Path(self.log.name), self.proc.returncode)
            raise Died(f"llama.cpp aborted while quantizing {job.tensor.name} to {job.ggml_type.name}: {why}") \
                from None
        if status != "ok":
            raise RecipeSearchError(message)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.jobs.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.replies.close()
        self.log.close()


class Died(RecipeSearchError):
    """The child died on a job (an abort or a kill): it is replaced at the next miss."""


_filler: FillChild | None = None


def fill_in_child(job: FillJob) -> None:
    """Run `tensor_fill.fill` for ``job`` in the child, starting one if none runs; its abort is a one-line error."""
    global _filler
    if _filler is None:
        _filler = FillChild()
    try:
        _filler.run(job)
    except Died:
        stop()
        raise
    except RecipeSearchError:
        raise
    except BaseException:  # Ctrl-C while it quantizes: kill it (`leftovers` removes its temporary file)
        _filler.proc.kill()
        stop()
        raise


def stop() -> None:
    """Stop the child (it is started again at the next miss)."""
    global _filler
    if _filler is not None:
        _filler.close()
        _filler = None


atexit.register(stop)


def _serve() -> None:
    """The child's loop: jobs in on stdin until it closes, ("ok" | "error", message) out through the pipe."""
    parent, reply_fd = pickle.load(sys.stdin.buffer)
    child.die_with_parent(parent)
    with os.fdopen(reply_fd, "wb") as replies:
        while True:
            try:
                job = pickle.load(sys.stdin.buffer)
            except EOFError:
                return
            try:
                fill(job)
                reply = ("ok", "")
            except RecipeSearchError as err:
                reply = ("error", str(err))
            pickle.dump(reply, replies)
            replies.flush()
