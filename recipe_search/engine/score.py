"""Scoring a quantized model against the base model, as ``llama-perplexity --kl-divergence`` does.

The base model's distributions over the scored tokens (the *reference*) are computed once per
(model, text, ctx, chunks) and cached on disk in a sparse form (`kld.SparseReference`), written
atomically and read back memory-mapped, chunk by chunk. Its meta.json records the digest of every
file and its own; a reference whose bytes changed on disk is computed again, with one warning line.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..core.inventory import Inventory, model_fingerprint, read_inventory
from ..core.kld import KLDSummary, SparseReference, TokenStats, scored_per_chunk, summarize, token_stats_sparse
from ..core.text import ScoreSettings, text_sha256
from ..errors import RecipeSearchError
from ..formats.gguf_header import ggml_n_dims
from ..version import __version__
from .digest import file_digest, json_digest, warn
from .llama import LlamaModel, chunk_tokens, evaluate, scored_range

REFERENCE_FORMAT = 2
_PER_TOKEN = {"remainder": np.float32, "dropped": np.float32, "top": np.int32, "nll_base": np.float32}
_PER_ENTRY = {"indices": np.int32, "logprobs": np.float32}


@dataclass
class Reference:
    """A cached base-model reference: tokens, per-token sparse distributions, and what they came from.

    The per-token arrays are in memory, the per-entry arrays (indices, logprobs) memory-mapped; `chunk`
    reads a chunk's entries from the files, so scoring does not keep the whole mapped reference resident.
    """

    path: Path
    meta: dict
    tokens: np.ndarray  # int32 [n_chunks, ctx], BOS already swapped in
    sparse: SparseReference

    @property
    def first(self) -> int:
        return int(self.meta["first"])

    @property
    def n_scored_per_chunk(self) -> int:
        return self.tokens.shape[1] - 1 - self.first

    def chunk(self, i: int) -> tuple[SparseReference, np.ndarray]:
        n = self.n_scored_per_chunk
        part = self.sparse.select(i * n, (i + 1) * n)
        start = int(self.sparse.offsets[i * n])
        part.indices, part.logprobs = (
            np.fromfile(self.path / f"{name}.bin", dt, len(part.indices), offset=start * np.dtype(dt).itemsize)
            for name, dt in _PER_ENTRY.items())
        return part, self.tokens[i, self.first + 1:]


def reference_key(fingerprint: str, text: bytes, settings: ScoreSettings) -> str:
    import hashlib

    fields = {"model": fingerprint, "text": text_sha256(text), "ctx": settings.ctx,
              "chunks": settings.chunks, "format": REFERENCE_FORMAT, "tool": __version__}
    if settings.gpu_layers:  # GPU kernels give other logits; CPU references keep their keys
        fields["gpu_layers"] = settings.gpu_layers
    if settings.more_chunks and settings.chunks is not None:  # likewise references without chunks beyond `chunks`
        fields["more_chunks"] = settings.more_chunks
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class Stopwatch:
    """Seconds per phase: ``lap(phase)`` adds the time since the previous lap (or the start) to it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._mark = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._mark
        self._mark = now


class NoDigest(RecipeSearchError):
    """A cached reference without digests (an older version wrote it): it cannot be checked."""


def _files() -> list[str]:
    return [f"{name}.bin" for name in (*_PER_TOKEN, *_PER_ENTRY, "offsets", "tokens")]


