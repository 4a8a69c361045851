"""KL-divergence statistics of a quantized model's logits against the base model's, no I/O.

Mirrors ``llama-perplexity --kl-divergence`` (tools/perplexity/perplexity.cpp of the llama.cpp that
llama-cpp-python 0.3.36 vendors), per scored token:

- the quant side: ``max_logit`` and the first index of the maximum, ``sum_exp`` = Σ float32
  ``expf(logit − max)`` accumulated in double, NLL = ``max + log(sum_exp) − logit[next]``;
- KLD = Σ p_base·(log p_base − log p_quant) over the entries whose base log-probability is above
  −16 only (``if (p_log_base > -16.f)``); the sum is not renormalised;
- Δp = expf(−NLL_quant) − expf(−NLL_base) of the actual next token; same-top = the two argmaxes agree;
- the summary: means with llama-perplexity's ``mean_and_uncertainty`` and ``covariance``, its
  float ``percentile`` (sorted, linear interpolation at f·(N−1)) and median, nothing below 100 tokens.

Deliberate differences, both of precision: `token_stats` takes the base model's log-softmax as
float32 values, where llama-perplexity reads them back from its 16-bit base file (`kld_base_file`
mirrors that path too); and log-sum-exps and log-ratios are formed in double, where
llama-perplexity's float ``(p_log_base - logit) + max_logit`` cancels terms of magnitude ~25 and
leaves ~1e-6 of noise per token (a Q8_0-sized KLD).

`SparseReference` keeps, per token, just the base entries that sum enters (log p > −16), at most
``max_entries`` of them, so reference distributions for tens of thousands of tokens fit in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields

import numpy as np

from ..errors import RecipeSearchError

#: llama-perplexity sums the KLD over base entries whose log-probability is above this.
LOG_PROB_FLOOR = np.float32(-16.0)
#: llama-perplexity prints no statistics for fewer scored tokens than this.
MIN_TOKENS = 100
DEFAULT_BLOCK = 4


@dataclass
class TokenStats:
    """Per scored token: KLD, next-token probabilities and their difference, same top, NLLs."""

    kld: np.ndarray  # float64
    p_base: np.ndarray  # float32
    p_quant: np.ndarray  # float32
    delta_p: np.ndarray  # float32, p_quant - p_base
    same_top: np.ndarray  # bool
    nll_base: np.ndarray  # float32
    nll_quant: np.ndarray  # float32

    def __len__(self) -> int:
        return len(self.kld)

    @classmethod
    def concat(cls, parts: Sequence[TokenStats]) -> TokenStats:
        """The tokens of all parts, in order."""
        if not parts:
            raise ValueError("nothing to concatenate")
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    def head(self, n: int) -> TokenStats:
        """The first ``n`` tokens."""
        return type(self)(**{f.name: getattr(self, f.name)[:n] for f in fields(self)})


@dataclass
class KLDSummary:
    """llama-perplexity's closing statistics; every field a plain float or int (`to_dict` is JSON-able)."""

    n_tokens: int
    ppl_q: float
    ppl_q_err: float
    ppl_base: float
    ppl_base_err: float
    ln_ppl_ratio: float
    ln_ppl_ratio_err: float
    kld_mean: float
    kld_mean_err: float
    kld_median: float
    kld_p90: float
    kld_p95: float
    kld_p99: float
    kld_p999: float
    kld_cvar99: float
    kld_cvar999: float
    kld_max: float
    dp_mean: float
    dp_mean_err: float
    dp_rms: float
    dp_rms_err: float
    dp_p1: float
    dp_p5: float
    dp_p10: float
    dp_median: float
    dp_p90: float
    dp_p95: float
    dp_p99: float
    dp_p999: float
    dp_max: float
    same_top: float
    same_top_err: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _normaliser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row of float32 logits: the first index of the maximum, the maximum, float32 expf(x − max), its sum
    accumulated in double, and the log-normaliser max + ln(sum) in double, as llama-perplexity forms them."""
    top = x.argmax(axis=1)
    m = x[np.arange(len(x)), top]
    e = np.subtract(x, m[:, None])
    np.exp(e, out=e)
    sum_exp = e.sum(axis=1, dtype=np.float64)
    return top, m, e, sum_exp, m + np.log(sum_exp)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of 2-D logits: x − (max + ln Σ expf(x − max)) in double, returned as float32."""
    x = np.asarray(logits, dtype=np.float32)
    norm = _normaliser(x)[4]
    return (x - norm[:, None]).astype(np.float32)


