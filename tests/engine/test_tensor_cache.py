"""The quantized-tensor cache and trial assembly are exact: the same bytes and the same per-token KLD as
llama_model_quantize, on the tiny models (dense F16, MoE F32 with shared experts, qwen35moe BF16) and the demo."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gguf import GGUFReader
from gguf.quants import dequantize

from recipe_search.core.inventory import read_inventory
from recipe_search.core.recipe import Recipe, recipe_from_dict
from recipe_search.core.text import TextSource
from recipe_search.engine.assemble import assemble, write_single_file
from recipe_search.engine.imatrix_collect import collect_imatrix
from recipe_search.engine.quantize import quantize_model
from recipe_search.engine.score import ScoreSettings, score_quant
from recipe_search.engine.worker import Worker
from recipe_search.errors import RecipeSearchError
from recipe_search.formats.ggml_types import GGMLType
from recipe_search.formats.imatrix_file import ImatrixInput, save_imatrix_gguf

pytestmark = pytest.mark.llama  # quantizes and evaluates with llama.cpp

SETTINGS = ScoreSettings(ctx=128, chunks=2)

# legacy, K- and I-quants together; on the dense model ffn_down (320 wide) falls back (Q6_K -> Q8_0),
# on the MoE ffn_down_exps (64 wide) falls back (Q3_K -> Q4_0)
MIXED = {"name": "mixed", "unmatched": {"type": "IQ4_NL"}, "rules": [
    {"tensors": "token_embd", "type": "Q4_0"}, {"tensors": "output", "type": "Q5_K"},
    {"tensors": "attn_q", "type": "Q4_K"}, {"tensors": "attn_k", "type": "Q5_1"},
    {"tensors": "attn_v", "type": "IQ4_XS"}, {"tensors": "ffn_down", "type": "Q6_K"},
    {"tensors": "ffn_down_exps", "type": "Q3_K"}, {"tensors": "ffn_up_exps", "type": "Q2_K"},
    {"tensors": "ffn_gate_exps", "type": "IQ3_S"}, {"tensors": "attn_qkv", "type": "MXFP4"},
    {"tensors": "ssm_out", "type": "Q8_0"}, {"tensors": "ffn_up", "type": "Q4_1"},
]}
# with an imatrix: types that need one (IQ3_XXS, IQ2_XXS) and K-quants that use it
WITH_IMATRIX = {"name": "imatrix", "unmatched": {"type": "Q3_K"}, "rules": [
    {"tensors": "token_embd", "type": "Q8_0"}, {"tensors": "output", "type": "Q6_K"},
    {"tensors": "ffn_gate_exps", "type": "IQ2_XXS"}, {"tensors": "ffn_up_exps", "type": "IQ3_XXS"},
    {"tensors": "ffn_down_exps", "type": "IQ4_XS"}, {"tensors": "ffn_gate", "type": "IQ3_XXS"},
    {"tensors": "attn_q", "type": "Q2_K"}, {"tensors": "attn_output", "type": "Q5_0"},
]}


def _imatrix(model, tmp_path) -> ImatrixInput:
    im = collect_imatrix(model, TextSource().read()[:20000], ctx=128, n_chunks=2, n_threads=2)
    save_imatrix_gguf(im, tmp_path / "im.gguf")
    return ImatrixInput.from_file(tmp_path / "im.gguf")


def _tensor_bytes(path) -> dict[str, bytes]:
    """Every tensor's data in a GGUF or, for a split GGUF, in all of its shards."""
    inv = read_inventory(path)
    out = {}
    for p in inv.paths:
        for t in GGUFReader(p).tensors:
            out[t.name] = bytes(t.data.tobytes())
    return out