def load_reference(path: Path, fingerprint: str | None = None) -> Reference:
    """Open a cached reference (memory-mapped) after checking its files against the digests it records;
    refuse one made from another model."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as err:
        raise RecipeSearchError(f"unreadable reference cache ({err})", path) from None
    _check_meta(meta, path)
    if not isinstance(meta.get("digest"), str) or not isinstance(meta.get("digests"), dict):
        raise NoDigest("reference cache without digests (an older version wrote it)", path)
    if json_digest(meta) != meta["digest"]:
        raise RecipeSearchError("damaged reference cache (meta.json does not match its digest)", path)
    for name in _files():
        try:
            same = file_digest(path / name) == meta["digests"].get(name)
        except OSError as err:
            raise RecipeSearchError(f"damaged reference cache ({name}: {err.strerror})", path) from None
        if not same:
            raise RecipeSearchError(f"damaged reference cache ({name} does not match its digest)", path)
    if fingerprint is not None and meta.get("model_fingerprint") != fingerprint:
        raise RecipeSearchError(f"reference cache belongs to another model ({meta.get('model_name')})", path)
    n_tok, n_ent = int(meta["n_tokens"]), int(meta["n_entries"])

    def entries() -> dict[str, Any]:  # arrays, passed by name to SparseReference
        return {name: np.memmap(path / f"{name}.bin", dt, "r", shape=(n_ent,)) if n_ent else np.zeros(0, dt)
                for name, dt in _PER_ENTRY.items()}

    try:
        arrays = {"n_vocab": np.array(meta["n_vocab"]),
                  "offsets": np.fromfile(path / "offsets.bin", np.int64, n_tok + 1),
                  **{name: np.fromfile(path / f"{name}.bin", dt, n_tok) for name, dt in _PER_TOKEN.items()},
                  **entries()}
        tokens = np.fromfile(path / "tokens.bin", np.int32).reshape(meta["n_chunks"], meta["ctx"])
        checked = SparseReference.from_arrays(arrays, path)
    except (OSError, ValueError) as err:
        raise RecipeSearchError(f"damaged reference cache ({err})", path) from None
    # the check read every entry through its map: map them afresh, untouched
    return Reference(path, meta, tokens, replace(checked, **entries()))


#: the meta fields a reference is read by, and their types
_META_FIELDS = {"n_tokens": int, "n_entries": int, "n_vocab": int, "n_chunks": int, "ctx": int, "first": int,
                "model_fingerprint": str, "model_name": str, "vocab_fingerprint": str, "text": str,
                "tensor_table": list}


def _check_meta(meta: object, path: Path) -> None:
    """A reference's meta.json must be an object with every field it is read by, of its type."""
    if not isinstance(meta, dict):
        raise RecipeSearchError("damaged reference cache (meta.json is not an object)", path)
    for key, kind in _META_FIELDS.items():
        value = meta.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or (isinstance(value, int) and value < 0):
            raise RecipeSearchError(f"damaged reference cache (meta.json: bad or missing {key})", path)


