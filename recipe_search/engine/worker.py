"""The quantize-and-score worker: one recipe in, measured numbers out.

It resolves the recipe, predicts the file size exactly, quantizes into a work directory with
llama.cpp's quantizer, scores the result against the cached reference (and, given a `TaskChecker`, on its tasks
against the base model's cached side), and removes the temporary GGUF.
Finished measurements are kept in the cache directory by their result key, so a recipe that resolves
to the same file is measured once across studies; each carries its digest, and a damaged one is measured
again with one warning line. A measurement with a NaN or infinite metric is an error naming the recipe. The
tensor-cache entries a trial linked are checked against their digests again once it is scored (or has failed):
bytes changed on disk since their first use discard the measurement and remove the entries.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import json
import math
import os
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import llama_cpp
import numpy as np

from ..core.inventory import Inventory, model_fingerprint, read_inventory
from ..core.kld import TokenStats
from ..core.placement import Placement
from ..core.recipe import Recipe
from ..core.resolution import Resolution, resolve
from ..core.size import predict_size
from ..errors import RecipeSearchError
from ..formats.files import atomic_write_text
from ..formats.imatrix_file import ImatrixInput
from ..version import __version__
from .assemble import assemble, can_split, write_single_file
from .digest import json_digest, warn_damaged
from .leftovers import TRIAL_PREFIX
from .libggml import lib_dir
from .measurement import Measurement
from .prefill import Prefill
from .quantize import PARTIAL_SUFFIX, check_imatrix, dry_run_types, quantize_model
from .score import Reference, ScoreSettings, get_reference, score_quant
from .speed import speed_of
from .task_check import TaskChecker
from .tensor_cache import ModelTensors, TensorCache

#: the llama.cpp build: a measurement made with another one is not reused
LLAMA_BUILD = f"llama-cpp-python {llama_cpp.__version__}, libllama {llama_cpp.llama_version().decode()}"


def tool_versions() -> dict[str, str]:
    """This tool's version, llama-cpp-python's, and the llama.cpp/ggml build it vendors (as its libraries report)."""
    ggml = ctypes.CDLL(str(lib_dir() / "libggml-base.so"))
    ggml.ggml_version.restype = ctypes.c_char_p
    ggml.ggml_commit.restype = ctypes.c_char_p
    return {"recipe_search": __version__, "llama_cpp_python": version("llama-cpp-python"),
            "libllama": llama_cpp.llama_version().decode(), "ggml": ggml.ggml_version().decode(),
            "ggml_commit": ggml.ggml_commit().decode()}


@dataclass
class Built:
    """A trial's model on disk: the file llama.cpp loads, every file to remove, how long each phase took and
    the size of the single file llama_model_quantize writes for it."""

    path: Path
    files: list[Path]
    seconds: dict[str, float]
    file_bytes: int
    warnings: list[str] = field(default_factory=list)
    links: dict[Path, Path] = field(default_factory=dict)  # tensor-cache entry -> the trial's hard link to it


class Worker:
    """Measures recipes for one base model, text and scoring setup."""

    def __init__(self, model: Path, settings: ScoreSettings, cache_dir: Path, workdir: Path,
                 imatrix: ImatrixInput | None = None, keep: bool = False, tensor_cache: bool = True,
                 tasks: TaskChecker | None = None, prefill_threads: int = 0) -> None:
        self.model, self.settings, self.cache_dir, self.workdir = Path(model), settings, cache_dir, Path(workdir)
        self.inventory: Inventory = read_inventory(self.model)
        self.imatrix = imatrix
        self.tasks = tasks  # scored on every measured recipe; their figures join its metrics
        self.keep = keep
        self.tensor_cache = tensor_cache
        #: threads that quantize the next recipes' missing tensors while one is scored (`prefill`; 0: none), taken
        #: from scoring's unless it runs on a GPU
        self.prefill_threads = prefill_threads if tensor_cache and (settings.gpu_layers or
                                                                    settings.threads > prefill_threads) else 0
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
        return resolve(recipe, self.inventory, dry_run_types)

    def result_key(self, resolution: Resolution) -> str:
        """Identifies a measurement: the per-tensor types, the imatrix, the reference (model, text, ctx,
        chunks), the llama.cpp build that quantizes and evaluates, and the tasks scored beside KLD, if any."""
        fields = {"types": resolution.key(), "imatrix": self.imatrix.digest if self.imatrix else "",
                  "reference": self.reference.path.name, "llama": LLAMA_BUILD}
        if self.tasks is not None:
            fields["tasks"] = self._task_identity
        blob = json.dumps(fields)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    @functools.cached_property
    def _task_identity(self) -> str:
        assert self.tasks is not None
        return self.tasks.identity()

    @functools.cached_property
    def tensors(self) -> ModelTensors:
        """This model's view of the quantized-tensor cache."""
        return ModelTensors(TensorCache.under(self.cache_dir), self.inventory, model_fingerprint(self.inventory),
                            None if self.imatrix is None else self.imatrix.arrays, self.imatrix.digest if self.imatrix else "",
                            self.settings.threads)

    @functools.cached_property
    def prefill(self) -> Prefill:
        return Prefill(self.tensors, self.prefill_threads)

    def _prefilling(self, then: Sequence[Recipe | Resolution]) -> ScoreSettings:
        """Start quantizing the missing tensors of ``then`` (recipes measured next; llama.cpp mixtures left out) if
        this worker does and any is missing; the settings to score with meanwhile."""
        if not self.prefill_threads or not then:
            return self.settings
        pairs = [(x.tensor, x.ggml_type) for r in then if isinstance(r, Resolution) or not r.uses_mixture
                 for x in (r if isinstance(r, Resolution) else self.resolve(r)).tensors]
        if not self.prefill.start(pairs) or self.settings.gpu_layers:
            return self.settings
        return dataclasses.replace(self.settings, threads=self.settings.threads - self.prefill_threads)

    def close(self) -> None:
        """Stop quantizing ahead, if it does (a later `measure` starts again)."""
        if "prefill" in self.__dict__:
            self.__dict__.pop("prefill").close()

    def build(self, resolution: Resolution, path: Path, single_file: bool = False,
              allow_partial_imatrix: bool = False) -> Built:
        """Make the recipe's model at ``path``: from the tensor cache (linked shards named after ``path``,
        or the one file ``path`` when ``single_file``) or, with the cache off, by llama_model_quantize."""
        if not self.tensor_cache:
            q = quantize_model(self.model, resolution, path, imatrix=self.imatrix, threads=self.settings.threads,
                               inventory=self.inventory, allow_partial_imatrix=allow_partial_imatrix)
            return Built(q.path, [q.path], {"quantize": q.seconds}, q.file_bytes, q.warnings)
        warnings = check_imatrix(resolution, self.imatrix, allow_partial_imatrix)
        extra_kv = self.imatrix.kv() if self.imatrix else None
        if single_file or not can_split(len(self.inventory.tensors)):
            a = write_single_file(self.tensors, resolution, path, extra_kv)
            return Built(a.path, a.files, a.seconds, a.path.stat().st_size, warnings)
        a = assemble(self.tensors, resolution, path.with_suffix(""), extra_kv)
        return Built(a.path, a.files, a.seconds, predict_size(resolution, self.inventory, extra_kv).file_bytes, warnings,
                     a.links)

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / "measurements" / f"{key}.json"

    def cached(self, resolution: Resolution, speed: Placement | None = None) -> Measurement | None:
        """The stored measurement of this resolved recipe, if a finished one is in the cache (with ``speed``, one
        that timed the recipe under that placement). A damaged one (unreadable, or not matching its digest) is
        measured again, with one warning line; one without a digest (an older version wrote it) is measured
        again silently."""
        path = self._cache_path(self.result_key(resolution))
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as err:
            warn_damaged(path, "the cached measurement", err.strerror or str(err), "measuring it again")
            return None
        try:
            d = json.loads(text)
        except ValueError:
            d = None
        if isinstance(d, dict) and "digest" not in d:
            return None  # written by an older version: measured again, replacing it
        problem = None
        if not isinstance(d, dict):
            problem = "not a JSON object"
        elif d["digest"] != json_digest(d):
            problem = "it does not match its digest"
        else:
            try:
                m = Measurement.from_dict(d, cached=True)
                _check_finite(m, resolution.recipe.name)
            except (ValueError, KeyError, TypeError, zlib.error, RecipeSearchError) as err:
                problem = str(err) or type(err).__name__
        if problem is not None:
            warn_damaged(path, "the cached measurement", problem, "measuring it again")
            return None
        return None if speed is not None and (m.speed is None or m.speed.placement != speed.describe()) else m

    def _store(self, resolution: Resolution, m: Measurement) -> None:
        d = m.to_dict()
        d["digest"] = json_digest(d)
        atomic_write_text(self._cache_path(self.result_key(resolution)), json.dumps(d))

    def measure(self, recipe: Recipe | Resolution, on_chunk: Callable[[int, TokenStats], None] | None = None,
                speed: Placement | None = None, out: Path | None = None, use_cache: bool = True,
                chunks: int | None = None, then: Sequence[Recipe | Resolution] = ()) -> Measurement:
        """Quantize and score ``recipe`` (or read its earlier measurement from the cache when no file
        is asked for, and it was scored on as many chunks), and with ``speed`` time it under that placement;
        ``on_chunk`` may raise StopScoring to abandon the trial. ``chunks``: how many of the reference's chunks to
        score (see `score_quant`). A recipe is resolved here, once; a `Resolution` (of this worker's `resolve`) is
        measured as it is. ``then``: the recipes to be measured next, whose missing tensors are quantized while this
        one is scored (with `prefill_threads`)."""
        resolution = recipe if isinstance(recipe, Resolution) else self.resolve(recipe)
        reference = self.reference
        if use_cache and out is None and (hit := self.cached(resolution, speed)) is not None and (
                chunks is None or len(hit.kld_tokens) >= min(chunks, len(reference.tokens)) * reference.n_scored_per_chunk):
            return hit
        extra_kv = self.imatrix.kv() if self.imatrix else None
        predicted = predict_size(resolution, self.inventory, extra_kv)
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = out or self.workdir / f"{TRIAL_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}.gguf"
        built: Built | None = None
        try:
            built = self.build(resolution, path, single_file=self.keep or out is not None)
            if built.file_bytes != predicted.file_bytes:
                raise RecipeSearchError(f"size prediction {predicted.file_bytes} != written {built.file_bytes}", path)
            try:
                scored = score_quant(built.path, reference, self._prefilling(then), on_chunk, check=False,
                                     chunks=chunks)
            finally:
                if self.prefill_threads and then:
                    self.prefill.stop()
            timed = None if speed is None else speed_of(built.path, self.settings.threads, speed)
            tasks = self.tasks.score_all(built.path) if self.tasks is not None else []
            damaged = self._recheck(resolution, built)  # the bytes it used, while its links hold them
        except (RecipeSearchError, OSError) as err:
            if damaged := self._recheck(resolution, built):  # a damaged entry the trial linked: removed, for the retry
                raise RecipeSearchError(f"{err}; damaged tensor-cache entries removed: {damaged}") from None
            raise
        finally:
            if not self.keep and out is None:
                for f in built.files if built else [path]:
                    f.unlink(missing_ok=True)
                path.with_name(path.name + PARTIAL_SUFFIX).unlink(missing_ok=True)
        if damaged:
            raise RecipeSearchError(f"recipe {resolution.recipe.name!r}: tensor-cache entries changed on disk while it "
                                    f"was measured, the measurement discarded and the entries removed: {damaged}")
        metrics = scored.summary.to_dict()
        metrics["ppl_ratio"] = float(np.exp(metrics["ln_ppl_ratio"]))
        for r in tasks:
            metrics.update(r.figures_as_numbers())
        _check_finite_metrics(metrics, resolution.recipe.name)
        m = Measurement(
            file_bytes=built.file_bytes, bpw=predicted.bits_per_weight, metrics=metrics,
            kld_tokens=scored.stats.kld.astype(np.float32),
            fallbacks={k: dict(v) for k, v in resolution.fallbacks().items()},
            seconds={**built.seconds, **scored.seconds, **{f"task_{r.spec.name}": r.seconds for r in tasks}},
            speed=timed, task_items={k: v for r in tasks for k, v in r.items().items()})
        self._store(resolution, m)
        return m

    def _recheck(self, resolution: Resolution, built: Built | None) -> str:
        """The tensor-cache entries ``resolution`` links whose bytes, as the trial ``built`` linked them, no longer
        match their digests (a damaged entry removed), as one phrase; empty when all match or without the cache
        (see `ModelTensors.recheck`)."""
        if not self.tensor_cache:
            return ""
        damaged = self.tensors.recheck(((x.tensor, x.ggml_type) for x in resolution.tensors),
                                       built.links if built else {})
        return ", ".join(damaged[:3]) + (f" and {len(damaged) - 3} more" if len(damaged) > 3 else "")


def _check_finite_metrics(metrics: dict[str, float], recipe: str) -> None:
    """A NaN or infinite metric (a broken quant, a damaged file) never reaches a study: an error naming the recipe."""
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        raise RecipeSearchError(f"recipe {recipe!r} measured {', '.join(f'{k} = {metrics[k]}' for k in bad[:3])}"
                                f"{' and more' if len(bad) > 3 else ''}: not a finite number")


def _check_finite(m: Measurement, recipe: str) -> None:
    _check_finite_metrics(m.metrics, recipe)
    if not np.isfinite(m.kld_tokens).all():
        raise RecipeSearchError(f"recipe {recipe!r}: a per-token KLD is not a finite number")
