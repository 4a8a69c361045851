"""Does a new user's first study hold its own against every competitor of the head to head, held out?

The first study is what a user types: ``recipe-search search MODEL --text TEXT --targets T1,T2 --seed S`` (and
``--imatrix FILE`` with an imatrix made as llama-imatrix makes one: no token_embd, no output), then
``recipe-search pareto --targets T1,T2``; every other setting is the default (context 512, 8 chunks, the default
space and objective). Its picks are judged on the head to head's held-out text (h2h_profiles.py: the profile's
held-out range, 20 chunks of its context) against the competitors that need no study, each at or under the
target: (a) llama.cpp's presets, (c) the KLD sweep's allocation (the profile's space swept on the search text, then
allocated by mean KLD), (f) the role templates (the two largest that fit), and on a model with routed experts the
band-probe template of default_study.py. Each competitor is tested against the pick by a 95% paired chunk bootstrap
of every KLD statistic; "beats" means its difference interval lies wholly below 0.

Later seeds start from the first seed's finished sweep (copied into their study directory; the sweep is the same
cells scored on the same text, so it measures the same numbers) and their time excludes it; ``--sweep DIR`` starts
every seed from a sweep kept from an earlier run (the same model, text, imatrix and space).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import h2h_profiles
import numpy as np
import smoke
from default_study import template as band_probe
from h2h_methods import PRESETS, template_fits
from h2h_profiles import PROFILES, Profile

import recipe_search as rs
from recipe_search.core import TAIL_STATISTICS, build_space, paired_bootstrap, preset_recipe, statistic_of
from recipe_search.engine import collect_imatrix, dry_run_types
from recipe_search.formats import ImatrixInput, save_imatrix_gguf
from recipe_search.sensitivity import Allocator, Surrogate, run_sweep, space_ladders
from recipe_search.study import Chosen, validate

COMPARED = ("kld_mean", *TAIL_STATISTICS)
OBJECTIVE = rs.StudyConfig(text=None).objectives[1]  # the default study's KLD objective


def cli(args: list[str], log: Path) -> None:
    """Run recipe-search as a user would, its output appended to ``log``."""
    with log.open("a", encoding="utf-8") as f:
        f.write("$ recipe-search " + " ".join(args) + "\n")
        f.flush()
        subprocess.run([sys.executable, "-m", "recipe_search.cli", *args], check=True, stdout=f, stderr=f)


def first_studies(a: argparse.Namespace, profile: Profile, work: Path, imatrix: Path | None) -> dict[int, dict]:
    """Each seed's study, run and picked with the CLI (a finished one is kept): its picks' recipes by target label."""
    targets = ",".join(f"{t}bpw" for t in profile.targets)
    out: dict[int, dict] = {}
    for seed in a.seeds:
        d = work / f"first-{seed}"
        done = d / "done.json"
        if not done.exists():
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            first = Path(a.sweep) if a.sweep else work / f"first-{a.seeds[0]}" / "sweep"
            if a.sweep or (seed != a.seeds[0] and first.is_dir()):
                shutil.copytree(first, d / "sweep")
            start = time.perf_counter()
            cli(["search", a.model_arg or str(profile.model()), "--text", profile.text_spec(profile.search),
                 "--targets", targets, "--trials", str(a.trials), "--seed", str(seed), "--study", "first",
                 "--dir", str(d), "--quiet", *(["--imatrix", str(imatrix)] if imatrix else []), *a.search_args],
                d / "log.txt")
            seconds = time.perf_counter() - start
            done.write_text(json.dumps({"seconds": round(seconds, 1)}) + "\n", encoding="utf-8")
        shutil.rmtree(d / "picks", ignore_errors=True)  # picked again: the rule may have changed since
        cli(["pareto", "--dir", str(d), "--study", "first", "--targets", targets, "--out", str(d / "picks")],
            d / "log.txt")
        picks = {}
        for t in profile.targets:
            found = sorted((d / "picks").glob(f"*-{t:.2f}bpw-*.yaml"))
            if found:
                picks[f"{t:.2f}bpw"] = rs.load_recipe(found[0])
        out[seed] = {"seconds": json.loads(done.read_text())["seconds"], "picks": picks}
    return out


def competitors(a: argparse.Namespace, profile: Profile, work: Path, inv: rs.Inventory,
                imatrix: ImatrixInput | None) -> dict[str, list[rs.Recipe]]:
    """Per target label, the competitors that fit it."""
    kv = imatrix.kv() if imatrix else {}

    def bpw(r: rs.Recipe) -> float:
        return rs.predict_size(rs.resolve(r, inv, dry_run_types), inv, kv).bits_per_weight

    config = rs.StudyConfig(text=profile.text_spec(profile.search), ctx=profile.ctx, threads=a.threads,
                            space=profile.space)
    space = build_space(config, inv, has_imatrix=imatrix is not None)
    sweeper = rs.Worker(inv.path, rs.ScoreSettings(profile.text(profile.search), profile.ctx,
                                                   config.sweep_chunk_count, a.threads),
                        work / "cache", work / "work", imatrix=imatrix)
    table = run_sweep(sweeper, work / "kld-sweep", ladders=space_ladders(space))
    alloc = Allocator(Surrogate(table, inv), space, kv)
    out: dict[str, list[rs.Recipe]] = {}
    for t in profile.targets:
        label = f"{t:.2f}bpw"
        rivals = [preset_recipe(p) for p in PRESETS]
        rivals.append(alloc.allocate(t, "bpw", "kld_mean").recipe.model_copy(update={"name": f"kld-sweep-{label}"}))
        rivals += template_fits(profile, bpw, t)
        if any(k.endswith("_exps") for k in inv.kinds):
            rivals.append(band_probe(inv).model_copy(update={"name": "band-probe"}))
        out[label] = [r for r in rivals if bpw(r) <= t]
    return out


def run(a: argparse.Namespace, profile: Profile) -> dict:
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    model = profile.model()
    inv = rs.read_inventory(model)
    imatrix_path = None
    if a.imatrix:
        imatrix_path = work / "imatrix-llama.gguf"  # llama-imatrix's way: no token_embd, no output
        if not imatrix_path.exists():
            text = profile.text(profile.calibration)
            save_imatrix_gguf(collect_imatrix(model, text.read(), ctx=profile.ctx, n_chunks=None, n_threads=a.threads,
                                              dataset=text.label), imatrix_path)
    imatrix = ImatrixInput.from_file(imatrix_path) if imatrix_path else None
    studies = first_studies(a, profile, work, imatrix_path)
    rivals = competitors(a, profile, work, inv, imatrix)
    holdout = rs.Worker(model, rs.ScoreSettings(profile.text(profile.holdout), profile.ctx, a.holdout_chunks,
                                                a.threads), work / "cache", work / "holdout", imatrix=imatrix)
    chosen: dict[str, Chosen] = {}
    for rs_ in rivals.values():
        for r in rs_:
            chosen.setdefault(r.name, Chosen(r.name, r))
    for seed, st in studies.items():
        for label, r in st["picks"].items():
            chosen[f"first seed {seed} {label}"] = Chosen(f"first seed {seed} {label}", r)
    scored = {v.name: v for v in validate(holdout, list(chosen.values()), n_boot=a.n_boot)}
    per_chunk = holdout.reference.n_scored_per_chunk

    def row(name: str) -> dict:
        v = scored[name]
        return {"bpw": round(v.bpw, 4), "holdout": {m: v.holdout_metrics[m] for m in COMPARED}}

    targets: dict[str, dict] = {}
    for label, rs_ in rivals.items():
        picks: dict[str, dict] = {}
        for seed, st in studies.items():
            if label not in st["picks"]:
                picks[str(seed)] = {"pick": None}
                continue
            name = f"first seed {seed} {label}"
            mine = np.asarray(scored[name].kld_tokens, np.float64)
            against = {}
            for r in rs_:
                theirs = np.asarray(scored[r.name].kld_tokens, np.float64)
                calls = {}
                for m in COMPARED:
                    lo, hi = paired_bootstrap(theirs, mine, statistic_of(m), per_chunk, n_boot=a.n_boot)
                    calls[m] = {"diff_ci95": [lo, hi], "call": "beats" if hi < 0 else "loses" if lo > 0 else "tie"}
                against[r.name] = calls
            beaten = sorted(n for n, c in against.items() if c[OBJECTIVE]["call"] == "beats")
            picks[str(seed)] = {"pick": st["picks"][label].name, **row(name), "vs": against,
                                f"beaten_on_{OBJECTIVE}_by": beaten}
        targets[label] = {"competitors": {r.name: row(r.name) for r in rs_}, "first_study": picks}
    return {"profile": profile.label, "search": list(profile.search), "holdout": list(profile.holdout),
            "ctx": profile.ctx, "holdout_chunks": a.holdout_chunks, "holdout_scored_tokens":
            int(holdout.reference.meta["n_tokens"]), "trials": a.trials, "imatrix": bool(a.imatrix),
            "objective": OBJECTIVE, "seconds": {str(s): st["seconds"] for s, st in studies.items()},
            "targets": targets}


def print_table(r: dict) -> None:
    print(f"{r['profile']}: held out {r['holdout']} ({r['holdout_chunks']} chunks of {r['ctx']}, "
          f"{r['holdout_scored_tokens']} tokens), imatrix {'yes' if r['imatrix'] else 'no'}, {r['trials']} trials")
    for label, t in r["targets"].items():
        print(f"\n{label}{'':<34}{'bpw':>7}" + "".join(f"{m:>12}" for m in COMPARED))
        for name, c in sorted(t["competitors"].items(), key=lambda kv: kv[1]["bpw"]):
            print(f"  {name:<40}{c['bpw']:>7.3f}" + "".join(f"{c['holdout'][m]:>12.4f}" for m in COMPARED))
        for seed, p in t["first_study"].items():
            if p["pick"] is None:
                print(f"  first seed {seed}: nothing fits")
                continue
            beats = {m: sum(v[m]["call"] == "beats" for v in p["vs"].values()) for m in COMPARED}
            print(f"  {'first seed ' + seed + ': ' + p['pick']:<40}{p['bpw']:>7.3f}"
                  + "".join(f"{p['holdout'][m]:>12.4f}" for m in COMPARED))
            print(f"  {'':<47}" + "".join(f"{str(beats[m]) + ' beat':>12}" for m in COMPARED))
    print(f"\nseconds per study: {r['seconds']}")


def markdown(results: Sequence[dict]) -> str:
    """One table row per pick: its held-out figures and how many competitors beat it, on each statistic."""
    head = ("| model | imatrix | objective | target | seed | pick, bpw | " + " | ".join(COMPARED)
            + " | competitors that fit | beating the pick: " + " / ".join(COMPARED) + " |")
    rows = [head, "|" + "---|" * (6 + len(COMPARED) + 2)]
    for r in results:
        model = r["profile"].split("/")[0].split(" ")[0]
        for label, t in r["targets"].items():
            for seed, p in t["first_study"].items():
                lead = f"| {model} | {'yes' if r['imatrix'] else 'no'} | {r['objective']} | {label} | {seed} |"
                if p["pick"] is None:
                    rows.append(lead + " nothing fits |" + " |" * (len(COMPARED) + 2))
                    continue
                beats = [sum(v[m]["call"] == "beats" for v in p["vs"].values()) for m in COMPARED]
                rows.append(lead + f" {p['bpw']:.3f} | " + " | ".join(f"{p['holdout'][m]:.4f}" for m in COMPARED)
                            + f" | {len(t['competitors'])} | " + " / ".join(map(str, beats)) + " |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None, profiles: dict[str, Profile] = PROFILES) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=smoke.EPILOG)
    p.add_argument("--markdown", nargs="+", metavar="JSON", help="print the report's table of these results, run nothing")
    p.add_argument("--profile", choices=sorted(profiles))
    p.add_argument("--model-arg", help="the model as the user names it on the command line (e.g. `demo`)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--imatrix", action="store_true", help="give the studies and competitors a llama-imatrix-style "
                   "imatrix of the profile's calibration text")
    p.add_argument("--holdout-chunks", type=int, default=h2h_profiles.CHUNKS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--search-args", nargs=argparse.REMAINDER, default=[],
                   help="more `search` options (only the smoke mode needs any)")
    p.add_argument("--sweep", help="start every seed from this finished study sweep (e.g. an earlier run's "
                   "first-0/sweep), its time not counted")
    p.add_argument("--work", help="studies, cache, imatrix and sweep (kept: a rerun resumes)")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    if a.markdown:
        print(markdown([json.loads(Path(f).read_text(encoding="utf-8")) for f in a.markdown]))
        return 0
    if not a.profile or not a.work:
        p.error("--profile and --work are needed (or --markdown)")
    if a.sweep and not Path(a.sweep).is_dir():
        p.error(f"--sweep {a.sweep}: no such directory")
    r = run(a, profiles[a.profile])
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1) + "\n", encoding="utf-8")
    print_table(r)
    return 0


def run_smoke() -> int:
    """One seed, a few trials, on a generated tiny dense model and text (the demo's profile), with an imatrix."""
    with smoke.directory("first_study") as tmp:
        profile = h2h_profiles.smoke_profile(smoke.dense_model(tmp), smoke.text_file(tmp))
        return main(["--profile", "smoke", "--seeds", "0", "--trials", "3", "--imatrix", "--holdout-chunks", "4",
                     "--n-boot", "50", "--work", str(tmp / "work"), "--search-args", "--ctx", "128", "--chunks", "4"],
                    {"smoke": profile})


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
