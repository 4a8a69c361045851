"""Steering proposals into the study's size band instead of throwing them away.

A proposal above ``max_bpw``/``max_bytes`` (or below ``min_bpw``) is moved into the band one ladder step at a
time: each step takes the parameter whose next step (smaller, or larger) changes the file the most, which
shrinks (or grows) the largest tensors first and keeps the rest of the proposal as it was. Sizes are exact and
additive over tensors, so every parameter's size at every ladder index is computed once.
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


class BandSteer:
    """Moves ladder choices into a size band (file bytes and/or bits per weight)."""

    def __init__(self, space: SearchSpace, inv: Inventory, config: StudyConfig,
                 extra_kv: dict[str, str | int] | None = None) -> None:
        self.space, self.config = space, config
        first = {p.name: 0 for p in space.parameters}
        base = predict_size(resolve(space.recipe(first), inv), inv, extra_kv)
        file_delta, tensor_delta = [], []
        for p in space.parameters:
            sizes = [predict_size(resolve(space.recipe({**first, p.name: j}), inv), inv, extra_kv)
                     for j in range(len(p.ladder))]
            file_delta.append(tuple(s.file_bytes - base.file_bytes for s in sizes))
            tensor_delta.append(tuple(s.tensor_bytes - base.tensor_bytes for s in sizes))
        self.sizes = _Sizes(base.file_bytes, base.tensor_bytes, base.n_elements, tuple(file_delta), tuple(tensor_delta))

    @property
    def active(self) -> bool:
        c = self.config
        return c.max_bytes is not None or c.max_bpw is not None or c.min_bpw is not None

    def size(self, choice: dict[str, int]) -> tuple[int, float]:
        """(file bytes, bits per weight) of a choice."""
        s = self.sizes
        idx = [choice[p.name] for p in self.space.parameters]
        file_bytes = s.base_bytes + sum(d[i] for d, i in zip(s.file_delta, idx))
        tensor_bytes = s.base_tensor_bytes + sum(d[i] for d, i in zip(s.tensor_delta, idx))
        return file_bytes, tensor_bytes * 8 / s.n_elements

    def _too_big(self, choice: dict[str, int]) -> bool:
        nbytes, bpw = self.size(choice)
        c = self.config
        return (c.max_bytes is not None and nbytes > c.max_bytes) or (c.max_bpw is not None and bpw > c.max_bpw)

    def _too_small(self, choice: dict[str, int]) -> bool:
        return self.config.min_bpw is not None and self.size(choice)[1] < self.config.min_bpw

    def steer(self, choice: dict[str, int]) -> dict[str, int]:
        """The choice moved into the band by single ladder steps (unchanged when inside it; as close as the
        ladders allow when the band cannot be reached). Each step is the largest one that does not overshoot
        the other edge of the band, else the smallest."""
        out = dict(choice)
        for too_far, overshoots, step in ((self._too_big, self._too_small, 1), (self._too_small, self._too_big, -1)):
            while too_far(out):
                moves = []
                for k, p in enumerate(self.space.parameters):
                    j = out[p.name] + step
                    if 0 <= j < len(p.ladder):
                        delta = self.sizes.file_delta[k]
                        if delta[j] != delta[out[p.name]]:
                            moves.append((abs(delta[j] - delta[out[p.name]]), k, j))
                if not moves:
                    break
                safe = [m for m in moves if not overshoots({**out, self.space.parameters[m[1]].name: m[2]})]
                _, k, j = max(safe) if safe else min(moves)
                out[self.space.parameters[k].name] = j
        return out