def _check_exact(model, recipe: Recipe, tmp_path, imatrix: ImatrixInput | None) -> None:
    reference_q = quantize_model(model, recipe, tmp_path / "llama.gguf", imatrix=imatrix)
    worker = Worker(model, SETTINGS, tmp_path / "cache", tmp_path / "work", imatrix=imatrix)
    resolution = worker.resolve(recipe)
    assert len({r.ggml_type for r in resolution.tensors}) >= 4
    kv = imatrix.kv() if imatrix else None
    single = write_single_file(worker.tensors, resolution, tmp_path / "single.gguf", kv)
    assert single.misses > 0
    # the single-file fallback is byte for byte llama-quantize's file
    assert (tmp_path / "single.gguf").read_bytes() == reference_q.path.read_bytes()
    split = assemble(worker.tensors, resolution, tmp_path / "trial", kv)
    assert split.misses == 0 and split.hits == len(resolution.tensors)
    assert _tensor_bytes(split.path) == _tensor_bytes(reference_q.path)
    ref = worker.reference
    a = score_quant(split.path, ref, SETTINGS, check=True).stats.kld
    b = score_quant(reference_q.path, ref, SETTINGS).stats.kld
    assert a.size > 0 and np.array_equal(a, b)
    split.remove()
    assert not list(tmp_path.glob("trial-*"))


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["dense_model", "moe_model", "qwen35_model"])
def test_cache_equals_llama_quantize_without_imatrix(fixture, request, tmp_path) -> None:
    _check_exact(request.getfixturevalue(fixture), recipe_from_dict(MIXED), tmp_path, None)


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["dense_model", "moe_model", "qwen35_model"])
def test_cache_equals_llama_quantize_with_imatrix(fixture, request, tmp_path) -> None:
    model = request.getfixturevalue(fixture)
    recipe = recipe_from_dict(WITH_IMATRIX)
    if fixture == "dense_model":  # no experts: let attn_v and ffn_up use the IQ2 and IQ3 types instead
        recipe = recipe_from_dict({**WITH_IMATRIX, "rules": WITH_IMATRIX["rules"] + [
            {"tensors": "attn_v", "type": "IQ2_XXS"}, {"tensors": "ffn_up", "type": "IQ3_S"}]})
    _check_exact(model, recipe, tmp_path, _imatrix(model, tmp_path))


@pytest.mark.slow
def test_demo_exact(demo_model, tmp_path) -> None:
    recipe = recipe_from_dict({"name": "demo-mix", "unmatched": {"type": "Q4_K"}, "rules": [
        {"tensors": "token_embd", "type": "Q5_0"}, {"tensors": "ffn_down", "type": "IQ4_XS"},
        {"tensors": "attn_output", "type": "Q3_K"}, {"tensors": "ffn_up", "type": "Q6_K"}]})
    settings = ScoreSettings(ctx=128, chunks=2)
    reference_q = quantize_model(demo_model, recipe, tmp_path / "llama.gguf")
    worker = Worker(demo_model, settings, tmp_path / "cache", tmp_path / "work")
    resolution = worker.resolve(recipe)
    assert resolution.fallbacks()  # 640-wide rows: Q4_K -> Q5_0 and friends
    split = assemble(worker.tensors, resolution, tmp_path / "trial")
    assert _tensor_bytes(split.path) == _tensor_bytes(reference_q.path)
    a = score_quant(split.path, worker.reference, settings).stats.kld
    b = score_quant(reference_q.path, worker.reference, settings).stats.kld
    assert np.array_equal(a, b)


