"""Does a recipe carried to another model family by role hold up against that model's own pick at the same size?

Two models, each with its own pick: the demo (dense Gemma 3 270M; its committed pick
``recipes/gemma-3-270m-f16-5.00bpw-kld_p99.yaml``, chosen on the built-in text) and tiny-qwen35moe (hybrid
MoE; a small study on the search text, its pick at ``--target``). Each model's sensitivity table is measured on
the search text (the tiny study sweeps its own; the demo's is one `recipe-search sensitivity` run). Each pick is
carried onto the other model by role and depth (`recipe-search carry`), as is and rescaled with the other
model's table to the exact file size of the other's own pick (`--target`), and the three are measured on the
other model on the held-out text (`--score`), with paired chunk-bootstrap intervals of the rescaled carried
recipe minus each of the other two. Every step is a `recipe-search` command (printed as it runs); a rerun
with the same ``--work`` reuses what is there.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import smoke

import recipe_search as rs
from recipe_search.engine import dry_run_types, resolve_model_arg
from recipe_search.formats import atomic_write_text

WIKI = "../shared/data/wikitext-2-raw/wiki.test.raw"


def _run(args: list[str], json_out: bool = False) -> dict | None:
    """One `recipe-search` command, printed; its JSON when asked for."""
    print("recipe-search " + shlex.join(args), file=sys.stderr, flush=True)
    run = subprocess.run([sys.executable, "-m", "recipe_search.cli", *args, *(["--json"] if json_out else [])],
                         stdout=subprocess.PIPE if json_out else sys.stderr, text=True)
    if run.returncode:
        raise SystemExit(f"recipe-search {args[0]} exited {run.returncode}")
    return json.loads(run.stdout) if json_out else None


def tiny_pick(a: argparse.Namespace, work: Path) -> Path:
    """The tiny model's pick at ``a.target`` from a small study on the search text (run once)."""
    picks = work / "tiny-picks"
    found = sorted(picks.glob("*.yaml")) if picks.exists() else []
    if found:
        return found[0]
    _run(["search", a.tiny, "--config", a.tiny_config, "--text", a.text, "--holdout-text", a.holdout,
          "--ctx", str(a.tiny_ctx), "--chunks", str(a.search_chunks), "--trials", str(a.trials),
          "--threads", str(a.threads), "--dir", str(work / "tiny-study"), "--quiet"])
    _run(["pareto", "--dir", str(work / "tiny-study"), "--targets", a.target, "--out", str(picks)], json_out=True)
    return sorted(picks.glob("*.yaml"))[0]


def demo_table(a: argparse.Namespace, work: Path) -> Path:
    out = work / "demo-sensitivity"
    _run(["sensitivity", a.demo, "--text", a.text, "--ctx", str(a.demo_ctx), "--chunks", str(a.sweep_chunks),
          "--threads", str(a.threads), "--out", str(out), "--quiet", *(["--types", *a.sweep_types] if a.sweep_types else [])])
    return out


def carry_and_score(a: argparse.Namespace, work: Path, pick: Path, source: str, onto: str, own: Path,
                    table: Path, ctx: int, chunks: int, label: str) -> dict:
    """``pick`` carried onto ``onto`` as is and rescaled to ``own``'s file size, scored next to ``own``."""
    inv = rs.read_inventory(resolve_model_arg(onto))
    own_bytes = rs.predict_size(rs.resolve(rs.load_recipe(own), inv, dry_run_types), inv).file_bytes
    as_is = work / f"{label}-carried.yaml"
    _run(["carry", str(pick), "--from", source, "--onto", onto, "-o", str(as_is), "--force"], json_out=True)
    return _run(["carry", str(pick), "--from", source, "--onto", onto, "--target", str(own_bytes),
                 "--sensitivity", str(table), "--score", a.holdout, "--against", str(own), "--against", str(as_is),
                 "--ctx", str(ctx), "--chunks", str(chunks), "--threads", str(a.threads), "--n-boot", str(a.n_boot),
                 "-o", str(work / f"{label}-carried-rescaled.yaml"), "--force", "--quiet"], json_out=True) or {}


