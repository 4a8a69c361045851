"""The report page of a study: the frontier table, the picks and their recipes, the plots, as Markdown;
and the sensitivity CSVs it draws."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from ..core.metrics import LABELS, SIZE_OBJECTIVES
from ..core.size import human_bytes
from ..errors import RecipeSearchError
from ..formats.files import atomic_write_text
from ..study._selection import Selection, write_picks
from .plots import SENSITIVITY_COLUMNS, plot_frontier, plot_sensitivity, plot_tasks


def sensitivity_csvs(directory: Path) -> list[Path]:
    """The CSV files under ``directory`` whose header has tensor_type, ggml_type and bpw."""
    out = []
    for path in sorted(Path(directory).rglob("*.csv")):
        with open(path, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), [])
        if set(SENSITIVITY_COLUMNS) <= set(header):
            out.append(path)
    if not out:
        raise RecipeSearchError(f"no sensitivity CSV (columns {', '.join(SENSITIVITY_COLUMNS)})", directory)
    return out


def read_sensitivity(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def sensitivity_metric(rows: Sequence[dict], preferred: str) -> str:
    """``preferred`` when the rows have it, else the first KLD-like column they have."""
    columns = set(rows[0]) if rows else set()
    quality = [m for m in LABELS if m not in SIZE_OBJECTIVES]
    for m in (preferred, *quality):
        if m in columns:
            return m
    raise RecipeSearchError(f"sensitivity rows have none of the metrics {', '.join(quality)}")


# -- the page --------------------------------------------------------------------------------------
def markdown(sel: Selection, frontier_png: str, sensitivity_pngs: Sequence[str], recipes: dict[int, str]) -> str:
    """The report page; ``recipes`` maps a pick's index to its written recipe file (relative)."""
    cfg = sel.config
    cols = [o for o in dict.fromkeys([sel.objective, *sel.objectives[1:]])
            if o in sel.candidates[0].metrics and o != "kld_mean"]
    n_tokens = int(sel.candidates[0].metrics.get("n_tokens", 0))
    c = sel.counts
    lines = [f"# Study `{sel.study}`", "",
             f"- model: `{sel.model}`",
             (f"- scoring: text `{cfg.text or 'built-in'}`, ctx {cfg.ctx}, {cfg.chunks} chunks, {n_tokens} scored "
              f"tokens per trial, imatrix {f'`{cfg.imatrix}`' if cfg.imatrix else 'none'}"),
             (f"- trials: {len(sel.candidates)} measured, {c.get('pruned', 0)} pruned, {c.get('duplicates', 0)} "
              f"duplicate, {c.get('fail', 0)} failed, {c.get('running', 0) + c.get('waiting', 0)} running or waiting"),
             f"- objectives: {', '.join(sel.objectives)}; frontier and picks by `{sel.objective}`", "",
             f"![Pareto frontier]({frontier_png})", "", "## Frontier", "",
             (f"Each point is tested against the next smaller frontier point on the same tokens (paired bootstrap of "
              f"`{sel.objective}`, 95%): the interval is of the smaller point's value minus this one's; *distinct* "
              "when it excludes 0, *tie* when not. Ties are not transitive."), "",
             "| trial | name | size | bpw | " + " | ".join(cols) + " | mean KLD | vs next smaller |",
             "|---:|---|---:|---:|" + "---:|" * len(cols) + "---:|---|"]
    for p in sel.frontier:
        cand = sel.candidates[p.candidate]
        ci = "" if p.test is None else f" ({p.test.low:+.3g} .. {p.test.high:+.3g})"
        lines.append(f"| {cand.number} | {cand.name} | {human_bytes(cand.file_bytes)} | {cand.bpw:.3f} | "
                     + " | ".join(f"{cand.metrics[o]:.4g}" for o in cols)
                     + f" | {cand.metrics.get('kld_mean', float('nan')):.4g} | {sel.status(p)}{ci} |")
    if sel.picks:
        lines += ["", "## Picks", "", f"The best measured `{sel.objective}` at or under each size target.", "",
                  f"| target | trial | name | size | bpw | {sel.objective} | frontier | recipe |",
                  "|---|---:|---|---:|---:|---:|---|---|"]
        for i, pick in enumerate(sel.picks):
            if pick.candidate is None:
                lines.append(f"| {pick.target.label} | | nothing measured fits | | | | | |")
                continue
            cand = sel.candidates[pick.candidate]
            point = sel.point_of(pick.candidate)
            lines.append(f"| {pick.target.label} | {cand.number} | {cand.name} | {human_bytes(cand.file_bytes)} | "
                         f"{cand.bpw:.3f} | {cand.metrics[sel.objective]:.4g} | "
                         f"{sel.status(point) if point else 'off'} | [{recipes[i]}]({recipes[i]}) |")
        for i, pick in enumerate(sel.picks):
            if pick.candidate is not None:
                rules = sel.candidates[pick.candidate].recipe.model_copy(update={"metrics": None, "provenance": None})
                lines += ["", f"### {pick.target.label}: `{recipes[i]}`", "", "```yaml", rules.to_yaml().rstrip(),
                          "```"]
    if sel.task_figures:
        lines += ["", "## Tasks", "", ("The frontier recipes `validate --tasks` scored on the held-out text, against "
                                       "the base model item by item (95% paired intervals over items)."), "",
                  "![task figures](tasks.png)", ""] + _task_table(sel)
    if sensitivity_pngs:
        lines += ["", "## Sensitivity", ""] + [f"![sensitivity]({png})\n" for png in sensitivity_pngs]
    return "\n".join(lines) + "\n"


