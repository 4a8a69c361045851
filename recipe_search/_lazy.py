"""Names re-exported from a package but imported on first use (PEP 562), so importing a package
loads none of the heavy libraries (llama.cpp, Optuna) that only some of its names need."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, namespace: dict[str, Any], api: Mapping[str, str]) -> tuple[Callable[[str], Any],
                                                                                       Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``api`` maps each public name to the module
    (relative to the package) that defines it; a name, once loaded, is kept in ``namespace``."""

    def getattr_(name: str) -> Any:
        if name not in api:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{api[name]}", package), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace.get("__all__", ())) | set(api))

    return getattr_, dir_
