"""KL-divergence statistics: closed-form cases, llama-perplexity's summary formulas, bootstrap, sparse reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from recipe_search.core.kld import (
    KLDSummary,
    SparseReference,
    TokenStats,
    bootstrap_ci,
    bootstrap_quantile_ci,
    paired_bootstrap,
    percentile,
    scored_per_chunk,
    summarize,
    token_stats,
    token_stats_from_logprobs,
    token_stats_sparse,
)
from recipe_search.errors import RecipeSearchError


def _two_point_kld(p: float, q: float) -> float:
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# ---------------------------------------------------------------------------------------------
# per-token statistics


@pytest.mark.parametrize("sparse", [False, True])
def test_two_point_distributions_match_closed_form(sparse: bool) -> None:
    # token t: base logits [a, 0], quant logits [b, 0]: p = σ(a), q = σ(b)
    a = np.array([2.0, -1.0, 0.5, 3.0, 0.0])
    b = np.array([1.0, -1.5, 0.5, -2.0, 4.0])
    base = np.stack([a, np.zeros_like(a)], axis=1).astype(np.float32)
    quant = np.stack([b, np.zeros_like(b)], axis=1).astype(np.float32)
    nxt = np.array([0, 1, 0, 1, 0])
    if sparse:
        st = token_stats_sparse(SparseReference.from_logits(base, nxt, block_size=2), quant, nxt, block_size=2)
    else:
        st = token_stats(base, quant, nxt, block_size=2)
    for t in range(len(a)):
        p, q = _sigmoid(a[t]), _sigmoid(b[t])
        p_tok, q_tok = (p, q) if nxt[t] == 0 else (1 - p, 1 - q)
        assert st.kld[t] == pytest.approx(_two_point_kld(p, q), rel=1e-5, abs=1e-8)  # float32 log-probs
        assert st.p_base[t] == pytest.approx(p_tok, rel=1e-6)
        assert st.p_quant[t] == pytest.approx(q_tok, rel=1e-6)
        assert st.delta_p[t] == pytest.approx(q_tok - p_tok, abs=1e-6)
        assert st.nll_base[t] == pytest.approx(-math.log(p_tok), rel=1e-6)
        assert st.nll_quant[t] == pytest.approx(-math.log(q_tok), rel=1e-6)
    # argmax: base picks entry 0 iff a > 0; a tie (a = 0) goes to the first index
    assert st.same_top.tolist() == [True, True, True, False, True]


def test_entries_below_minus_16_are_left_out_of_the_sum() -> None:
    """One head and M tail entries at a shift of c: the tail counts only while its log-prob is above −16."""
    m = 100_000

    def kld_for(c_base: float, c_quant: float) -> tuple[float, float, float]:
        base = np.full((1, m + 1), -c_base, dtype=np.float32)
        quant = np.full((1, m + 1), -c_quant, dtype=np.float32)
        base[0, 0] = quant[0, 0] = 0
        got = token_stats(base, quant, np.array([0])).kld[0]
        zb, zq = 1 + m * math.exp(-c_base), 1 + m * math.exp(-c_quant)
        head = (1 / zb) * (math.log(zq) - math.log(zb))
        tail = m * (math.exp(-c_base) / zb) * ((-c_base - math.log(zb)) - (-c_quant - math.log(zq)))
        return got, head, tail

    got, head, tail = kld_for(17.0, 16.0)  # tail log-prob −17.004: left out
    assert abs(tail) > 1e-3  # big enough to tell apart
    assert got == pytest.approx(head, rel=1e-6)
    got, head, tail = kld_for(15.0, 14.0)  # tail log-prob −15.03: summed
    assert got == pytest.approx(head + tail, rel=1e-6)


def test_logprob_input_uses_first_index_of_the_maximum() -> None:
    lp = np.log(np.array([[0.4, 0.4, 0.2]], dtype=np.float64)).astype(np.float32)
    quant = np.log(np.array([[0.2, 0.5, 0.3]], dtype=np.float32))
    st = token_stats_from_logprobs(lp, quant, np.array([2]))
    assert not st.same_top[0]  # base top is index 0 (first of the tie), quant top index 1
    expected = sum(p * math.log(p / q) for p, q in zip((0.4, 0.4, 0.2), (0.2, 0.5, 0.3)))
    assert st.kld[0] == pytest.approx(expected, rel=1e-5)
    assert st.delta_p[0] == pytest.approx(0.1, abs=1e-6)


def test_shape_errors() -> None:
    base = np.zeros((3, 4), np.float32)
    with pytest.raises(RecipeSearchError, match="quant logits"):
        token_stats(base, np.zeros((3, 5), np.float32), np.zeros(3, int))
    with pytest.raises(RecipeSearchError, match="next tokens"):
        token_stats(base, base, np.zeros(2, int))
    with pytest.raises(RecipeSearchError, match="out of range"):
        token_stats(base, base, np.array([0, 1, 4]))


def test_concat_keeps_order() -> None:
    a = token_stats(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32), np.array([0, 1]))
    b = token_stats(np.array([[0, 0, 50]], np.float32), np.zeros((1, 3), np.float32), np.array([2]))
    both = TokenStats.concat([a, b])
    assert len(both) == 3
    assert both.p_base.tolist() == pytest.approx([1 / 3, 1 / 3, 1.0])


# ---------------------------------------------------------------------------------------------
# summary


def _stats(n: int, kld: np.ndarray, nll_base: np.ndarray, nll_quant: np.ndarray, delta_p: np.ndarray,
           same_top: np.ndarray) -> TokenStats:
    return TokenStats(kld=kld.astype(np.float64), p_base=np.exp(-nll_base).astype(np.float32),
                      p_quant=np.exp(-nll_quant).astype(np.float32), delta_p=delta_p.astype(np.float32),
                      same_top=same_top, nll_base=nll_base.astype(np.float32), nll_quant=nll_quant.astype(np.float32))


def test_summary_follows_llama_perplexity_formulas() -> None:
    n = 201
    rng = np.random.default_rng(0)
    kld = rng.permutation(np.arange(n)) / 1000.0  # 0 … 0.2
    nll_base = np.linspace(1.0, 3.0, n)
    nll_quant = 2 * nll_base  # ln ratio uncertainty = that of ln PPL(base)
    delta_p = np.where(np.arange(n) % 2 == 0, 0.1, -0.1)
    same_top = np.arange(n) < 150
    s = summarize(_stats(n, kld, nll_base, nll_quant, delta_p, same_top))

    assert isinstance(s, KLDSummary) and s.n_tokens == n
    assert s.kld_mean == pytest.approx(0.1)
    # mean_and_uncertainty: sqrt((E[x²] − E[x]²)/(N−1)); for 0 … 200 (/1000) the variance is (N²−1)/12
    assert s.kld_mean_err == pytest.approx(math.sqrt((n * n - 1) / 12 / (n - 1)) / 1000, rel=1e-6)
    assert s.kld_median == pytest.approx(0.100)
    assert s.kld_p90 == pytest.approx(0.180, rel=1e-6)  # f·(N−1) = 180
    assert s.kld_p99 == pytest.approx(0.198, rel=1e-6)
    assert s.kld_p999 == pytest.approx(0.1998, rel=1e-5)  # interpolated between 0.199 and 0.200
    assert s.kld_max == pytest.approx(0.200)

    sd_base = float(np.std(nll_base)) / math.sqrt(n - 1)
    assert s.ppl_base == pytest.approx(math.exp(2.0), rel=1e-6)
    assert s.ppl_base_err == pytest.approx(math.exp(2.0) * sd_base, rel=1e-5)
    assert s.ppl_q == pytest.approx(math.exp(4.0), rel=1e-6)
    assert s.ln_ppl_ratio == pytest.approx(2.0, rel=1e-6)
    assert s.ln_ppl_ratio_err == pytest.approx(sd_base, rel=1e-4)  # sqrt(4σ² + σ² − 2·2σ²)

    assert s.dp_mean == pytest.approx(0.1 / n, abs=1e-7)  # 101 × 0.1 − 100 × 0.1
    assert s.dp_rms == pytest.approx(0.1, rel=1e-6)
    assert s.dp_rms_err == 0.0  # every Δp² is equal
    assert s.dp_p1 == pytest.approx(-0.1) and s.dp_p99 == pytest.approx(0.1) and s.dp_median == pytest.approx(0.1)
    assert s.same_top == pytest.approx(150 / n)
    assert s.same_top_err == pytest.approx(math.sqrt((150 / n) * (1 - 150 / n) / (n - 1)))

    d = s.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert all(type(v) in (int, float) for v in d.values())


def test_summary_needs_100_tokens() -> None:
    n = 99
    st = _stats(n, np.ones(n), np.ones(n), np.ones(n), np.zeros(n), np.ones(n, bool))
    with pytest.raises(RecipeSearchError, match="fewer than 100 scored tokens"):
        summarize(st)


def test_percentile_interpolates_at_fraction_times_n_minus_1() -> None:
    v = np.array([0.0, 1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    assert percentile(v, 0.9) == pytest.approx(3.6)
    assert percentile(v, 0.5) == pytest.approx(2.0)
    assert percentile(v, 0.0) == 0.0 and percentile(v, 1.0) == 4.0


# ---------------------------------------------------------------------------------------------
# bootstrap


def test_bootstrap_degenerate_cases() -> None:
    assert bootstrap_quantile_ci(np.full(500, 0.25), 0.999, 50, n_boot=50) == (0.25, 0.25)
    a = np.random.default_rng(1).exponential(size=300)
    lo, hi = paired_bootstrap(a, a + 0.5, lambda x: np.mean(x, axis=-1), 30, n_boot=100)
    assert lo == pytest.approx(-0.5) and hi == pytest.approx(-0.5)
    assert paired_bootstrap(a, a.copy(), lambda x: np.quantile(x, 0.99, axis=-1), 30, n_boot=100) == (0.0, 0.0)


def test_bootstrap_median_interval_has_the_asymptotic_width() -> None:
    n = 4000
    x = np.random.default_rng(2).standard_normal(n)
    lo, hi = bootstrap_quantile_ci(x, 0.5, 1, n_boot=400, seed=3)
    # independent tokens (chunks of one token): the sample median of N(0,1) has standard error sqrt(π/2)/sqrt(n)
    expected_width = 2 * 1.959964 * math.sqrt(math.pi / 2) / math.sqrt(n)
    assert lo < 0 < hi
    assert hi - lo == pytest.approx(expected_width, rel=0.25)


def _mean(v: np.ndarray) -> np.ndarray:
    return np.mean(v, axis=-1)


def test_chunk_bootstrap_is_as_wide_as_the_chunk_effect_where_token_bootstrap_is_not() -> None:
    # 40 chunks of 250 tokens: value = chunk effect (sd 1) + token noise (sd 0.1). The mean's standard error is
    # sqrt(1/40 + 0.01/10000) ≈ 0.158 (chunk effects dominate); a token bootstrap sees sd ≈ 1 over 10,000
    # "independent" tokens, ≈ 0.01, sixteen times too narrow.
    n_chunks, per_chunk = 40, 250
    rng = np.random.default_rng(4)
    x = np.repeat(rng.standard_normal(n_chunks), per_chunk) + 0.1 * rng.standard_normal(n_chunks * per_chunk)
    sample_sd = float(np.std(x.reshape(n_chunks, per_chunk).mean(axis=1), ddof=1))
    expected = 2 * 1.959964 * sample_sd / math.sqrt(n_chunks)
    lo, hi = bootstrap_ci(x, _mean, per_chunk, n_boot=1000, seed=5)
    assert hi - lo == pytest.approx(expected, rel=0.2)
    tlo, thi = bootstrap_ci(x, _mean, 1, n_boot=200, seed=5)
    assert (thi - tlo) < (hi - lo) / 5


def test_paired_chunk_bootstrap_resamples_the_same_chunks_for_both() -> None:
    # b = a + a per-chunk shift with mean 0.05 (sd 0.2): the chunk effect of a cancels in the difference, the
    # shift's spread over chunks does not; pairing by token but resampling tokens would call it distinct.
    n_chunks, per_chunk = 30, 100
    rng = np.random.default_rng(6)
    a = np.repeat(rng.standard_normal(n_chunks), per_chunk) + rng.standard_normal(n_chunks * per_chunk)
    z = rng.standard_normal(n_chunks)
    shift = np.repeat(0.05 + 0.2 * (z - z.mean()) / z.std(ddof=1), per_chunk)  # exactly mean 0.05, sd 0.2
    lo, hi = paired_bootstrap(a, a + shift, _mean, per_chunk, n_boot=1000, seed=7)
    assert (hi - lo) / 2 == pytest.approx(1.959964 * 0.2 / math.sqrt(n_chunks), rel=0.25)
    assert lo < 0 < hi  # a tie, chunk by chunk
    _, thi = paired_bootstrap(a, a + shift, _mean, 1, n_boot=400, seed=7)
    assert thi < 0  # token resampling: "distinct"


def test_bootstrap_rejects_unequal_lengths_and_partial_chunks() -> None:
    with pytest.raises(RecipeSearchError):
        paired_bootstrap(np.ones(3), np.ones(4), lambda x: x.mean(axis=-1), 1)
    with pytest.raises(RecipeSearchError, match="whole chunks"):
        bootstrap_quantile_ci(np.ones(250), 0.5, 100)
    with pytest.raises(RecipeSearchError, match="2 chunks"):
        bootstrap_quantile_ci(np.ones(100), 0.5, 100)


def test_scored_per_chunk_matches_the_scored_range() -> None:
    assert scored_per_chunk(512) == 255 and scored_per_chunk(128) == 63 and scored_per_chunk(5) == 2


# ---------------------------------------------------------------------------------------------
# sparse reference


def _realistic_logits(n: int, n_vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits shaped like a small LM's: a Gaussian vocabulary bias, a Gumbel context spread, a few
    boosted continuations (per token: logit std ≈ 4, max − mean ≈ 22, ~1.4 nats entropy, 1-7% of the
    vocabulary above log-prob −16; measured on Gemma-3-270M: 4.6, 26, 2.3 nats, 0.4-4%)."""
    rng = np.random.default_rng(seed)
    gumbel = -np.log(-np.log(rng.random((n, n_vocab), dtype=np.float32) + np.float32(1e-30)))
    base = np.float32(3.0) * rng.standard_normal(n_vocab, dtype=np.float32) + np.float32(2.0) * gumbel
    k = rng.integers(1, 9, n)
    heads = rng.uniform(12, 24, (n, 8)).astype(np.float32) * (np.arange(8) < k[:, None])
    np.maximum.at(base, (np.repeat(np.arange(n), 8), rng.integers(0, n_vocab, n * 8)), heads.ravel())
    nxt = (base - np.log(-np.log(rng.random((n, n_vocab), dtype=np.float32) + np.float32(1e-30)))).argmax(axis=1)
    return base, nxt


