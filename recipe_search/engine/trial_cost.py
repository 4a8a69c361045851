"""What a trial will cost on a model known only by its header: per-phase seconds and trials per night.

Rates measured here, on a small slice (a few seconds): the cache's quantization rate per ggml type
(BF16 source rows converted, quantized, their weight error computed: what filling the cache does), the
file write and page-cache read rates, the cost of linking one cached shard, and the evaluation rate of a
small real model (the demo, when installed) scaled by active parameters. Compute rates are taken in
process CPU time and multiplied by the thread count, i.e. they assume the threads get whole cores (on a
shared machine wall time would count other processes' time); I/O rates are wall time. Assumed, and printed as such:
the number of experts a token uses when the header does not say, and a GPU's evaluation rate and
host-to-device bandwidth. The phases:

- quantize cold: every quantized tensor of the recipe quantized and written (a trial without the cache,
  or a cache miss for every tensor);
- quantize warm: nothing (every tensor cached);
- assembly: one link per tensor plus the metadata shard;
- load: the model's bytes read through the page cache (and, on a GPU, copied over the bus);
- evaluation: the study's chunks x ctx tokens;
- a task the study scores every trial on (``task KIND``): the quant loaded again and the task's tokens evaluated
  at the same rate (its base side is computed once per model and cached, and not counted).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.inventory import Inventory, Tensor
from ..core.recipe import uniform_recipe
from ..core.resolution import resolve
from ..core.size import predict_size
from ..core.space import SearchSpace
from ..formats.ggml_types import GGMLType, block_size, fallback, is_quantized, tensor_bytes
from .tensor_fill import quantize_tensor

NIGHT_S = 8 * 3600
#: assumed: a datacenter GPU's prompt-processing rate for a ~3B-active MoE at 4-5 bpw, and PCIe 5 x16
GPU_TOKENS_PER_S = 5000.0
GPU_UPLOAD_BYTES_PER_S = 25e9
DEFAULT_EXPERTS_USED = 8
_SLICE_ELEMENTS = 1 << 20


@dataclass
class Rates:
    quantize_elements_per_s: dict[str, float]  # per ggml type, measured
    write_bytes_per_s: float  # measured
    read_bytes_per_s: float  # page cache, measured
    link_s: float  # per tensor, measured
    cpu_tokens_per_s_per_active_param: float | None  # tokens/s x active parameters, measured on a real model
    measured_on: str
    assumed: dict[str, float] = field(default_factory=dict)


def _measure_quantize(types: list[GGMLType], n_per_row: int, threads: int) -> dict[str, float]:
    rows = max(1, _SLICE_ELEMENTS // n_per_row)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, n_per_row), dtype=np.float32) * 0.02
    bf16 = (x.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).ravel()
    tensor = Tensor("blk.0.ffn_up_exps.weight", (n_per_row, rows), GGMLType.BF16, 0, 0, True)
    imatrix = np.ones(n_per_row, np.float32)
    out = {}
    for t in types:
        start = time.process_time()
        quantize_tensor(bf16, tensor, t, imatrix, threads)
        out[t.name] = rows * n_per_row * threads / (time.process_time() - start)
    return out


def _measure_io(where: Path, n_bytes: int = 128 << 20) -> tuple[float, float, float]:
    """(write bytes/s with fsync, page-cache read bytes/s, seconds per shard link)."""
    where.mkdir(parents=True, exist_ok=True)
    block = os.urandom(1 << 20)
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        path = Path(tmp) / "probe"
        start = time.perf_counter()
        with open(path, "wb") as fh:
            fh.writelines(block for _ in range(n_bytes >> 20))
            fh.flush()
            os.fsync(fh.fileno())
        write = n_bytes / (time.perf_counter() - start)
        start = time.perf_counter()
        with open(path, "rb") as fh:
            while fh.read(1 << 24):
                pass
        read = n_bytes / (time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(200):
            link = Path(tmp) / f"link-{i}"
            os.link(path, link)
            os.utime(path)
            link.stat()
        per_link = (time.perf_counter() - start) / 200
    return write, read, per_link


def active_parameters(inv: Inventory, experts_used: int) -> float:
    """Parameters a token touches: every tensor, expert tensors at experts_used / n_expert."""
    total = 0.0
    for t in inv.tensors:
        if "_exps" in t.name and len(t.shape) > 2:
            total += t.n_elements * min(1.0, experts_used / t.shape[2])
        else:
            total += t.n_elements
    return total


def _measure_eval(threads: int) -> tuple[float, str] | None:
    """Tokens/s x active parameters of the demo model on 512 tokens, or None without the demo extra."""
    from ..errors import RecipeSearchError
    from .demo import demo_model_path

    try:
        model = demo_model_path()
    except RecipeSearchError:  # the demo extra is optional; without it the rate is not measured
        return None
    from ..core.inventory import read_inventory
    from .llama import Batch, LlamaModel

    with LlamaModel(model, n_threads=threads, n_ctx=512) as lm:
        tokens = np.arange(512, dtype=np.int32) % 1000 + 10
        batch = Batch(np.arange(512), np.zeros(512), np.arange(512) >= 256)  # a trial's outputs: the second half
        batch.token[:] = tokens
        lm.clear()
        start = time.process_time()
        lm.decode(batch, 512)
        rate = 512 * threads / (time.process_time() - start)
    inv = read_inventory(model)
    return rate * active_parameters(inv, DEFAULT_EXPERTS_USED), model.name


def measure_rates(inv: Inventory, where: Path, threads: int, types: list[GGMLType]) -> Rates:
    # the model's widest rows, rounded up to whole blocks of every type measured (32 or 256 elements): a rate is per
    # element, and rows a K-quant cannot take (a small model's) would only fail the measurement
    widest = max((t.shape[0] for t in inv.tensors if t.quantizable), default=4096)
    block = max((block_size(t) for t in types), default=1)
    n_per_row = -(-widest // block) * block
    quant = _measure_quantize(types, n_per_row, threads)
    write, read, link = _measure_io(where)
    ev = _measure_eval(threads)
    return Rates(quant, write, read, link, ev[0] if ev else None,
                 f"eval on {ev[1]}" if ev else "no demo model: CPU evaluation not measured")


@dataclass
class Estimate:
    phases: dict[str, dict[str, float]]  # scenario -> phase -> seconds
    trials_per_night: dict[str, dict[str, float]]
    recipe: str
    file_bytes: int
    active_params: float
    notes: list[str]
    task_tokens: dict[str, int] = field(default_factory=dict)  # task kind -> tokens it evaluates per trial


def _night_with_cache(space: SearchSpace, cost: dict[tuple[str, str], float], warm_s: float,
                      seed: int = 0, hidden_s: float = 0.0) -> tuple[float, float]:
    """(trials in 8 hours, seconds spent quantizing) when every trial draws each parameter's ladder index
    uniformly at random and pays the quantization of each (parameter, type) it meets for the first time, less
    ``hidden_s`` of it (quantized ahead while the trial before is scored); both NaN when a warm trial's cost is
    unknown (no CPU evaluation rate: the loop would never end)."""
    if not math.isfinite(warm_s):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    seen: set[tuple[str, str]] = set()
    spent = filling = 0.0
    n = 0
    while True:
        picks = {(p.name, p.ladder[int(rng.integers(len(p.ladder)))].name) for p in space.parameters}
        fill = sum(cost[k] for k in picks - seen)
        paid = max(0.0, fill - hidden_s)
        if spent + warm_s + paid > NIGHT_S:
            return n, filling
        spent += warm_s + paid
        filling += fill
        seen |= picks
        n += 1


def estimate(inv: Inventory, rates: Rates, tokens: int, space: SearchSpace, experts_used: int | None,
             recipe_type: GGMLType = GGMLType.Q4_K, task_tokens: dict[str, int] | None = None) -> Estimate:
    """Per-trial phases for a uniform ``recipe_type`` recipe, and trials per night with and without the cache;
    ``task_tokens`` (task kind -> tokens per trial) adds each task's phase to every trial."""
    task_tokens = task_tokens or {}
    notes = []
    if experts_used is None:
        experts_used = DEFAULT_EXPERTS_USED
        notes.append(f"assumed: {experts_used} experts used per token (the header does not say)")
    resolution = resolve(uniform_recipe(recipe_type.name), inv)
    size = predict_size(resolution, inv)
    slowest = min(rates.quantize_elements_per_s.values())

    def quantize_s(tensors: list[tuple[Tensor, GGMLType]]) -> float:
        """Quantizing and writing these tensors at these types."""
        return sum(t.n_elements / rates.quantize_elements_per_s.get(q.name, slowest)
                   + tensor_bytes(q, t.shape) / rates.write_bytes_per_s
                   for t, q in tensors if q != t.ggml_type and is_quantized(q))

    cold = quantize_s([(r.tensor, r.ggml_type) for r in resolution.tensors])
    cost = {}
    for p in space.parameters:
        members = [t for t in inv.tensors if t.quantizable and t.kind in p.kinds
                   and (p.blocks is None or t.block in p.blocks)]
        for q in p.ladder:
            cost[(p.name, q.name)] = quantize_s([(t, fallback(q, t.row_length)) for t in members])
    assembly = len(inv.tensors) * rates.link_s + 1e-3
    load_cpu = size.file_bytes / rates.read_bytes_per_s
    active = active_parameters(inv, experts_used)
    rate = rates.cpu_tokens_per_s_per_active_param
    eval_cpu = tokens * active / rate if rate else float("nan")
    load_gpu = load_cpu + size.file_bytes / GPU_UPLOAD_BYTES_PER_S
    eval_gpu = tokens / GPU_TOKENS_PER_S
    phases, nights = {}, {}
    for name, load, ev in (("cpu", load_cpu, eval_cpu), ("gpu", load_gpu, eval_gpu)):
        tasks = {f"task {kind}": load + ev * n / tokens for kind, n in task_tokens.items()}
        phases[name] = {"quantize_cold": cold, "quantize_warm": 0.0, "assembly": assembly, "load": load,
                        "evaluation": ev, **tasks}
        without = cold + load + ev + sum(tasks.values())
        warm = assembly + load + ev + sum(tasks.values())
        with_cache, filling = _night_with_cache(space, cost, warm)
        nights[name] = {"trial_s_without_cache": without, "trial_s_warm": warm, "without_cache": NIGHT_S / without,
                        "with_cache": with_cache, "with_cache_quantize_s": filling, "all_warm": NIGHT_S / warm}
        if name == "gpu":  # the CPU quantizes the next trial's tensors while the GPU scores (`prefill`)
            nights[name]["with_cache_quantizing_ahead"] = _night_with_cache(space, cost, warm,
                                                                            hidden_s=warm - assembly)[0]
    notes.append(f"assumed: GPU evaluation {GPU_TOKENS_PER_S:.0f} tokens/s, host-to-GPU copy "
                 f"{GPU_UPLOAD_BYTES_PER_S / 1e9:.0f} GB/s")
    notes.append("with the cache: each trial draws every searched parameter's type uniformly at random and "
                 "quantizes the (parameter, type) pairs it meets first; the rest is linked")
    notes.append("quantizing ahead (by default on a GPU): the CPU quantizes the next trial's missing tensors while the "
                 "GPU scores; a bound, as only trials known ahead (the sweep's cells, enqueued trials) can be")
    return Estimate(phases, nights, f"uniform {recipe_type.name}", size.file_bytes, active, notes, dict(task_tokens))
