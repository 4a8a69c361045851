"""llama-perplexity's KL-divergence base file: byte layout, encoding, streaming, KLD through it, bad files."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest

from recipe_search.core.kld_base_file import (
    KLDBaseFile,
    KLDBaseFileWriter,
    decode_logprobs,
    encode_logprobs,
    token_stats_from_rows,
)
from recipe_search.errors import RecipeSearchError

N_CTX, N_VOCAB, N_CHUNK = 8, 5, 2  # 3 scored rows per chunk (positions 4, 5, 6); odd vocabulary → padded rows


def _write(path: Path, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, N_VOCAB, (N_CHUNK, N_CTX)).astype(np.int32)
    chunks = [(4 * rng.standard_normal((3, N_VOCAB))).astype(np.float32) for _ in range(N_CHUNK)]
    chunks[1][0] = [0, -30, -1, -25, -2]  # two logits below max − 16
    with KLDBaseFileWriter(path, tokens, N_VOCAB) as w:
        for c in chunks:
            w.write_chunk(c)
    return tokens, chunks


def test_layout_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "base.kld"
    tokens, chunks = _write(path)
    nv = 2 * 3 + 4  # uint16 per row: 2 floats + 5 codes + 1 pad
    assert path.stat().st_size == 8 + 4 + 4 + 4 + 4 * N_CHUNK * N_CTX + N_CHUNK * 3 * nv * 2
    raw = path.read_bytes()
    assert raw[:8] == b"_logits_"
    assert struct.unpack_from("<Iii", raw, 8) == (N_CTX, N_VOCAB, N_CHUNK)
    assert np.array_equal(np.frombuffer(raw, "<i4", N_CHUNK * N_CTX, 20).reshape(N_CHUNK, N_CTX), tokens)

    f = KLDBaseFile(path)
    assert (f.n_ctx, f.n_vocab, f.n_chunk, f.n_scored) == (N_CTX, N_VOCAB, N_CHUNK, 3)
    seen = list(f.chunks())
    assert len(seen) == N_CHUNK
    for c, (toks, nxt, rows) in enumerate(seen):
        assert isinstance(rows, np.memmap) and rows.shape == (3, nv)
        assert np.array_equal(toks, tokens[c]) and np.array_equal(nxt, tokens[c, 5:8])
        assert np.all(rows[:, -1] == 0)  # the pad entry
        lp = decode_logprobs(rows, N_VOCAB)
        x = chunks[c].astype(np.float64)
        exact = x - x.max(axis=1, keepdims=True) - np.log(np.exp(x - x.max(axis=1, keepdims=True)).sum(1, keepdims=True))
        step = np.minimum(x.max(axis=1) - x.min(axis=1), 16) / 65535
        above = x > x.max(axis=1, keepdims=True) - 16
        assert np.all(np.abs(lp - exact)[above] <= (step[:, None] / 2 + 2e-6).repeat(N_VOCAB, 1)[above])
        assert np.all(lp[~above] <= -16)  # floored logits decode to min_log_prob = −16 − log Σ


def test_row_encoding_matches_llama_perplexity() -> None:
    rows = encode_logprobs(np.array([[0.0, -4.0, -20.0], [2.0, 2.0, 2.0]], dtype=np.float32))
    assert rows.shape == (2, 2 * 2 + 4)
    head = rows[:, :4].copy().view("<f4")
    lse = math.log(1 + math.exp(-4) + math.exp(-20))
    assert head[0, 0] == np.float32(16) / np.float32(65535)  # scale: the range floored at 16
    assert head[0, 1] == pytest.approx(-16 - lse, abs=1e-6)  # min_log_prob
    # codes: max → 65535, −4 → round(12/16·65535) = round(49151.25), −20 (below the floor) → 0
    assert rows[0, 4:7].tolist() == [65535, 49151, 0] and rows[0, 7] == 0
    # all logits equal: scale 0, codes 0, min_log_prob = −ln 3: a uniform distribution
    assert head[1, 0] == 0 and rows[1, 4:].tolist() == [0, 0, 0, 0]
    assert head[1, 1] == pytest.approx(-math.log(3), abs=1e-6)
    assert decode_logprobs(rows, 3)[1] == pytest.approx([-math.log(3)] * 3, abs=1e-6)


def test_kld_through_the_file_follows_llama_perplexity() -> None:
    base = [[0.0, -1.5], [0.0, -20.0], [0.0, -4.0, -20.0]]
    quant = [np.array([0.0, -0.5]), np.array([0.0, -3.0]), np.array([-1.0, 0.0, -2.0])]
    # 1. both entries above −16: the full two-point KLD
    st = token_stats_from_rows(encode_logprobs(np.array([base[0]], np.float32)), 2,
                               np.array([quant[0]], np.float32), np.array([1]))
    p, q = 1 / (1 + math.exp(-1.5)), 1 / (1 + math.exp(-0.5))
    assert st.kld[0] == pytest.approx(p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q)), rel=1e-4)
    assert st.nll_base[0] == pytest.approx(1.5 + math.log(1 + math.exp(-1.5)), rel=1e-4)
    # 2. the −20 entry is floored to min_log_prob ≤ −16 and left out: only p0·(ln p0 − ln q0) remains
    st = token_stats_from_rows(encode_logprobs(np.array([base[1]], np.float32)), 2,
                               np.array([quant[1]], np.float32), np.array([0]))
    p0, q0 = 1 / (1 + math.exp(-20)), 1 / (1 + math.exp(-3))
    assert st.kld[0] == pytest.approx(p0 * (math.log(p0) - math.log(q0)), rel=1e-5)
    assert st.same_top[0]
    # 3. a middle entry carries its 16-bit rounding: −4 decodes as scale·49151 + min_log_prob; −20 is left out
    rows = encode_logprobs(np.array([base[2]], np.float32))
    scale, min_lp = (float(v) for v in rows[0, :4].copy().view("<f4"))
    assert rows[0, 4:7].tolist() == [65535, 49151, 0]
    lp = [scale * 65535 + min_lp, scale * 49151 + min_lp]
    z = math.log(sum(math.exp(v) for v in quant[2]))
    expected = sum(math.exp(a) * (a - (b - z)) for a, b in zip(lp, quant[2]))
    st = token_stats_from_rows(rows, 3, np.array([quant[2]], np.float32), np.array([2]))
    assert st.kld[0] == pytest.approx(expected, rel=1e-5)
    assert not st.same_top[0]  # base top 0, quant top 1
    assert st.delta_p[0] == pytest.approx(math.exp(-2 - z) - math.exp(min_lp), abs=1e-6)


def test_file_token_stats_streams_a_chunk(tmp_path: Path) -> None:
    path = tmp_path / "base.kld"
    _, chunks = _write(path)
    f = KLDBaseFile(path)
    st = f.token_stats(1, chunks[1])  # the base itself: KLD is the 16-bit rounding only
    assert np.all(np.abs(st.kld) < 1e-3) and st.same_top.all()
    with pytest.raises(RecipeSearchError):
        f.token_stats(0, chunks[0][:2])


def test_writer_errors(tmp_path: Path) -> None:
    path = tmp_path / "w.kld"
    tokens = np.zeros((2, N_CTX), np.int32)
    with pytest.raises(RecipeSearchError, match="shape"), KLDBaseFileWriter(path, tokens, N_VOCAB) as w:
        w.write_chunk(np.zeros((4, N_VOCAB), np.float32))
    w = KLDBaseFileWriter(path, tokens, N_VOCAB)
    w.write_chunk(np.zeros((3, N_VOCAB), np.float32))
    with pytest.raises(RecipeSearchError, match="1 of 2 chunks"):
        w.close()
    assert not path.exists() and not list(tmp_path.iterdir())  # nothing left behind
    with pytest.raises(RecipeSearchError, match="vocabulary"):
        KLDBaseFileWriter(path, tokens + N_VOCAB, N_VOCAB)
    with pytest.raises(RecipeSearchError, match="n_ctx"):
        KLDBaseFileWriter(path, np.zeros((1, 2), np.int32), N_VOCAB)


def test_reader_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.kld"
    _write(good)
    raw = good.read_bytes()
    cases = {
        "magic": (b"_logitz_" + raw[8:], "no _logits_ magic"),
        "header": (raw[:14], "truncated header"),
        "cut": (raw[:-1], "truncated: 203 bytes"),
        "tail": (raw + b"\0\0", "unexpected trailing data"),
        "chunks": (raw[:16] + struct.pack("<i", 3) + raw[20:], "truncated"),
        "vocab": (raw[:12] + struct.pack("<i", 0) + raw[16:], "bad header"),
    }
    for name, (data, message) in cases.items():
        p = tmp_path / f"{name}.kld"
        p.write_bytes(data)
        with pytest.raises(RecipeSearchError, match=message) as err:
            KLDBaseFile(p)
        assert str(p) in str(err.value)
    bad_token = bytearray(raw)
    bad_token[20:24] = struct.pack("<i", N_VOCAB)
    (tmp_path / "tok.kld").write_bytes(bytes(bad_token))
    with pytest.raises(RecipeSearchError, match="token ids"):
        KLDBaseFile(tmp_path / "tok.kld")
    with pytest.raises(RecipeSearchError, match="cannot read"):
        KLDBaseFile(tmp_path / "missing.kld")
