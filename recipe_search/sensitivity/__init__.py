"""Sensitivity tables (pure), the sweep that measures them, the weight-error proxy, the surrogate
and its allocator."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_API = {
    "Allocator": "surrogate",
    "Surrogate": "surrogate",
    "refit_allocation": "surrogate",
    "seed_allocations": "surrogate",
    "table_allocator": "surrogate",
    "Rescaled": "rescaling",
    "rescale": "rescaling",
    "default_out": "sweep",
    "run_sweep": "sweep",
    "SensitivityTable": "table",
    "space_ladders": "table",
    "run_weight_error": "weight_error",
}
__all__ = list(_API)  # noqa: PLE0604
__getattr__, __dir__ = lazy_exports(__name__, globals(), _API)

if TYPE_CHECKING:
    from .rescaling import Rescaled as Rescaled
    from .rescaling import rescale as rescale
    from .surrogate import Allocator as Allocator
    from .surrogate import Surrogate as Surrogate
    from .surrogate import refit_allocation as refit_allocation
    from .surrogate import seed_allocations as seed_allocations
    from .surrogate import table_allocator as table_allocator
    from .sweep import default_out as default_out
    from .sweep import run_sweep as run_sweep
    from .table import SensitivityTable as SensitivityTable
    from .table import space_ladders as space_ladders
    from .weight_error import run_weight_error as run_weight_error
