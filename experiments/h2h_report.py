"""Head to head (experiments/head_to_head.py): the report. Hypervolume against charged time, the picks at each
size target re-scored on the held-out text and tested against the study's, the held-out frontiers; the results
file's contents, the two figures, the printed tables and the report's Markdown tables (experiments/reports/head-to-head.md)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from h2h_methods import PRESETS, STUDIES, Method, Point, study_options
from h2h_profiles import ROOT, Setup, provenance

from recipe_search.core import (
    frontier_2d,
    hypervolume_2d,
    paired_bootstrap,
    pick_at_target,
    scored_per_chunk,
    spearman,
    statistic_of,
)
from recipe_search.study import Chosen, validate

#: the statistics reported on the held-out text, each with its chunk-bootstrap interval
HELD_OUT_METRICS = ("kld_p999", "kld_p99", "kld_mean")


# -- analysis ---------------------------------------------------------------------------------------
def hv_curve(points: list[Point], ref: tuple[float, float]) -> list[tuple[float, float]]:
    """(time, hypervolume) after each point, in the order the method knew them."""
    out, pts = [], []
    for p in sorted(points, key=lambda p: p.t_s):
        pts.append([p.file_bytes, math.log10(max(p.metrics["kld_p999"], 1e-12))])
        out.append((p.t_s, hypervolume_2d(np.array(pts), ref)))
    return out


def hypervolume(points: list[Point], ref: tuple[float, float]) -> float:
    curve = hv_curve(points, ref)
    return curve[-1][1] if curve else 0.0


def frontier(points: list[Point]) -> list[Point]:
    """The points no other is smaller and better than in 99.9% KLD, by increasing file size."""
    return [points[i] for i in frontier_2d([p.file_bytes for p in points], [p.metrics["kld_p999"] for p in points])]


def best_at(points: list[Point], target: float) -> Point | None:
    """The lowest 99.9% KLD at or under ``target`` bits per weight."""
    i = pick_at_target([p.bpw for p in points], [p.metrics["kld_p999"] for p in points], target)
    return None if i is None else points[i]


def held_out(s: Setup, p: Point, n_boot: int, second: bool = True) -> dict:
    """``p`` re-scored on the held-out text (and, with ``second``, on the profile's second domain, as `second`), with
    chunk-bootstrap intervals."""
    def scored(worker) -> dict:
        v = validate(worker, [Chosen(p.name, p.recipe)], n_boot=n_boot)[0]
        return {"metrics": {k: v.holdout_metrics[k] for k in HELD_OUT_METRICS},
                "ci95": {k: list(v.intervals[k]) for k in HELD_OUT_METRICS},
                "tokens": np.asarray(v.kld_tokens, np.float64)}

    out = scored(s.holdout)
    if second and s.second is not None:
        out["second"] = {k: v for k, v in scored(s.second).items() if k in ("metrics", "ci95")}
    return out


def time_to(curve: list[tuple[float, float]], level: float) -> float | None:
    return next((t for t, hv in curve if hv >= level * (1 - 1e-12)), None)


def count_to(curve: list[tuple[float, float]], level: float) -> int | None:
    """Measurements until the hypervolume reaches ``level`` (a steadier axis than time on a loaded machine)."""
    return next((i for i, (_, hv) in enumerate(curve, 1) if hv >= level * (1 - 1e-12)), None)


# -- the results file -------------------------------------------------------------------------------
def results(s: Setup, methods: list[Method], *, profile_name: str, chunks: int, trials: list[int], seeds: list[int],
            n_boot: int, holdout_frontiers: list[str] | None, figures: Path, prefix: str) -> dict:
    """Everything the results file records, the held-out measurements made on the way; the figures written into
    ``figures`` as ``prefix``-*.png."""
    profile, ref = s.profile, s.reference_point
    curves = {m.label: hv_curve(m.points, ref) for m in methods}
    final = {m.label: (curves[m.label][-1][1] if curves[m.label] else 0.0) for m in methods}
    hand_m = next((m for m in methods if m.key == "hand"), None)
    result: dict = {
        "model": profile.label, "search_text": profile.text(profile.search).label,
        "holdout_text": profile.text(profile.holdout).label, "imatrix_text": profile.text(profile.calibration).label,
        **({"second_holdout_text": s.second.settings.text.label} if s.second else {}),
        "provenance": provenance(s), "ctx": profile.ctx, "chunks": chunks,
        "scored_tokens": s.search.reference.meta["n_tokens"],
        "holdout_scored_tokens": s.holdout.reference.meta["n_tokens"],
        "ladder": list(profile.ladder), "searched": list(profile.searched), "sweep_chunks": s.config.sweep_chunk_count,
        "rest": list(profile.rest), "rest_ladder": list(profile.rest_ladder),
        "studies": {k: study_options(profile, k) for k in STUDIES},
        "targets_bpw": list(profile.targets), "presets": list(PRESETS),
        "objectives": ["size", "kld_p999"], "reference_point": {"file_bytes": ref[0], "log10_kld_p999": ref[1]},
        "methods": {}, "time_to_hypervolume": {}, "targets": {}, "holdout_frontiers": {}}
    for m in methods:
        entry = {"charged_s": round(m.clock, 1), "measured": len(m.points), "final_hv": final[m.label],
                 "frontier": [p.row() for p in frontier(m.points)]}
        if m.key.startswith("study"):
            entry["checkpoints"] = {str(k): {"charged_s": round(m.checkpoints[k][0], 1),
                                             "hv": hypervolume(m.points[:m.checkpoints[k][1]], ref)}
                                    for k in trials if k in m.checkpoints}
        result["methods"][m.label] = entry
    if hand_m:
        goal = final[hand_m.label]
        for m in methods:
            t_goal = time_to(curves[m.label], goal)
            result["time_to_hypervolume"][m.label] = {
                "t_to_hand_final_s": t_goal, "fraction_of_hand_time": None if t_goal is None else t_goal / hand_m.clock,
                "t_to_90pct_hand_final_s": time_to(curves[m.label], 0.9 * goal),
                "measurements_to_hand_final": count_to(curves[m.label], goal)}
    # held-out: each method's pick per target, tested against the study's (seed 0, its largest trial count)
    held: dict[tuple[str, str], dict] = {}

    def measure_held(p: Point, second: bool = True) -> dict:
        key = (p.method + p.run, p.name)
        if key not in held or (second and s.second is not None and "second" not in held[key]):
            held[key] = held_out(s, p, n_boot, second)
        return held[key]

    for target in profile.targets:
        rows = {}
        for m in methods:
            p = m.picks.get(target) or best_at(m.points, target)
            if p is None:
                continue
            h = measure_held(p)
            rows[m.label] = {**p.row(), "holdout": h["metrics"], "holdout_ci95": h["ci95"],
                             **({"second": h["second"]} if "second" in h else {})}
        for m in methods:
            if not m.key.startswith("study") or m.label not in rows:
                continue
            p_e = m.picks.get(target) or best_at(m.points, target)
            assert p_e is not None  # it has a row, so it has a pick
            t_e = measure_held(p_e)["tokens"]
            for other in methods:
                if other.key.startswith("study") or other.label not in rows:
                    continue
                p_o = other.picks.get(target) or best_at(other.points, target)
                assert p_o is not None
                t_o = measure_held(p_o)["tokens"]
                lo, hi = paired_bootstrap(t_o, t_e, statistic_of("kld_p999"), scored_per_chunk(profile.ctx),
                                          n_boot=n_boot)
                rows[m.label].setdefault("vs", {})[other.label] = {
                    "diff_other_minus_study_ci95": [lo, hi],
                    "call": "study better" if lo > 0 else "other better" if hi < 0 else "tie"}
        baselines = [rows[m.label]["holdout"]["kld_p999"] for m in methods
                     if m.key in ("presets", "kld-greedy", "weight-error", "templates") and m.label in rows]
        for m in methods:
            if m.key.startswith("study") and m.label in rows and baselines:
                rows[m.label]["at_least_as_good_as_best_of_a_c_d_f"] = \
                    rows[m.label]["holdout"]["kld_p999"] <= min(baselines)
        result["targets"][f"{target:.2f}bpw"] = rows
    front_methods = set(holdout_frontiers) if holdout_frontiers is not None else {m.key for m in methods}
    holdout_fronts: dict[str, list] = {}
    for m in methods:
        if m.key not in front_methods or (m.key.startswith("study") and m.run != str(seeds[0])):
            continue
        front_rows = []
        for p in frontier(m.points):  # the figure's frontiers: held-out text only
            h = measure_held(p, second=False)
            front_rows.append({**p.row(), "holdout": h["metrics"], "holdout_ci95": h["ci95"]})
        holdout_fronts[m.label] = front_rows
        if len(front_rows) >= 3:
            result["holdout_frontiers"][m.label] = {
                "spearman_kld_p999": spearman([r["kld_p999"] for r in front_rows],
                                              [r["holdout"]["kld_p999"] for r in front_rows]),
                "points": front_rows}
        else:
            result["holdout_frontiers"][m.label] = {"spearman_kld_p999": None, "points": front_rows}
    for m in methods:  # the others: their picks at the targets, measured on the held-out text above
        if m.label not in holdout_fronts:
            picked = [result["targets"][f"{t:.2f}bpw"].get(m.label) for t in profile.targets]
            holdout_fronts[m.label + " (picks)"] = [r for r in picked if r]
    result["figures"] = plot(methods, curves, holdout_fronts, figures, ref, prefix, profile_name)
    return result


# -- figures ----------------------------------------------------------------------------------------
def plot(methods: list[Method], curves: dict[str, list], holdout_fronts: dict[str, list], out_dir: Path,
         ref: tuple[float, float], prefix: str, model: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"presets": "tab:gray", "hand": "tab:brown", "kld-greedy": "tab:green", "weight-error": "tab:olive",
               "study": "tab:blue", "study-seeded": "tab:red", "study-plain": "tab:cyan", "study-dense": "tab:pink",
               "study-sweep2": "tab:orange",
               "templates": "tab:purple"}
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 5))
    for m in methods:
        c = curves[m.label]
        if c:
            t, hv = zip(*c)
            ax.step(np.array(t) / 60, hv, where="post", color=colours[m.key], alpha=0.9 if not m.key.startswith("study") else 0.7,
                    label=m.key if not m.run else f"{m.key} (one line per seed)" if m.run == "0" else None)
    ax.set_xlabel("charged wall time (min; measuring, plus the sweep / table for (c), (d), (e))")
    ax.set_ylabel("hypervolume, file bytes x log10 99.9% KLD (search text)")
    ax.set_title(f"{model}: hypervolume against time (reference {ref[0]:.4g} B, KLD {10 ** ref[1]:g})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    hv_png = out_dir / f"{prefix}-hypervolume.png"
    fig.savefig(hv_png, dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 5))
    markers = {"presets": "s", "hand": "x", "kld-greedy": "^", "weight-error": "v", "study": "o", "study-seeded": "P",
               "study-plain": "*", "study-dense": "p", "study-sweep2": "h", "templates": "D"}
    for label, rows in holdout_fronts.items():
        if not rows:
            continue
        key = label.split(" seed ")[0].removesuffix(" (picks)")
        rows = sorted(rows, key=lambda r: r["bpw"])
        ax.plot([r["bpw"] for r in rows], [r["holdout"]["kld_p999"] for r in rows], marker=markers[key],
                color=colours[key], label=label, alpha=0.85)
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight")
    ax.set_ylabel("99.9% KLD on the held-out text")
    ax.set_title("chosen on the search text, re-scored on the held-out text\n(the study's final frontier; "
                 "the others' picks at the size targets)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    front_png = out_dir / f"{prefix}-holdout-frontiers.png"
    fig.savefig(front_png, dpi=120)
    plt.close(fig)
    return [_recorded(hv_png), _recorded(front_png)]


def _recorded(path: Path) -> str:
    """A figure's path as the results file records it: relative to the repository (the smoke mode's lie outside)."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# -- tables -----------------------------------------------------------------------------------------