@pytest.mark.slow
def test_worker_uses_cache_and_matches_quantizer(qwen35_model, tmp_path) -> None:
    recipe = recipe_from_dict(MIXED)
    cached = Worker(qwen35_model, SETTINGS, tmp_path / "c1", tmp_path / "w1")
    plain = Worker(qwen35_model, SETTINGS, tmp_path / "c2", tmp_path / "w2", tensor_cache=False)
    m1, m2 = cached.measure(recipe), plain.measure(recipe)
    assert np.array_equal(m1.kld_tokens, m2.kld_tokens) and m1.file_bytes == m2.file_bytes
    assert set(m1.seconds) >= {"quantize", "assemble"} and "assemble" not in m2.seconds
    assert not list((tmp_path / "w1").iterdir())
    info = cached.tensors.cache.info()
    assert info.misses == len(cached.inventory.tensors) and info.hits == 0 and info.entries == info.misses
    # a second recipe sharing most types: hits for the shared tensors, misses for the new ones
    other = recipe_from_dict({**MIXED, "rules": MIXED["rules"] + [{"tensors": "attn_gate", "type": "Q6_K"}]})
    cached.measure(other)
    info2 = cached.tensors.cache.info()
    n_gate = sum(1 for t in cached.inventory.tensors if t.kind == "attn_gate")
    assert info2.misses - info.misses == n_gate and info2.hits == len(cached.inventory.tensors) - n_gate


def test_lru_bound_and_clear(dense_model, tmp_path) -> None:
    worker = Worker(dense_model, SETTINGS, tmp_path / "cache", tmp_path / "work")
    tensors = worker.tensors
    q8 = worker.resolve(recipe_from_dict({"name": "a", "unmatched": {"type": "Q8_0"}}))
    q4 = worker.resolve(recipe_from_dict({"name": "b", "unmatched": {"type": "Q4_0"}}))
    first = assemble(tensors, q8, tmp_path / "a")
    size_q8 = tensors.cache.info().bytes
    tensors.cache.max_bytes = size_q8 + 1000  # room for one recipe's tensors, not two
    assemble(tensors, q4, tmp_path / "b")
    info = tensors.cache.info()
    assert info.bytes <= tensors.cache.max_bytes or info.entries == len(q4.tensors)
    # the Q4_0 entries just used stay; Q8_0 entries went first (least recently used)
    assert all(tensors.path(r.tensor, r.ggml_type).exists() for r in q4.tensors)
    assert not all(tensors.path(r.tensor, r.ggml_type).exists() for r in q8.tensors)
    # an evicted entry still behind a hard link stays readable
    assert first.path.exists() and all(f.stat().st_size > 0 for f in first.files)
    assert tensors.cache.clear() == info.entries and tensors.cache.info().entries == 0


def test_key_separates_imatrix_and_type(dense_model, tmp_path) -> None:
    im = _imatrix(dense_model, tmp_path)
    plain = Worker(dense_model, SETTINGS, tmp_path / "cache", tmp_path / "work").tensors
    weighted = Worker(dense_model, SETTINGS, tmp_path / "cache", tmp_path / "work", imatrix=im).tensors
    t = read_inventory(dense_model).by_name["blk.0.attn_q.weight"]
    assert plain.key(t, GGMLType.Q4_K) != weighted.key(t, GGMLType.Q4_K) != weighted.key(t, GGMLType.Q5_K)
    assert plain.shard(t, GGMLType.Q4_K).read_bytes() != weighted.shard(t, GGMLType.Q4_K).read_bytes()


def test_weight_error_matches_numpy(qwen35_model, tmp_path) -> None:
    """The recorded error: imatrix-weighted squared difference of the dequantized tensor and the source."""
    im = _imatrix(qwen35_model, tmp_path)
    tensors = Worker(qwen35_model, SETTINGS, tmp_path / "cache", tmp_path / "work", imatrix=im).tensors
    inv = read_inventory(qwen35_model)
    reader = {t.name: t for t in GGUFReader(qwen35_model).tensors}
    for name in ("blk.0.ffn_down_exps.weight", "blk.2.attn_q.weight"):
        t = inv.by_name[name]
        src = dequantize(reader[name].data, GGMLType.BF16).astype(np.float64).reshape(-1, t.shape[0])
        w = im.arrays[name].astype(np.float64).reshape(-1, t.shape[0])  # one row per expert
        rows_per_expert = t.shape[1]
        errors = []
        for qt in (GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q2_K):
            shard = GGUFReader(tensors.shard(t, qt)).tensors[0]
            deq = dequantize(shard.data, qt).astype(np.float64).reshape(-1, t.shape[0])
            weights = np.repeat(w, rows_per_expert, axis=0)
            expected = float((weights * (deq - src) ** 2).sum())
            got = tensors.weight_error(t, qt)
            assert got.weighted and got.sq_error == pytest.approx(expected, rel=1e-5)
            assert got.sq_source == pytest.approx(float((weights * src ** 2).sum()), rel=1e-5)
            errors.append(got.sq_error)
        assert errors[0] < errors[1] < errors[2]
        meta = json.loads(tensors.path(t, GGMLType.Q2_K).with_suffix(".json").read_text())
        assert meta["tensor"] == name and meta["type"] == "Q2_K"


