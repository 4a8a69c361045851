"""llama.cpp's log stream, routed through one callback: silenced by default, captured on demand."""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import llama_cpp

_sinks: list[list[str]] = []
_echo = os.environ.get("RECIPE_SEARCH_LLAMA_LOG") == "1"


@llama_cpp.llama_log_callback
def _callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    message = text.decode("utf-8", errors="replace")
    if _sinks:
        _sinks[-1].append(message)
    if _echo:
        print(message, end="", file=sys.stderr)


def install() -> None:
    """Route llama.cpp's log through this module (idempotent). Set RECIPE_SEARCH_LLAMA_LOG=1 to echo it."""
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))


@contextmanager
def captured() -> Iterator[list[str]]:
    """Collect every log message llama.cpp emits inside the block."""
    install()
    sink: list[str] = []
    _sinks.append(sink)
    try:
        yield sink
    finally:
        _sinks.remove(sink)
