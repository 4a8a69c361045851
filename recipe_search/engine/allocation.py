"""What llama.cpp itself places and allocates, read from its log.

`load_placement` loads a model with buffer overrides: on a CPU-only build every override target is the
CPU buffer, so it checks which tensors the patterns catch (``std::regex_search``, first match, the
duplicated output), not ``-ngl``. `context_allocation` reads the buffers a context was given.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import llama_cpp

from ..core.placement import Placement
from ..errors import RecipeSearchError
from . import llama_log
from .llama import _init_backend, model_params

_OVERRIDDEN = re.compile(r"tensor (\S+) \(\d+ MiB \w+\) buffer type overridden to (\S+)")
_MODEL_BUFFER = re.compile(r"load_tensors: +(\S+) model buffer size = +([\d.]+) MiB")
_CACHE = re.compile(r"(llama_kv_cache|llama_memory_recurrent): size = +([\d.]+) MiB \( *(\d+) cells, +(\d+) layers")
_COMPUTE = re.compile(r"(\S+) compute buffer size = +([\d.]+) MiB")
_OUTPUT = re.compile(r"(\S+) +output buffer size = +([\d.]+) MiB")


@dataclass(frozen=True)
class LoadedPlacement:
    overridden: list[str]  # tensor names, in creation order (the duplicated output appears twice)
    model_buffers_mib: dict[str, float]  # buffer name -> size llama.cpp printed
    model_bytes: int  # llama_model_size: every weight tensor's bytes
    gpu_offload: bool  # whether this build can offload at all


def gpu_offload_supported() -> bool:
    """Whether this llama.cpp build can put anything on a GPU."""
    return bool(llama_cpp.llama_supports_gpu_offload())


def load_placement(path: str | Path, placement: Placement) -> LoadedPlacement:
    """Load ``path`` (weights mmapped, no context) with ``placement``'s overrides pointed at the CPU."""
    _init_backend()
    mparams = model_params(0 if placement.n_gpu_layers is None else placement.n_gpu_layers,
                           [(o.pattern, "CPU") for o in placement.overrides])
    with llama_log.captured() as log:
        model = llama_cpp.llama_model_load_from_file(os.fsencode(str(path)), mparams)
    if not model:
        raise RecipeSearchError("llama.cpp cannot load it", path)
    try:
        size = int(llama_cpp.llama_model_size(model))
    finally:
        llama_cpp.llama_model_free(model)
    text = "".join(log)
    return LoadedPlacement([m[1] for m in _OVERRIDDEN.finditer(text)],
                           {m[1]: float(m[2]) for m in _MODEL_BUFFER.finditer(text)}, size, gpu_offload_supported())


@dataclass(frozen=True)
class ContextAllocation:
    """A context's buffers as llama.cpp logged them, in MiB (two decimals)."""

    kv: list[tuple[float, int, int]]  # (MiB, cells, layers) per KV cache (two for a sliding-window model)
    recurrent: list[tuple[float, int, int]]  # (MiB, rows, layers)
    compute_mib: float
    output_mib: float


def context_allocation(log: str) -> ContextAllocation:
    """Read `LlamaModel.context_log`."""
    caches = [(m[1], (float(m[2]), int(m[3]), int(m[4]))) for m in _CACHE.finditer(log)]
    return ContextAllocation([c for kind, c in caches if kind == "llama_kv_cache"],
                             [c for kind, c in caches if kind == "llama_memory_recurrent"],
                             sum(float(m[2]) for m in _COMPUTE.finditer(log)),
                             sum(float(m[2]) for m in _OUTPUT.finditer(log)))
