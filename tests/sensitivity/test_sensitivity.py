"""Sensitivity sweep, additive surrogate, size-target allocator and surrogate seeds, on tiny generated models."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import optuna
import pytest

from recipe_search.cli import main
from recipe_search.core.config import StudyConfig
from recipe_search.core.devices import device_memory
from recipe_search.core.inventory import read_inventory
from recipe_search.core.recipe import uniform_recipe
from recipe_search.core.resolution import resolve
from recipe_search.core.size import predict_size
from recipe_search.core.space import build_space
from recipe_search.engine.score import ScoreSettings
from recipe_search.engine.worker import Worker
from recipe_search.errors import RecipeSearchError
from recipe_search.formats.ggml_types import IMATRIX_REQUIRED, GGMLType
from recipe_search.sensitivity.surrogate import Allocator, Surrogate, fit_scales, frontier_gaps, seed_allocations
from recipe_search.sensitivity.sweep import run_sweep
from recipe_search.sensitivity.table import (
    TABLE_FILE,
    TOKENS_FILE,
    SensitivityTable,
    check_single_type,
    planned_cells,
    single_type_recipe,
    sweep_ladders,
)
from recipe_search.study._records import TrialRecord
from recipe_search.study.study import Study

pytestmark = pytest.mark.llama  # quantizes or evaluates with llama.cpp

KINDS = ["ffn_up", "ffn_gate", "attn_v"]
TYPES = ["Q8_0", "Q4_0", "Q2_K"]
SPACE = {"tensor_types": KINDS, "ladder": TYPES, "tied": [["ffn_up", "ffn_gate"]], "fixed": {"attn_output": "F16"},
         "unmatched": "F16"}


def _worker(model: Path, cache: Path, chunks: int = 2) -> Worker:
    return Worker(model, ScoreSettings(ctx=128, chunks=chunks), cache, cache / "work")


@pytest.fixture(scope="module")
def sweep(dense_model, tmp_path_factory) -> tuple[Worker, Path, list]:
    """The dense model's table over KINDS x TYPES, and the cells each run measured."""
    root = tmp_path_factory.mktemp("sweep")
    worker = _worker(dense_model, root / "cache")
    measured: list[str] = []
    measure = worker.measure
    def counted(what, **kw):  # a recipe or its resolution
        measured.append(getattr(what, "recipe", what).name)
        return measure(what, **kw)

    worker.measure = counted
    run_sweep(worker, root / "table", KINDS, TYPES)
    return worker, root / "table", measured


@pytest.mark.parametrize("fixture, source", [("dense_model", "F16"), ("moe_model", "F32"), ("qwen35_model", "BF16")])
def test_sweep_recipes_change_one_tensor_type(request, fixture: str, source: str) -> None:
    inv = read_inventory(request.getfixturevalue(fixture))
    ladders = sweep_ladders(inv, has_imatrix=False)
    assert set(ladders) == {k.name for k in inv.kinds.values() if k.quantizable}
    cells = planned_cells(inv, ladders)
    assert len(cells) == sum(len(v) for v in ladders.values())
    for kind, t, resolution in cells:
        assert resolution.recipe.unmatched.type == source
        assert resolution == resolve(resolution.recipe, inv)
        changed = {r.tensor.kind for r in resolution.tensors if r.ggml_type != r.tensor.ggml_type}
        assert changed == {kind}, (kind, t, changed)
        assert t not in IMATRIX_REQUIRED
    with_imatrix = sweep_ladders(inv, has_imatrix=True)
    assert any(IMATRIX_REQUIRED & set(v) for v in with_imatrix.values())


def test_sweep_leaves_out_fallback_types_and_checks_resolution(dense_model) -> None:
    inv = read_inventory(dense_model)
    ladders = sweep_ladders(inv, has_imatrix=False)
    assert GGMLType.Q2_K not in ladders["ffn_down"] and GGMLType.Q4_K not in ladders["ffn_down"]  # rows of 320
    assert GGMLType.Q2_K in ladders["ffn_up"]
    with pytest.raises(RecipeSearchError, match="resolves to"):
        check_single_type(resolve(uniform_recipe("Q4_0"), inv), "ffn_up", GGMLType.Q4_0, inv.path)
    with pytest.raises(RecipeSearchError, match="not quantized"):
        single_type_recipe(inv, "attn_norm", GGMLType.Q8_0)