def _quant_side(q: np.ndarray, next_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                                  np.ndarray]:
    """argmax, max, Σ expf(q − max) and the normaliser max + ln(sum) in double, the next token's NLL."""
    top, m, _, sum_exp, norm = _normaliser(q)
    nll = (norm - q[np.arange(len(q)), next_tokens]).astype(np.float32)
    return top, m, sum_exp, norm, nll


def _map_blocks(fn: Callable[[int], object], n: int, block_size: int, threads: int) -> list:
    """fn(start) for the row blocks of n rows (one empty block when n is 0), on `threads` threads; numpy's
    array operations release the GIL, so blocks run in parallel."""
    starts = range(0, max(n, 1), block_size)
    if threads <= 1 or len(starts) < 2:
        return [fn(s) for s in starts]
    with ThreadPoolExecutor(min(threads, len(starts))) as pool:
        return list(pool.map(fn, starts))


def _finish(kld: np.ndarray, nll_base: np.ndarray, nll_quant: np.ndarray, same_top: np.ndarray) -> TokenStats:
    p_base = np.exp(-nll_base)
    p_quant = np.exp(-nll_quant)
    return TokenStats(kld=kld, p_base=p_base, p_quant=p_quant, delta_p=p_quant - p_base, same_top=same_top,
                      nll_base=nll_base, nll_quant=nll_quant)


def _check_shapes(what: str, logits: np.ndarray, n_rows: int | None, n_vocab: int | None,
                  next_tokens: np.ndarray) -> tuple[int, int]:
    """(n_rows, n_vocab) of 2-D `logits` matching the expected ones (None: any) and the next tokens."""
    if logits.ndim != 2 or (n_rows is not None and len(logits) != n_rows) or \
            (n_vocab is not None and logits.shape[1] != n_vocab):
        raise RecipeSearchError(f"{what} of shape {logits.shape}, expected ({n_rows}, {n_vocab})")
    n_rows, n_vocab = logits.shape
    if next_tokens.shape != (n_rows,):
        raise RecipeSearchError(f"next tokens of shape {next_tokens.shape} for {n_rows} rows")
    if n_rows and (next_tokens.min() < 0 or next_tokens.max() >= n_vocab):
        raise RecipeSearchError(f"next token id out of range for a vocabulary of {n_vocab}")
    return n_rows, n_vocab


def _dense(what: str, base: np.ndarray, quant_logits: np.ndarray, next_tokens: np.ndarray, block_size: int,
           base_side: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]) -> TokenStats:
    """Statistics block by block; base_side maps a float32 base block to (log-probabilities, argmax)."""
    base, quant_logits, next_tokens = map(np.asarray, (base, quant_logits, next_tokens))
    n, n_vocab = _check_shapes(what, base, None, None, next_tokens)
    _check_shapes("quant logits", quant_logits, n, n_vocab, next_tokens)
    parts = []
    for s in range(0, max(n, 1), block_size):
        lp, base_top = base_side(np.asarray(base[s:s + block_size], dtype=np.float32))
        q = np.asarray(quant_logits[s:s + block_size], dtype=np.float32)
        tok = next_tokens[s:s + block_size]
        imax, _, _, norm, nll = _quant_side(q, tok)
        terms = np.exp(lp) * ((lp - q.astype(np.float64)) + norm[:, None])
        kld = np.where(lp > LOG_PROB_FLOOR, terms, 0.0).sum(axis=1)
        parts.append(_finish(kld, -lp[np.arange(len(lp)), tok], nll, imax == base_top))
    return TokenStats.concat(parts)


