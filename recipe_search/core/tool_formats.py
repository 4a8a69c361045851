"""Recipes in the forms other tools read: llama-quantize's --tensor-type-file and command line, ik_llama.cpp's
--custom-q, and the quantize command with the run flags that pin a placement (``run``)."""

from __future__ import annotations

import shlex
from typing import Any

from ..errors import RecipeSearchError
from ..formats.ggml_types import GGMLType
from .dialects import Dialect
from .placement import Placement
from .recipe import Recipe
from .run_memory import ContextSettings

#: the dialects a recipe can be written in (every dialect can be read: `dialects`)
EXPORTABLE = (Dialect.TENSOR_TYPE_FILE, Dialect.ARGS, Dialect.CUSTOM_Q)
#: the formats `export` writes: the dialects, and ``run`` (quantize, then run with the placement pinned)
RUN = "run"
EXPORT_FORMATS = (*(d.value for d in EXPORTABLE), RUN)


def _type_name(t: GGMLType) -> str:
    return t.name.lower()


def _tokens(recipe: Recipe) -> list[str]:
    out = []
    for rx, t in recipe.overrides():
        if rx.lower() != rx and any(c.isalpha() and c.isupper() for c in rx):
            raise RecipeSearchError(f"pattern {rx!r} has upper-case letters that llama-quantize would lower-case")
        out.append(f"{rx}={_type_name(t)}")
    return out


def tensor_type_file(recipe: Recipe) -> str:
    """``pattern=type`` tokens, one a line, as ``llama-quantize --tensor-type-file`` reads them."""
    return "".join(tok + "\n" for tok in _tokens(recipe))


def quantize_args(recipe: Recipe, model: str = "MODEL-F16.gguf", out: str = "OUT.gguf",
                  tensor_type_file_path: str | None = None, threads: int | None = None) -> str:
    """The full llama-quantize command line for this recipe."""
    args = ["llama-quantize"]
    if recipe.pure:
        args.append("--pure")
    if recipe.imatrix:
        args += ["--imatrix", recipe.imatrix]
    if recipe.token_embedding_type:
        args += ["--token-embedding-type", recipe.token_embedding_type.lower()]
    if recipe.output_tensor_type:
        args += ["--output-tensor-type", recipe.output_tensor_type.lower()]
    if tensor_type_file_path:
        args += ["--tensor-type-file", tensor_type_file_path]
    else:
        for tok in _tokens(recipe):
            args += ["--tensor-type", tok]
    args += [model, out, recipe.file_type.label]
    if threads:
        args.append(str(threads))
    return " ".join(shlex.quote(a) for a in args)


def custom_q(recipe: Recipe) -> str:
    """ik_llama.cpp's ``--custom-q`` value: comma-separated ``regex=type``."""
    toks = _tokens(recipe)
    bad = [t for t in toks if "," in t]
    if bad:
        raise RecipeSearchError(f"pattern with a comma cannot go into --custom-q: {bad[0]}")
    return ",".join(toks)


def run_command(recipe: Recipe, placement: Placement, settings: ContextSettings | None = None,
                model: str = "MODEL-F16.gguf", out: str = "OUT.gguf") -> str:
    """The llama-quantize command, then the llama-server flags that run the result as it was budgeted: the
    placement's ``-ot`` overrides, an explicit ``-ngl`` and ``-fit off`` (llama.cpp's ``--fit``, on by default,
    would otherwise move layers and context to fit the free memory), and the run context."""
    bad = [o.pattern for o in placement.overrides if "," in o.pattern]
    if bad:
        raise RecipeSearchError(f"placement pattern {bad[0]!r} has a comma, which -ot would split")
    run = ["llama-server", "-m", out, *placement.args(), "-fit", "off"]
    if settings is not None:
        run += ["-c", str(settings.n_ctx), "-np", str(settings.n_seq), "-ub", str(settings.n_ubatch),
                "-ctk", settings.type_k.lower(), "-ctv", settings.type_v.lower()]
    return quantize_args(recipe, model, out) + "\n" + " ".join(shlex.quote(a) for a in run) + "\n"


def export(recipe: Recipe, fmt: Dialect | str, **kwargs: Any) -> str:
    """``recipe`` as ``fmt``; ``run`` takes ``placement`` (and optionally ``settings``) as keyword arguments."""
    if fmt == RUN:
        return run_command(recipe, **kwargs)
    fmt = Dialect(fmt)
    if fmt not in EXPORTABLE:
        raise RecipeSearchError(f"a recipe is written as {', '.join(d.value for d in EXPORTABLE)}, not {fmt.value}")
    if fmt is Dialect.TENSOR_TYPE_FILE:
        return tensor_type_file(recipe)
    if fmt is Dialect.ARGS:
        return quantize_args(recipe, **kwargs) + "\n"
    return custom_q(recipe) + "\n"
