"""The weight-error proxy: a sensitivity table that costs no model evaluation.

For every cell of the sweep (one tensor type at one ggml type, row-size fallbacks resolved per tensor as
llama.cpp would), the tensor cache quantizes the tensors (or finds them already quantized) and has
recorded their imatrix-weighted squared error, sum over columns j of imatrix[j] * sum over rows of
(dequantized - source)^2, each expert weighted by its own imatrix slice (unweighted without an imatrix).
With an imatrix this is, per expert, the expected squared error of the outputs of a token routed to it
(the diagonal approximation); a cell sums it over the tensors, each expert times the share of tokens
routed to it (its imatrix count over the tokens the imatrix saw; without an imatrix, experts used per
token over experts, from the header), so that every tensor's error is per token of the text.

The table has the sweep's directory format (`sensitivity.csv`, `meta.json`, `kld_tokens.npz`), with
`meta.json` saying `"proxy": "weight-error"`: column `kld_mean` holds the summed weighted error of the
cell's tensors (what the additive surrogate and seeding rank by; its scale is not a KLD), `weight_error`
the same value and `weight_error_rel` the error over the weighted sum of squares of the source. No
per-token vectors: `kld_tokens.npz` holds none, and tail predictions are unavailable from such a table.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..core.inventory import Inventory, Tensor, model_fingerprint
from ..core.size import predict_size
from ..engine.worker import Worker
from ..formats.ggml_types import bits_per_weight
from .table import TABLE_FORMAT, SensitivityTable, planned_cells, sweep_ladders

PROXY = "weight-error"


def proxy_meta(worker: Worker) -> dict:
    """What a proxy table depends on: the model and the imatrix (no text, no reference)."""
    return {"format": TABLE_FORMAT, "proxy": PROXY, "model": worker.model.name,
            "model_fingerprint": model_fingerprint(worker.inventory), "reference": None,
            "imatrix": worker.imatrix.digest if worker.imatrix else None,
            "imatrix_file": worker.imatrix.file if worker.imatrix else None}


def expert_shares(worker: Worker) -> dict[str, list[float]]:
    """Per 3-D expert tensor, the share of tokens that pass through each of its experts."""
    inv = worker.inventory
    if worker.imatrix is None:
        return {t.name: [_used_share(inv, t)] * t.shape[2] for t in inv.tensors if len(t.shape) > 2}
    from ..formats.imatrix_file import load_imatrix

    entries = load_imatrix(worker.imatrix.file).entries
    n_tokens = max((float(e.counts.max()) for e in entries.values() if e.counts.size == 1), default=0.0)
    out = {}
    for t in inv.tensors:
        e = entries.get(t.name)
        if len(t.shape) > 2 and e is not None and e.counts.size == t.shape[2] and n_tokens > 0:
            out[t.name] = [float(c) / n_tokens for c in e.counts]
    return out


def _used_share(inv: Inventory, t: Tensor) -> float:
    arch = inv.headers[0].get("general.architecture")
    used = inv.headers[0].get(f"{arch}.expert_used_count")
    return min(1.0, int(used) / t.shape[2]) if used else 1.0


def run_weight_error(worker: Worker, out: Path, tensor_types: list[str] | None = None,
                     types: list[str] | None = None,
                     log: Callable[[str], None] = lambda msg: None) -> SensitivityTable:
    """Fill the tensor cache for every cell and write the weight-error table at ``out``."""
    inv = worker.inventory
    cells = planned_cells(inv, sweep_ladders(inv, worker.imatrix is not None, tensor_types, types,
                                 None if worker.imatrix is None else worker.imatrix.arrays.keys()))
    extra_kv = worker.imatrix.kv() if worker.imatrix else None
    table = SensitivityTable(out, proxy_meta(worker))
    shares = expert_shares(worker)
    log(f"{len(cells)} cells, weight error only (no model evaluation)")
    for i, (kind, t, resolution) in enumerate(cells, 1):
        err = ref = 0.0
        for r in resolution.tensors:
            if r.tensor.kind == kind and r.ggml_type != r.tensor.ggml_type:
                e = worker.tensors.weight_error(r.tensor, r.ggml_type)
                share = shares.get(r.tensor.name)
                err += e.sq_error if share is None else sum(s * x for s, x in zip(share, e.per_expert))
                ref += e.sq_source
        row = {"tensor_type": kind, "ggml_type": t.name, "bpw": bits_per_weight(t),
               "n_elements": inv.kinds[kind].n_elements,
               "file_bytes": predict_size(resolution, inv, extra_kv).file_bytes,
               "kld_mean": err, "weight_error": err, "weight_error_rel": err / ref if ref > 0 else 0.0}
        table.rows.append(row)
        log(f"[{i}/{len(cells)}] {kind} {t.name}: weight error {err:.4g} (relative {row['weight_error_rel']:.3g})")
    table.save()
    return table