def build_reference(model: Path, inv: Inventory, settings: ScoreSettings, out: Path,
                    fingerprint: str, text: bytes) -> Reference:
    """Evaluate the base model on the text's chunks and write the sparse reference atomically.

    The meta records the seconds of each phase: load, tokenize, decode, sparsify, write.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", dir=out.parent))  # see stale.py
    try:
        clock = Stopwatch()
        with LlamaModel(model, n_threads=settings.threads, n_ctx=settings.ctx, n_seq=settings.n_seq,
                        n_gpu_layers=settings.gpu_layers) as lm:
            vocab_fingerprint = lm.vocab_fingerprint
            clock.lap("load")
            tokens = lm.tokenize(text)
            clock.lap("tokenize")
            if len(tokens) < 2 * settings.ctx:
                raise RecipeSearchError(f"the text has {len(tokens)} tokens; at least 2 x ctx = {2 * settings.ctx} "
                                        "are needed", settings.text.path or settings.text.label)
            chunks = chunk_tokens(tokens, settings.ctx, reference_chunk_count(settings, len(tokens)), lm.add_bos,
                                  lm.bos_id)
            first, _ = scored_range(settings.ctx)
            files = {n: open(tmp / f"{n}.bin", "wb") for n in [*_PER_TOKEN, *_PER_ENTRY, "offsets"]}  # noqa: SIM115
            n_tokens = n_entries = 0
            files["offsets"].write(np.zeros(1, np.int64).tobytes())
            try:
                for i, logits in evaluate(lm, chunks, first, copy=False):
                    clock.lap("decode")
                    part = SparseReference.from_logits(logits, chunks[i, first + 1:], threads=settings.threads)
                    clock.lap("sparsify")
                    for name in [*_PER_TOKEN, *_PER_ENTRY]:
                        getattr(part, name).astype(_PER_TOKEN.get(name) or _PER_ENTRY[name]).tofile(files[name])
                    (part.offsets[1:] + n_entries).astype(np.int64).tofile(files["offsets"])
                    n_tokens += len(part)
                    n_entries += int(part.offsets[-1])
                    clock.lap("write")
            finally:
                for fh in files.values():
                    fh.close()
            chunks.astype(np.int32).tofile(tmp / "tokens.bin")
            clock.lap("write")
            meta = {"format": REFERENCE_FORMAT, "tool": __version__, "model_fingerprint": fingerprint,
                    "model_name": model.name, "n_vocab": lm.n_vocab, "vocab_fingerprint": vocab_fingerprint,
                    "add_bos": lm.add_bos, "text": settings.text.label, "text_sha256": text_sha256(text),
                    "n_text_tokens": len(tokens), "ctx": settings.ctx, "n_chunks": len(chunks),
                    "first": first, "n_tokens": n_tokens, "n_entries": n_entries,
                    "tensor_table": _tensor_table(inv), "seconds": clock.seconds,
                    "digests": {name: file_digest(tmp / name) for name in _files()}}
        meta["digest"] = json_digest(meta)
        (tmp / "meta.json").write_text(json.dumps(meta))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return load_reference(out, fingerprint)


def reference_chunk_count(settings: ScoreSettings, n_tokens: int) -> int | None:
    """The chunks a reference of ``n_tokens`` text tokens holds: `chunks`, and `more_chunks` beyond them as far as
    the text goes (None: every whole chunk)."""
    if settings.chunks is None or not settings.more_chunks:
        return settings.chunks
    return max(settings.chunks, min(settings.chunks + settings.more_chunks, n_tokens // settings.ctx))


def _tensor_table(inv: Inventory) -> list[list]:
    return [[t.name, _dims(t.shape)] for t in inv.tensors]


def _dims(shape: tuple[int, ...]) -> list[int]:
    """The shape without trailing 1s (the quantizer writes ggml_n_dims dimensions)."""
    return list(shape[:ggml_n_dims(shape)])


def get_reference(model: Path, settings: ScoreSettings, cache_dir: Path,
                  inv: Inventory | None = None) -> tuple[Reference, bool]:
    """The cached reference for these settings, computed if missing. Returns (reference, was_cached)."""
    inv = inv or read_inventory(model)
    fingerprint = model_fingerprint(inv)
    text = settings.text.read()
    path = cache_dir / "references" / reference_key(fingerprint, text, settings)
    if (path / "meta.json").exists():
        try:
            return load_reference(path, fingerprint), True
        except NoDigest:
            pass  # written by an older version: computed again below, replacing it
        except RecipeSearchError as err:  # damaged (a disk error, a hand edit): computed again, replacing it
            warn(f"{err}; computing it again")
    return build_reference(model, inv, settings, path, fingerprint, text), False


def check_same_model(reference: Reference, quant: Inventory) -> None:
    """A quant must have the base model's tensors (names and shapes)."""
    base = {name: tuple(shape) for name, shape in reference.meta["tensor_table"]}
    got = {t.name: tuple(_dims(t.shape)) for t in quant.tensors}
    if base != got:
        diff = sorted(set(base.items()) ^ set(got.items()))
        raise RecipeSearchError(f"not a quant of {reference.meta['model_name']}: tensors differ "
                                f"(e.g. {diff[0][0]})", quant.path)


@dataclass
class ScoreResult:
    summary: KLDSummary
    stats: TokenStats
    seconds: dict[str, float]  # load, decode, kld
    chunk_tokens: int  # scored tokens per chunk: `stats` holds whole chunks of them, in order


