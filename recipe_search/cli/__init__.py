"""The `recipe-search` command: argument parsing and printing only.

Each submodule registers its commands with `command`; `main` builds the parser from the registry.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import RecipeSearchError

COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None], str]] = {}
_SUBMODULES = ("recipes", "scoring", "study", "sensitivity", "analysis", "validation")


def command(name: str, help: str) -> Callable:
    """Register ``fn`` (taking parsed args) with its ``<fn>_args(parser)`` companion from the same module."""

    def wrap(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = (fn, vars(sys.modules[fn.__module__])[f"{fn.__name__}_args"], help)
        return fn

    return wrap


def _model(arg: str) -> Path:
    from ..demo import resolve_model_arg

    return resolve_model_arg(arg)


def _print_json(data: object) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def _warn(lines: Sequence[str]) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def _imatrix_input(path: str):
    from ..quantize import ImatrixInput

    return ImatrixInput.from_file(path)


def _log(quiet: bool):
    return (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))


def build_parser() -> argparse.ArgumentParser:
    for sub in _SUBMODULES:
        importlib.import_module(f"{__name__}.{sub}")
    parser = argparse.ArgumentParser(prog="recipe-search", description="Find per-tensor mixed-precision GGUF quantization recipes for llama.cpp.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (fn, add_args, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RecipeSearchError as err:
        print(f"recipe-search: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("recipe-search: interrupted", file=sys.stderr)
        return 130


