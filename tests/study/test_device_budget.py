"""Device budgets: proposals steered into the GPU/CPU box, impossible budgets refused, device targets picked."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import pytest

from recipe_search.core.config import StudyConfig, _validate
from recipe_search.core.devices import device_memory
from recipe_search.core.inventory import read_inventory
from recipe_search.core.pareto import parse_target
from recipe_search.core.placement import Placement
from recipe_search.core.recipe import uniform_recipe
from recipe_search.core.resolution import resolve
from recipe_search.core.size import predict_size
from recipe_search.core.space import build_space
from recipe_search.errors import RecipeSearchError
from recipe_search.study._band import BandSteer

LADDER = ["Q8_0", "Q6_K", "Q4_K", "Q3_K", "Q2_K"]
SPACE = {"ladder": LADDER, "tensor_types": ["ffn_down_exps", "ffn_up_exps", "attn_qkv", "token_embd"]}


def _exact(space, inv, choice, placement: Placement) -> dict[str, int]:
    pred = predict_size(resolve(space.recipe(choice), inv), inv)
    return device_memory(pred, inv, placement).parts["weights"]


def test_steering_lands_every_proposal_in_the_device_box(qwen35_model) -> None:
    """Experts on the CPU: a CPU budget moves the experts down, a GPU budget the rest; sizes exact per device."""
    inv = read_inventory(qwen35_model)
    placement = "--cpu-moe"
    free = build_space(StudyConfig(space=SPACE), inv, has_imatrix=False)
    names = [p.name for p in free.parameters]
    choices = [dict(zip(names, idx)) for idx in itertools.product(range(len(LADDER)), repeat=len(names))]
    totals = [_exact(free, inv, c, Placement.parse(placement)) for c in choices]
    gpu = sorted(t["gpu"] for t in totals)[len(totals) // 3]
    cpu = sorted(t["cpu"] for t in totals)[len(totals) // 3]
    config = StudyConfig(space=SPACE, placement=placement, max_gpu_bytes=gpu, max_cpu_bytes=cpu)
    space = build_space(config, inv, has_imatrix=False)
    steer = BandSteer(space, inv, config)
    assert steer.active
    moved = 0
    for choice, exact in zip(choices, totals):
        assert steer.devices(choice) == exact
        out = steer.steer(choice)
        after = steer.devices(out)
        assert after["gpu"] <= gpu and after["cpu"] <= cpu, (choice, out)
        if exact["gpu"] <= gpu and exact["cpu"] <= cpu:
            assert out == choice
        else:
            moved += 1
            assert all(out[n] >= choice[n] for n in names)  # only ever smaller types
    assert moved > len(choices) // 2  # at least half of the space does not fit


def test_device_budget_keys(qwen35_model) -> None:
    config = _validate({"max_gpu_bytes": "1.5GiB", "max_cpu_bytes": 123456789, "run": {"ctx": 4096}}, None)
    assert config.max_gpu_bytes == 3 << 29 and config.max_cpu_bytes == 123456789
    for bad, message in (({"max_gpu_bytes": "4bpw"}, "max_gpu_bytes: '4bpw' is not a byte size"),
                         ({"placement": "-ot exps"}, "placement: .*PATTERN=BUFFER"),
                         ({"run": {"ctx": 512, "cache_type_v": "q2_k"}}, "run: cache type 'q2_k'")):
        with pytest.raises(RecipeSearchError, match=message):
            _validate(bad, None)


@pytest.mark.llama
def test_a_budget_no_recipe_fits_is_refused(qwen35_model, tmp_path) -> None:
    from recipe_search.core.locations import cache_dir
    from recipe_search.engine.worker import Worker
    from recipe_search.study._checks import check_study_inputs

    inv = read_inventory(qwen35_model)
    config = StudyConfig(space=SPACE, placement="--cpu-moe", max_cpu_bytes=1000, chunks=2, ctx=64)
    space = build_space(config, inv, has_imatrix=False)
    worker = Worker(qwen35_model, config.score_settings(), cache_dir(str(tmp_path)), tmp_path / "work")
    with pytest.raises(RecipeSearchError, match="no recipe of the space fits the device budget: the smallest needs .* CPU"):
        check_study_inputs(config, worker, space)
    nothing = StudyConfig(space=SPACE, placement="-ot nothing_here=CPU", chunks=2, ctx=64)
    with pytest.raises(RecipeSearchError, match="places no tensor"):
        check_study_inputs(nothing, worker, build_space(nothing, inv, has_imatrix=False))


def test_device_targets_pick_inside_the_box() -> None:
    target = parse_target("1000B-gpu+5000B-cpu")
    assert target.kind == "devices" and target.label == "1000B-gpu+5000B-cpu"
    devices = [{"gpu": 900, "cpu": 5000}, {"gpu": 1001, "cpu": 10}, None, {"gpu": 10, "cpu": 10}]
    quality = [0.2, 0.1, 0.0, 0.5]
    assert target.pick([4.0] * 4, [1, 2, 3, 4], quality, devices) == 0  # 1 is over on the GPU, 2 recorded none
    assert parse_target("1000-gpu").pick([4.0], [1], [0.1], [{"gpu": 1000, "cpu": 1 << 40}]) == 0
    assert target.pick([4.0], [1], [0.1], None) is None


def test_nothing_fits_says_why() -> None:
    from recipe_search.cli.analysis import _nothing_fits

    config = StudyConfig(placement="--cpu-moe")
    c = SimpleNamespace(device_bytes={"gpu": 2 << 30, "cpu": 9 << 30}, bpw=4.0, file_bytes=11 << 30, name="t")
    sel = SimpleNamespace(candidates=[c], config=config)
    text = _nothing_fits(sel, parse_target("1GiB-gpu"))
    assert "--cpu-moe" in text and "2.00 GiB GPU" in text
    assert "no per-device bytes" in _nothing_fits(SimpleNamespace(candidates=[SimpleNamespace(device_bytes=None)],
                                                                 config=config), parse_target("1GiB-gpu"))


@pytest.mark.slow
def test_search_and_pareto_at_a_device_target(tmp_path, dense_model) -> None:
    """`search --targets G-gpu+C-cpu` under a split placement: nothing measured leaves the box; `pareto` picks in it."""
    import json
    import subprocess
    import sys

    import optuna
    import yaml

    from recipe_search.study._records import TrialRecord

    config = {"ctx": 128, "chunks": 4, "objectives": ["size", "kld_p99"], "surrogate_seeds": 0, "refit_every": 0,
              "placement": "-ngl 2", "run": {"ctx": 256},
              "space": {"ladder": ["Q8_0", "Q5_0", "Q4_0"], "unmatched": "Q4_0"},
              "references": {"uniform": ["Q8_0", "Q5_0", "Q4_0"], "presets": ["Q4_K_M"]}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(config))
    inv = read_inventory(dense_model)
    budget_config = StudyConfig.model_validate(config)
    budget = budget_config.device_budget(inv)
    space = build_space(budget_config, inv, has_imatrix=False)
    small, large = (budget.totals(predict_size(resolve(space.recipe({p.name: i for p in space.parameters}), inv), inv))
                    for i in (2, 0))
    gpu = small["gpu"] + (large["gpu"] - small["gpu"]) // 5
    cpu = large["cpu"] * 2
    refs = {t: budget.totals(predict_size(resolve(uniform_recipe(t), inv), inv)) for t in config["references"]["uniform"]}
    over = {f"uniform-{t}" for t, r in refs.items() if r["gpu"] > gpu}
    assert len(over) >= 2  # at least two of the three references do not fit
    target = f"{gpu}-gpu+{cpu}-cpu"
    cli = [sys.executable, "-m", "recipe_search.cli"]
    run = subprocess.run([*cli, "search", str(dense_model), "--config", str(tmp_path / "s.yaml"), "--dir",
                          str(tmp_path / "study"), "--study", "s", "--cache-dir", str(tmp_path / "cache"),
                          "--trials", "10", "--targets", target], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "cannot offload to a GPU" in run.stderr  # this CPU-only build only budgets the placement
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study' / 'study.db'}")
    records = [TrialRecord.from_trial(t) for t in study.trials]
    measured = [r for r in records if r.measured and r.reference != "preset-Q4_K_M"]
    assert measured and all(r.device_bytes["gpu"] <= gpu and r.device_bytes["cpu"] <= cpu for r in measured)
    preset = next((r for r in records if r.reference == "preset-Q4_K_M"), None)  # measured at the start if it fits
    if preset is None:
        assert "reference preset-Q4_K_M left out: " in run.stdout + run.stderr
    else:
        assert preset.measured and preset.device_bytes["gpu"] <= gpu and preset.device_bytes["cpu"] <= cpu
    refused = {r.reference for r in records if r.pruned and "max_gpu_bytes" in r.pruned}
    assert refused == over
    pareto = subprocess.run([*cli, "pareto", "--dir", str(tmp_path / "study"), "--study", "s", "--targets",
                             f"{target},{gpu // 4}-gpu", "--out", str(tmp_path / "picks"), "--json"],
                            capture_output=True, text=True, timeout=300)
    assert pareto.returncode == 0, pareto.stderr
    picks = json.loads(pareto.stdout)["picks"]
    assert picks[0]["trial"] is not None and picks[0]["device_bytes"]["gpu"] <= gpu
    assert picks[1]["trial"] is None  # a quarter of the budget fits nothing measured
    written = yaml.safe_load(Path(picks[0]["recipe"]).read_text(encoding="utf-8"))
    assert written["provenance"]["devices"]["placement"] == "-ngl 2"

