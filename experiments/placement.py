"""GPU and CPU bytes of recipes under llama.cpp placements, and the same bytes against what llama.cpp allocates.

    python experiments/placement.py --json experiments/results/placement.json

Part 1, on Qwen3.5-35B-A3B's header-only GGUF (built from ``--map``): a Q4_K_M-like recipe (llama.cpp's
Q4_K_M mixture resolved on ``--source``, a model of the same architecture, by its own dry run, then carried
onto the 35B by role and depth) and a study's pick (``--pick``, made for ``--pick-model``, carried the same
way), each under three placements (every layer on the GPU; ``-ot exps=CPU``; ``--n-cpu-moe 20``), with the
KV cache, recurrent state and compute estimate of ``--run-ctx`` tokens.

Part 2, on the models llama.cpp can load here (``--check``): the tensors an override pattern places, as
llama.cpp's loader logs them, against ours; the weights against ``llama_model_size``; the KV cache and
recurrent state of two contexts against the sizes llama.cpp logs; the compute estimate against its
compute and output buffers.

    python experiments/placement.py --smoke
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import smoke

from recipe_search.core import (
    DEVICES,
    ContextSettings,
    Inventory,
    Placement,
    Recipe,
    SizePrediction,
    TensorSize,
    carry,
    compute_estimate,
    context_memory,
    device_memory,
    human_bytes,
    load_recipe,
    predict_size,
    preset_recipe,
    read_inventory,
    recipe_from_inventory,
    resolve,
)
from recipe_search.engine import LlamaModel, context_allocation, dry_run_types, load_placement, original_path, resolve_model_arg
from recipe_search.formats import read_map, write_header_only

PLACEMENTS = ("", "-ot exps=CPU", "--n-cpu-moe 20")
MIB = 1 << 20


def explicit_preset(preset: str, model: Path) -> Recipe:
    """llama.cpp's own mixture on ``model`` (its dry run) written out as per-tensor rules."""
    inv = read_inventory(model)
    resolution = resolve(preset_recipe(preset), inv, dry_run_types)
    types = {r.tensor.name: r.ggml_type for r in resolution.tensors}
    as_quantized = Inventory(inv.paths, inv.headers, [replace(t, ggml_type=types[t.name]) for t in inv.tensors])
    return recipe_from_inventory(as_quantized, name=f"{preset}-like")


def devices_table(inv: Inventory, recipes: dict[str, Recipe], settings: ContextSettings, placements: Sequence[str]) -> list[dict]:
    rows = []
    for label, recipe in recipes.items():
        pred = predict_size(resolve(recipe, inv), inv)
        for flags in placements:
            mem = device_memory(pred, inv, Placement.parse(flags), settings)
            rows.append({"recipe": label, "file_bytes": pred.file_bytes, "bpw": pred.bits_per_weight,
                         "flags": flags, "placement": mem.placement.describe(), **{p: mem.parts[p] for p in mem.parts},
                         "total": {d: mem.total(d) for d in DEVICES}})
            print(f"{label:<40}{flags or '(every layer on the GPU)':<26}" + "".join(
                f"{d.upper()} {human_bytes(mem.parts['weights'][d]):>11} w {human_bytes(mem.total(d)):>11} all  "
                for d in DEVICES))
    return rows