def _task_table(sel: Selection) -> list[str]:
    kinds = list(dict.fromkeys(k for f in sel.task_figures.values() for k in f))
    by_number = {c.number: c for c in sel.candidates}
    lines = ["| trial | bpw | " + " | ".join(kinds) + " |", "|---:|---:|" + "---|" * len(kinds)]
    for n in sorted(sel.task_figures, key=lambda n: by_number[n].bpw if n in by_number else 0.0):
        if n not in by_number:
            continue
        cells = []
        for kind in kinds:
            f, name = sel.task_figures[n].get(kind, {}), kind.replace("-", "_")
            if f"{name}_agree_tokens" in f:
                cells.append(f"{100 * f[f'{name}_identical']:.1f}% identical, {f[f'{name}_agree_tokens']:.1f} tokens")
            elif f"{name}_acc" in f:
                cells.append(f"{100 * f[f'{name}_acc']:.1f}% ({100 * f[f'{name}_acc_diff']:+.1f}), "
                             f"{f[f'{name}_flips_lost']} lost / {f[f'{name}_flips_gained']} gained")
            else:
                cells.append("")
        lines.append(f"| {n} | {by_number[n].bpw:.3f} | " + " | ".join(cells) + " |")
    return lines


def write_report(sel: Selection, out_dir: Path, sensitivity_dirs: Sequence[Path] = ()) -> Path:
    """Write frontier.png, one sensitivity-<name>.png per sweep CSV, the picked recipes under recipes/ and
    report.md into ``out_dir`` (files of an earlier report there are replaced)."""
    sweeps = [csv_path for directory in sensitivity_dirs for csv_path in sensitivity_csvs(directory)]
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_frontier(sel, out_dir / "frontier.png")
    if sel.task_figures:
        plot_tasks(sel, out_dir / "tasks.png")
    pngs = []
    for csv_path in sweeps:
        rows = read_sensitivity(csv_path)
        name = f"sensitivity-{csv_path.parent.name}-{csv_path.stem}.png"
        plot_sensitivity(rows, out_dir / name, sensitivity_metric(rows, sel.objective),
                         title=f"sensitivity ({csv_path.parent.name}/{csv_path.name})")
        pngs.append(name)
    recipes = {i: str(path.relative_to(out_dir)) for i, path in write_picks(sel, out_dir / "recipes", True).items()}
    page = out_dir / "report.md"
    atomic_write_text(page, markdown(sel, "frontier.png", pngs, recipes))
    return page
