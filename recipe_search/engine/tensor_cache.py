"""The quantized-tensor cache: each (model, tensor, ggml type, imatrix, build) quantized once.

A miss is quantized as llama.cpp quantizes it (`tensor_fill`), in a child process by default
(`fill_process`: an abort there fails one pair, not the run). The type is the one `resolve` computed
(row-size fallbacks included).

Each entry is stored as a ready split-GGUF shard (see `assemble`): a header holding only
`split.no` (the tensor's fixed shard number) and the tensor, so a trial links the entries it needs
instead of writing their bytes. Alongside, a small JSON records the tensor's imatrix-weighted
squared quantization error (dequantized against the float source), the zero-evaluation
sensitivity signal. Entries are keyed by the model's fingerprint, the tensor, its shard number,
the type, the imatrix digest and the build of libggml-base that quantizes (the quantizers are
compiled code whose floating-point contraction depends on the compiler and its flags, so a hash of
the library file and the machine architecture stand for "this build"). Writes are atomic; the
cache is bounded (`$RECIPE_SEARCH_TENSOR_CACHE_GB`, else `DEFAULT_DISK_SHARE` of the disk it can use: the free
bytes under its directory plus those it holds), least recently used first out. Each entry's record holds the digest of its shard
(`digest`) and its own (`record_digest`), checked on the shard's first use in a process: an entry whose
bytes changed on disk is removed and quantized again, with one warning line, never linked into a trial; the
entries of a trial are checked again once it is measured (`recheck`), for damage after their first use.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import platform
import shutil
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.cache_need import SHARD_ALIGNMENT, CacheNeed, cache_need_warning, disk_share_bound, shard_header
from ..core.inventory import Inventory, Tensor
from ..core.size import human_bytes
from ..errors import RecipeSearchError
from ..formats.files import atomic_write_text
from ..formats.ggml_types import GGMLType, is_quantized, tensor_bytes
from ..formats.gguf_header import read_header
from ..formats.gguf_write import pad
from . import libggml
from .digest import file_digest, json_digest, warn_damaged
from .fill_process import fill_in_child
from .tensor_fill import FillJob, WeightError, fill, source_data, weight_error, write_record

#: shards found intact in this process (path, device, inode): each is checked once, on its first use
_CHECKED: set[tuple[str, int, int]] = set()
#: what `entry_problem` says of a record without a digest (an older version wrote it): quantized again, silently
NO_DIGEST = "no digest recorded (an older version wrote it)"


@functools.cache
def build_id() -> str:
    """The quantizing build: sha256 of libggml-base plus the machine architecture."""
    h = hashlib.sha256(platform.machine().encode())
    with open(libggml.ggml_base_path(), "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:32]


def _imatrix_for(tensor: Tensor, arrays: dict[str, np.ndarray] | None) -> np.ndarray | None:
    """The imatrix entry llama.cpp would use: present and of n_per_row * n_expert floats, else none
    (quantize.check_imatrix has already refused the sizes llama.cpp refuses)."""
    if arrays is None or tensor.name not in arrays:
        return None
    arr = np.ascontiguousarray(arrays[tensor.name], dtype=np.float32).ravel()
    n_expert = tensor.shape[2] if len(tensor.shape) > 2 else 1
    return arr if arr.size == tensor.shape[0] * n_expert else None


@dataclass(frozen=True)
class CacheInfo:
    entries: int
    bytes: int
    max_bytes: int
    hits: int
    misses: int

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


def free_bytes(path: Path) -> int:
    """Free bytes on the file system of ``path`` (of its nearest existing folder)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


@dataclass(frozen=True)
class NeedReport:
    """What a space needs in the cache against what the cache may keep: bytes, and the lines that say it."""

    need: int
    pairs: int
    bound: int
    held: int
    free: int
    line: str
    warning: str | None


