"""Plots of a study: the Pareto frontier and the sensitivity charts.

The plotting functions build matplotlib Figures without pyplot (Agg canvas, no global state), save
them when given a path and return them, so their axes and legends can be inspected.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from matplotlib.transforms import Bbox

from ..core.metrics import LABELS, MAXIMISE
from ..core.roles import RoleProfile
from ..errors import RecipeSearchError
from ..study._selection import Selection

SENSITIVITY_COLUMNS = ("tensor_type", "ggml_type", "bpw")
_DPI = 110


def metric_label(metric: str) -> str:
    return f"{LABELS[metric]} ({metric})" if metric in LABELS else metric


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path | None) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=_DPI)


def _log_y(ax) -> None:
    """Log y axis with plain numbers; minor ticks labelled (2, 3, 5 x 10^k) when the axis spans little."""
    ax.set_yscale("log")

    def minor(v: float, _pos: int) -> str:
        lo, hi = ax.get_ylim()
        mantissa = round(v / 10 ** np.floor(np.log10(v)), 6)
        wanted = (2, 3, 4, 5, 6, 8) if hi / lo < 6 else (2, 3, 5) if hi / lo < 40 else ()
        return f"{v:g}" if mantissa in wanted else ""

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


#: where a point's label may go, tried in turn: (dx, dy) in points and the alignment
_LABEL_SPOTS = ((5, -10, "left"), (5, 4, "left"), (-5, -10, "right"), (-5, 4, "right"), (8, -3, "left"),
                (5, -19, "left"), (5, 13, "left"))


def _place_labels(ax, labels: list[tuple[float, float, str, str]], fontsize: float = 7.5) -> None:
    """Annotate (x, y, text, colour) points, each at the first spot around its point where it overlaps
    neither a label already placed nor a labelled point."""
    fig = ax.figure
    fig.canvas.draw()  # settle the limits, so data map to pixels as they will be drawn
    renderer = fig.canvas.get_renderer()
    half = 4.0 * fig.dpi / 72
    taken = [Bbox.from_extents(px - half, py - half, px + half, py + half)
             for px, py in (ax.transData.transform((x, y)) for x, y, _, _ in labels)]
    for x, y, text, color in labels:
        ann = ax.annotate(text, (x, y), xytext=(0, 0), textcoords="offset points", fontsize=fontsize, color=color)
        for dx, dy, ha in (*_LABEL_SPOTS, _LABEL_SPOTS[0]):  # none free: the first spot
            ann.xyann = (dx, dy)
            ann.set_horizontalalignment(ha)
            box = ann.get_window_extent(renderer)
            if not any(box.overlaps(b) for b in taken):
                break
        taken.append(box)


def _size_unit(nbytes: float) -> tuple[str, float]:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return unit, float(scale)
    return "B", 1.0


# -- frontier --------------------------------------------------------------------------------------
def plot_frontier(sel: Selection, path: Path | None = None) -> Figure:
    """Every measured trial faint, the frontier as a step line (hollow where a point ties its smaller
    neighbour), reference recipes and presets by name, target picks starred; x bits per weight with the
    file size on the top axis, y the objective (log scale for KLD-like metrics)."""
    fig = _new_figure(11.5, 5.6)
    ax = fig.add_subplot()
    cands = sel.candidates
    bpw = np.array([c.bpw for c in cands])
    q = np.array([sel.quality(c) for c in cands])
    ax.scatter(bpw, q, s=14, color="0.55", alpha=0.35, linewidths=0, label=f"measured trials ({len(cands)})", zorder=1)

    fx = np.array([cands[p.candidate].bpw for p in sel.frontier])
    fy = np.array([sel.quality(cands[p.candidate]) for p in sel.frontier])
    ax.step(fx, fy, where="post", color="tab:blue", lw=1.8, label="Pareto frontier", zorder=2)
    tied = np.array([p.distinct is False for p in sel.frontier], dtype=bool)
    tested = any(p.test is not None for p in sel.frontier)
    ax.scatter(fx[~tied], fy[~tied], s=70, color="tab:blue", zorder=3,
               label="frontier point: the smallest, or distinct from the next smaller" if tested else "frontier point")
    if tied.any():
        ax.scatter(fx[tied], fy[tied], s=70, facecolors="none", edgecolors="tab:blue", linewidths=1.5, zorder=3,
                   label="frontier point, tie with the next smaller (95% paired chunk bootstrap)")
    labels = [(cands[p.candidate].bpw, sel.quality(cands[p.candidate]), f"#{cands[p.candidate].number}", "tab:blue")
              for p in sel.frontier if cands[p.candidate].reference is None]

    uniform = [c for c in cands if c.reference and c.reference.startswith("uniform-")]
    presets = [c for c in cands if c.reference and not c.reference.startswith("uniform-")]
    for group, marker, color, label in ((uniform, "^", "tab:green", "uniform recipes"),
                                        (presets, "D", "tab:purple", "llama.cpp presets")):
        if not group:
            continue
        ax.scatter([c.bpw for c in group], [sel.quality(c) for c in group], marker=marker, s=24, color=color,
                   zorder=4, label=label)
        labels += [(c.bpw, sel.quality(c), (c.reference or "").removeprefix("uniform-").removeprefix("preset-"), color)
                   for c in group]

    fit = _bytes_per_bpw(sel)
    picks = [(p, cands[p.candidate]) for p in sel.picks if p.candidate is not None]
    if picks:
        ax.scatter([c.bpw for _, c in picks], [sel.quality(c) for _, c in picks], marker="*", s=190,
                   color="tab:orange", edgecolors="black", linewidths=0.6, zorder=5, label="pick at a size target")
    for i, pick in enumerate(sel.picks):
        x = pick.target.value if pick.target.kind == "bpw" else (None if fit is None else
                                                                  (pick.target.value - fit[1]) / fit[0])
        if x is not None and bpw.min() - 0.5 <= x <= bpw.max() + 0.5:
            ax.axvline(x, color="tab:orange", ls=":", lw=1.1, zorder=0)
            ax.annotate(f"≤ {pick.target.label}", (x, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(3, -12 - 10 * (i % 3)), textcoords="offset points", fontsize=7.5, color="tab:orange")

    if sel.objective not in MAXIMISE and np.all(q > 0):
        _log_y(ax)
    ax.set_xlabel("bits per weight")
    ax.set_ylabel(metric_label(sel.objective))
    if fit is not None:
        unit, scale = _size_unit(max(c.file_bytes for c in cands))
        a, b = fit
        top = ax.secondary_xaxis("top", functions=(lambda x: (a * np.asarray(x) + b) / scale,
                                                   lambda s: (np.asarray(s) * scale - b) / a))
        top.set_xlabel(f"file size ({unit})")
    ax.grid(True, which="both", color="0.92", lw=0.6)
    ax.set_title(f"{sel.study}: {sel.objective} against size — {len(sel.frontier)} of {len(cands)} measured "
                 f"recipes on the frontier", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7.5)  # outside: no corner is always free
    _place_labels(ax, labels)
    _save(fig, path)
    return fig


def _bytes_per_bpw(sel: Selection) -> tuple[float, float] | None:
    """file bytes ≈ a·bpw + b over the measured trials (metadata and padding make it affine, not exact)."""
    bpw = np.array([c.bpw for c in sel.candidates])
    if len(np.unique(bpw)) < 2:
        return None
    a, b = np.polyfit(bpw, np.array([c.file_bytes for c in sel.candidates], dtype=float), 1)
    return (float(a), float(b)) if a > 0 else None


# -- sensitivity -----------------------------------------------------------------------------------
def plot_sensitivity(rows: list[dict], path: Path | None = None, metric: str = "kld_p999",
                     title: str | None = None) -> Figure:
    """One line per tensor type: the metric (log scale) when that tensor type alone gets a ggml type,
    against the type's bits per weight; the top axis names the ggml types."""
    series: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for r in rows:
        try:
            x, y = float(r["bpw"]), float(r[metric])
        except (KeyError, TypeError, ValueError):
            continue
        series[str(r["tensor_type"])].append((x, y, str(r["ggml_type"])))
    if not series:
        raise RecipeSearchError(f"no sensitivity row has numbers for bpw and {metric}")
    fig = _new_figure(9.5, 5.6)
    ax = fig.add_subplot()
    colors = [f"C{i}" for i in range(10)]
    markers = "osD^vP*Xph"
    for i, (kind, pts) in enumerate(sorted(series.items())):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors[i % 10], marker=markers[i // 10 % 10],
                ms=4.5, lw=1.4, label=kind)
    names: dict[float, set[str]] = defaultdict(set)
    for pts in series.values():
        for x, _, t in pts:
            names[round(x, 4)].add(t)
    if all(y > 0 for pts in series.values() for _, y, _ in pts):
        _log_y(ax)
    top = ax.secondary_xaxis("top")
    top.set_xticks(sorted(names), ["/".join(sorted(names[x])) for x in sorted(names)], rotation=55, fontsize=7,
                   ha="left")
    ax.set_xlabel("bits per weight of the ggml type")
    ax.set_ylabel(metric_label(metric))
    ax.grid(True, which="both", color="0.92", lw=0.6)
    ax.set_title(title or f"sensitivity: {metric} with one tensor type quantized", fontsize=10)
    ax.legend(title="tensor type", loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7.5, title_fontsize=8)
    _save(fig, path)
    return fig


