"""How soon does a study reach the head to head's hand-sweep hypervolume?

The head to head (head_to_head.py) measured a 121-recipe hand sweep on its search text (20 chunks, its imatrix) and
charged its time; its results file keeps the sweep's final hypervolume and charged seconds. This script takes any
finished studies (e.g. first_study.py's: the default config, as a new user runs it), charges each as the head to
head charges its own studies (its sweep's measuring time, then each trial's measurement, in the order the trials
finished), re-measures the recipes it measured, in that order, on the head to head's search measurement, and
reports when its hypervolume (file bytes x log10 of the 99.9th-percentile KLD, the head to head's reference point, on
the same scored tokens) first reaches the hand sweep's final one, and stops there: in charged seconds, as a fraction of
the hand sweep's, and in measurements. Each study is also replayed with its surrogate allocations measured first (the
same measurements reordered, each charged what it cost): what the study would cost if it enqueued them before its
uniform references. The hand sweep's final hypervolume is taken on this run's yardstick: its final
frontier's recipes re-measured (with the same imatrix and code they measure exactly as before; the largest change of
their 99.9% KLD is reported).

The charged seconds of the two come from different runs (the hand sweep's from the head to head's): a ratio of
times measured apart, on a shared machine; the measurement count beside it does not depend on the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import smoke
from h2h_methods import Method, Point, hand_recipes, study_points, sweep_seconds
from h2h_profiles import PROFILES, Profile, Setup, setup, smoke_profile
from h2h_report import count_to, hypervolume, time_to

from recipe_search import RecipeSearchError
from recipe_search.study import TrialRecord, load_study, storage_url

if TYPE_CHECKING:
    import optuna


def remeasured(s: Setup, p: Point) -> Point:
    """``p`` measured on the head to head's search worker, its charges kept."""
    v = s.search.measure(p.recipe)
    return dataclasses.replace(p, file_bytes=v.file_bytes, bpw=v.bpw, metrics=dict(v.metrics))


def curve_to(s: Setup, m: Method, goal: float) -> list[tuple[float, float]]:
    """(charged seconds, hypervolume) after each of ``m``'s points, in the order the study knew them, each
    re-measured on the head to head's search worker; it stops once the hypervolume reaches ``goal``."""
    points: list[Point] = []
    curve: list[tuple[float, float]] = []
    for p in m.points:
        v = remeasured(s, p)
        points.append(v)
        curve.append((p.t_s, hypervolume(points, s.reference_point)))
        s.log(f"{m.run} {len(curve)}/{len(m.points)} {p.name}: {v.bpw:.3f} bpw, kld_p999 {v.metrics['kld_p999']:.4g}, "
              f"hypervolume {curve[-1][1]:.5g} of {goal:.5g}")
        if time_to(curve, goal) is not None:
            break
    return curve


def allocations_first(study: optuna.Study, m: Method) -> Method:
    """``m`` replayed with the surrogate's enqueued allocations measured before everything else, each measurement
    charged what it cost, after the same sweep (trials that measured nothing, and early stopping, not replayed)."""
    records = [TrialRecord.from_trial(t) for t in study.get_trials(deepcopy=False)]
    allocated = {r.name for r in records if r.surrogate_seed is not None}
    out = Method(m.key, f"{m.run} allocations first", clock=sweep_seconds(study))
    for p in sorted(m.points, key=lambda p: p.name not in allocated):  # stable: each group keeps its order
        out.clock += p.cost_s
        out.points.append(dataclasses.replace(p, run=out.run, t_s=out.clock))
    return out


def check_yardstick(s: Setup, h2h: dict) -> None:
    """Raise unless this setup scores the head to head's tokens."""
    if s.search.reference.meta["n_tokens"] != h2h["scored_tokens"]:
        raise RecipeSearchError(f"the search text gives {s.search.reference.meta['n_tokens']} scored tokens, the "
                                f"head to head's {h2h['scored_tokens']}")


def hand_goal(s: Setup, hand: dict) -> tuple[float, float]:
    """The hand sweep's final hypervolume on this yardstick: its final frontier's recipes (rebuilt by name, as
    `hand_recipes` names them) re-measured; and the largest relative change of their 99.9% KLD (0 where this
    setup measures exactly as the head to head did: the same imatrix and code)."""
    choices = dict(hand_recipes(s, hand["measured"]))
    points, moved = [], 0.0
    for f in hand["frontier"]:
        r = s.space.recipe(choices[f["name"]], f["name"])
        v = remeasured(s, Point("hand", "", f["name"], r, f["file_bytes"], f["bpw"], {}, 0.0, 0.0))
        points.append(v)
        moved = max(moved, abs(v.metrics["kld_p999"] / f["kld_p999"] - 1))
    return hypervolume(points, s.reference_point), moved


