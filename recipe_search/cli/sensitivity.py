"""Commands on sensitivity sweeps and the surrogate: sensitivity."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import _imatrix_input, _log, _model, command
from .scoring import _add_scoring_args, _settings


def sensitivity_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the unquantized model (or `demo`)")
    p.add_argument("--tensor-types", nargs="+", metavar="TENSOR_TYPE",
                   help="tensor types to sweep (default: every one llama.cpp quantizes)")
    p.add_argument("--types", nargs="+", metavar="GGML_TYPE",
                   help="ggml types to try (default: the search ladder; types a tensor's rows cannot take, "
                        "and imatrix-only types without --imatrix, are left out)")
    _add_scoring_args(p)
    p.add_argument("--imatrix")
    p.add_argument("--out", help="table directory (default: studies/<model stem>-sensitivity); "
                                 "cells already there are not measured again")
    p.add_argument("--metric", help="metric of the printed table and the chart (default: kld_p999, or weight_error "
                                    "with --proxy weight-error)")
    p.add_argument("--proxy", choices=["kld", "weight-error"], default="kld",
                   help="kld: measure every cell (the default); weight-error: the imatrix-weighted squared "
                        "quantization error of each cell's tensors, from the tensor cache, with no model evaluation")
    p.add_argument("--quiet", action="store_true")


@command("sensitivity", "quantize one tensor type at a time (the rest at source precision) and measure each")
def sensitivity(a: argparse.Namespace) -> int:
    from ..core.locations import cache_dir
    from ..engine.worker import Worker
    from ..errors import RecipeSearchError
    from ..formats.files import check_output_dir
    from ..sensitivity.sweep import default_out, run_sweep
    from ..sensitivity.table import CELL_COLUMNS, TABLE_METRICS

    known = TABLE_METRICS[a.proxy]
    if a.metric is None:
        a.metric = known[0] if a.proxy == "weight-error" else "kld_p999"
    elif a.metric not in known and a.metric not in CELL_COLUMNS[2:]:  # checked before the sweep, not after it
        raise RecipeSearchError(f"no metric {a.metric!r} in a {a.proxy} table (one of {', '.join(known)})")
    model = _model(a.model)
    out = check_output_dir(Path(a.out) if a.out else default_out(model))
    cache = cache_dir(a.cache_dir)
    worker = Worker(model, _settings(a), cache, cache / "work", imatrix=_imatrix_input(a.imatrix) if a.imatrix else None)
    if a.proxy == "weight-error":
        from ..sensitivity.weight_error import run_weight_error

        table = run_weight_error(worker, out, a.tensor_types, a.types, log=_log(a.quiet))
    else:
        table = run_sweep(worker, out, a.tensor_types, a.types, log=_log(a.quiet))
    if a.metric not in table.rows[0]:
        raise RecipeSearchError(f"no metric {a.metric!r} in the table (try kld_p999, kld_p99, kld_mean, ppl_ratio)")
    _print_matrix(table.rows, a.metric)
    print(f"table: {out}")
    try:
        from ..report.plots import plot_sensitivity
    except ImportError:
        print("chart: skipped (recipe_search.report.plots is not available)")
        return 0
    chart = out / f"sensitivity-{a.metric}.png"
    plot_sensitivity(table.rows, chart, metric=a.metric)
    print(f"chart: {chart}")
    return 0


def _print_matrix(rows: list[dict], metric: str) -> None:
    """One line per tensor type, one column per ggml type (most bits first)."""
    types = sorted({r["ggml_type"] for r in rows}, key=lambda t: -next(r["bpw"] for r in rows if r["ggml_type"] == t))
    kinds = list(dict.fromkeys(r["tensor_type"] for r in rows))
    value = {(r["tensor_type"], r["ggml_type"]): r[metric] for r in rows}
    width = max(len(k) for k in kinds)
    print(f"{metric} by tensor type (rows) and ggml type (columns)")
    print(" " * width + "".join(f"{t:>9}" for t in types))
    for k in kinds:
        cells = "".join(f"{value[(k, t)]:>9.3g}" if (k, t) in value else f"{'-':>9}" for t in types)
        print(f"{k:<{width}}{cells}")