def test_table_written_and_resumes(sweep) -> None:
    worker, out, measured = sweep
    assert len(measured) == len(KINDS) * len(TYPES)
    table = SensitivityTable.load(out)
    assert {(r["tensor_type"], r["ggml_type"]) for r in table.rows} == set(itertools.product(KINDS, TYPES))
    row = table.cell("ffn_up", "Q4_0")
    assert row["bpw"] == 4.5 and row["file_bytes"] > 0
    assert {"kld_mean", "kld_p99", "kld_p999", "kld_max", "ppl_ratio", "same_top", "dp_rms"} <= set(row)
    assert all(len(v) == row["n_tokens"] for v in table.tokens.values())
    # a finished sweep measures nothing again
    measured.clear()
    run_sweep(worker, out, KINDS, TYPES)
    assert measured == []
    # a sweep killed between the token file and the table: the cell without its tokens is measured again
    with np.load(out / TOKENS_FILE) as npz:
        kept = {k: npz[k] for k in npz.files if k != "attn_v|Q2_K"}
    np.savez_compressed(out / TOKENS_FILE, **kept)
    run_sweep(worker, out, KINDS, TYPES)
    assert measured == ["sensitivity-attn_v-Q2_K"]
    assert len(SensitivityTable.load(out).rows) == len(KINDS) * len(TYPES)
    assert (out / TABLE_FILE).read_text().count("\n") == len(KINDS) * len(TYPES) + 1


def test_table_refuses_other_settings(sweep, dense_model) -> None:
    worker, out, _ = sweep
    other = _worker(dense_model, worker.cache_dir, chunks=3)
    with pytest.raises(RecipeSearchError, match="another reference"):
        run_sweep(other, out, KINDS, TYPES)


def test_surrogate_of_one_type_recipe_is_that_cell(sweep) -> None:
    worker, out, _ = sweep
    table = SensitivityTable.load(out)
    surrogate = Surrogate(table, worker.inventory)
    for kind, t in [("ffn_up", "Q4_0"), ("attn_v", "Q2_K")]:
        cell = table.cell(kind, t)
        p = surrogate.predict_recipe(single_type_recipe(worker.inventory, kind, GGMLType[t]))
        assert p.kld_mean == pytest.approx(cell["kld_mean"], rel=1e-12)
        assert p.kld_p999 == pytest.approx(cell["kld_p999"], rel=1e-6)
        assert p.kld_max == pytest.approx(cell["kld_max"], rel=1e-6)
    both = surrogate.predict_recipe(single_type_recipe(worker.inventory, "ffn_up", GGMLType.Q2_K).model_copy(
        update={"rules": [*single_type_recipe(worker.inventory, "ffn_up", GGMLType.Q2_K).rules,
                          *single_type_recipe(worker.inventory, "ffn_gate", GGMLType.Q2_K).rules]}))
    assert both.kld_mean == pytest.approx(table.cell("ffn_up", "Q2_K")["kld_mean"] +
                                          table.cell("ffn_gate", "Q2_K")["kld_mean"])
    with pytest.raises(RecipeSearchError, match="no cell ffn_down Q4_0"):
        surrogate.predict_recipe(single_type_recipe(worker.inventory, "ffn_down", GGMLType.Q4_0))


def test_allocator_fits_the_target_and_honours_ties_and_fixed_types(sweep) -> None:
    worker, out, _ = sweep
    inv = worker.inventory
    space = build_space(StudyConfig(space=SPACE), inv, has_imatrix=False)
    surrogate = Surrogate(SensitivityTable.load(out), inv)
    allocator = Allocator(surrogate, space)
    lo, hi = allocator.size_range()
    combos = [dict(zip([p.name for p in space.parameters], c))
              for c in itertools.product(*(range(len(p.ladder)) for p in space.parameters))]
    sizes = {tuple(c.values()): predict_size(resolve(space.recipe(c), inv), inv).file_bytes for c in combos}
    assert (lo, hi) == (min(sizes.values()), max(sizes.values()))
    for target in np.linspace(lo, hi, 7):
        fits = [c for c in combos if sizes[tuple(c.values())] <= target]
        by_mean = allocator.allocate(target, metric="kld_mean")
        by_tail = allocator.allocate(target, metric="kld_p999")
        for a in (by_mean, by_tail):
            resolution = resolve(a.recipe, inv)
            assert a.file_bytes == predict_size(resolution, inv).file_bytes <= target
            kinds = resolution.kind_types()
            assert kinds["ffn_up"] == kinds["ffn_gate"] and set(kinds["attn_output"]) == {"F16"}
        assert by_mean.prediction.kld_mean == pytest.approx(
            min(surrogate.predict_recipe(space.recipe(c)).kld_mean for c in fits))
        assert by_tail.prediction.kld_p999 <= by_mean.prediction.kld_p999
    measured = worker.measure(allocator.allocate((lo + hi) / 2).recipe)  # the worker checks the size it wrote
    assert measured.file_bytes <= (lo + hi) / 2
    bpw_lo, bpw_hi = allocator.size_range("bpw")
    assert allocator.allocate((bpw_lo + bpw_hi) / 2, unit="bpw").bpw <= (bpw_lo + bpw_hi) / 2
    with pytest.raises(RecipeSearchError, match="below the smallest"):
        allocator.allocate(lo - 1)