def test_weight_error_is_computed_from_the_cached_shard_once(dense_model, tmp_path, monkeypatch) -> None:
    """A trial's fill does not compute the weight error (a tenth of a cold trial at real shapes); the proxy computes
    it from the cached shard and the source, without quantizing again, and keeps it in the entry's record."""
    from recipe_search.engine import tensor_cache
    from recipe_search.engine.tensor_cache import record_problem

    tensors = Worker(dense_model, SETTINGS, tmp_path / "cache", tmp_path / "work").tensors
    t = read_inventory(dense_model).by_name["blk.1.ffn_down.weight"]
    meta = tensors.shard(t, GGMLType.Q4_0).with_suffix(".json")
    assert "sq_error" not in json.loads(meta.read_text())
    misses = tensors.misses
    err = tensors.weight_error(t, GGMLType.Q4_0)
    assert tensors.misses == misses and err.sq_error > 0 and not err.weighted
    record = json.loads(meta.read_text())
    assert record_problem(record) is None and (record["sq_error"], record["sq_source"]) == (err.sq_error, err.sq_source)
    monkeypatch.setattr(tensor_cache, "weight_error", lambda *a, **k: pytest.fail("computed twice"))
    assert tensors.weight_error(t, GGMLType.Q4_0) == err


def test_missing_imatrix_is_a_clear_error(dense_model, tmp_path) -> None:
    worker = Worker(dense_model, SETTINGS, tmp_path / "cache", tmp_path / "work")
    with pytest.raises(RecipeSearchError, match="IQ2_XXS need an importance matrix"):
        worker.measure(recipe_from_dict({"name": "x", "unmatched": {"type": "IQ2_XXS"}}))
    assert not list((tmp_path / "work").iterdir())


def test_weight_error_table_feeds_the_surrogate(dense_model, tmp_path, capsys) -> None:
    """`sensitivity --proxy weight-error`: no model evaluated, the sweep's table format, usable for seeding."""
    from recipe_search.cli import main
    from recipe_search.core.config import StudyConfig
    from recipe_search.core.space import build_space
    from recipe_search.sensitivity.surrogate import Allocator, Surrogate, seed_allocations
    from recipe_search.sensitivity.table import SensitivityTable

    out, cache = tmp_path / "proxy", tmp_path / "cache"
    args = ["sensitivity", str(dense_model), "--proxy", "weight-error", "--tensor-types", "ffn_up", "ffn_down",
            "attn_v", "--types", "Q8_0", "Q4_0", "Q2_K", "--out", str(out), "--cache-dir", str(cache), "--quiet"]
    assert main(args) == 0
    assert "weight_error by tensor type" in capsys.readouterr().out
    assert not (cache / "references").exists()  # nothing was evaluated
    table = SensitivityTable.load(out)
    assert table.meta["proxy"] == "weight-error" and not table.tokens
    assert {r["tensor_type"] for r in table.rows} == {"ffn_up", "ffn_down", "attn_v"}
    for kind in ("ffn_up", "attn_v"):
        errs = [table.cell(kind, t)["kld_mean"] for t in ("Q8_0", "Q4_0", "Q2_K")]
        assert 0 < errs[0] < errs[1] < errs[2]
    # a sum over the tensors' recorded errors
    worker = Worker(dense_model, SETTINGS, cache, tmp_path / "work")
    inv = worker.inventory
    expected = sum(worker.tensors.weight_error(t, GGMLType.Q4_0).sq_error for t in inv.kinds["attn_v"].tensors)
    assert table.cell("attn_v", "Q4_0")["weight_error"] == pytest.approx(expected)
    config = StudyConfig(space={"tensor_types": ["ffn_up", "attn_v"], "ladder": ["Q8_0", "Q4_0", "Q2_K"],
                                "unmatched": "F16"},
                         surrogate_seeds=2, sensitivity=str(out))
    space = build_space(config, inv, has_imatrix=False)
    allocator = Allocator(Surrogate(table, inv), space)
    lo, hi = allocator.size_range()
    assert allocator.allocate((lo + hi) / 2, metric="kld_mean").file_bytes <= (lo + hi) / 2
    with pytest.raises(RecipeSearchError, match="no per-token KLD"):
        allocator.allocate(hi, metric="kld_p999")
    assert 1 <= len(seed_allocations(config, space, inv)) <= 2


