"""What a recipe under a placement puts on the GPU and in system memory: weights, KV cache, recurrent state.

Weights are exact (each tensor's bytes at its resolved type, on the device `placement` gives it); the
KV cache and recurrent state are what llama.cpp allocates (`context_memory`), on their layer's device;
the compute buffers are an estimate (`compute_estimate`), counted on the output layer's device.
"""

from __future__ import annotations

from dataclasses import dataclass

from .inventory import Inventory
from .placement import CPU, GPU, Placement, TensorPlace
from .run_memory import ContextSettings, compute_estimate, context_memory
from .size import SizePrediction, human_bytes

DEVICES = (GPU, CPU)
PARTS = ("weights", "kv", "recurrent", "compute")


@dataclass(frozen=True)
class DeviceMemory:
    """Bytes per part and device; ``compute`` is an estimate, the rest exact."""

    placement: Placement
    settings: ContextSettings | None
    parts: dict[str, dict[str, int]]  # part -> device -> bytes

    def total(self, device: str) -> int:
        return sum(self.parts[p][device] for p in PARTS)

    def to_dict(self) -> dict:
        return {"placement": self.placement.describe(),
                "context": None if self.settings is None else self.settings.__dict__,
                **{p: dict(v) for p, v in self.parts.items()},
                "total": {d: self.total(d) for d in DEVICES}}

    def lines(self) -> list[str]:
        """A small table: one row per part, a column per device."""
        out = [f"placement: {self.placement.describe()}" + ("" if self.settings is None else
               f"; context {self.settings.n_ctx} ({self.settings.n_seq} sequence(s)), "
               f"K {self.settings.type_k.lower()}, V {self.settings.type_v.lower()}"),
               f"{'':<22}{'GPU':>14}{'CPU':>14}"]
        for part in PARTS:
            if self.settings is None and part != "weights":
                continue
            label = part + (" (estimate)" if part == "compute" else "")
            out.append(f"{label:<22}" + "".join(f"{human_bytes(self.parts[part][d]):>14}" for d in DEVICES))
        out.append(f"{'total':<22}" + "".join(f"{human_bytes(self.total(d)):>14}" for d in DEVICES))
        return out


def weight_bytes(prediction: SizePrediction, places: list[TensorPlace]) -> dict[str, int]:
    """Each device's weight bytes (``places``: `Placement.place`). A tensor loaded twice (a tied output) costs
    again unless both copies are on the CPU, where they share the mapped file."""
    size = {t.name: t.bytes for t in prediction.tensors}
    first = {p.name: p.device for p in places if not p.duplicate}
    out = dict.fromkeys(DEVICES, 0)
    for p in places:
        if not (p.duplicate and p.device == CPU and first[p.name] == CPU):
            out[p.device] += size[p.name]
    return out


def device_memory(prediction: SizePrediction, inv: Inventory, placement: Placement,
                  settings: ContextSettings | None = None) -> DeviceMemory:
    """Weights of ``prediction`` placed by ``placement``; with ``settings``, the context's memory too."""
    parts = {p: dict.fromkeys(DEVICES, 0) for p in PARTS}
    parts["weights"] = weight_bytes(prediction, placement.place(inv))
    parts.update(_context_parts(inv, placement, settings))
    return DeviceMemory(placement, settings, parts)


def _context_parts(inv: Inventory, placement: Placement, settings: ContextSettings | None) -> dict[str, dict[str, int]]:
    parts = {p: dict.fromkeys(DEVICES, 0) for p in PARTS[1:]}
    if settings is not None:
        n_layer_all = inv.n_blocks
        memory = context_memory(inv, settings)
        for m in memory.layers:
            parts[m.kind][GPU if placement.layer_on_gpu(m.layer, n_layer_all) else CPU] += m.bytes
        out_dev = GPU if placement.layer_on_gpu(n_layer_all, n_layer_all) else CPU
        parts["compute"][out_dev] += compute_estimate(inv, settings, memory)
    return parts


class DeviceBudget:
    """Per-device totals of many recipes for one model, placement and run context (placed once), and the
    limits they are held to."""

    def __init__(self, inv: Inventory, placement: Placement, settings: ContextSettings | None,
                 limits: dict[str, int | None]) -> None:
        self.places = placement.place(inv)
        context = _context_parts(inv, placement, settings)
        self.context = {d: sum(part[d] for part in context.values()) for d in DEVICES}
        self.limits = {d: v for d, v in limits.items() if v is not None}

    def totals(self, prediction: SizePrediction) -> dict[str, int]:
        weights = weight_bytes(prediction, self.places)
        return {d: weights[d] + self.context[d] for d in DEVICES}

    def excess(self, totals: dict[str, int]) -> str | None:
        """Why ``totals`` do not fit, or None."""
        over = [f"{human_bytes(totals[d])} on the {d.upper()} > max_{d}_bytes {human_bytes(limit)}"
                for d, limit in self.limits.items() if totals[d] > limit]
        return "; ".join(over) or None