class TensorCache:
    """Quantized tensors of any model, as split-GGUF shards under ``root``: at most ``max_bytes``, or, when it is
    None, `DEFAULT_DISK_SHARE` of the disk the cache can use (free bytes plus the bytes it holds, at each eviction)."""

    def __init__(self, root: Path, max_bytes: int | None = None) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes

    @classmethod
    def under(cls, cache_dir: Path) -> TensorCache:
        """The cache in recipe-search's cache directory; ``$RECIPE_SEARCH_TENSOR_CACHE_GB`` sets the bound."""
        gb = os.environ.get("RECIPE_SEARCH_TENSOR_CACHE_GB")
        try:
            max_bytes = int(float(gb) * (1 << 30)) if gb else None
        except ValueError:
            raise RecipeSearchError(f"RECIPE_SEARCH_TENSOR_CACHE_GB is not a number: {gb!r}") from None
        if max_bytes is not None and max_bytes < 0:
            raise RecipeSearchError(f"RECIPE_SEARCH_TENSOR_CACHE_GB is negative: {gb!r}")
        return cls(Path(cache_dir) / "tensors", max_bytes)

    def bound(self, held: int) -> int:
        """The bound in bytes while the cache holds ``held`` bytes."""
        return self.max_bytes if self.max_bytes is not None else disk_share_bound(free_bytes(self.root), held)

    def need_report(self, need: CacheNeed) -> NeedReport:
        """``need`` (`core.cache_need.space_cache_need`) against this cache's bound and the disk under it."""
        info = self.info()
        free = free_bytes(self.root)
        line = (f"tensor cache: the space's {len(need.pairs)} (tensor, type) pairs need {human_bytes(need.bytes)} "
                f"(most: {need.largest()}); bound {human_bytes(info.max_bytes)}"
                f"{'' if self.max_bytes is not None else ' (half the disk it can use)'}, holding "
                f"{human_bytes(info.bytes)}, {human_bytes(free)} free under {self.root}")
        return NeedReport(need.bytes, len(need.pairs), info.max_bytes, info.bytes, free, line,
                          cache_need_warning(need.bytes, info.max_bytes, free, info.bytes))

    def _entries(self) -> list[Path]:
        return list(self.root.glob("*/*.gguf")) if self.root.exists() else []

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _stats(self) -> dict[str, int]:
        try:
            d = json.loads((self.root / "stats.json").read_text())
            return {"hits": int(d["hits"]), "misses": int(d["misses"])}
        except (OSError, ValueError, KeyError, TypeError):
            return {"hits": 0, "misses": 0}

    def count(self, hits: int, misses: int) -> None:
        """Add one assembly's hits and misses to the cache's running totals."""
        with self._locked():
            s = self._stats()
            atomic_write_text(self.root / "stats.json", json.dumps({"hits": s["hits"] + hits,
                                                                   "misses": s["misses"] + misses}))

    def info(self) -> CacheInfo:
        entries = self._entries()
        size = 0
        for p in entries:
            with contextlib.suppress(OSError):
                size += p.stat().st_size
        s = self._stats()
        return CacheInfo(len(entries), size, self.bound(size), s["hits"], s["misses"])

    def clear(self) -> int:
        """Remove every entry and the counters; returns the number of entries removed."""
        entries = self._entries()
        with self._locked():
            for p in entries:
                remove_entry(p)
            (self.root / "stats.json").unlink(missing_ok=True)
        return len(entries)

    def evict(self, keep: Collection[Path] = frozenset()) -> int:
        """Remove least recently used entries (not in ``keep``) until the cache fits its bound."""
        with self._locked():
            stamped = []
            for p in self._entries():
                with contextlib.suppress(OSError):
                    st = p.stat()
                    stamped.append((st.st_mtime, st.st_size, p))
            total = sum(s for _, s, _ in stamped)
            bound = self.bound(total)
            removed = 0
            for _, size, p in sorted(stamped, key=lambda e: e[0]):
                if total <= bound:
                    break
                if p in keep:
                    continue
                remove_entry(p)
                total -= size
                removed += 1
        return removed


    def verify(self) -> tuple[int, list[tuple[Path, str]]]:
        """Check every entry's shard against the digest in its record; remove the damaged ones (and those
        without a digest, which cannot be checked). Returns (entries checked, [(shard, problem)])."""
        entries = self._entries()
        bad = []
        for p in entries:
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile (evicted by another process)
                problem = entry_problem(p, p.stat().st_size, None)
                if problem:
                    bad.append((p, problem))
        with self._locked():
            for p, _ in bad:
                remove_entry(p)
            for record in self.root.glob("*/*.json"):  # records whose shard was never written (a killed fill)
                if not record.with_suffix(".gguf").exists():
                    record.unlink(missing_ok=True)
        return len(entries), bad


def remove_entry(path: Path) -> None:
    """Remove a cached shard and its record."""
    path.unlink(missing_ok=True)
    path.with_suffix(".json").unlink(missing_ok=True)


def entry_problem(path: Path, size: int, expected: int | None) -> str | None:
    """What is wrong with the cached shard at ``path`` (of ``size`` bytes; ``expected``: the size it must have,
    if known), or None when its bytes have the digest its record holds."""
    if expected is not None and size != expected:
        return f"{size} bytes, {expected} expected"
    try:
        record = json.loads(path.with_suffix(".json").read_text())
    except FileNotFoundError:
        return "its record is missing"
    except (OSError, ValueError):
        return "its record is unreadable"
    problem = record_problem(record)
    if problem is not None:
        return problem
    got, want = file_digest(path), record["digest"]
    return None if got == want else f"digest {got.split(':')[-1]}, recorded {want.split(':')[-1]}"