def test_slabs_stop_at_expert_boundaries(monkeypatch) -> None:
    """Rows quantized in chunks that an expert boundary cuts short give the bytes of one whole-tensor call, and the
    same bytes and weight error with any number of threads."""
    from recipe_search.core.inventory import Tensor
    from recipe_search.engine import libggml as ggml_ctypes
    from recipe_search.engine import tensor_fill

    n_per_row, rows, experts = 256, 10, 3
    x = np.random.default_rng(0).standard_normal((experts * rows, n_per_row), dtype=np.float32)
    imatrix = np.random.default_rng(1).uniform(0.5, 2.0, experts * n_per_row).astype(np.float32)
    tensor = Tensor("blk.0.ffn_up_exps.weight", (n_per_row, rows, experts), GGMLType.F32, 0, 0, True)
    monkeypatch.setattr(tensor_fill, "_CHUNK_ELEMENTS", 4 * n_per_row)  # chunks of 4 rows: 4, 4, 2 per expert
    raw = x.view(np.uint8).ravel()
    data = tensor_fill.quantize_tensor(raw, tensor, GGMLType.Q4_K, imatrix, threads=3)
    assert np.array_equal(tensor_fill.quantize_tensor(raw, tensor, GGMLType.Q4_K, imatrix, threads=1), data)
    err = tensor_fill.weight_error(raw, data, tensor, GGMLType.Q4_K, imatrix, threads=3)
    assert tensor_fill.weight_error(raw, data, tensor, GGMLType.Q4_K, imatrix, threads=1) == err
    whole = []
    for e in range(experts):
        q = np.empty((rows, ggml_ctypes.row_size(int(GGMLType.Q4_K), n_per_row)), np.uint8)
        assert ggml_ctypes.quantize_rows(int(GGMLType.Q4_K), x[e * rows:(e + 1) * rows], q,
                                         imatrix[e * n_per_row:(e + 1) * n_per_row])
        whole.append(q.ravel())
    assert np.array_equal(data, np.concatenate(whole))
    assert len(err.per_expert) == experts and sum(err.per_expert) == pytest.approx(err.sq_error)


def test_rates_are_measured_on_a_model_whose_rows_a_k_quant_cannot_take(dense_model, tmp_path, monkeypatch) -> None:
    """`search --estimate` on the tiny dense model failed: the rate slice had the model's own row width, which Q6_K's
    256-element blocks do not divide. The slice is rounded up to whole blocks of every type measured."""
    from recipe_search.engine import trial_cost

    monkeypatch.setattr(trial_cost, "_measure_io", lambda where: (1e9, 1e9, 1e-5))
    monkeypatch.setattr(trial_cost, "_measure_eval", lambda threads: None)
    inv = read_inventory(dense_model)
    assert max(t.shape[0] for t in inv.tensors if t.quantizable) % 256
    rates = trial_cost.measure_rates(inv, tmp_path, 1, [GGMLType.Q6_K, GGMLType.Q4_0])
    assert set(rates.quantize_elements_per_s) == {"Q6_K", "Q4_0"}
    assert all(r > 0 for r in rates.quantize_elements_per_s.values())


