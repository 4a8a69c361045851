"""Commands on models and recipes: demo-model, inspect, size, export, import, quantize."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core import limits
from ..core.dialects import Dialect
from ..core.size import human_bytes
from ..core.tool_formats import EXPORT_FORMATS
from . import (
    _device_args,
    _device_memory,
    _dry_run,
    _imatrix_input,
    _int_in,
    _load_recipe,
    _model,
    _print_json,
    _recipe_args,
    _warn,
    command,
)


# -- demo-model ------------------------------------------------------------------------------------
def demo_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", help="cache directory (default: $RECIPE_SEARCH_CACHE or ~/.cache/recipe-search)")


@command("demo-model", "build (once) and print the path of the F16 Gemma 3 270M demo model")
def demo_model(a: argparse.Namespace) -> int:
    from ..engine.demo import demo_model_path
    from ..formats.files import check_output_dir

    print(demo_model_path(check_output_dir(a.dir) if a.dir else None))
    return 0


# -- inspect ---------------------------------------------------------------------------------------
def inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="GGUF file (any shard of a split model), or `demo`")
    p.add_argument("--json", action="store_true")


@command("inspect", "list a model's tensor types from its GGUF header")
def inspect(a: argparse.Namespace) -> int:
    from ..core.inventory import inventory_rows, read_inventory

    inv = read_inventory(_model(a.model))
    rows = inventory_rows(inv)
    if a.json:
        _print_json({"path": str(inv.path), "architecture": inv.arch, "blocks": inv.n_blocks,
                     "tensors": len(inv.tensors), "params": inv.n_elements, "bytes": inv.n_bytes,
                     "file_type": inv.file_type_label(), "tensor_types": rows})
        return 0
    print(f"{inv.path}  arch={inv.arch}  blocks={inv.n_blocks}  tensors={len(inv.tensors)}  "
          f"params={inv.n_elements:,}  size={human_bytes(inv.n_bytes)}  file_type={inv.file_type_label()}")
    head = (f"{'tensor type':<22}{'n':>4}  {'blocks':<12}{'params':>13}{'share':>7}  {'type(s)':<12}{'bytes':>12}"
            f"{'bpw':>7}  {'quant':<6}{'rows':<8}admits without fallback")
    print(head)
    print("-" * len(head))
    for r in rows:
        admits = " ".join(t for t in r["admits"] if t not in ("F32", "F16", "BF16")) if r["quantized_by_llama_cpp"] else "-"
        rows_txt = ",".join(map(str, r["row_lengths"]))
        print(f"{r['tensor_type']:<22}{r['count']:>4}  {r['blocks']:<12}{r['params']:>13,}{r['share'] * 100:>6.1f}%  "
              f"{'/'.join(r['ggml_types']):<12}{r['bytes']:>12,}{r['bpw']:>7.2f}  "
              f"{'yes' if r['quantized_by_llama_cpp'] else 'no':<6}{rows_txt:<8}{admits}")
    narrow = [r["tensor_type"] for r in rows if r["quantized_by_llama_cpp"] and "Q4_K" not in r["admits"]]
    if narrow:
        print(f"\nK- and I-quants fall back on: {', '.join(narrow)} (row length not a multiple of 256)")
    return 0


# -- size ------------------------------------------------------------------------------------------
def size_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model")
    p.add_argument("recipe")
    p.add_argument("--imatrix", help="imatrix file the quantization will use (adds its metadata keys)")
    p.add_argument("--json", action="store_true")
    _recipe_args(p)
    _device_args(p)


@command("size", "predict the exact output size of a recipe without quantizing; per device with --placement/--run-ctx")
def size(a: argparse.Namespace) -> int:
    from ..core.inventory import read_inventory
    from ..core.resolution import resolve
    from ..core.rule_coverage import lint
    from ..core.size import predict_size

    inv = read_inventory(_model(a.model))
    recipe = _load_recipe(a, a.recipe)
    _warn(lint(recipe, inv))
    resolution = resolve(recipe, inv, _dry_run)
    extra = _imatrix_input(a.imatrix).kv() if a.imatrix else None
    pred = predict_size(resolution, inv, extra)
    devices = _device_memory(a, pred, inv)
    if a.json:
        _print_json({**pred.to_dict(), "fallbacks": {k: dict(v) for k, v in resolution.fallbacks().items()},
                     **({"devices": devices.to_dict()} if devices else {})})
        return 0
    by_kind: dict[str, list] = {}
    for t in pred.tensors:
        by_kind.setdefault(t.kind, []).append(t)
    print(f"{'tensor type':<22}{'types':<24}{'bytes':>14}{'bpw':>7}")
    for kind, ts in by_kind.items():
        types = sorted({t.ggml_type for t in ts})
        nbytes, nel = sum(t.bytes for t in ts), sum(t.n_elements for t in ts)
        print(f"{kind:<22}{'/'.join(types):<24}{nbytes:>14,}{nbytes * 8 / nel:>7.2f}")
    for kind, moves in resolution.fallbacks().items():
        print(f"fallback: {kind}: " + ", ".join(f"{n} x {m}" for m, n in moves.items()))
    print(f"\nfile: {pred.file_bytes:,} bytes ({human_bytes(pred.file_bytes)}), metadata {pred.metadata_bytes:,} bytes, "
          f"{pred.bits_per_weight:.3f} bits per weight")
    if devices:
        print("\n" + "\n".join(devices.lines()))
    return 0


# -- export / import -------------------------------------------------------------------------------
def export_cmd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe")
    p.add_argument("--format", choices=EXPORT_FORMATS, default=Dialect.TENSOR_TYPE_FILE.value,
                   help="run: the llama-quantize command and the llama-server flags that pin the placement "
                        "(--placement, else the one a picked recipe was budgeted for; -ngl explicit, -fit off)")
    p.add_argument("-o", "--output", help="write here instead of standard output")
    _recipe_args(p)
    _device_args(p)


@command("export", "write a recipe as llama-quantize's --tensor-type-file, its command line, --custom-q, or with the "
                   "run flags of its placement")
def export_cmd(a: argparse.Namespace) -> int:
    from ..core.tool_formats import RUN, export
    from ..formats.files import atomic_write_text, check_output_file

    if a.output:
        check_output_file(a.output)
    recipe = _load_recipe(a, a.recipe)
    text = export(recipe, a.format, **(_run_placement(a, recipe) if a.format == RUN else {}))
    if a.output:
        atomic_write_text(Path(a.output), text)
    else:
        sys.stdout.write(text)
    return 0


def _run_placement(a: argparse.Namespace, recipe) -> dict:
    """The placement and run context to pin: the command line's, else those a picked recipe was budgeted for."""
    from ..core.placement import Placement
    from ..core.run_memory import ContextSettings

    budgeted = (recipe.provenance or {}).get("devices") or {}
    flags = a.placement if a.placement is not None else budgeted.get("placement")
    ctx = a.run_ctx if a.run_ctx is not None else budgeted.get("ctx")
    settings: ContextSettings | None = None
    if a.run_ctx is None and ctx is not None:  # the budgeted context whole, as the study had it
        settings = ContextSettings(int(ctx), int(budgeted["parallel"]), int(budgeted["ubatch"]),
                                   str(budgeted["cache_type_k"]), str(budgeted["cache_type_v"]))
    elif ctx is not None:
        settings = ContextSettings(ctx, a.parallel, a.ubatch, a.cache_type_k, a.cache_type_v)
    return {"placement": Placement.parse(flags), "settings": settings}