def plot_role_profiles(profiles: dict[str, RoleProfile], path: Path | None = None) -> Figure:
    """Bits per weight against relative depth, one panel per role group, one line per recipe (recipes of
    different model families in one plot)."""
    groups = sorted({g for p in profiles.values() for g in p.points})
    if not groups:
        raise RecipeSearchError("no recipe has a quantized tensor of a known role")
    cols = min(3, len(groups))
    rows = -(-len(groups) // cols)
    fig = _new_figure(4.2 * cols, 3.0 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, group in zip(axes.flat, groups):
        for i, (label, profile) in enumerate(profiles.items()):  # one colour per recipe in every panel
            curve = profile.curve(group)
            if curve:
                xs, ys = zip(*curve)
                ax.plot(xs, ys, marker="o", markersize=3, label=label, color=f"C{i}")
        ax.set_title(group)
        ax.set_xlabel("relative depth (block / blocks)")
        ax.set_ylabel("bits per weight")
        ax.set_xlim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="outside lower center", fontsize=7)
    _save(fig, path)
    return fig


# -- task figures ----------------------------------------------------------------------------------
def _task_headline(kind: str, figures: dict) -> tuple[str, float, list[float]] | None:
    """(label, value, 95% interval) a task's panel draws: the accuracy change, or mean tokens to divergence."""
    name = kind.replace("-", "_")
    if f"{name}_agree_tokens" in figures:
        return (f"{kind}: mean tokens to the first divergence", figures[f"{name}_agree_tokens"],
                figures[f"{name}_agree_tokens_ci95"])
    if f"{name}_acc_diff" in figures:
        return (f"{kind}: accuracy − base's (points)", 100 * figures[f"{name}_acc_diff"],
                [100 * v for v in figures[f"{name}_acc_diff_ci95"]])
    return None


def plot_tasks(sel: Selection, path: Path | None = None) -> Figure:
    """The frontier's objective against bits per weight, and beside it each task's figure for the frontier
    recipes `validate --tasks` scored (95% paired intervals over items)."""
    kinds = list(dict.fromkeys(k for f in sel.task_figures.values() for k in f))
    fig = _new_figure(4.2 * (1 + len(kinds)), 4.2)
    axes = fig.subplots(1, 1 + len(kinds), squeeze=False)[0]
    cands = {c.number: c for c in sel.candidates}
    front = [sel.candidates[p.candidate] for p in sel.frontier]
    axes[0].plot([c.bpw for c in front], [sel.quality(c) for c in front], "o-", color="tab:blue", ms=4)
    if sel.objective not in MAXIMISE and all(sel.quality(c) > 0 for c in front):
        _log_y(axes[0])
    axes[0].set_title(f"frontier: {metric_label(sel.objective)}", fontsize=9)
    for ax, kind in zip(axes[1:], kinds, strict=True):
        points = sorted((cands[n].bpw, h) for n, f in sel.task_figures.items() if n in cands and kind in f
                        for h in [_task_headline(kind, f[kind])] if h is not None)
        if points:
            x = np.array([b for b, _ in points])
            y = np.array([h[1] for _, h in points])
            lo = np.array([h[2][0] for _, h in points])
            hi = np.array([h[2][1] for _, h in points])
            ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt="o-", color="tab:red", ms=4, capsize=2, lw=1)
            ax.set_title(points[0][1][0], fontsize=9)
        if "accuracy" in ax.get_title():
            ax.axhline(0, color="0.5", lw=0.8, ls=":")
    for ax in axes:
        ax.set_xlabel("bits per weight")
        ax.grid(True, which="both", color="0.92", lw=0.6)
    fig.suptitle(f"{sel.study}: the frontier on the search text, and its task figures on the held-out text",
                 fontsize=10)
    _save(fig, path)
    return fig
