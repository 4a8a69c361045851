"""The bytes a search space needs in the quantized-tensor cache, and the warning when the cache cannot keep them."""

from __future__ import annotations

from recipe_search.core.cache_need import SHARD_ALIGNMENT, cache_need_warning, disk_share_bound, space_cache_need
from recipe_search.core.config import StudyConfig
from recipe_search.core.inventory import read_inventory
from recipe_search.core.space import build_space
from recipe_search.formats.ggml_types import fallback, tensor_bytes

EXPERTS = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")


def test_35b_expert_types_need_hundreds_of_gb(qwen_35b) -> None:
    """Qwen3.5-35B-A3B (header only), the default ladder: the three routed-expert types over the ladder need what
    tensor_bytes says they do (plus a small header and padding per shard), hundreds of GB."""
    inv = read_inventory(qwen_35b)
    space = build_space(StudyConfig(), inv, has_imatrix=False)
    need = space_cache_need(space, inv)
    ladder = {k: p.ladder for p in space.parameters for k in p.kinds}
    direct = n_shards = 0
    for t in inv.tensors:
        if t.kind in EXPERTS:
            types = {fallback(q, t.row_length) for q in ladder[t.kind]}
            direct += sum(tensor_bytes(q, t.shape) for q in types)
            n_shards += len(types)
    got = sum(need.by_kind[k] for k in EXPERTS)
    assert direct <= got <= direct + n_shards * (1024 + SHARD_ALIGNMENT)  # a shard's header is well under 1 KiB
    assert 100e9 < got < 1000e9, got
    assert got < need.bytes and need.largest(3).split()[0] in EXPERTS
    assert len(need.pairs) == len({(n, q) for n, q in need.pairs})


def test_every_tensor_is_counted_at_its_fixed_or_kept_type(qwen_35b) -> None:
    inv = read_inventory(qwen_35b)
    space = build_space(StudyConfig(), inv, has_imatrix=False)
    names = {n for n, _ in space_cache_need(space, inv).pairs}
    assert names == {t.name for t in inv.tensors}


def test_warning_when_the_bound_or_the_disk_is_smaller() -> None:
    assert cache_need_warning(100, bound=200, free=300) is None
    low_bound = cache_need_warning(100 << 30, bound=64 << 30, free=1 << 40)
    assert low_bound is not None and "bound 64.00 GiB" in low_bound and "disk" not in low_bound.split(":")[0]
    assert "\n" not in low_bound and low_bound.startswith("the space's tensors need 100.00 GiB")
    low_disk = cache_need_warning(100 << 30, bound=1 << 40, free=50 << 30, held=10 << 30)
    assert low_disk is not None and "disk it can use 60.00 GiB" in low_disk and "bound" not in low_disk.split(":")[0]
    both = cache_need_warning(100 << 30, bound=30 << 30, free=50 << 30)
    assert both is not None and "bound" in both and "disk" in both.split(":")[0]
    assert cache_need_warning(100, bound=100, free=100) is None


def test_default_bound_is_a_share_of_the_usable_disk() -> None:
    assert disk_share_bound(free=600, held=400) == 500
    assert disk_share_bound(free=600, held=400, share=0.25) == 250


def test_estimate_prints_the_need_and_warns_below_it(qwen_35b, tmp_path, monkeypatch, capsys) -> None:
    """`search --estimate` on the 35B header: the need line, and the one warning line under a 64 GiB bound (no
    rates measured: they are stubbed)."""
    from recipe_search.cli import main
    from recipe_search.engine import trial_cost

    def rates(inv, where, threads, types):
        return trial_cost.Rates({t.name: 1e8 for t in types}, 1e9, 1e10, 1e-5, 1e12, "stub")

    monkeypatch.setattr(trial_cost, "measure_rates", rates)
    monkeypatch.setenv("RECIPE_SEARCH_TENSOR_CACHE_GB", "64")
    assert main(["search", str(qwen_35b), "--estimate", "--cache-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    need = space_cache_need(build_space(StudyConfig(), read_inventory(qwen_35b), has_imatrix=False),
                            read_inventory(qwen_35b))
    assert f"pairs need {need.bytes / 2**30:.2f} GiB" in out and "bound 64.00 GiB" in out
    warnings = [line for line in err.splitlines() if line.startswith("warning: the space's tensors need")]
    assert len(warnings) == 1 and "the cache's bound 64.00 GiB" in warnings[0]
    monkeypatch.setenv("RECIPE_SEARCH_TENSOR_CACHE_GB", "100000")
    assert main(["search", str(qwen_35b), "--estimate", "--cache-dir", str(tmp_path), "--json"]) == 0
    out, err = capsys.readouterr()
    assert "the cache's bound" not in err and '"need": ' + str(need.bytes) in out


def test_estimate_says_what_a_trial_near_a_target_costs(qwen_35b, tmp_path, monkeypatch, capsys) -> None:
    """With size targets a trial near one is scored on twice the chunks: the estimate says so, with its evaluation."""
    from recipe_search.cli import main
    from recipe_search.engine import trial_cost

    monkeypatch.setattr(trial_cost, "measure_rates", lambda inv, where, threads, types: trial_cost.Rates(
        {t.name: 1e8 for t in types}, 1e9, 1e10, 1e-5, 1e12, "stub"))
    assert main(["search", str(qwen_35b), "--estimate", "--cache-dir", str(tmp_path)]) == 0
    assert "near one" not in capsys.readouterr().out  # no targets, no extra chunks
    assert main(["search", str(qwen_35b), "--estimate", "--cache-dir", str(tmp_path), "--targets", "4.5bpw"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("with size targets"))
    config = StudyConfig(target_bpw=[4.5])
    assert f"scored on {config.reference_chunks} x {config.ctx} tokens" in line and config.reference_chunks == 2 * config.chunks