def markdown(results: Sequence[dict]) -> str:
    """One table row per study (and its replay): measurements and charged seconds to the hand sweep's hypervolume."""
    rows = ["| model | study | measured | its sweep, s | to the hand sweep's hypervolume: measurements | charged s "
            "| fraction of the hand sweep's time |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        for st in r["studies"]:
            n, t, f = st["measurements_to_hand_final"], st["t_to_hand_final_s"], st["fraction_of_hand_time"]
            rows.append(f"| {r['profile']} | {st['study']} | {st['measured']} | {st['sweep_s']:.0f} | "
                        f"{'not reached' if n is None else n} | "
                        f"{'-' if t is None else f'{t:.0f}'} | {'-' if f is None else f'{f:.2f}'} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None, profiles: Mapping[str, Profile] = PROFILES) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=smoke.EPILOG)
    p.add_argument("--markdown", nargs="+", type=Path, metavar="JSON", help="print the report's table of these "
                   "results, run nothing")
    p.add_argument("--profile", choices=sorted(profiles))
    p.add_argument("--h2h", type=Path, help="the head to head's results file (with its hand sweep)")
    p.add_argument("--studies", type=Path, nargs="+", help="finished study directories")
    p.add_argument("--work", type=Path, help="the yardstick's cache, imatrix and references")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    if a.markdown:
        print(markdown([json.loads(f.read_text(encoding="utf-8")) for f in a.markdown]))
        return 0
    if not (a.profile and a.h2h and a.studies and a.work):
        p.error("--profile, --h2h, --studies and --work are needed (or --markdown)")
    h2h = json.loads(a.h2h.read_text(encoding="utf-8"))
    hand = h2h["methods"]["hand"]
    s = setup(profiles[a.profile], a.work, a.threads, lambda msg: print(msg, file=sys.stderr, flush=True),
              h2h["chunks"], h2h["chunks"])
    check_yardstick(s, h2h)
    goal, moved = hand_goal(s, hand)
    rows = []
    for d in a.studies:
        study = load_study(storage_url(None, str(d), None), None)
        m = study_points(study, "study", f"{d.parent.name}/{d.name}")
        for run in (m, allocations_first(study, m)):
            curve = curve_to(s, run, goal)
            t = time_to(curve, goal)
            rows.append({"study": run.run, "charged_s": round(run.clock, 1), "measured": len(run.points),
                         "sweep_s": sweep_seconds(study),
                         "t_to_hand_final_s": t, "fraction_of_hand_time": None if t is None else t / hand["charged_s"],
                         "measurements_to_hand_final": count_to(curve, goal),
                         "hv_last": curve[-1][1] if curve else 0.0})
    result = {"profile": a.profile, "h2h": a.h2h.name,
              "hand": {**{k: hand[k] for k in ("charged_s", "measured", "final_hv")}, "final_hv_remeasured": goal,
                       "frontier_kld_p999_moved": moved}, "studies": rows}
    print(f"hand sweep: {hand['measured']} recipes, {hand['charged_s']:.0f} s charged, hypervolume {hand['final_hv']:.5g}, "
          f"its frontier re-measured {goal:.5g} (99.9% KLD moved by at most {moved:.1%})")
    for r in rows:
        got = "not reached" if r["fraction_of_hand_time"] is None else \
            f"reached after {r['measurements_to_hand_final']} measurements, {r['t_to_hand_final_s']:.0f} s charged: " \
            f"{r['fraction_of_hand_time']:.2f} of the hand sweep's time"
        print(f"{r['study']} ({r['measured']} measured, {r['charged_s']:.0f} s charged): {got}")
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


def run_smoke() -> int:
    """A short hand sweep (head_to_head.py, hand only) and a 3-trial default study on a generated tiny dense model."""
    import subprocess

    import head_to_head

    with smoke.directory("time_to_hand") as tmp:
        model, text = smoke.dense_model(tmp), smoke.text_file(tmp)
        profile = smoke_profile(model, text)
        h2h = tmp / "h2h.json"
        head_to_head.main(["--profile", "smoke", "--work", str(tmp / "h2h"), "--methods", "hand", "--hand", "6",
                           "--chunks", "4", "--holdout-chunks", "4", "--n-boot", "20", "--json", str(h2h)],
                          {"smoke": profile}, tmp / "figures")
        subprocess.run([sys.executable, "-m", "recipe_search.cli", "search", str(model), "--text",
                        profile.text_spec(profile.search), "--ctx", "128", "--chunks", "4", "--trials", "3",
                        "--dir", str(tmp / "study"), "--quiet"], check=True)
        out = tmp / "time-to-hand.json"
        code = main(["--profile", "smoke", "--h2h", str(h2h), "--studies", str(tmp / "study"),
                     "--work", str(tmp / "h2h"), "--json", str(out)], {"smoke": profile})
        return code or main(["--markdown", str(out)])


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