def import_cmd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="a quantized GGUF, or a recipe in any dialect (tensor-type-file, llama-quantize command line, "
                        "--custom-q, GGUF-Tool-Suite .recipe, shell script); several files or a directory")
    p.add_argument("-o", "--output", help="recipe YAML to write (a directory for several sources; default: standard output)")
    p.add_argument("--format", choices=[d.value for d in _dialects()], help="force a dialect instead of detecting it")
    _recipe_args(p)
    p.add_argument("--model", help="report rules matching no tensor, shadowed rules and tensors no rule names there")
    p.add_argument("--name")
    p.add_argument("--force", action="store_true", help="replace existing output files")


def _dialects():
    return list(Dialect)


def _import_sources(args: list[str]) -> list[Path]:
    out: list[Path] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            out += sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        else:
            out.append(path)
    return out


@command("import", "read recipes people publish (text dialects, or the recipe of a quantized GGUF) as recipe YAML")
def import_cmd(a: argparse.Namespace) -> int:
    from ..core.dialects import read_source
    from ..core.importer import import_recipe
    from ..core.inventory import read_inventory
    from ..core.rule_coverage import coverage
    from ..errors import RecipeSearchError
    from ..formats.files import check_output_dir, check_output_file
    from . import _recipe_options

    sources = _import_sources(a.sources)
    if not sources:
        raise RecipeSearchError("no file to import", a.sources[0])
    several = len(sources) > 1
    if several and a.name:
        raise RecipeSearchError("--name goes with a single source")
    if several and not a.output:
        raise RecipeSearchError("several sources need -o DIRECTORY")
    options = _recipe_options(a)
    inv = read_inventory(_model(a.model)) if a.model else None
    for src in sources:
        if src.suffix.lower() == ".gguf":
            recipe, dialect = import_recipe(_model(str(src)), a.name), "gguf"
        else:
            imported = read_source(src, a.format, a.name, **options)
            recipe, dialect = imported.recipe, imported.dialect.value
            _warn([f"{src}: {w}" for w in imported.warnings])
        if inv is not None:
            _warn([f"{src}: {line}" for line in coverage(recipe, inv).lines()])
        if a.output:
            into_dir = several or Path(a.output).is_dir()
            out = check_output_file(check_output_dir(a.output) / f"{src.stem}.yaml" if into_dir else a.output)
            recipe.save(out, overwrite=a.force)
            print(f"wrote {out} ({dialect}, {len(recipe.rules)} rules)")
        else:
            sys.stdout.write(recipe.to_yaml())
    return 0