def test_allocator_under_two_device_budgets(sweep) -> None:
    """The two-budget knapsack against every recipe of the space: inside both budgets, and the best mean KLD
    among those that are (the attention on the CPU, the rest on the GPU: each budget binds other tensors)."""
    from recipe_search.core.devices import device_memory
    from recipe_search.core.placement import Placement

    worker, out, _ = sweep
    inv = worker.inventory
    placement = "-ot attn=CPU"
    surrogate = Surrogate(SensitivityTable.load(out), inv)
    free = build_space(StudyConfig(space=SPACE), inv, has_imatrix=False)
    combos = [dict(zip([p.name for p in free.parameters], c))
              for c in itertools.product(*(range(len(p.ladder)) for p in free.parameters))]
    devices = {tuple(c.values()): device_memory(predict_size(resolve(free.recipe(c), inv), inv), inv,
                                                Placement.parse(placement)).parts["weights"] for c in combos}
    gpu_all, cpu_all = sorted(d["gpu"] for d in devices.values()), sorted(d["cpu"] for d in devices.values())
    allocated = 0
    for q_gpu, q_cpu in ((0.3, 0.7), (0.7, 0.3), (0.5, 0.5), (0.99, 0.2)):
        gpu, cpu = gpu_all[int(q_gpu * (len(combos) - 1))], cpu_all[int(q_cpu * (len(combos) - 1))]
        config = StudyConfig(space=SPACE, placement=placement, max_gpu_bytes=gpu, max_cpu_bytes=cpu)
        space = build_space(config, inv, has_imatrix=False)
        allocator = Allocator(surrogate, space, budget=config.device_budget(inv))
        fits = [c for c in combos if devices[tuple(c.values())]["gpu"] <= gpu and devices[tuple(c.values())]["cpu"] <= cpu]
        if not fits:
            with pytest.raises(RecipeSearchError, match="fits the device budget"):
                allocator.allocate_devices()
            continue
        a, allocated = allocator.allocate_devices(), allocated + 1
        assert a.device_bytes is not None and a.device_bytes["gpu"] <= gpu and a.device_bytes["cpu"] <= cpu
        assert a.device_bytes == devices[tuple(a.choice[p.name] for p in space.parameters)]
        assert a.prediction.kld_mean == pytest.approx(min(surrogate.predict_recipe(space.recipe(c)).kld_mean for c in fits))
    assert allocated >= 3
    config = StudyConfig(space=SPACE, placement=placement, max_gpu_bytes=gpu, max_cpu_bytes=cpu, sensitivity=str(out),
                         surrogate_seeds=2)
    first = seed_allocations(config, build_space(config, inv, has_imatrix=False), inv)[0]  # the budget's corner first
    assert first.recipe.name.startswith("surrogate-") and first.recipe.name.endswith("-cpu")
    assert first.device_bytes is not None and first.device_bytes["gpu"] <= gpu and first.device_bytes["cpu"] <= cpu


