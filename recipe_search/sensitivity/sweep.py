"""The sensitivity sweep: quantize one tensor type at a time, every other tensor at the source precision;
each cell is one worker measurement, written into a `table` after each cell."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..core.inventory import model_fingerprint
from ..core.locations import shareable
from ..engine.prefill import AHEAD
from ..engine.worker import Worker
from ..formats.ggml_types import GGMLType, bits_per_weight
from .table import TABLE_FORMAT, SensitivityTable, planned_cells, sweep_ladders


def sweep_meta(worker: Worker) -> dict:
    """What a table's cells depend on: the model, the scoring reference (text, ctx, chunks) and the imatrix."""
    s = worker.settings
    return {"format": TABLE_FORMAT, "model": worker.model.name,
            "model_fingerprint": model_fingerprint(worker.inventory), "reference": worker.reference.path.name,
            "text": s.text.label, "ctx": s.ctx, "chunks": s.chunks,
            "text_spec": None if s.text.path is None else shareable(f"{s.text.path}[{s.text.start:g}:{s.text.end:g}]"),
            "imatrix": worker.imatrix.digest if worker.imatrix else None,
            "imatrix_file": worker.imatrix.file if worker.imatrix else None}


def default_out(model: Path) -> Path:
    return Path("studies") / f"{model.stem}-sensitivity"


def run_sweep(worker: Worker, out: Path, tensor_types: list[str] | None = None, types: list[str] | None = None,
              log: Callable[[str], None] = lambda msg: None,
              ladders: dict[str, tuple[GGMLType, ...]] | None = None) -> SensitivityTable:
    """Measure every cell not yet in the table at ``out`` (the cells of ``ladders``, or of the tensor types
    and types given), saving after each; returns the table. Each row records its measuring seconds."""
    inv = worker.inventory
    if ladders is None:
        ladders = sweep_ladders(inv, worker.imatrix is not None, tensor_types, types,
                                 None if worker.imatrix is None else worker.imatrix.arrays.keys())
    cells = planned_cells(inv, ladders)
    table = SensitivityTable.open(out, sweep_meta(worker))
    todo = [c for c in cells if table.cell(c[0], c[1].name) is None]
    log(f"{len(cells)} cells, {len(cells) - len(todo)} in the table already, {len(todo)} to measure")
    for i, (kind, t, resolution) in enumerate(todo, 1):
        m = worker.measure(resolution, then=[r for _, _, r in todo[i:i + AHEAD]])
        row = {"tensor_type": kind, "ggml_type": t.name, "bpw": bits_per_weight(t),
               "n_elements": inv.kinds[kind].n_elements, "file_bytes": m.file_bytes, **m.metrics,
               "seconds": round(sum(m.seconds.values()), 3)}
        table.add(row, m.kld_tokens)
        table.save()
        log(f"[{i}/{len(todo)}] {kind} {t.name}: mean KLD {m.metrics['kld_mean']:.5f}, "
            f"99.9% {m.metrics['kld_p999']:.4f} ({sum(m.seconds.values()):.1f} s)")
    return table