def token_stats_from_logprobs(base_logprobs: np.ndarray, quant_logits: np.ndarray, next_tokens: np.ndarray,
                              block_size: int = DEFAULT_BLOCK) -> TokenStats:
    """Per-token statistics from base log-probabilities (e.g. decoded from a base file) and quant logits.

    The base argmax is the first index of the largest base log-probability, NLL_base = −log p_base[next].
    """
    return _dense("base log-probabilities", base_logprobs, quant_logits, next_tokens, block_size,
                  lambda lp: (lp, lp.argmax(axis=1)))


def token_stats(base_logits: np.ndarray, quant_logits: np.ndarray, next_tokens: np.ndarray,
                block_size: int = DEFAULT_BLOCK) -> TokenStats:
    """Per-token statistics from both models' logits (float32 [n_tokens, n_vocab]), streamed in blocks.

    The base argmax is taken from the logits (two log-probabilities may round to one float32).
    """
    return _dense("base logits", base_logits, quant_logits, next_tokens, block_size,
                  lambda b: (log_softmax(b), b.argmax(axis=1)))


# ---------------------------------------------------------------------------------------------
# summary


def percentile(sorted_values: np.ndarray, fraction: float) -> float:
    """llama-perplexity's percentile of ascending float values, in its float32 arithmetic."""
    v = np.asarray(sorted_values, dtype=np.float32)
    if fraction <= 0:
        return float(v[0])
    if fraction >= 1:
        return float(v[-1])
    p = np.float32(fraction) * np.float32(len(v) - 1)
    ip = int(p)
    p = np.float32(p - np.float32(ip))
    return float((np.float32(1) - p) * v[ip] + p * v[min(ip + 1, len(v) - 1)])


def tail_mean(values: np.ndarray, level: float) -> np.ndarray:
    """The mean of the worst ``1 - level`` of values along the last axis (conditional value at risk): the
    ceil(N·(1 − level)) largest, at least one. Unlike a percentile it averages the whole tail, so it rests on
    every tail token instead of one or two of them."""
    n = values.shape[-1]
    k = max(1, math.ceil(round(n * (1 - level), 9)))
    return np.asarray(np.mean(np.partition(values, n - k, axis=-1)[..., n - k:], axis=-1, dtype=np.float64))


