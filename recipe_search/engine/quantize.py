"""Apply a recipe with llama.cpp's own quantizer (``llama_model_quantize`` through llama-cpp-python).

The output is what ``llama-quantize`` writes for the same recipe: the same overrides, the same
``quantize.imatrix.*`` keys. Files are written under a temporary name and renamed when complete, and
every tensor's type is checked against the recipe's resolution afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from ..core.inventory import Inventory, read_inventory
from ..core.recipe import Recipe
from ..core.resolution import Resolution, resolve
from ..core.size import predict_size
from ..errors import RecipeSearchError
from ..formats.files import DISK_FULL, check_output_file, refuse_non_regular
from ..formats.ggml_types import GGML_IMATRIX_REQUIRED, IMATRIX_REQUIRED, FileType, GGMLType, is_quantized, parse_type
from ..formats.imatrix_file import ImatrixInput
from . import child, llama_log

PARTIAL_SUFFIX = ".partial"

@dataclass
class QuantizeResult:
    path: Path
    resolution: Resolution
    seconds: float
    file_bytes: int
    warnings: list[str] = field(default_factory=list)


def _is_token_embd(name: str) -> bool:
    return name in ("token_embd.weight", "per_layer_token_embd.weight")


def requires_imatrix(name: str, t: GGMLType, file_type: FileType) -> bool:
    """tensor_requires_imatrix (src/llama-quant.cpp)."""
    if _is_token_embd(name) or name == "output.weight":
        return False
    return t in IMATRIX_REQUIRED or (t == GGMLType.Q2_K and file_type == FileType.MOSTLY_Q2_K_S)


def check_imatrix(resolution: Resolution, imatrix: ImatrixInput | None, allow_partial: bool = False) -> list[str]:
    """Errors llama.cpp would only log (or hit late): missing/wrongly sized entries, types that need one.

    Returns warnings (missing entries when ``allow_partial``); raises RecipeSearchError otherwise.
    """
    ft = resolution.recipe.file_type
    quantized = [r for r in resolution.tensors if r.ggml_type != r.tensor.ggml_type and is_quantized(r.ggml_type)]
    # ggml aborts on these even where llama.cpp's own check exempts the tensor (token_embd, output)
    abort = [r for r in quantized if r.ggml_type in GGML_IMATRIX_REQUIRED
             and (imatrix is None or r.tensor.name not in imatrix.arrays)]
    if abort and imatrix is not None:
        raise RecipeSearchError(f"ggml cannot quantize to {abort[0].ggml_type.name} without imatrix data, which "
                                f"this imatrix lacks for {_short_list([r.tensor.name for r in abort])}", imatrix.file)
    if imatrix is None:
        need = [r.tensor.name for r in quantized
                if requires_imatrix(r.tensor.name, r.ggml_type, ft) or r.ggml_type in GGML_IMATRIX_REQUIRED]
        if need:
            types = sorted({r.ggml_type.name for r in quantized if r.tensor.name in need})
            raise RecipeSearchError(f"{', '.join(types)} need an importance matrix (--imatrix) for "
                                    f"{len(need)} tensor(s): {_short_list(need)}")
        return []
    wrong = []
    for r in quantized:
        arr = imatrix.arrays.get(r.tensor.name)
        expected = r.tensor.shape[0] * (r.tensor.shape[2] if len(r.tensor.shape) > 2 else 1)
        if arr is not None and arr.size != expected and not _is_token_embd(r.tensor.name):
            wrong.append(f"{r.tensor.name} ({arr.size} != {expected})")
    if wrong:
        raise RecipeSearchError(f"imatrix entries of the wrong width: {_short_list(wrong)}", imatrix.file)
    # llama-imatrix never collects token embeddings, nor output.weight without --process-output
    missing = [r.tensor.name for r in quantized if r.tensor.name not in imatrix.arrays
               and not _is_token_embd(r.tensor.name) and r.tensor.name != "output.weight"]
    needed = [n for n in missing if requires_imatrix(n, resolution.types()[n], ft)]
    if needed or (missing and not allow_partial):
        raise RecipeSearchError(f"imatrix has no entry for {len(missing)} tensor(s) to be quantized: "
                                f"{_short_list(missing)} (use --allow-partial-imatrix to quantize them without)",
                                imatrix.file)
    return [f"no imatrix entry for {n}; quantized without one" for n in missing]


def _short_list(names: list[str], n: int = 6) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


class _Params:
    """A filled llama_model_quantize_params plus the ctypes arrays it points into (kept alive here)."""

    def __init__(self, recipe: Recipe, threads: int, imatrix: ImatrixInput | None, dry_run: bool) -> None:
        p = llama_cpp.llama_model_quantize_default_params()
        p.nthread = threads
        p.ftype = int(recipe.file_type)
        p.pure = recipe.pure
        p.dry_run = dry_run
        if recipe.token_embedding_type:
            p.token_embedding_type = int(parse_type(recipe.token_embedding_type))
        if recipe.output_tensor_type:
            p.output_tensor_type = int(parse_type(recipe.output_tensor_type))
        overrides = recipe.overrides()
        if overrides:
            arr = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
            for i, (rx, t) in enumerate(overrides):
                arr[i].pattern = rx.encode()
                arr[i].type = int(t)
            arr[len(overrides)].pattern = None
            self.overrides = arr
            p.tt_overrides = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
        if imatrix is not None:
            names = sorted(imatrix.arrays)
            self.arrays = [np.ascontiguousarray(imatrix.arrays[n], dtype=np.float32).ravel() for n in names]
            data = (llama_cpp.llama_model_imatrix_data * (len(names) + 1))()
            for i, (n, a) in enumerate(zip(names, self.arrays)):
                data[i].name = n.encode()
                data[i].data = a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
                data[i].size = a.size
            data[len(names)].name = None
            self.imatrix = data
            p.imatrix = ctypes.cast(data, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
            kv = imatrix.kv()
            kvo = (llama_cpp.llama_model_kv_override * (len(kv) + 1))()
            for i, (key, val) in enumerate(kv.items()):
                kvo[i].key = key.encode()
                value: Any = kvo[i].value  # the union inside kvo[i]; llama_cpp types it as int | float | bool | bytes
                if isinstance(val, int):
                    kvo[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
                    value.val_i64 = val
                else:
                    kvo[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
                    value.val_str = val.encode()
            kvo[len(kv)].key = b""
            self.kv = kvo
            p.kv_overrides = ctypes.cast(kvo, ctypes.POINTER(llama_cpp.llama_model_kv_override))
        self.params = p


def _run(inp: Path, out: Path | None, params: _Params) -> str:
    with llama_log.captured() as log:
        rc = llama_cpp.llama_model_quantize(str(inp).encode(), str(out or os.devnull).encode(),
                                            ctypes.byref(params.params))
    text = "".join(log)
    if rc != 0:
        err = re.findall(r"failed to quantize: (.*)", text)
        raise RecipeSearchError(f"llama.cpp could not quantize: {err[-1].strip() if err else 'unknown error'}", inp)
    return text


def _child_main() -> None:
    """Quantize in a child process: a GGML_ASSERT there aborts the child, not the study. Its stderr is a log file
    (ggml_abort writes its message there); the outcome goes back pickled through the pipe the parent named."""
    inp, out, recipe, threads, imatrix, parent, result_fd = pickle.load(sys.stdin.buffer)
    child.die_with_parent(parent)
    reply: tuple[str, str]
    try:
        reply = ("ok", _run(inp, out, _Params(recipe, threads, imatrix, dry_run=False)))
    except RecipeSearchError as err:
        reply = ("error", str(err))
    with os.fdopen(result_fd, "wb") as fh:
        pickle.dump(reply, fh)


def _run_isolated(inp: Path, out: Path, recipe: Recipe, threads: int, imatrix: ImatrixInput | None) -> None:
    """Run llama_model_quantize in a fresh process and turn any abort into a one-line error."""
    with tempfile.NamedTemporaryFile(prefix="recipe-search-quantize-", suffix=".log") as log:
        read_fd, write_fd = os.pipe()
        with os.fdopen(read_fd, "rb") as results:
            try:
                proc = child.start_ignoring_sigint(lambda: subprocess.Popen(
                    child.program(__name__, "_child_main"), stdin=subprocess.PIPE, stdout=log, stderr=log,
                    pass_fds=(write_fd,)))
            finally:
                os.close(write_fd)
            try:
                assert proc.stdin is not None
                try:
                    pickle.dump(child.parent_path(), proc.stdin)
                    pickle.dump((inp, out, recipe, threads, imatrix, os.getpid(), write_fd), proc.stdin)
                    proc.stdin.close()
                except BrokenPipeError:  # the child died before it read its work: its log says why
                    with contextlib.suppress(BrokenPipeError):
                        proc.stdin.close()
                reply = results.read()
            except BaseException:  # a second Ctrl-C abandons the trial: do not leave the child writing
                proc.kill()
                proc.wait()
                raise
        proc.wait()
        status, message = pickle.loads(reply) if reply else ("crash", "")
        if status == "ok":
            return
        if status == "error":
            raise RecipeSearchError(message.removeprefix(f"{inp}: "), inp)
        raise RecipeSearchError(f"llama.cpp aborted while quantizing: {child.abort_reason(Path(log.name), proc.returncode)}",
                                inp)


_TENSOR_LINE = re.compile(
    r"\[\s*\d+/\s*\d+\]\s+(?P<name>\S+)\s+- \[[^\]]*\], type =\s*(?P<src>\S+), size =\s*[\d.]+ MiB"
    r"(?: ->\s*[\d.]+ MiB \((?P<dst>\S+)\))?")


def dry_run_types(model: str | Path, recipe: Recipe, threads: int = 1) -> dict[str, GGMLType]:
    """Every tensor's type as llama.cpp's quantizer itself decides it (``dry_run``: nothing is written)."""
    text = _run(Path(model), None, _Params(recipe, threads, None, dry_run=True))
    types = {}
    for m in _TENSOR_LINE.finditer(text):
        types[m.group("name")] = parse_type(m.group("dst") or m.group("src"))
    if not types:
        raise RecipeSearchError("llama.cpp's dry run reported no tensors", model)
    return types


def quantize_model(model: str | Path, recipe: Recipe | Resolution, out: str | Path, *,
                   imatrix: ImatrixInput | None = None, threads: int = 2, allow_partial_imatrix: bool = False,
                   inventory: Inventory | None = None) -> QuantizeResult:
    """Quantize ``model`` by ``recipe`` into ``out`` (atomically) and check every tensor's type; a recipe
    already resolved on ``inventory`` is not resolved again."""
    model, out = Path(model), check_output_file(out)
    inv = inventory or read_inventory(model)
    resolution = recipe if isinstance(recipe, Resolution) else resolve(recipe, inv, dry_run_types)
    recipe = resolution.recipe
    warnings = check_imatrix(resolution, imatrix, allow_partial_imatrix)
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    need = predict_size(resolution, inv, imatrix.kv() if imatrix else None).file_bytes
    _check_room(out, need)
    start = time.perf_counter()
    try:
        try:
            _run_isolated(model, partial, recipe, threads, imatrix)
        except RecipeSearchError as err:
            if "iostream" in str(err) or "write" in str(err).lower():  # llama.cpp's words for a failed write
                _check_room(out, need - (partial.stat().st_size if partial.exists() else 0))
                why = str(err).split(": ", 1)[-1]
                raise RecipeSearchError(f"cannot write the quantized file: {why}", out) from None
            raise
        written = read_inventory(partial)
        _verify(resolution, written, out)
        refuse_non_regular(out)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    return QuantizeResult(out, resolution, seconds, out.stat().st_size, warnings)


def _check_room(out: Path, need: int) -> None:
    """Refuse to start (or explain a failed write) when the output's file system has less than ``need`` bytes free."""
    free = shutil.disk_usage(out.parent).free
    if free < need:
        raise RecipeSearchError(f"{DISK_FULL}: the quantized file needs {need:,} bytes, "
                                f"{free:,} are free", out)


def _verify(resolution: Resolution, written: Inventory, out: Path) -> None:
    wrong = []
    for r in resolution.tensors:
        got = written.by_name.get(r.tensor.name)
        if got is None or got.ggml_type != r.ggml_type:
            wrong.append(f"{r.tensor.name}: expected {r.ggml_type.name}, got {got.ggml_type.name if got else 'nothing'}")
    if wrong:
        raise RecipeSearchError(f"written types differ from the recipe's resolution: {_short_list(wrong)}", out)