def test_size_targets_are_solved_inside_the_device_budget(sweep) -> None:
    """With a device budget, an allocation at a size target (each seed, each refitted proposal) fits the size and both
    budgets and is the best of the space's recipes that do; steering the size-only allocation into the box after the
    fact (as refits were) is never better and, at some budget, worse."""
    from recipe_search.core.placement import Placement
    from recipe_search.sensitivity.surrogate import refit_allocation
    from recipe_search.study._band import BandSteer

    worker, out, _ = sweep
    inv = worker.inventory
    placement = "-ot attn=CPU"
    surrogate = Surrogate(SensitivityTable.load(out), inv)
    free = build_space(StudyConfig(space=SPACE), inv, has_imatrix=False)
    size_only = Allocator(surrogate, free)
    combos = [dict(zip([p.name for p in free.parameters], c))
              for c in itertools.product(*(range(len(p.ladder)) for p in free.parameters))]
    sizes = {tuple(c.values()): predict_size(resolve(free.recipe(c), inv), inv) for c in combos}
    devices = {k: device_memory(s, inv, Placement.parse(placement)).parts["weights"] for k, s in sizes.items()}
    mean = {k: surrogate.predict_recipe(free.recipe(c)).kld_mean for k, c in zip(sizes, combos)}
    gpu_all, cpu_all = sorted(d["gpu"] for d in devices.values()), sorted(d["cpu"] for d in devices.values())
    bpw_all = sorted(s.bits_per_weight for s in sizes.values())
    worse = 0
    for q_gpu, q_cpu in ((0.3, 0.9), (0.9, 0.3), (0.6, 0.6)):
        gpu, cpu = gpu_all[int(q_gpu * (len(combos) - 1))], cpu_all[int(q_cpu * (len(combos) - 1))]
        config = StudyConfig(space=SPACE, placement=placement, max_gpu_bytes=gpu, max_cpu_bytes=cpu)
        space = build_space(config, inv, has_imatrix=False)
        allocator = Allocator(surrogate, space, budget=config.device_budget(inv))
        steer = BandSteer(space, inv, config)
        for target in (bpw_all[len(bpw_all) // 3], bpw_all[2 * len(bpw_all) // 3], bpw_all[-1]):
            fits = [k for k in sizes if sizes[k].bits_per_weight <= target and devices[k]["gpu"] <= gpu
                    and devices[k]["cpu"] <= cpu]
            if not fits:
                continue
            a = allocator.allocate(target, "bpw", "kld_mean")
            assert a.bpw <= target and a.device_bytes is not None
            assert a.device_bytes["gpu"] <= gpu and a.device_bytes["cpu"] <= cpu
            assert a.prediction.kld_mean == pytest.approx(min(mean[k] for k in fits))
            steered = steer.steer(size_only.allocate(target, "bpw", "kld_mean").choice)
            steered_mean = mean[tuple(steered[p.name] for p in free.parameters)]
            assert steered_mean >= a.prediction.kld_mean * (1 - 1e-9)
            worse += steered_mean > a.prediction.kld_mean * (1 + 1e-6)
        refit = refit_allocation(allocator, config, [], [(bpw_all[0], 1.0), (bpw_all[-1], 0.1)], set(), 0)
        assert refit is not None and refit.device_bytes is not None
        assert refit.device_bytes["gpu"] <= gpu and refit.device_bytes["cpu"] <= cpu
    assert worse  # the property the joint solve adds: steering afterwards loses somewhere


def test_seeding_enqueues_surrogate_recipes(sweep, tmp_path) -> None:
    worker, out, _ = sweep
    config = StudyConfig(ctx=128, chunks=2, space=SPACE, references={"uniform": ["Q8_0"], "presets": []},
                         surrogate_seeds=3, sensitivity=str(out))
    study = Study.open(worker.model, config, name="seeded", directory=tmp_path, cache=worker.cache_dir)
    seeds = seed_allocations(config, study.space, worker.inventory)
    assert 1 <= len(seeds) <= 3
    sizes = [s.file_bytes for s in seeds]
    assert sizes == sorted(sizes)
    assert study.enqueue_references() >= len(seeds)
    waiting = study.optuna_study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    seeded = [json.dumps(t.system_attrs["fixed_params"], sort_keys=True) for t in waiting
              if TrialRecord.from_trial(t).surrogate_seed is not None]
    assert seeded and set(seeded) <= {json.dumps(s.choice, sort_keys=True) for s in seeds}
    assert study.enqueue_references() == 0
    with pytest.raises(RecipeSearchError, match="needs a sensitivity table"):
        seed_allocations(config.model_copy(update={"sensitivity": None}), study.space, worker.inventory)


def test_fit_scales_recovers_each_parameters_factor(sweep) -> None:
    worker, out, _ = sweep
    inv = worker.inventory
    space = build_space(StudyConfig(space=SPACE), inv, has_imatrix=False)
    allocator = Allocator(Surrogate(SensitivityTable.load(out), inv), space)
    factors = [1.0, 2.5, 0.4][: len(allocator.options) + 1]
    observed = []
    for picks in itertools.product(*allocator.options):
        choice = {p.name: o.index for p, o in zip(space.parameters, picks)}
        observed.append((choice, factors[0] * allocator.fixed_mean + sum(f * o.mean for f, o in zip(factors[1:], picks))))
    fitted = fit_scales(allocator, observed, prior=1e-9)
    assert fitted[1:] == pytest.approx(factors[1:], rel=1e-3)
    assert fit_scales(allocator, []) == pytest.approx([1.0] * len(factors))  # nothing measured: the table as it is
    scaled = allocator.scaled(fitted)
    assert [o.mean for o in scaled.options[0]] == pytest.approx([o.mean * fitted[1] for o in allocator.options[0]])


def test_frontier_gaps_widest_first() -> None:
    points = [(3.0, 5.0), (4.0, 2.0), (4.5, 3.0), (7.0, 1.0), (9.5, 0.5)]  # (4.5, 3.0) is dominated
    assert frontier_gaps(points, 0.0, 10.0) == [5.5, 8.25, 3.5]
    assert frontier_gaps(points, 3.5, 8.0) == [5.5]


def test_a_study_sweeps_its_own_space_seeds_its_targets_and_refits(dense_model, tmp_path) -> None:
    cache = tmp_path / "cache"
    wide = {**SPACE, "ladder": ["Q8_0", "Q6_K", "Q5_0", "Q4_0", "Q3_K", "Q2_K"]}
    base = StudyConfig(ctx=128, chunks=2, space=wide, references={"uniform": ["Q8_0", "Q2_K"], "presets": []},
                       surrogate_seeds=0, refit_every=0)
    probe = Study.open(dense_model, base, name="probe", directory=tmp_path / "probe", cache=cache)
    assert probe.sensitivity_table() is None  # no surrogate option: no sweep
    inv = probe.worker.inventory
    lo, hi = (predict_size(resolve(probe.space.recipe({p.name: (len(p.ladder) - 1) * smallest
                                                       for p in probe.space.parameters}), inv), inv).bits_per_weight
              for smallest in (True, False))
    target = round((lo + hi) / 2, 3)
    config = base.model_copy(update={"target_bpw": [target], "refit_every": 1})
    with pytest.raises(RecipeSearchError, match="sweep_chunks 1 at ctx 128 scores 63 tokens"):
        Study.open(dense_model, config.model_copy(update={"sweep_chunks": 1}), name="few", directory=tmp_path / "few")
    with pytest.raises(RecipeSearchError, match=f"target_bpw {lo / 2} is below the smallest recipe"):
        Study.open(dense_model, config.model_copy(update={"target_bpw": [lo / 2]}), name="low", directory=tmp_path / "l")
    study = Study.open(dense_model, config, name="own", directory=tmp_path / "own", cache=cache)
    assert study.prepare().enqueued == 3
    table = SensitivityTable.load(tmp_path / "own" / "sweep")
    searched = {(k, t.name) for p in study.space.parameters for k in p.kinds for t in p.ladder}
    kinds = {k for p in study.space.parameters for k in p.kinds}
    others = {(k.name, study.space.fixed.get(k.name, study.space.unmatched).name)  # what the space does not search
              for k in inv.kinds.values() if k.quantizable and k.name not in kinds
              and study.space.fixed.get(k.name, study.space.unmatched).name not in k.ggml_types}
    assert {(r["tensor_type"], r["ggml_type"]) for r in table.rows} == searched | others
    assert table.meta["chunks"] == 2 and study.optuna_study.user_attrs["sweep_seconds"] > 0
    assert study.propose_refit() is None  # the enqueued trials come first
    study.config = config.model_copy(update={"refit_every": 0})  # run just the enqueued ones
    study.run(n_trials=3)
    seeded = [r for r in study.records() if r.surrogate_seed is not None]
    assert len(seeded) == 1 and seeded[0].bpw <= target
    study.config = config
    name = study.propose_refit()  # the widest gap of the three measured points: a recipe not tried yet
    assert name is not None and name.startswith("refit-")
    study.run(n_trials=1)
    refit = next(r for r in study.records() if r.refit is not None)
    assert refit.measured and refit.refit == f"refit-{refit.bpw:.3f}bpw"
    assert refit.recipe.name == refit.name


def test_cli_prints_the_table(sweep, capsys) -> None:
    worker, out, _ = sweep
    args = ["sensitivity", str(worker.model), "--tensor-types", "ffn_up", "--types", "Q8_0", "Q4_0", "--ctx", "128",
            "--chunks", "2", "--out", str(out), "--cache-dir", str(worker.cache_dir), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "kld_p999 by tensor type" in printed and "attn_v" in printed and f"table: {out}" in printed
