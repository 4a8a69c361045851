"""Steering proposals into the study's size band and device budgets instead of throwing them away.

A proposal above ``max_bpw``/``max_bytes`` (or below ``min_bpw``) is moved into the band one ladder step at a
time: each step takes the parameter whose next step (smaller, or larger) changes the file the most, which
shrinks (or grows) the largest tensors first and keeps the rest of the proposal as it was. Over a device
budget (``max_gpu_bytes``/``max_cpu_bytes``), each step shrinks what changes that device's bytes the most.
Sizes are exact and additive over tensors, so every parameter's size at every ladder index is computed once.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.config import StudyConfig
from ..core.inventory import Inventory
from ..core.resolution import resolve
from ..core.size import predict_size
from ..core.space import SearchSpace


@dataclass(frozen=True)
class _Sizes:
    base_bytes: int  # every parameter at ladder index 0
    base_tensor_bytes: int
    n_elements: int
    file_delta: tuple[tuple[int, ...], ...]  # per parameter, per ladder index: file bytes relative to index 0
    tensor_delta: tuple[tuple[int, ...], ...]
    base_devices: dict[str, int]  # per-device totals at index 0 (empty without a device budget)
    device_delta: dict[str, tuple[tuple[int, ...], ...]]


class BandSteer:
    """Moves ladder choices into a size band (file bytes and/or bits per weight)."""

    def __init__(self, space: SearchSpace, inv: Inventory, config: StudyConfig,
                 extra_kv: dict[str, str | int] | None = None) -> None:
        self.space, self.config = space, config
        self.budget = config.device_budget(inv) if config.has_device_budget else None
        first = {p.name: 0 for p in space.parameters}
        base = predict_size(resolve(space.recipe(first), inv), inv, extra_kv)
        base_devices = self.budget.totals(base) if self.budget else {}
        file_delta, tensor_delta = [], []
        device_delta: dict[str, list[tuple[int, ...]]] = {d: [] for d in base_devices}
        for p in space.parameters:
            sizes = [predict_size(resolve(space.recipe({**first, p.name: j}), inv), inv, extra_kv)
                     for j in range(len(p.ladder))]
            file_delta.append(tuple(s.file_bytes - base.file_bytes for s in sizes))
            tensor_delta.append(tuple(s.tensor_bytes - base.tensor_bytes for s in sizes))
            if self.budget:
                totals = [self.budget.totals(s) for s in sizes]
                for d in device_delta:
                    device_delta[d].append(tuple(t[d] - base_devices[d] for t in totals))
        self.sizes = _Sizes(base.file_bytes, base.tensor_bytes, base.n_elements, tuple(file_delta), tuple(tensor_delta),
                            base_devices, {d: tuple(v) for d, v in device_delta.items()})

    @property
    def active(self) -> bool:
        c = self.config
        return c.max_bytes is not None or c.max_bpw is not None or c.min_bpw is not None or self.budget is not None

    def size(self, choice: dict[str, int]) -> tuple[int, float]:
        """(file bytes, bits per weight) of a choice."""
        s = self.sizes
        idx = [choice[p.name] for p in self.space.parameters]
        file_bytes = s.base_bytes + sum(d[i] for d, i in zip(s.file_delta, idx))
        tensor_bytes = s.base_tensor_bytes + sum(d[i] for d, i in zip(s.tensor_delta, idx))
        return file_bytes, tensor_bytes * 8 / s.n_elements

    def devices(self, choice: dict[str, int]) -> dict[str, int]:
        """Per-device totals of a choice (empty without a device budget)."""
        idx = [choice[p.name] for p in self.space.parameters]
        return {d: base + sum(delta[i] for delta, i in zip(self.sizes.device_delta[d], idx))
                for d, base in self.sizes.base_devices.items()}

    def _over(self, choice: dict[str, int]) -> tuple[tuple[int, ...], ...] | None:
        """The per-parameter deltas of the first limit ``choice`` exceeds (file size first, then a device), or None."""
        nbytes, bpw = self.size(choice)
        c = self.config
        if (c.max_bytes is not None and nbytes > c.max_bytes) or (c.max_bpw is not None and bpw > c.max_bpw):
            return self.sizes.file_delta
        if self.budget:
            totals = self.devices(choice)
            for d, limit in self.budget.limits.items():
                if totals[d] > limit:
                    return self.sizes.device_delta[d]
        return None

    def _too_big(self, choice: dict[str, int]) -> bool:
        return self._over(choice) is not None

    def _too_small(self, choice: dict[str, int]) -> bool:
        return self.config.min_bpw is not None and self.size(choice)[1] < self.config.min_bpw

    def steer(self, choice: dict[str, int]) -> dict[str, int]:
        """The choice moved into the band by single ladder steps (unchanged when inside it; as close as the
        ladders allow when the band cannot be reached). Each step is the largest one that does not overshoot
        the other edge of the band, else the smallest."""
        out = dict(choice)
        for too_far, overshoots, step in ((self._too_big, self._too_small, 1), (self._too_small, self._too_big, -1)):
            while too_far(out):
                table = (self._over(out) if step == 1 else None) or self.sizes.file_delta
                moves = []
                for k, p in enumerate(self.space.parameters):
                    j = out[p.name] + step
                    if 0 <= j < len(p.ladder):
                        delta = table[k]
                        if delta[j] != delta[out[p.name]]:
                            moves.append((abs(delta[j] - delta[out[p.name]]), k, j))
                if not moves:
                    break
                safe = [m for m in moves if not overshoots({**out, self.space.parameters[m[1]].name: m[2]})]
                _, k, j = max(safe) if safe else min(moves)
                out[self.space.parameters[k].name] = j
        return out