def run(a: argparse.Namespace) -> dict:
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    tiny = tiny_pick(a, work)
    table = demo_table(a, work)
    out: dict = {"text": a.text, "holdout": a.holdout, "trials": a.trials, "target": a.target,
                 "picks": {"demo": Path(a.demo_pick).name, "tiny": tiny.name}}
    out["demo onto tiny"] = carry_and_score(a, work, Path(a.demo_pick), a.demo, a.tiny, tiny, work / "tiny-study" / "sweep",
                                            a.tiny_ctx, a.tiny_holdout_chunks, "demo-onto-tiny")
    out["tiny onto demo"] = carry_and_score(a, work, tiny, a.tiny, a.demo, Path(a.demo_pick), table,
                                            a.demo_ctx, a.demo_holdout_chunks, "tiny-onto-demo")
    return out


def print_table(r: dict) -> None:
    for direction in ("demo onto tiny", "tiny onto demo"):
        score = r[direction]["score"]
        print(f"{direction}: held-out {score['holdout_text']}, ctx {score['ctx']} x {score['chunks']} chunks")
        for rec in score["recipes"]:
            h, ci = rec["holdout"], rec["holdout_ci95"]
            print(f"  {rec['name'][-50:]:<52}{rec['bpw']:7.3f} bpw" + "".join(
                f"  {m} {h[m]:.4g} [{ci[m][0]:.4g}, {ci[m][1]:.4g}]" for m in ("kld_mean", "kld_p99")))
        for name, d in score["carried_minus"].items():
            print(f"  rescaled - {name[-40:]:<42}" + "".join(f"  {m} [{d[m][0]:+.4g}, {d[m][1]:+.4g}]"
                                                             for m in ("kld_mean", "kld_p99")))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=smoke.EPILOG)
    p.add_argument("--demo", default="demo", help="the dense model (default: the demo)")
    p.add_argument("--demo-pick", default="recipes/gemma-3-270m-f16-5.00bpw-kld_p99.yaml")
    p.add_argument("--tiny", default="../shared/data/tiny-qwen35moe/model-bf16.gguf")
    p.add_argument("--tiny-config", default="experiments/tiny-qwen35moe-study.yaml")
    p.add_argument("--text", default=f"{WIKI}[0:0.2]", help="search text (the tiny study's and both tables')")
    p.add_argument("--holdout", default=f"{WIKI}[0.2:0.4]")
    p.add_argument("--target", default="5.00bpw", help="the tiny model's pick, as the demo's was picked")
    p.add_argument("--trials", type=int, default=25)
    p.add_argument("--tiny-ctx", type=int, default=256)
    p.add_argument("--demo-ctx", type=int, default=512)
    p.add_argument("--search-chunks", type=int, default=8)
    p.add_argument("--sweep-chunks", type=int, default=2, help="the demo table's chunks per cell")
    p.add_argument("--sweep-types", nargs="+", help="the demo table's ggml types (default: the search ladder)")
    p.add_argument("--tiny-holdout-chunks", type=int, default=32)
    p.add_argument("--demo-holdout-chunks", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "cross-family"),
                   help="studies, tables and recipes (kept: a rerun reuses them)")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    r = run(a)
    print_table(r)
    if a.json:
        atomic_write_text(Path(a.json), json.dumps(r, indent=1) + "\n")
    return 0


def run_smoke() -> int:
    """Both directions on the tiny dense and MoE models, a few trials, a few chunks."""
    with smoke.directory("cross_family") as tmp:
        dense, moe, text = smoke.dense_model(tmp), smoke.moe_model(tmp), smoke.text_file(tmp)
        pick = tmp / "dense-pick.yaml"
        pick.write_text("name: dense-pick\nunmatched: {type: Q8_0}\nrules:\n- {tensors: ffn_down, type: Q4_K}\n"
                        "- {tensors: ffn_up, type: Q4_0}\n")
        config = tmp / "study.yaml"
        config.write_text("objectives: [size, kld_p99]\nsurrogate_seeds: 2\nspace: {ladder: [Q8_0, Q4_0, Q2_K]}\n")
        return main(["--demo", str(dense), "--demo-pick", str(pick), "--tiny", str(moe), "--tiny-config", str(config),
                     "--text", f"{text}[0:0.5]", "--holdout", f"{text}[0.5:1]", "--target", "6.0bpw", "--trials", "3",
                     "--tiny-ctx", "64", "--demo-ctx", "64", "--search-chunks", "4", "--sweep-chunks", "4",
                     "--sweep-types", "Q8_0", "Q4_0", "Q2_K",
                     "--tiny-holdout-chunks", "4", "--demo-holdout-chunks", "4", "--n-boot", "50", "--work", str(tmp / "work")])


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
