"""What the worker measures of one recipe, and its compact JSON form (per-token KLD encoded)."""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def encode_array(a: np.ndarray) -> str:
    """A compact text form of a float32 vector (for study storage and the measurement cache)."""
    return base64.b64encode(zlib.compress(np.asarray(a, np.float32).tobytes(), 6)).decode()


def decode_array(s: str) -> np.ndarray:
    return np.frombuffer(zlib.decompress(base64.b64decode(s)), dtype=np.float32)


def encode_items(items: dict[str, np.ndarray]) -> dict[str, str]:
    return {name: encode_array(values) for name, values in items.items()}


def decode_items(encoded: dict[str, str] | None) -> dict[str, np.ndarray]:
    """`encode_items` undone; a measurement made before task items were kept has none."""
    return {name: decode_array(values) for name, values in (encoded or {}).items()}


@dataclass(frozen=True)
class Speed:
    """Prompt-processing and generation tokens/s, the placement they were measured for, and whether the build
    could apply it: ``cpu_only`` speed ran every layer on the CPU whatever the placement said."""

    pp_tokens_per_s: float
    tg_tokens_per_s: float
    placement: str  # `Placement.describe` of the placement asked for
    cpu_only: bool

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> Speed:
        """An older measurement (tokens/s only) reads as CPU-only speed under no known placement."""
        return cls(float(d["pp_tokens_per_s"]), float(d["tg_tokens_per_s"]), str(d.get("placement", "")),
                   bool(d.get("cpu_only", True)))

    def line(self) -> str:
        where = (f"CPU only: this llama.cpp build cannot offload, so the placement {self.placement} is not applied"
                 if self.cpu_only else f"placement {self.placement}")
        return f"prompt {self.pp_tokens_per_s:.1f} tok/s, generation {self.tg_tokens_per_s:.1f} tok/s ({where})"


def speed_from_dict(d: dict | None) -> Speed | None:
    """The stored form of a measurement's speed (None or empty: not measured)."""
    return Speed.from_dict(d) if d else None


@dataclass
class Measurement:
    """Everything the worker measured for one recipe (JSON-able through `to_dict`)."""

    file_bytes: int
    bpw: float
    metrics: dict[str, float]  # KLDSummary fields, plus ppl_ratio
    kld_tokens: np.ndarray  # per-token KLD, float32, in chunk order
    fallbacks: dict[str, dict[str, int]]
    seconds: dict[str, float]
    speed: Speed | None = None  # measured when the study optimises speed
    cached: bool = False  # read from the measurement cache instead of measured now
    #: per task figure that is a mean or count over items (``cloze_acc``, ``continuation_agree_tokens``, ...), its
    #: value item by item: what frontier steps and picks on a task objective are tested with (`TaskResult.items`)
    task_items: dict[str, np.ndarray] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The JSON form, per-token KLD and per-item task values included (encoded)."""
        d = {"file_bytes": self.file_bytes, "bpw": self.bpw, "metrics": self.metrics,
             "fallbacks": self.fallbacks, "seconds": self.seconds,
             "speed": None if self.speed is None else self.speed.to_dict(),
             "kld_tokens": encode_array(self.kld_tokens)}
        if self.task_items:
            d["task_items"] = encode_items(self.task_items)
        return d

    @classmethod
    def from_dict(cls, d: dict, cached: bool = False) -> Measurement:
        return cls(file_bytes=int(d["file_bytes"]), bpw=float(d["bpw"]), metrics=dict(d["metrics"]),
                   kld_tokens=decode_array(d["kld_tokens"]), fallbacks=dict(d["fallbacks"]),
                   seconds=dict(d["seconds"]), speed=speed_from_dict(d.get("speed")), cached=cached,
                   task_items=decode_items(d.get("task_items")))


class StoredMeasurement(Measurement):
    """A measurement read back from storage. Its per-token KLD is decoded on first use: a study's records
    are read after every trial (progress, duplicates, early stopping), and most readers want the numbers."""

    _tokens: np.ndarray | None

    def __init__(self, encoded: str | None, **fields: Any) -> None:
        self._encoded = encoded
        super().__init__(kld_tokens=None, **fields)  # type: ignore[arg-type]  # set through the property below

    @property  # type: ignore[override]
    def kld_tokens(self) -> np.ndarray:
        if self._tokens is None:
            self._tokens = decode_array(self._encoded) if self._encoded else np.zeros(0, np.float32)
        return self._tokens

    @kld_tokens.setter
    def kld_tokens(self, value: np.ndarray | None) -> None:
        self._tokens = value