# -- quantize --------------------------------------------------------------------------------------
def quantize_cmd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model")
    p.add_argument("recipe")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--imatrix")
    p.add_argument("--allow-partial-imatrix", action="store_true")
    p.add_argument("--threads", type=_int_in(limits.THREADS), default=2)
    _recipe_args(p)


@command("quantize", "apply a recipe with llama.cpp's quantizer and check every tensor's type")
def quantize_cmd(a: argparse.Namespace) -> int:
    from ..core.inventory import read_inventory
    from ..core.rule_coverage import lint
    from ..engine.quantize import quantize_model
    from ..formats.files import check_output_file

    check_output_file(a.output)
    model = _model(a.model)
    recipe = _load_recipe(a, a.recipe)
    imatrix_path = a.imatrix or recipe.imatrix
    if not a.imatrix and recipe.imatrix and (Path(a.recipe).parent / recipe.imatrix).is_file():
        imatrix_path = str(Path(a.recipe).parent / recipe.imatrix)  # a shared recipe names it beside itself
    inv = read_inventory(model)
    _warn(lint(recipe, inv))
    result = quantize_model(model, recipe, a.output, imatrix=_imatrix_input(imatrix_path) if imatrix_path else None,
                            threads=a.threads, allow_partial_imatrix=a.allow_partial_imatrix, inventory=inv)
    _warn(result.warnings)
    for kind, moves in result.resolution.fallbacks().items():
        print(f"fallback: {kind}: " + ", ".join(f"{n} x {m}" for m, n in moves.items()))
    print(f"wrote {result.path} ({result.file_bytes:,} bytes) in {result.seconds:.1f} s; every tensor has its recipe type")
    return 0