def part_one(map_path: Path, source: Path, pick: Path, pick_model: Path, settings: ContextSettings,
             placements: Sequence[str], arch: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        big = write_header_only(Path(tmp) / "header-only.gguf", arch, read_map(map_path))
        inv = read_inventory(big)
        recipes = {"Q4_K_M-like": carry(explicit_preset("Q4_K_M", source), read_inventory(source), inv).recipe,
                   f"pick {pick.stem}": carry(load_recipe(pick), read_inventory(pick_model), inv).recipe}
        return {"model": map_path.name, "tensors": len(inv.tensors), "context": settings.__dict__,
                "rows": devices_table(inv, recipes, settings, placements)}


def _as_loaded(inv: Inventory) -> SizePrediction:
    """The model's own tensors at the types they have in the file."""
    rows = [TensorSize(t.name, t.kind, t.ggml_type.name, t.n_elements, t.n_bytes) for t in inv.tensors]
    return SizePrediction(0, 0, inv.n_bytes, inv.n_elements, rows)


def check_model(path: Path, override: str, contexts: Sequence[tuple[int, int]]) -> dict:
    """Ours against llama.cpp's own placement and allocations on ``path``."""
    inv = read_inventory(path)
    placement = Placement.parse(f"-ot {override}=CPU -ngl 0")
    loaded = load_placement(path, placement)
    ours = [p for p in placement.place(inv) if p.override]
    cpu = device_memory(_as_loaded(inv), inv, placement).parts["weights"]["cpu"]
    rows: list[dict] = []
    out = {"model": path.name, "arch": inv.arch, "override": override,
           "overridden_same": sorted(loaded.overridden) == sorted(p.name for p in ours),
           "overridden": len(loaded.overridden), "weights_cpu": cpu, "llama_model_size": loaded.model_bytes,
           "mapped_buffer_mib": loaded.model_buffers_mib, "contexts": rows}
    for n_ctx, n_seq in contexts:
        with LlamaModel(path, n_ctx=n_ctx, n_seq=n_seq) as m:
            got = context_allocation(m.context_log)
        settings = ContextSettings(n_ctx * n_seq, n_seq, min(512, n_ctx * n_seq))  # LlamaModel's context
        mem = context_memory(inv, settings)
        estimate = compute_estimate(inv, settings, mem) / MIB
        measured = got.compute_mib + got.output_mib
        rows.append({
            "n_ctx": n_ctx * n_seq, "n_seq": n_seq,
            "kv_mib": {"ours": mem.total("kv") / MIB, "llama.cpp": sum(c[0] for c in got.kv)},
            "recurrent_mib": {"ours": mem.total("recurrent") / MIB, "llama.cpp": sum(c[0] for c in got.recurrent)},
            "compute_mib": {"estimate": estimate, "llama.cpp": measured, "error": estimate / measured - 1}})
    c = rows
    print(f"{path.name:<28} override {override!r}: {out['overridden']} tensors, same as llama.cpp: "
          f"{out['overridden_same']}; weights {cpu:,} B, llama_model_size {loaded.model_bytes:,} B; "
          + "; ".join(f"ctx {x['n_ctx']} ({x['n_seq']} seq): KV {x['kv_mib']['ours']:.2f}/{x['kv_mib']['llama.cpp']:.2f} "
                      f"MiB, state {x['recurrent_mib']['ours']:.2f}/{x['recurrent_mib']['llama.cpp']:.2f} MiB, "
                      f"compute {x['compute_mib']['error']:+.1%}" for x in c))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=smoke.EPILOG)
    p.add_argument("--map", type=Path, default=Path("../shared/data/qwen3.5-35b-a3b/tensors.bf16.map"))
    p.add_argument("--arch", default="qwen35moe")
    p.add_argument("--source", type=Path, default=Path("../shared/data/tiny-qwen35moe/model-bf16.gguf"),
                   help="a model of the map's architecture that llama.cpp's dry run resolves Q4_K_M on")
    p.add_argument("--pick", type=Path, default=Path("recipes/gemma-3-270m-f16-5.00bpw-kld_p99.yaml"))
    p.add_argument("--pick-model", default="demo", help="the model --pick was made for")
    p.add_argument("--run-ctx", type=int, default=32768)
    p.add_argument("--check", nargs="*", default=["demo", "demo-q4_k_m", "../shared/data/tiny-qwen35moe/model-bf16.gguf"],
                   help="models to check against llama.cpp (each MODEL or MODEL=PATTERN, the override to test; "
                        "demo-q4_k_m: the demo package's quantized original)")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    checks: list[dict] = []
    result = {"part_one": part_one(a.map, a.source, a.pick, resolve_model_arg(a.pick_model),
                                   ContextSettings(a.run_ctx), PLACEMENTS, a.arch), "part_two": checks}
    for spec in a.check:
        model, _, pattern = spec.partition("=")
        path = original_path() if model == "demo-q4_k_m" else resolve_model_arg(model)
        pattern = pattern or ("exps" if any("_exps" in t.name for t in read_inventory(path).tensors) else "ffn_")
        checks.append(check_model(path, pattern, [(512, 1), (1000, 2)]))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


def run_smoke() -> int:
    """The generated qwen35moe stands in for the 35B (its tensor table as a map), a uniform recipe for the pick."""
    with smoke.directory("placement") as tmp:
        qwen = smoke.qwen35_model(tmp)
        dense = smoke.dense_model(tmp)
        lines = [f"{qwen.name}:{'0' * 64}:{t.name}:shape=({', '.join(map(str, t.shape))}):"
                 f"dtype={t.ggml_type.name.lower()}:elements={t.n_elements}:bytes={t.n_bytes}"
                 for t in read_inventory(qwen).tensors]
        (tmp / "tensors.map").write_text("\n".join(lines) + "\n")
        pick = tmp / "pick.yaml"
        pick.write_text("name: pick\nunmatched: {type: Q8_0}\nrules: [{tensors: ffn_up_exps, type: Q4_0}]\n")
        return main(["--map", str(tmp / "tensors.map"), "--source", str(qwen), "--pick", str(pick), "--pick-model",
                     str(qwen), "--run-ctx", "1024", "--check", str(qwen), f"{dense}=attn_q", "--json",
                     str(tmp / "placement.json")])


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