def test_sparse_reference_is_small_and_close_to_the_full_computation() -> None:
    n, n_vocab = 512, 32_000
    base, nxt = _realistic_logits(n, n_vocab)
    sparse = SparseReference.from_logits(base, nxt, max_entries=n_vocab // 100)  # the 262k default ratio
    assert (sparse.dropped > 0).mean() > 0.5  # the entry cap binds for most tokens
    llama_file_bytes = n * 2 * (2 * ((n_vocab + 1) // 2) + 4)
    assert sparse.nbytes / llama_file_bytes < 0.05

    rng = np.random.default_rng(5)
    for noise in (0.1, 0.3):  # mean KLD ≈ 0.003 and ≈ 0.025
        quant = base + np.float32(noise) * rng.standard_normal(base.shape, dtype=np.float32)
        full = summarize(token_stats(base, quant, nxt))
        approx = summarize(token_stats_sparse(sparse, quant, nxt))
        for key in ("kld_mean", "kld_median", "kld_p99", "kld_p999", "kld_max"):
            assert getattr(approx, key) == pytest.approx(getattr(full, key), rel=1e-3), key
        assert approx.ppl_base == full.ppl_base
        assert approx.same_top == full.same_top
        assert approx.dp_rms == full.dp_rms


def test_sparse_reference_worst_case_size_for_a_262144_vocabulary() -> None:
    n_vocab = 262_144
    flat = np.random.default_rng(0).standard_normal((3, n_vocab), dtype=np.float32)  # every entry above −16
    sparse = SparseReference.from_logits(flat, np.array([0, 1, 2]))
    assert np.all(np.diff(sparse.offsets) == n_vocab // 100)
    assert sparse.nbytes / (3 * 2 * (n_vocab + 4)) < 0.05
    assert sparse.dropped.min() > 0.9  # the lumped remainder carries the rest


def test_sparse_reference_arrays_round_trip_and_validation() -> None:
    base, nxt = _realistic_logits(6, 2000, seed=1)
    sp = SparseReference.concat([SparseReference.from_logits(base[:4], nxt[:4]),
                                 SparseReference.from_logits(base[4:], nxt[4:])])
    again = SparseReference.from_arrays(sp.to_arrays())
    assert len(again) == 6 and again.n_vocab == 2000
    part = again.select(4, 6)
    quant = base[4:] + np.float32(0.2)
    assert token_stats_sparse(part, quant, nxt[4:]).kld == pytest.approx([0, 0], abs=1e-7)  # a uniform shift
    arrays = sp.to_arrays()
    with pytest.raises(RecipeSearchError, match="lacks dropped"):
        SparseReference.from_arrays({k: v for k, v in arrays.items() if k != "dropped"}, "ref.npz")
    with pytest.raises(RecipeSearchError, match="inconsistent lengths"):
        SparseReference.from_arrays({**arrays, "logprobs": arrays["logprobs"][:-1]}, "ref.npz")
    with pytest.raises(RecipeSearchError, match="outside a vocabulary"):
        SparseReference.from_arrays({**arrays, "n_vocab": np.array(10)}, "ref.npz")
