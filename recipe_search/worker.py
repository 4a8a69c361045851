"""The quantize-and-score worker: one recipe in, measured numbers out.

It resolves the recipe, predicts the file size exactly, quantizes into a work directory with
llama.cpp's quantizer, scores the result against the cached reference, and removes the temporary GGUF.
Finished measurements are kept in the cache directory by their result key, so a recipe that resolves
to the same file is measured once across studies.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
import numpy as np

from .assemble import assemble, can_split, write_single_file
from .errors import RecipeSearchError
from .inventory import Inventory, model_fingerprint, read_inventory
from .kld import TokenStats
from .llama import LlamaModel
from .quantize import PARTIAL_SUFFIX, ImatrixInput, check_imatrix, quantize_model
from .recipe import Recipe, atomic_write_text
from .resolve import Resolution, resolve
from .score import Reference, ScoreSettings, get_reference, score_quant
from .size import predict_size
from .tensor_cache import ModelTensors, TensorCache

TRIAL_PREFIX = "trial-"
#: the llama.cpp build: a measurement made with another one is not reused
LLAMA_BUILD = f"llama-cpp-python {llama_cpp.__version__}, libllama {llama_cpp.llama_version().decode()}"


@dataclass
class Measurement:
    """Everything the worker measured for one recipe (JSON-able through `to_dict`)."""

    file_bytes: int
    bpw: float
    metrics: dict[str, float]  # KLDSummary fields, plus ppl_ratio
    kld_tokens: np.ndarray  # per-token KLD, float32
    fallbacks: dict[str, dict[str, int]]
    seconds: dict[str, float]
    speed: dict[str, float] = field(default_factory=dict)
    cached: bool = False  # read from the measurement cache instead of measured now

    def to_dict(self) -> dict:
        return {"file_bytes": self.file_bytes, "bpw": self.bpw, "metrics": self.metrics,
                "fallbacks": self.fallbacks, "seconds": self.seconds, "speed": self.speed}

    @classmethod
    def from_dict(cls, d: dict, kld_tokens: np.ndarray) -> Measurement:
        return cls(file_bytes=int(d["file_bytes"]), bpw=float(d["bpw"]), metrics=dict(d["metrics"]),
                   kld_tokens=kld_tokens, fallbacks=dict(d["fallbacks"]), seconds=dict(d["seconds"]),
                   speed=dict(d["speed"]), cached=True)


@dataclass
class Built:
    """A trial's model on disk: the file llama.cpp loads, every file to remove, how long each phase took and
    the size of the single file llama_model_quantize writes for it."""

    path: Path
    files: list[Path]
    seconds: dict[str, float]
    file_bytes: int
    warnings: list[str] = field(default_factory=list)


def encode_array(a: np.ndarray) -> str:
    """A compact text form of a float32 vector (for study storage)."""
    return base64.b64encode(zlib.compress(np.asarray(a, np.float32).tobytes(), 6)).decode()


def decode_array(s: str) -> np.ndarray:
    return np.frombuffer(zlib.decompress(base64.b64decode(s)), dtype=np.float32)


def clean_workdir(workdir: Path) -> list[Path]:
    """Remove temporary GGUFs a killed worker left behind (a trial file whose process is gone)."""
    removed = []
    if not workdir.exists():
        return removed
    for path in workdir.glob(f"{TRIAL_PREFIX}*.gguf*"):
        pid = path.name.removeprefix(TRIAL_PREFIX).split("-")[0]
        if not pid.isdigit() or not _alive(int(pid)) or int(pid) == os.getpid():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def speed_of(quant: Path, threads: int, gpu_layers: int = 0) -> dict[str, float]:
    """Prompt-processing and generation tokens per second of a GGUF on this machine."""
    with LlamaModel(quant, n_threads=threads, n_ctx=512, n_gpu_layers=gpu_layers) as lm:
        pp, tg = lm.generate_speed()
    return {"pp_tokens_per_s": pp, "tg_tokens_per_s": tg}


class Worker:
    """Measures recipes for one base model, text and scoring setup."""

    def __init__(self, model: Path, settings: ScoreSettings, cache_dir: Path, workdir: Path,
                 imatrix: ImatrixInput | None = None, keep: bool = False, tensor_cache: bool = True) -> None:
        self.model, self.settings, self.cache_dir, self.workdir = Path(model), settings, cache_dir, Path(workdir)
        self.inventory: Inventory = read_inventory(self.model)
        self.imatrix = imatrix
        self.keep = keep
        self.tensor_cache = tensor_cache
        self._reference: Reference | None = None
        self.reference_was_cached: bool | None = None
        self.reference_seconds = 0.0

    @property
    def reference(self) -> Reference:
        if self._reference is None:
            start = time.perf_counter()
            self._reference, self.reference_was_cached = get_reference(self.model, self.settings, self.cache_dir,
                                                                       self.inventory)
            self.reference_seconds = time.perf_counter() - start
        return self._reference

    def resolve(self, recipe: Recipe) -> Resolution:
        return resolve(recipe, self.inventory)

    def result_key(self, resolution: Resolution) -> str:
        """Identifies a measurement: the per-tensor types, the imatrix, the reference (model, text, ctx,
        chunks) and the llama.cpp build that quantizes and evaluates."""
        blob = json.dumps({"types": resolution.key(), "imatrix": self._imatrix_digest,
                           "reference": self.reference.path.name, "llama": LLAMA_BUILD})
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    @functools.cached_property
    def _imatrix_digest(self) -> str:
        """Hash of the imatrix's data (a large imatrix is hashed once, not per trial)."""
        return "" if self.imatrix is None else hashlib.sha256(
            b"".join(k.encode() + v.tobytes() for k, v in sorted(self.imatrix.arrays.items()))).hexdigest()

    @functools.cached_property
    def tensors(self) -> ModelTensors:
        """This model's view of the quantized-tensor cache."""
        return ModelTensors(TensorCache.under(self.cache_dir), self.inventory, model_fingerprint(self.inventory),
                            None if self.imatrix is None else self.imatrix.arrays, self._imatrix_digest,
                            self.settings.threads)

    def build(self, recipe: Recipe, resolution: Resolution, path: Path, single_file: bool = False,
              allow_partial_imatrix: bool = False) -> Built:
        """Make the recipe's model at ``path``: from the tensor cache (linked shards named after ``path``,
        or the one file ``path`` when ``single_file``) or, with the cache off, by llama_model_quantize."""
        if not self.tensor_cache:
            q = quantize_model(self.model, recipe, path, imatrix=self.imatrix, threads=self.settings.threads,
                               inventory=self.inventory, allow_partial_imatrix=allow_partial_imatrix)
            return Built(q.path, [q.path], {"quantize": q.seconds}, q.file_bytes, q.warnings)
        warnings = check_imatrix(resolution, self.imatrix, allow_partial_imatrix)
        extra_kv = self.imatrix.kv() if self.imatrix else None
        if single_file or not can_split(len(self.inventory.tensors)):
            a = write_single_file(self.tensors, resolution, path, extra_kv)
            return Built(a.path, a.files, a.seconds, a.path.stat().st_size, warnings)
        a = assemble(self.tensors, resolution, path.with_suffix(""), extra_kv)
        return Built(a.path, a.files, a.seconds, predict_size(resolution, self.inventory, extra_kv).file_bytes, warnings)

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / "measurements" / f"{key}.json"

    def cached(self, resolution: Resolution, speed: bool = False) -> Measurement | None:
        """The stored measurement of this resolved recipe, if a finished one is in the cache."""
        try:
            d = json.loads(self._cache_path(self.result_key(resolution)).read_text())
            m = Measurement.from_dict(d, decode_array(d["kld_tokens"]))
        except (OSError, ValueError, KeyError, TypeError, zlib.error):
            return None  # absent, or unreadable: measure again (and overwrite it atomically)
        return None if speed and not m.speed else m

    def _store(self, resolution: Resolution, m: Measurement) -> None:
        atomic_write_text(self._cache_path(self.result_key(resolution)),
                          json.dumps({**m.to_dict(), "kld_tokens": encode_array(m.kld_tokens)}))

    def measure(self, recipe: Recipe, on_chunk: Callable[[int, TokenStats], None] | None = None,
                speed: bool = False, out: Path | None = None, use_cache: bool = True) -> Measurement:
        """Quantize and score ``recipe`` (or read its earlier measurement from the cache when no file
        is asked for); ``on_chunk`` may raise StopScoring to abandon the trial."""
        resolution = self.resolve(recipe)
        if use_cache and out is None and (hit := self.cached(resolution, speed)) is not None:
            return hit
        reference = self.reference
        extra_kv = self.imatrix.kv() if self.imatrix else None
        predicted = predict_size(resolution, self.inventory, extra_kv)
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = out or self.workdir / f"{TRIAL_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}.gguf"
        built: Built | None = None
        try:
            built = self.build(recipe, resolution, path, single_file=self.keep or out is not None)
            if built.file_bytes != predicted.file_bytes:
                raise RecipeSearchError(f"size prediction {predicted.file_bytes} != written {built.file_bytes}", path)
            scored = score_quant(built.path, reference, self.settings, on_chunk, check=False)
            speed_numbers = speed_of(built.path, self.settings.threads, self.settings.gpu_layers) if speed else {}
        finally:
            if not self.keep and out is None:
                for f in built.files if built else [path]:
                    f.unlink(missing_ok=True)
                path.with_name(path.name + PARTIAL_SUFFIX).unlink(missing_ok=True)
        metrics = scored.summary.to_dict()
        metrics["ppl_ratio"] = float(np.exp(metrics["ln_ppl_ratio"]))
        m = Measurement(
            file_bytes=built.file_bytes, bpw=predicted.bits_per_weight, metrics=metrics,
            kld_tokens=scored.stats.kld.astype(np.float32),
            fallbacks={k: dict(v) for k, v in resolution.fallbacks().items()},
            seconds={**built.seconds, **scored.seconds},
            speed=speed_numbers)
        self._store(resolution, m)
        return m