def test_estimate_from_rates(qwen35_model) -> None:
    """The cost model: phases from rates, and the cache's nights between no cache and every tensor cached."""
    from recipe_search.core.config import StudyConfig
    from recipe_search.core.space import build_space
    from recipe_search.engine.trial_cost import NIGHT_S, Rates, estimate

    inv = read_inventory(qwen35_model)
    space = build_space(StudyConfig(), inv, has_imatrix=False)
    rates = Rates({t.name: 1e3 for p in space.parameters for t in p.ladder}, 1e6, 1e7, 1e-4, 1e9, "test")
    est = estimate(inv, rates, 4096, space, experts_used=2)
    cpu = est.phases["cpu"]
    quantized = sum(t.n_elements for t in inv.tensors if t.quantizable)
    assert cpu["quantize_cold"] > quantized / 1e3 and cpu["quantize_warm"] == 0
    assert cpu["assembly"] == pytest.approx(len(inv.tensors) * 1e-4 + 1e-3)
    assert cpu["evaluation"] == pytest.approx(4096 * est.active_params / 1e9)
    n = est.trials_per_night["cpu"]
    assert n["without_cache"] == pytest.approx(NIGHT_S / (cpu["quantize_cold"] + cpu["load"] + cpu["evaluation"]))
    assert n["without_cache"] <= n["with_cache"] <= n["all_warm"]
    assert est.active_params == pytest.approx(inv.n_elements)  # the test model has 2 experts, both used
    # on a GPU the next trial's tensors are quantized while one is scored: no fewer trials, no more than all warm
    g = est.trials_per_night["gpu"]
    assert g["with_cache"] <= g["with_cache_quantizing_ahead"] <= g["all_warm"] + 1
    assert "with_cache_quantizing_ahead" not in n


def test_pinned_entries_survive_eviction(dense_model, tmp_path) -> None:
    """The study pins its frontier's entries: an eviction that would remove them (least recently used) keeps them."""
    worker = Worker(dense_model, SETTINGS, tmp_path / "cache", tmp_path / "work")
    tensors = worker.tensors
    q8 = worker.resolve(recipe_from_dict({"name": "a", "unmatched": {"type": "Q8_0"}}))
    q4 = worker.resolve(recipe_from_dict({"name": "b", "unmatched": {"type": "Q4_0"}}))
    assemble(tensors, q8, tmp_path / "a")
    tensors.cache.max_bytes = tensors.cache.info().bytes + 1000  # room for one recipe's tensors, not two
    tensors.pin((r.tensor, r.ggml_type) for r in q8.tensors)
    assemble(tensors, q4, tmp_path / "b")
    assert all(tensors.path(r.tensor, r.ggml_type).exists() for r in [*q8.tensors, *q4.tensors])
    tensors.pin(())
    assemble(tensors, q4, tmp_path / "c")
    assert not all(tensors.path(r.tensor, r.ggml_type).exists() for r in q8.tensors)


def test_estimate_without_an_evaluation_rate_ends(qwen35_model) -> None:
    """No demo model, so no CPU evaluation rate: the CPU night with the cache is unknown (it looped forever)."""
    import math

    from recipe_search.core.config import StudyConfig
    from recipe_search.core.space import build_space
    from recipe_search.engine.trial_cost import Rates, estimate

    inv = read_inventory(qwen35_model)
    space = build_space(StudyConfig(), inv, has_imatrix=False)
    rates = Rates({t.name: 1e3 for p in space.parameters for t in p.ladder}, 1e6, 1e7, 1e-4, None, "no demo")
    est = estimate(inv, rates, 4096, space, experts_used=2)
    assert math.isnan(est.trials_per_night["cpu"]["with_cache"]) and est.trials_per_night["gpu"]["with_cache"] > 0
