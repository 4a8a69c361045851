"""The `recipe-search` command: argument parsing and printing only.

Each submodule registers its commands with `command`; `main` builds the parser from the registry.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import RecipeSearchError

if TYPE_CHECKING:
    from ..core.text import TextSource

COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None], str]] = {}
_SUBMODULES = ("recipes", "families", "scoring", "study", "sensitivity", "analysis", "cache", "validation", "tasks")


def command(name: str, help: str) -> Callable:
    """Register ``fn`` (taking parsed args) with its ``<fn>_args(parser)`` companion from the same module."""

    def wrap(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = (fn, vars(sys.modules[fn.__module__])[f"{fn.__name__}_args"], help)
        return fn

    return wrap


def _int_in(bounds: tuple[int, int]) -> Callable[[str], int]:
    """An argparse type: an integer within ``bounds`` (inclusive), else a usage error naming the range."""
    lo, hi = bounds

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is outside {lo}..{hi}")
        return value

    parse.__name__ = "integer"
    return parse


def _model(arg: str) -> Path:
    from ..engine.demo import resolve_model_arg

    return resolve_model_arg(arg)


def _print_json(data: object) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


#: warnings printed in full; the rest are counted (a recipe of 300k rules gave 300k lines)
MAX_WARNINGS = 10


def _warn(lines: Sequence[str]) -> None:
    for line in lines[:MAX_WARNINGS]:
        print(f"warning: {line}", file=sys.stderr)
    if len(lines) > MAX_WARNINGS:
        print(f"warning: ... and {len(lines) - MAX_WARNINGS} more warning(s) like these", file=sys.stderr)


def _warn_text_overlaps(texts: dict[str, TextSource], imatrix: str | None) -> None:
    """Warn for each pair of the named texts that overlap, and each that overlaps the imatrix's calibration text."""
    from ..formats.imatrix_file import load_imatrix
    from ..study._holdout import text_overlap_warnings

    _warn(text_overlap_warnings(texts, load_imatrix(imatrix).datasets if imatrix else ()))


def _device_args(p: argparse.ArgumentParser) -> None:
    """Where llama.cpp will run the recipe: its placement flags and the context it will allocate."""
    p.add_argument("--placement", metavar="FLAGS",
                   help="llama.cpp's placement flags, quoted: '-ot exps=CPU', '--cpu-moe', '--n-cpu-moe 20', '-ngl 30' "
                        "(default: every layer on the GPU)")
    p.add_argument("--run-ctx", type=_int_in((1, 1 << 24)), help="the context llama.cpp will run with (its -c, all "
                   "sequences together): adds the KV cache, the recurrent state and the compute estimate")
    p.add_argument("--parallel", type=_int_in((1, 4096)), default=1, help="sequences (llama.cpp's -np; default 1)")
    p.add_argument("--ubatch", type=_int_in((1, 1 << 20)), default=512, help="llama.cpp's -ub (default 512)")
    p.add_argument("--cache-type-k", default="f16", help="llama.cpp's -ctk (default f16)")
    p.add_argument("--cache-type-v", default="f16", help="llama.cpp's -ctv (default f16)")


def _device_memory(a: argparse.Namespace, prediction, inv):
    """The per-device bytes of a sized recipe, or None when neither --placement nor --run-ctx was given."""
    from ..core.devices import device_memory
    from ..core.placement import Placement
    from ..core.run_memory import ContextSettings

    if a.placement is None and a.run_ctx is None:
        return None
    settings = None if a.run_ctx is None else ContextSettings(a.run_ctx, a.parallel, a.ubatch, a.cache_type_k, a.cache_type_v)
    return device_memory(prediction, inv, Placement.parse(a.placement), settings)


def _imatrix_input(path: str):
    from ..formats.imatrix_file import ImatrixInput

    return ImatrixInput.from_file(path)


def _dry_run(model: Path, recipe):
    """llama.cpp's dry run, loaded only when a recipe asks for llama.cpp's own mixture."""
    from ..engine.quantize import dry_run_types

    return dry_run_types(model, recipe)
def _recipe_args(p: argparse.ArgumentParser) -> None:
    """Options for reading a recipe written in another tool's dialect (see `import`)."""
    p.add_argument("--substitute", action="append", metavar="SRC=TYPE",
                   help="map an ik_llama.cpp-only type (or a script's $1) to a llama.cpp type")
    p.add_argument("--unmatched", help="type (or file type) for tensors no rule names, where the recipe states none")


def _recipe_options(a: argparse.Namespace) -> dict:
    from ..core.dialects import parse_substitutions

    return {"unmatched": a.unmatched, "substitutions": parse_substitutions(a.substitute)}


def _load_recipe(a: argparse.Namespace, path: str):
    """A recipe YAML or a recipe in any dialect `import` reads, with the command's --substitute/--unmatched."""
    from ..core.dialects import load_any_recipe

    return load_any_recipe(path, **_recipe_options(a))


def _log(quiet: bool):
    return (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))


def build_parser() -> argparse.ArgumentParser:
    for module in _SUBMODULES:
        importlib.import_module(f"{__name__}.{module}")
    parser = argparse.ArgumentParser(prog="recipe-search", description="Find per-tensor mixed-precision GGUF "
                                                                       "quantization recipes for llama.cpp.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (fn, add_args, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _remove_stale(args)
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except RecipeSearchError as err:
        print(f"recipe-search: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("recipe-search: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `recipe-search inspect MODEL | head`: the reader left, which is no error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush does not fail again
        return 0


def _remove_stale(args: argparse.Namespace) -> None:
    """Remove what killed runs left in the cache (temporary GGUFs, half-built references)."""
    from ..engine.demo import cache_dir
    from ..engine.leftovers import remove_stale

    remove_stale(cache_dir(getattr(args, "cache_dir", None)))