def _median(sorted_values: np.ndarray) -> float:
    v = np.asarray(sorted_values, dtype=np.float32)
    n = len(v)
    return float(np.float32(0.5) * (v[n // 2] + v[n // 2 - 1])) if n % 2 == 0 else float(v[n // 2])


def _mean_and_uncertainty(x: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error from Σx and Σx² (zero error at ten values or fewer)."""
    n = len(x)
    f = float(np.sum(x, dtype=np.float64)) / n
    df = float(np.sum(np.square(x, dtype=np.float64))) / n - f * f
    return f, (float(np.sqrt(df / (n - 1))) if df > 0 and n > 10 else 0.0)


def _covariance(a: np.ndarray, b: np.ndarray) -> float:
    n = len(a)
    if n < 10:
        return 0.0
    sa, sb = float(np.sum(a, dtype=np.float64)), float(np.sum(b, dtype=np.float64))
    sab = float(np.sum(a.astype(np.float64) * b))
    return (sab / n - (sa / n) * (sb / n)) / (n - 1)


def summarize(stats: TokenStats) -> KLDSummary:
    """llama-perplexity's final KLD, perplexity and Δp statistics over all scored tokens."""
    n = len(stats)
    if n < MIN_TOKENS:
        raise RecipeSearchError(f"fewer than {MIN_TOKENS} scored tokens ({n}); llama-perplexity reports no statistics")
    lq, lq_err = _mean_and_uncertainty(stats.nll_quant)
    lb, lb_err = _mean_and_uncertainty(stats.nll_base)
    cov = _covariance(stats.nll_quant, stats.nll_base)
    kld_mean, kld_err = _mean_and_uncertainty(stats.kld)
    dp_mean, dp_err = _mean_and_uncertainty(stats.delta_p)
    mse, mse_err = _mean_and_uncertainty(np.square(stats.delta_p.astype(np.float64)))
    rms = float(np.sqrt(mse))
    same = float(np.count_nonzero(stats.same_top)) / n
    kld_sorted = np.sort(stats.kld.astype(np.float32))
    dp_sorted = np.sort(stats.delta_p.astype(np.float32))
    return KLDSummary(
        n_tokens=n,
        ppl_q=float(np.exp(lq)), ppl_q_err=float(np.exp(lq)) * lq_err,
        ppl_base=float(np.exp(lb)), ppl_base_err=float(np.exp(lb)) * lb_err,
        ln_ppl_ratio=lq - lb, ln_ppl_ratio_err=float(np.sqrt(max(lq_err**2 + lb_err**2 - 2 * cov, 0.0))),
        kld_mean=kld_mean, kld_mean_err=kld_err, kld_median=_median(kld_sorted),
        kld_p90=percentile(kld_sorted, 0.90), kld_p95=percentile(kld_sorted, 0.95),
        kld_p99=percentile(kld_sorted, 0.99), kld_p999=percentile(kld_sorted, 0.999),
        kld_cvar99=float(tail_mean(kld_sorted, 0.99)), kld_cvar999=float(tail_mean(kld_sorted, 0.999)),
        kld_max=float(kld_sorted[-1]),
        dp_mean=dp_mean, dp_mean_err=dp_err, dp_rms=rms, dp_rms_err=0.5 / rms * mse_err if rms > 0 else 0.0,
        dp_p1=percentile(dp_sorted, 0.01), dp_p5=percentile(dp_sorted, 0.05), dp_p10=percentile(dp_sorted, 0.10),
        dp_median=_median(dp_sorted), dp_p90=percentile(dp_sorted, 0.90), dp_p95=percentile(dp_sorted, 0.95),
        dp_p99=percentile(dp_sorted, 0.99), dp_p999=percentile(dp_sorted, 0.999), dp_max=float(dp_sorted[-1]),
        same_top=same, same_top_err=float(np.sqrt(same * (1 - same) / (n - 1))),
    )


# ---------------------------------------------------------------------------------------------
# bootstrap


def scored_per_chunk(ctx: int) -> int:
    """Scored tokens per chunk of ``ctx`` tokens: positions ctx//2 .. ctx-2 each predict the next token."""
    return ctx - 1 - ctx // 2


def shared_chunks(a: np.ndarray, b: np.ndarray, chunk_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Two trials' per-token values on the whole chunks both were scored on: every trial scores the reference's
    chunks in order, so those are the first chunks of the shorter one."""
    n = min(len(a), len(b)) // chunk_tokens * chunk_tokens
    return a[:n], b[:n]


def _bootstrap(arrays: Sequence[np.ndarray], statistic: Callable[..., np.ndarray], chunk_tokens: int, n_boot: int,
               level: float, seed: int) -> tuple[float, float]:
    """Percentile CI of statistic(*resampled arrays), whole chunks resampled jointly.

    The arrays hold per-token values in chunk order, ``chunk_tokens`` consecutive tokens per chunk; a
    resample draws chunks with replacement and keeps each drawn chunk's tokens together, the same chunks
    for every array (paired). Tokens of one chunk share their context, so they are correlated and a
    token-level resample understates the spread. `statistic` maps arrays [batch, n] to [batch].
    """
    n = len(arrays[0])
    if n == 0 or any(len(a) != n for a in arrays):
        raise RecipeSearchError("bootstrap needs non-empty arrays of equal length")
    if not 0 < level < 1:
        raise ValueError(f"confidence level {level} not in (0, 1)")
    if chunk_tokens < 1 or n % chunk_tokens:
        raise RecipeSearchError(f"{n} per-token values are not whole chunks of {chunk_tokens} tokens")
    n_chunks = n // chunk_tokens
    if n_chunks < 2:
        raise RecipeSearchError("a chunk bootstrap needs at least 2 chunks")
    rng = np.random.default_rng(seed)
    batch = max(1, (1 << 22) // n)
    within = np.arange(chunk_tokens)
    out = []
    for s in range(0, n_boot, batch):
        chunks = rng.integers(0, n_chunks, size=(min(batch, n_boot - s), n_chunks))
        idx = (chunks[:, :, None] * chunk_tokens + within).reshape(len(chunks), n)
        out.append(np.asarray(statistic(*(np.asarray(a)[idx] for a in arrays)), dtype=np.float64))
    lo, hi = np.quantile(np.concatenate(out), [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_quantile_ci(values: np.ndarray, q: float, chunk_tokens: int, n_boot: int = 1000, level: float = 0.95,
                          seed: int = 0) -> tuple[float, float]:
    """Chunk-bootstrap confidence interval of the q-quantile (interpolated at q·(N−1)) of per-token values
    stored in chunk order, ``chunk_tokens`` per chunk (`scored_per_chunk`)."""
    return _bootstrap([values], lambda x: np.quantile(x, q, axis=-1), chunk_tokens, n_boot, level, seed)


def bootstrap_ci(values: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], chunk_tokens: int,
                 n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Chunk-bootstrap confidence interval of statistic(values); `statistic` reduces the last axis."""
    return _bootstrap([values], statistic, chunk_tokens, n_boot, level, seed)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], chunk_tokens: int,
                     n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """CI of statistic(a) − statistic(b), the same chunks resampled for both (a[i], b[i]: the same token).

    `statistic` reduces the last axis, e.g. ``lambda x: np.quantile(x, 0.999, axis=-1)``; a CI
    containing 0 calls the two a tie.
    """
    return _bootstrap([a, b], lambda x, y: statistic(x) - statistic(y), chunk_tokens, n_boot, level, seed)


# ---------------------------------------------------------------------------------------------
# sparse reference


def default_max_entries(n_vocab: int) -> int:
    """Per-token cap on kept entries: 1% of a large vocabulary, up to 2,048 entries of a small one.

    For a 262,144-entry vocabulary, at 8 bytes an entry plus 24 per token, this is ≤ 4.1% of
    llama-perplexity's base file (2 bytes per vocabulary entry per token) even if every token hits the
    cap. Small vocabularies of weak models can have thousands of entries above −16 per token; 2,048
    keeps their cache no larger than llama-perplexity's file for an 8,192-entry vocabulary.
    """
    return max(min(n_vocab, 2048), n_vocab // 100)


@dataclass
class SparseReference:
    """Base-model distributions for many tokens, CSR-packed.

    Per token t, entries ``offsets[t]:offsets[t+1]`` of `indices`/`logprobs` are the base entries with
    log-probability above −16 (the ones llama-perplexity's KLD sums over), the most probable
    ``max_entries`` of them if there are more. `remainder` is the base mass of all other entries,
    `dropped` the part of it above −16 (0 unless the cap bit). `top` and `nll_base` are exact.
    """

    n_vocab: int
    offsets: np.ndarray  # int64 [n + 1]
    indices: np.ndarray  # int32 [nnz]
    logprobs: np.ndarray  # float32 [nnz]
    remainder: np.ndarray  # float32 [n]
    dropped: np.ndarray  # float32 [n]
    top: np.ndarray  # int32 [n]
    nll_base: np.ndarray  # float32 [n]

    _ARRAYS = ("offsets", "indices", "logprobs", "remainder", "dropped", "top", "nll_base")
    _DTYPES = ("int64", "int32", "float32", "float32", "float32", "int32", "float32")

    def __len__(self) -> int:
        return len(self.top)

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, a).nbytes for a in self._ARRAYS)

    @classmethod
    def from_logits(cls, base_logits: np.ndarray, next_tokens: np.ndarray, max_entries: int | None = None,
                    block_size: int = DEFAULT_BLOCK, threads: int = 1) -> SparseReference:
        """Sparsify base logits (float32 [n_tokens, n_vocab]) block by block, on `threads` threads."""
        base_logits, next_tokens = np.asarray(base_logits), np.asarray(next_tokens)
        n, n_vocab = _check_shapes("base logits", base_logits, None, None, next_tokens)
        cap = min(n_vocab, max_entries or default_max_entries(n_vocab))
        return cls.concat(_map_blocks(
            lambda s: cls._sparsify(np.asarray(base_logits[s:s + block_size], dtype=np.float32),
                                    next_tokens[s:s + block_size], cap), n, block_size, threads))

    @classmethod
    def _sparsify(cls, b: np.ndarray, tok: np.ndarray, cap: int) -> SparseReference:
        """Log-probabilities (as `log_softmax` forms them) are computed only for entries near or above −16."""
        rows, n_vocab = b.shape
        top, _, e, sum_exp, norm = _normaliser(b)
        # a float32 threshold a little below norm − 16 finds every entry whose float32 log-probability is above −16
        ri, ci = np.divmod(np.flatnonzero(b > (norm - 16 - 1 / 64).astype(np.float32)[:, None]), n_vocab)
        lp = (b[ri, ci] - norm[ri]).astype(np.float32)
        above = lp > LOG_PROB_FLOOR
        ri, ci, lp = ri[above], ci[above], lp[above]
        counts = np.bincount(ri, minlength=rows)
        keep = np.ones(len(ri), dtype=bool)
        ends = np.cumsum(counts)
        for r in np.flatnonzero(counts > cap):  # the cap keeps a row's `cap` most probable entries
            a, z = ends[r] - counts[r], ends[r]
            keep[a + np.argpartition(lp[a:z], z - a - cap)[:z - a - cap]] = False
        e[ri[keep], ci[keep]] = 0
        return cls(
            n_vocab=n_vocab,
            offsets=np.concatenate([[0], np.cumsum(np.bincount(ri[keep], minlength=rows))]).astype(np.int64),
            indices=ci[keep].astype(np.int32),
            logprobs=lp[keep],
            remainder=(e.sum(axis=1, dtype=np.float64) / sum_exp).astype(np.float32),
            dropped=np.bincount(ri[~keep], weights=np.exp(lp[~keep]), minlength=rows).astype(np.float32),
            top=top.astype(np.int32),
            nll_base=-(b[np.arange(rows), tok] - norm).astype(np.float32),
        )

    @classmethod
    def concat(cls, parts: Sequence[SparseReference]) -> SparseReference:
        """The tokens of all parts, in order (all of one vocabulary size)."""
        if not parts or len({p.n_vocab for p in parts}) != 1:
            raise RecipeSearchError("sparse references to concatenate must share one vocabulary size")
        shift = np.cumsum([0] + [p.offsets[-1] for p in parts[:-1]])
        offsets = np.concatenate([[0]] + [p.offsets[1:] + s for p, s in zip(parts, shift)]).astype(np.int64)
        cat = {a: np.concatenate([getattr(p, a) for p in parts]) for a in cls._ARRAYS if a != "offsets"}
        return cls(n_vocab=parts[0].n_vocab, offsets=offsets, **cat)

    def select(self, start: int, stop: int) -> SparseReference:
        """Tokens start..stop-1."""
        a, b = int(self.offsets[start]), int(self.offsets[stop])
        return SparseReference(self.n_vocab, self.offsets[start:stop + 1] - a, self.indices[a:b],
                               self.logprobs[a:b], self.remainder[start:stop], self.dropped[start:stop],
                               self.top[start:stop], self.nll_base[start:stop])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays to store (e.g. with numpy.savez), `n_vocab` as a 0-d array."""
        return {"n_vocab": np.array(self.n_vocab, dtype=np.int64), **{a: getattr(self, a) for a in self._ARRAYS}}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], source: object = None) -> SparseReference:
        """Rebuild from `to_arrays` output, checking it is consistent (errors name `source`)."""
        missing = [k for k in ("n_vocab", *cls._ARRAYS) if k not in arrays]
        if missing:
            raise RecipeSearchError(f"sparse reference lacks {', '.join(missing)}", source)
        got = {a: np.asarray(arrays[a]) for a in cls._ARRAYS}
        for a, dt in zip(cls._ARRAYS, cls._DTYPES):
            if got[a].dtype != np.dtype(dt) or got[a].ndim != 1:
                raise RecipeSearchError(f"sparse reference array {a} is not 1-D {dt}", source)
        n_vocab, n, off = int(arrays["n_vocab"]), len(got["top"]), got["offsets"]
        ok = (len(off) == n + 1 and off[0] == 0 and np.all(np.diff(off) >= 0)
              and off[-1] == len(got["indices"]) == len(got["logprobs"])
              and all(len(got[a]) == n for a in ("remainder", "dropped", "nll_base")))
        if not ok:
            raise RecipeSearchError("sparse reference arrays have inconsistent lengths", source)
        if (got["indices"].size and (got["indices"].min() < 0 or got["indices"].max() >= n_vocab)) or \
                (n and (got["top"].min() < 0 or got["top"].max() >= n_vocab)):
            raise RecipeSearchError(f"sparse reference token ids outside a vocabulary of {n_vocab}", source)
        bad = [a for a in ("logprobs", "remainder", "dropped", "nll_base") if not np.isfinite(got[a]).all()]
        if bad:
            raise RecipeSearchError(f"sparse reference array {bad[0]} holds NaN or infinite values", source)
        return cls(n_vocab=n_vocab, **got)


def token_stats_sparse(sparse_base: SparseReference, quant_logits: np.ndarray, next_tokens: np.ndarray,
                       block_size: int = DEFAULT_BLOCK, threads: int = 1) -> TokenStats:
    """Per-token statistics against a sparse reference; exact where no token hit the entry cap.

    A token's KLD is Σ p·d over its kept entries, d = ln p_base − ln p_quant. When the cap dropped
    entries above −16, their mass times an estimate of their mean d is added: the lumped outcome
    "any entry not kept" (quant mass 1 − Σ kept quant probabilities) gives ln(remainder /
    remainder_quant) = −ln E[e^−d] ≈ E[d] − Var[d]/2, so the estimate is that plus half the variance
    of d over the kept entries (unweighted: most are low-probability entries like the dropped ones).
    Blocks of `block_size` tokens run on `threads` threads.
    """
    quant_logits, next_tokens = np.asarray(quant_logits), np.asarray(next_tokens)
    n = len(sparse_base)
    _check_shapes("quant logits", quant_logits, n, sparse_base.n_vocab, next_tokens)

    def block(s: int) -> TokenStats:
        sp = sparse_base.select(s, min(s + block_size, n))
        q = np.asarray(quant_logits[s:s + block_size], dtype=np.float32)
        imax, m, sum_exp, norm, nll = _quant_side(q, next_tokens[s:s + block_size])
        counts = np.diff(sp.offsets)
        row = np.repeat(np.arange(len(q)), counts)
        lp = sp.logprobs
        q_kept = q[row, sp.indices]
        diff = lp - q_kept.astype(np.float64)  # d up to the row's constant: ln p_quant = q − norm
        kld = np.bincount(row, weights=np.exp(lp) * (diff + norm[row]), minlength=len(q))
        lumped = sp.dropped > 0
        if lumped.any():
            kept_exp = np.bincount(row, weights=np.exp(q_kept - m[row]), minlength=len(q))  # Σ expf(q − max) kept
            r_q = np.maximum((sum_exp[lumped] - kept_exp[lumped]) / sum_exp[lumped], np.finfo(np.float64).tiny)
            mean = np.bincount(row, weights=diff, minlength=len(q)) / np.maximum(counts, 1)
            var = np.bincount(row, weights=np.square(diff - mean[row], dtype=np.float64), minlength=len(q)) \
                / np.maximum(counts, 1)
            kld[lumped] += sp.dropped[lumped] * (np.log(sp.remainder[lumped].astype(np.float64)) - np.log(r_q)
                                                 + var[lumped] / 2)
        return _finish(kld, sp.nll_base, nll, imax == sp.top)

    return TokenStats.concat(_map_blocks(block, n, block_size, threads))