def score_quant(quant: Path, reference: Reference, settings: ScoreSettings,
                on_chunk: Callable[[int, TokenStats], None] | None = None, check: bool = True,
                chunks: int | None = None) -> ScoreResult:
    """Evaluate a quant on the reference's first ``chunks`` chunks (None: `settings.chunks`; as many as the
    reference holds) and compute llama-perplexity's statistics on the first `settings.chunks` of them.

    ``on_chunk(i, stats_so_far)`` runs after each chunk and may raise StopScoring. ``check=False``
    skips checking that the quant has the reference model's tensors and tokenizer, for a quant that
    llama.cpp's quantizer has just written from that very model.
    """
    held = len(reference.tokens)
    n = min(chunks or settings.chunks or held, held)
    clock = Stopwatch()
    if check:
        check_same_model(reference, read_inventory(quant))
    with LlamaModel(quant, n_threads=settings.threads, n_ctx=reference.tokens.shape[1], n_seq=settings.n_seq,
                    n_gpu_layers=settings.gpu_layers) as lm:
        if check and lm.vocab_fingerprint != reference.meta["vocab_fingerprint"]:
            raise RecipeSearchError("tokenizer differs from the reference model's", quant)
        clock.lap("load")
        parts: list[TokenStats] = []
        for i, logits in evaluate(lm, reference.tokens[:n], reference.first, copy=False):
            clock.lap("decode")
            sparse, next_tokens = reference.chunk(i)
            parts.append(token_stats_sparse(sparse, logits, next_tokens, threads=settings.threads))
            if on_chunk is not None:
                on_chunk(i, TokenStats.concat(parts))
            clock.lap("kld")
    stats = TokenStats.concat(parts)
    summary = summarize(stats.head(min(n, settings.chunks or n) * reference.n_scored_per_chunk))
    clock.lap("kld")
    return ScoreResult(summary, stats, clock.seconds, reference.n_scored_per_chunk)


def write_base_file(model: Path, settings: ScoreSettings, out: Path) -> int:
    """Write llama-perplexity's ``--kl-divergence-base`` file for the base model; returns the chunk count."""
    from ..core.kld_base_file import KLDBaseFileWriter

    text = settings.text.read()
    with LlamaModel(model, n_threads=settings.threads, n_ctx=settings.ctx, n_seq=settings.n_seq,
                    n_gpu_layers=settings.gpu_layers) as lm:
        tokens = lm.tokenize(text)
        if len(tokens) < 2 * settings.ctx:
            raise RecipeSearchError(f"the text has {len(tokens)} tokens; at least 2 x ctx = {2 * settings.ctx} "
                                    "are needed", settings.text.path or settings.text.label)
        chunks = chunk_tokens(tokens, settings.ctx, settings.chunks, lm.add_bos, lm.bos_id)
        raw = np.asarray(tokens[:chunks.size], dtype=np.int32).reshape(chunks.shape)  # stored before the BOS swap
        first, _ = scored_range(settings.ctx)
        with KLDBaseFileWriter(out, raw, lm.n_vocab) as writer:
            for _, logits in evaluate(lm, chunks, first):
                writer.write_chunk(logits)
    return len(chunks)


def score_against_base_file(quant: Path, base_file: Path, settings: ScoreSettings) -> ScoreResult:
    """Score a quant against a llama-perplexity base file (tokens come from the file), as llama-perplexity does."""
    from ..core.kld_base_file import KLDBaseFile

    base = KLDBaseFile(base_file)
    clock = Stopwatch()
    with LlamaModel(quant, n_threads=settings.threads, n_ctx=base.n_ctx, n_seq=settings.n_seq,
                    n_gpu_layers=settings.gpu_layers) as lm:
        if lm.n_vocab != base.n_vocab:
            raise RecipeSearchError(f"vocabulary of {base.n_vocab} entries, but {quant.name} has {lm.n_vocab}",
                                    base_file)
        chunks = np.array(base.tokens, dtype=np.int32)
        if lm.add_bos:
            chunks[:, 0] = lm.bos_id
        clock.lap("load")
        parts = []
        for i, logits in evaluate(lm, chunks, base.n_ctx // 2, copy=False):
            clock.lap("decode")
            parts.append(base.token_stats(i, logits))
            clock.lap("kld")
    stats = TokenStats.concat(parts)
    summary = summarize(stats)
    clock.lap("kld")
    return ScoreResult(summary, stats, clock.seconds, scored_per_chunk(base.n_ctx))
