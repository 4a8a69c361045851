"""KV cache, recurrent state and weights per device, against what llama.cpp allocates."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from recipe_search.cli import main
from recipe_search.core.devices import device_memory
from recipe_search.core.inventory import read_inventory
from recipe_search.core.placement import CPU, GPU, Placement
from recipe_search.core.recipe import uniform_recipe
from recipe_search.core.resolution import resolve
from recipe_search.core.run_memory import ContextSettings, compute_estimate, context_memory
from recipe_search.core.size import predict_size
from recipe_search.errors import RecipeSearchError

MIB = 1 << 20


def _prediction(path: Path, qtype: str = "Q8_0"):
    inv = read_inventory(path)
    return predict_size(resolve(uniform_recipe(qtype), inv), inv), inv


def test_hybrid_kv_on_full_attention_layers_only(qwen_35b: Path) -> None:
    """The header-only 35B file has no hyperparameters: the shapes give them."""
    inv = read_inventory(qwen_35b)
    mem = context_memory(inv, ContextSettings(n_ctx=5000, n_seq=1))
    kv = [m for m in mem.layers if m.kind == "kv"]
    assert [m.layer for m in kv] == [il for il in range(40) if (il + 1) % 4 == 0]  # full_attention_interval 4
    k_rows = inv.by_name["blk.3.attn_k.weight"].shape[1]
    assert {m.bytes for m in kv} == {2 * 2 * k_rows * 5120}  # f16 K and V, 5000 cells padded to 5120
    rec = [m for m in mem.layers if m.kind == "recurrent"]
    conv = inv.by_name["blk.0.ssm_conv1d.weight"].shape
    d_inner, d_state = inv.by_name["blk.0.ssm_out.weight"].shape[0], inv.by_name["blk.0.ssm_norm.weight"].shape[0]
    assert len(rec) == 30 and {m.bytes for m in rec} == {4 * ((conv[0] - 1) * conv[1] + d_state * d_inner)}
    q8 = context_memory(inv, ContextSettings(n_ctx=5000, type_k="q8_0", type_v="q8_0"))
    assert q8.total("kv") * 2 * 32 == mem.total("kv") * 34  # 34 bytes per 32 elements against 64
    assert q8.total("recurrent") == mem.total("recurrent")


def test_sliding_window_layers_get_a_window(demo_model: Path) -> None:
    inv = read_inventory(demo_model)
    mem = context_memory(inv, ContextSettings(n_ctx=32768, n_seq=1, n_ubatch=512))
    cells = {m.layer: m.cells for m in mem.layers}
    window = int(inv.headers[0].get("gemma3.attention.sliding_window"))
    assert {il for il, c in cells.items() if c == 32768} == {5, 11, 17}  # every 6th layer is global
    assert {c for il, c in cells.items() if il not in (5, 11, 17)} == {-(-(window + 512) // 256) * 256}
    full = context_memory(inv, ContextSettings(n_ctx=32768, swa_full=True))
    assert {m.cells for m in full.layers} == {32768}


def test_bad_context_settings_are_errors() -> None:
    with pytest.raises(RecipeSearchError, match="cache type 'q3_k'"):
        ContextSettings(type_k="q3_k")
    with pytest.raises(RecipeSearchError, match="must be positive"):
        ContextSettings(n_seq=0)


def test_weights_per_device_add_up(qwen_35b: Path, demo_model: Path) -> None:
    pred, inv = _prediction(qwen_35b)
    all_gpu = device_memory(pred, inv, Placement.parse(""))
    embd = next(t.bytes for t in pred.tensors if t.name == "token_embd.weight")
    assert all_gpu.parts["weights"] == {GPU: pred.tensor_bytes - embd, CPU: embd}
    experts = device_memory(pred, inv, Placement.parse("-ot exps=CPU"))
    exps = sum(t.bytes for t in pred.tensors if "_exps" in t.name)
    assert experts.parts["weights"] == {GPU: pred.tensor_bytes - embd - exps, CPU: embd + exps}
    half = device_memory(pred, inv, Placement.parse("--n-cpu-moe 20")).parts["weights"]
    assert experts.parts["weights"][CPU] > half[CPU] > embd and sum(half.values()) == pred.tensor_bytes
    tied_pred, tied = _prediction(demo_model)  # the tied output: a GPU copy of token_embd, none on the CPU
    embd = next(t.bytes for t in tied_pred.tensors if t.name == "token_embd.weight")
    assert device_memory(tied_pred, tied, Placement.parse("")).parts["weights"][GPU] == tied_pred.tensor_bytes
    assert device_memory(tied_pred, tied, Placement.parse("-ngl 0")).parts["weights"] == {GPU: 0, CPU: tied_pred.tensor_bytes}
    ctx = device_memory(tied_pred, tied, Placement.parse("-ngl 6"), ContextSettings(4096))
    on_gpu = sum(m.bytes for m in context_memory(tied, ContextSettings(4096)).layers if m.layer >= tied.n_blocks - 5)
    assert ctx.parts["kv"][GPU] == on_gpu and ctx.parts["compute"][GPU] > 0 and embd > 0


@pytest.mark.llama
@pytest.mark.parametrize("model, n_ctx, n_seq", [
    ("demo_model", 1000, 2), ("demo_model", 300, 1), ("qwen35_model", 512, 3), ("tiny_qwen35moe_real", 1024, 2),
    ("dense_model", 256, 4),
])
def test_llama_cpp_allocates_the_same(model: str, n_ctx: int, n_seq: int, request: pytest.FixtureRequest) -> None:
    """Cells and layers exactly, bytes within the log's two decimals of a MiB; compute estimated within 40 %
    (llama.cpp's recurrent line counts every layer, so only its rows are compared)."""
    from recipe_search.engine.allocation import context_allocation
    from recipe_search.engine.llama import LlamaModel

    path = request.getfixturevalue(model)
    with LlamaModel(path, n_ctx=n_ctx, n_seq=n_seq) as m:
        got = context_allocation(m.context_log)
    # LlamaModel's context holds n_seq chunks of n_ctx, decoded in ubatches of at most 512
    settings = ContextSettings(n_ctx * n_seq, n_seq, min(512, n_ctx * n_seq))
    mem = context_memory(read_inventory(path), settings)
    for kind, caches in (("kv", got.kv), ("recurrent", got.recurrent)):
        ours = [m for m in mem.layers if m.kind == kind]
        if kind == "kv":
            expected: Counter = Counter()
            for _, cells, layers in caches:
                expected[cells] += layers
            assert Counter(m.cells for m in ours) == expected
        else:
            assert {m.cells for m in ours} == {c[1] for c in caches}
        assert abs(mem.total(kind) / MIB - sum(c[0] for c in caches)) <= 0.005 * len(caches)
    estimate = compute_estimate(read_inventory(path), settings) / MIB
    measured = got.compute_mib + got.output_mib
    assert 0.6 * measured <= estimate <= 1.4 * measured


def test_size_prints_devices(capsys: pytest.CaptureFixture, qwen_35b: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "q8.yaml"
    recipe.write_text("name: q8\nunmatched: {type: Q8_0}\nrules: []\n")
    assert main(["size", str(qwen_35b), str(recipe), "--placement=--cpu-moe", "--run-ctx", "8192"]) == 0
    out = capsys.readouterr().out
    assert "placement: -ot" in out and "kv" in out and "recurrent" in out and "compute (estimate)" in out
    assert main(["size", str(qwen_35b), str(recipe), "--placement", "-ot nothing=CPU"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'-ot nothing=CPU' places no tensor" in err