def print_tables(r: dict) -> None:
    print(f"reference point: {r['reference_point']}")
    print(f"{'method':<18}{'charged':>9}{'measured':>9}{'final HV':>12}{'t to hand HV':>14}{'fraction':>9}")
    for label, e in r["methods"].items():
        t = r["time_to_hypervolume"].get(label, {})
        tt, fr = t.get("t_to_hand_final_s"), t.get("fraction_of_hand_time")
        print(f"{label:<18}{e['charged_s']:>8.0f}s{e['measured']:>9}{e['final_hv']:>12.5g}"
              f"{'-' if tt is None else f'{tt:.0f}s':>14}{'-' if fr is None else f'{fr:.2f}':>9}")
    for target, rows in r["targets"].items():
        print(f"\n{target}: best recipe of each method (search text), held-out 99.9% KLD [95% chunk bootstrap]")
        for label, row in rows.items():
            lo, hi = row["holdout_ci95"]["kld_p999"]
            vs = ", ".join(f"{o}: {v['call']}" for o, v in row.get("vs", {}).items())
            print(f"  {label:<16}{row['bpw']:>7.3f} bpw  search {row['kld_p999']:.4f}  held-out "
                  f"{row['holdout']['kld_p999']:.4f} [{lo:.4f}, {hi:.4f}]  {vs}")


