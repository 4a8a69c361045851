"""Quantizing while scoring: the tensor-cache entries that later trials need, filled while this one is scored.

While a trial is scored, a `Prefill` quantizes the missing (tensor, type) pairs of the recipes measured next (the
sweep's next cells, a study's enqueued trials) on threads taken from scoring, in a fill child of its own, in a
thread that only waits on that child. Scoring is told to stop (`stop`) before anything is timed; the pair being
quantized then finishes on its own while the next trial builds, and a trial that needs that very entry waits for
it (`claim`) instead of quantizing it twice. An entry it fills is an ordinary cache entry, written atomically and
checked against its digest at first use; a pair it fails on (an abort in its child) is left for the trial that
needs it, which reports the error.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from ..core.inventory import Tensor
from ..errors import RecipeSearchError
from ..formats.ggml_types import GGMLType
from .fill_process import FillChild
from .tensor_cache import ModelTensors

#: how many of the recipes measured next a sweep or a study hands a worker that quantizes while scoring
AHEAD = 2


class Prefill:
    """Fills ``tensors``' missing entries ahead, on ``threads`` threads, while told to (`start` ... `stop`)."""

    def __init__(self, tensors: ModelTensors, threads: int) -> None:
        self.tensors, self.threads = tensors, threads
        self.filled = 0  # entries it quantized
        self._queue: deque[tuple[Path, Tensor, GGMLType]] = deque()
        self._active = False
        self._busy: Path | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._child: FillChild | None = None
        tensors.claim = self.claim

    def start(self, pairs: Iterable[tuple[Tensor, GGMLType]]) -> bool:
        """Fill the missing entries among ``pairs``, in order, from now until `stop` (replacing what was queued);
        whether any is missing."""
        queue: dict[Path, tuple[Path, Tensor, GGMLType]] = {}
        for t, q in pairs:
            path = self.tensors.path(t, q)
            if q != t.ggml_type and path not in queue and not path.exists():
                queue[path] = (path, t, q)
        with self._cond:
            self._queue = deque(queue.values())
            self._active = bool(queue)
            self._cond.notify_all()
        if queue and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="recipe-search-prefill", daemon=True)
            self._thread.start()
        return bool(queue)

    def stop(self) -> None:
        """Start no more entries (the one being quantized finishes in the background)."""
        with self._cond:
            self._active = False

    def claim(self, path: Path) -> None:
        """A trial is about to use the entry at ``path``: drop it from the queue, or wait while it is filled."""
        with self._cond:
            self._queue = deque(x for x in self._queue if x[0] != path)
            while self._busy == path:
                self._cond.wait()

    def close(self) -> None:
        """Stop the thread and the child (after the entry being quantized, if any)."""
        with self._cond:
            self._closed, self._active = True, False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._child is not None:
            self._child.close()
            self._child = None

    def _next(self) -> tuple[Path, Tensor, GGMLType] | None:
        with self._cond:
            while not self._closed and not (self._active and self._queue):
                self._cond.wait()
            if self._closed:
                return None
            item = self._queue.popleft()
            self._busy = item[0]
            return item

    def _run(self) -> None:
        while (item := self._next()) is not None:
            path, tensor, ggml_type = item
            try:
                if not path.exists():
                    job = self.tensors.fill_job(tensor, ggml_type, path, self.threads)
                    if self._child is None:
                        self._child = FillChild()
                    self._child.run(job)
                    self.filled += 1
            except RecipeSearchError:  # left for the trial that needs it, which reports it; a dead child is replaced
                if self._child is not None and self._child.proc.poll() is not None:
                    self._child.close()
                    self._child = None
            finally:
                with self._cond:
                    self._busy = None
                    self._cond.notify_all()