def record_problem(record: object) -> str | None:
    """What is wrong with an entry's record (its JSON, parsed), or None when it matches its own digest."""
    if not isinstance(record, dict):
        return "its record is unreadable"
    if not isinstance(record.get("digest"), str) or not isinstance(record.get("record_digest"), str):
        return NO_DIGEST
    if json_digest(record, "record_digest") != record["record_digest"]:
        return "its record does not match its digest"
    return None


class ModelTensors:
    """One model's view of the cache: its tensors, each as a shard at its fixed split number.

    Shard 0 of a trial holds the metadata; tensor i of the source file (in file order) is shard i+1.
    """

    def __init__(self, cache: TensorCache, inventory: Inventory, fingerprint: str,
                 imatrix: dict[str, np.ndarray] | None, imatrix_digest: str, threads: int = 2,
                 isolated: bool = True) -> None:
        self.cache, self.inventory, self.fingerprint = cache, inventory, fingerprint
        self.imatrix, self.imatrix_digest, self.threads = imatrix, imatrix_digest, threads
        #: quantize misses in a child process (`fill_process`), so that a GGML_ASSERT fails one trial, not the run
        self.isolated = isolated
        self.index = {t.name: i + 1 for i, t in enumerate(inventory.tensors)}
        self.hits = self.misses = 0
        #: entries that evictions after this model's assemblies keep (a study pins its current frontier's)
        self.pinned: frozenset[Path] = frozenset()
        #: the digest each entry used here must have, from its record when it was checked or filled: a trial's
        #: bytes are checked against it even when the entry was replaced meanwhile (`recheck`)
        self.digests: dict[Path, str] = {}
        #: called with an entry's path before it is looked up: `prefill.Prefill.claim` (waits while it is quantized
        #: ahead, so that it is not quantized twice)
        self.claim: Callable[[Path], None] | None = None

    def pin(self, pairs: Iterable[tuple[Tensor, GGMLType]]) -> None:
        """Keep these (tensor, type) entries through the evictions after this model's assemblies (replacing the
        pins before); a bound too small for them all is then exceeded rather than the pinned entries removed."""
        self.pinned = frozenset(self.path(t, q) for t, q in pairs)

    def key(self, tensor: Tensor, ggml_type: GGMLType) -> str:
        blob = json.dumps({"model": self.fingerprint, "tensor": tensor.name, "shard": self.index[tensor.name],
                           "type": ggml_type.name, "imatrix": self.imatrix_digest, "build": build_id()})
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def path(self, tensor: Tensor, ggml_type: GGMLType) -> Path:
        key = self.key(tensor, ggml_type)
        return self.cache.root / key[:2] / f"{key}.gguf"

    def _shard_header(self, tensor: Tensor, ggml_type: GGMLType) -> bytes:
        return shard_header(self.index[tensor.name], tensor, ggml_type)

    def shard(self, tensor: Tensor, ggml_type: GGMLType) -> Path:
        """The cached shard of ``tensor`` at ``ggml_type``, quantized now if it is not there. A shard used for
        the first time in this process is checked (its size, and its digest against its record); a damaged one
        is removed and quantized again, with one warning line."""
        path = self.path(tensor, ggml_type)
        if self.claim is not None:
            self.claim(path)
        expected = len(self._shard_header(tensor, ggml_type)) + pad(tensor_bytes(ggml_type, tensor.shape),
                                                                     SHARD_ALIGNMENT)
        try:
            st = path.stat()
        except FileNotFoundError:
            st = None
        if st is not None:
            checked = (str(path), st.st_dev, st.st_ino)
            problem = None if checked in _CHECKED and st.st_size == expected else entry_problem(path, st.st_size,
                                                                                               expected)
            if problem is None:
                _CHECKED.add(checked)
                os.utime(path)  # marks it recently used
                self.hits += 1
                self._remember(path)
                return path
            if problem != NO_DIGEST:
                warn_damaged(path, f"the cached {tensor.name} at {ggml_type.name}", problem,
                             "removed, quantizing it again")
            remove_entry(path)
        self.misses += 1
        self._fill(tensor, ggml_type, path)
        with contextlib.suppress(OSError):
            st = path.stat()
            _CHECKED.add((str(path), st.st_dev, st.st_ino))
        self._remember(path)
        return path

    def _remember(self, path: Path) -> None:
        """Keep the digest the record of the entry at ``path`` holds, if not kept yet (and the record is sound)."""
        if path not in self.digests:
            with contextlib.suppress(OSError, ValueError):
                record = json.loads(path.with_suffix(".json").read_text())
                if record_problem(record) is None:
                    self.digests[path] = record["digest"]

    def recheck(self, pairs: Iterable[tuple[Tensor, GGMLType]], used: Mapping[Path, Path] | None = None) -> list[str]:
        """Check the bytes a trial used for ``pairs`` against their digests again, whatever was checked before in
        this process; one line for each mismatch. ``used``: the trial's own links, by entry; there the bytes are the
        ones it linked even when the entry was replaced meanwhile (another worker removed a damaged entry and
        quantized it again while this trial held the damaged one). A damaged entry itself is removed."""
        damaged = []
        for tensor, ggml_type in pairs:
            path = self.path(tensor, ggml_type)
            data = (used or {}).get(path, path)
            try:
                st = data.stat()
            except FileNotFoundError:
                continue
            try:
                entry = path.stat()
            except FileNotFoundError:
                entry = None
            is_entry = entry is not None and (entry.st_dev, entry.st_ino) == (st.st_dev, st.st_ino)
            want = self.digests.get(path)
            if want is not None:
                problem = None if file_digest(data) == want else "its bytes do not match their digest"
            elif is_entry:
                problem = entry_problem(path, st.st_size, None)
            else:
                continue
            if problem is None or problem == NO_DIGEST:
                continue
            if is_entry:
                remove_entry(path)
            damaged.append(f"{tensor.name} at {ggml_type.name} ({problem}"
                           f"{'' if is_entry else '; the entry was replaced while the trial used it'})")
        return damaged

    def weight_error(self, tensor: Tensor, ggml_type: GGMLType) -> WeightError:
        """The weight error of ``tensor`` at ``ggml_type``: from its entry's record, or computed from the cached
        shard and the source (quantizing it first if needed, never again) and kept in the record."""
        if ggml_type == tensor.ggml_type:  # a copy
            return WeightError(0.0, 0.0, self.imatrix is not None)
        path = self.path(tensor, ggml_type)
        meta = path.with_suffix(".json")
        for _ in range(2):
            self.shard(tensor, ggml_type)  # filled if missing, its bytes checked on first use
            try:
                d = json.loads(meta.read_text())
                problem = record_problem(d)
                if problem is None and "sq_error" in d:
                    return WeightError(float(d["sq_error"]), float(d["sq_source"]), bool(d["weighted"]),
                                       tuple(d["per_expert"]))
                if problem is None:
                    return self._record_weight_error(tensor, ggml_type, path, d)
            except FileNotFoundError:
                problem = None  # evicted meanwhile: filled again
            except (OSError, ValueError, KeyError, TypeError):
                problem = "its record is unreadable"
            if problem is not None and problem != NO_DIGEST:
                warn_damaged(path, f"the cached {tensor.name} at {ggml_type.name}", problem,
                             "removed, quantizing it again")
            remove_entry(path)
        raise RecipeSearchError(f"no weight error recorded for {tensor.name} at {ggml_type.name}", meta)

    def _record_weight_error(self, tensor: Tensor, ggml_type: GGMLType, path: Path, record: dict) -> WeightError:
        """The weight error of the entry at ``path`` (its shard dequantized against the source), added to its
        ``record``."""
        offset, n_bytes = shard_data(path)
        with open(path, "rb") as fh:
            shard = np.fromfile(fh, dtype=np.uint8, count=n_bytes, offset=offset)
        err = weight_error(source_data(self.inventory.paths[tensor.file_index], tensor), shard, tensor, ggml_type,
                           _imatrix_for(tensor, self.imatrix), self.threads)
        write_record(path.with_suffix(".json"), {**record, "sq_error": err.sq_error, "sq_source": err.sq_source,
                                                 "weighted": err.weighted, "per_expert": list(err.per_expert)})
        return err

    def fill_job(self, tensor: Tensor, ggml_type: GGMLType, path: Path, threads: int) -> FillJob:
        """The job that quantizes ``tensor`` to ``ggml_type`` into its entry ``path`` (`path`'s), on ``threads``
        threads."""
        if ggml_type != tensor.ggml_type and is_quantized(tensor.ggml_type):
            raise RecipeSearchError(f"requantizing from type {tensor.ggml_type.name} is disabled ({tensor.name})",
                                    self.inventory.paths[tensor.file_index])
        return FillJob(self.inventory.paths[tensor.file_index], tensor, ggml_type, _imatrix_for(tensor, self.imatrix),
                       threads, self._shard_header(tensor, ggml_type), path)

    def _fill(self, tensor: Tensor, ggml_type: GGMLType, path: Path) -> None:
        job = self.fill_job(tensor, ggml_type, path, self.threads)
        if self.isolated and ggml_type != tensor.ggml_type:
            fill_in_child(job)
        else:
            fill(job)


def shard_data(path: Path) -> tuple[int, int]:
    """(data offset, bytes) of the one tensor in a cached shard."""
    t = read_header(path).tensors[0]
    return t.data_offset, tensor_bytes(t.ggml_type, t.shape)