def markdown(r: dict) -> str:
    """The report's tables from a results file: time to hypervolume, and the picks at each size target."""
    lines = [("| method | measured | charged time | final HV (search text) | time to (b)'s final HV | fraction of (b)'s "
              "time | measurements to (b)'s final HV |"), "|---|---:|---:|---:|---:|---:|---:|"]
    for label, e in r["methods"].items():
        t = r["time_to_hypervolume"].get(label, {})
        tt, fr, n = t.get("t_to_hand_final_s"), t.get("fraction_of_hand_time"), t.get("measurements_to_hand_final")
        lines.append(f"| {label} | {e['measured']} | {e['charged_s'] / 60:.1f} min | {e['final_hv']:.4g} | "
                     f"{'not reached' if tt is None else f'{tt / 60:.1f} min'} | {'-' if fr is None else f'{fr:.2f}'} | "
                     f"{'-' if n is None else n} |")
    lines += ["", "Each change to the study, before and after (search-text hypervolume after 20 / 40 / 80 searched trials, "
              "fraction of (b)'s time to its final hypervolume, and the held-out 99.9% KLD of the final pick per target):",
              "", "| study | seed | HV @20 | HV @40 | HV @80 | fraction of (b)'s time | "
              + " | ".join(f"held-out 99.9% @ {t}" for t in r["targets"]) + " |",
              "|---|---|---:|---:|---:|---:|" + "---:|" * len(r["targets"])]
    for label, e in r["methods"].items():
        if "checkpoints" not in e:
            continue
        key, seed = label.split(" seed ")
        hv = [e["checkpoints"].get(str(n), {}).get("hv") for n in (20, 40, 80)]
        fr = r["time_to_hypervolume"].get(label, {}).get("fraction_of_hand_time")
        picks = [rows.get(label, {}).get("holdout", {}).get("kld_p999") for rows in r["targets"].values()]
        lines.append(f"| {key} | {seed} | " + " | ".join("-" if v is None else f"{v:.4g}" for v in hv)
                     + f" | {'not reached' if fr is None else f'{fr:.2f}'} | "
                     + " | ".join("-" if v is None else f"{v:.3f}" for v in picks) + " |")
    second = "second_holdout_text" in r
    for target, rows in r["targets"].items():
        lines += ["", (f"**{target}** (the best recipe at or under it by the search text; held-out 99.9% and 99% KLD "
                       "with 95% chunk-bootstrap intervals; the study's picks tested against each other method's, "
                       "paired chunk bootstrap of the held-out 99.9% KLD):"), "",
                  "| method | recipe | bpw | search 99.9% | held-out 99.9% [95%] | held-out 99% [95%] | "
                  + ("second domain 99.9% [95%] | " if second else "") + "vs the study |",
                  "|---|---|---:|---:|---:|---:|" + ("---:|" if second else "") + "---|"]
        calls: dict[str, list[str]] = {}
        for label, row in rows.items():
            for other, v in row.get("vs", {}).items():
                kind, seed = label.split(" seed ")
                calls.setdefault(other, []).append(f"{kind} {seed}: {v['call'].replace('study ', '')}")
        for label, row in rows.items():
            h, ci = row["holdout"], row["holdout_ci95"]
            mark = ""
            if "at_least_as_good_as_best_of_a_c_d_f" in row:
                mark = "at least as good as the best of (a),(c),(d),(f)" if row["at_least_as_good_as_best_of_a_c_d_f"] \
                    else "worse than the best of (a),(c),(d),(f)"
            lines.append(f"| {label} | {row['name']} | {row['bpw']:.3f} | {row['kld_p999']:.3f} | {h['kld_p999']:.3f} "
                         f"[{ci['kld_p999'][0]:.3f}, {ci['kld_p999'][1]:.3f}] | {h['kld_p99']:.3f} "
                         f"[{ci['kld_p99'][0]:.3f}, {ci['kld_p99'][1]:.3f}] | "
                         + (f"{row['second']['metrics']['kld_p999']:.3f} [{row['second']['ci95']['kld_p999'][0]:.3f}, "
                            f"{row['second']['ci95']['kld_p999'][1]:.3f}] | " if second else "")
                         + f"{mark or '; '.join(calls.get(label, []))} |")
    return "\n".join(lines)
