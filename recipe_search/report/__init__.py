"""Plots and the Markdown page of a study."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_API = {
    "read_sensitivity": "page",
    "sensitivity_csvs": "page",
    "sensitivity_metric": "page",
    "write_report": "page",
    "plot_frontier": "plots",
    "plot_sensitivity": "plots",
    "plot_tasks": "plots",
}
__all__ = list(_API)  # noqa: PLE0604
__getattr__, __dir__ = lazy_exports(__name__, globals(), _API)

if TYPE_CHECKING:
    from .page import read_sensitivity as read_sensitivity
    from .page import sensitivity_csvs as sensitivity_csvs
    from .page import sensitivity_metric as sensitivity_metric
    from .page import write_report as write_report
    from .plots import plot_frontier as plot_frontier
    from .plots import plot_sensitivity as plot_sensitivity
    from .plots import plot_tasks as plot_tasks
