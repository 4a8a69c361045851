"""Speed under the placement: the placement reaches llama.cpp's model parameters where the build can offload; a
CPU-only build times on the CPU and its speed says so; a speed timed under one placement is not reused for another."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from recipe_search.core.placement import FFN_EXPS_REGEX, Placement
from recipe_search.core.recipe import recipe_from_dict
from recipe_search.engine import speed as speed_module
from recipe_search.engine.allocation import gpu_offload_supported
from recipe_search.engine.llama import _Override, model_params
from recipe_search.engine.measurement import Measurement, Speed
from recipe_search.engine.score import ScoreSettings
from recipe_search.engine.speed import SpeedRun, speed_of, speed_run
from recipe_search.engine.worker import Worker
from recipe_search.errors import RecipeSearchError

SPLIT = "-ot attn_q=CPU --n-cpu-moe 2 -ngl 10"


def test_speed_run_carries_the_placement_where_the_build_offloads() -> None:
    run = speed_run(Placement.parse(SPLIT), offload=True)
    assert run == SpeedRun(10, (("attn_q", "CPU"), (rf"blk\.0{FFN_EXPS_REGEX}", "CPU"),
                                (rf"blk\.1{FFN_EXPS_REGEX}", "CPU")), cpu_only=False)
    assert speed_run(Placement.parse("-ot exps=CUDA0"), offload=True) == SpeedRun(-1, (("exps", "CUDA0"),), False)
    assert speed_run(Placement.parse(SPLIT), offload=False) == SpeedRun(0, (), cpu_only=True)


def test_model_params_hold_the_overrides_in_order() -> None:
    run = speed_run(Placement.parse(SPLIT), offload=True)
    params = model_params(run.n_gpu_layers, run.overrides)
    assert params.n_gpu_layers == 10 and not params.use_extra_bufts
    table = ctypes.cast(params.tensor_buft_overrides, ctypes.POINTER(_Override))
    patterns = [table[i].pattern.decode() for i in range(len(run.overrides))]
    assert patterns == [p for p, _ in run.overrides] and table[len(run.overrides)].pattern is None
    assert all(table[i].buft for i in range(len(run.overrides)))
    assert not model_params(0, ()).tensor_buft_overrides
    with pytest.raises(RecipeSearchError, match=r"^buffer type 'NoSuchGPU0' is not one of this llama.cpp build's \(.*CPU"):
        model_params(-1, [("exps", "NoSuchGPU0")])


def test_speed_of_loads_with_the_placement(monkeypatch, tmp_path) -> None:
    """On a build that offloads, the model the speed is timed on gets -ngl and the overrides."""
    seen = {}

    class Fake:
        def __init__(self, path, **kw) -> None:
            seen.update(kw)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def generate_speed(self):
            return 100.0, 10.0

    monkeypatch.setattr(speed_module, "LlamaModel", Fake)
    monkeypatch.setattr(speed_module, "gpu_offload_supported", lambda: True)
    placement = Placement.parse(SPLIT)
    s = speed_of(tmp_path / "q.gguf", 3, placement)
    assert seen["n_gpu_layers"] == 10 and seen["overrides"] == speed_run(placement, True).overrides
    assert seen["n_threads"] == 3
    assert s == Speed(100.0, 10.0, placement.describe(), cpu_only=False) and "placement -ot" in s.line()
    monkeypatch.setattr(speed_module, "gpu_offload_supported", lambda: False)
    s = speed_of(tmp_path / "q.gguf", 3, placement)
    assert seen["n_gpu_layers"] == 0 and seen["overrides"] == () and s.cpu_only and "CPU only" in s.line()


def test_speed_round_trips_and_older_speed_reads_as_cpu_only() -> None:
    s = Speed(12.5, 3.0, "-ot exps=CPU -ngl all", cpu_only=True)
    assert Speed.from_dict(s.to_dict()) == s
    old = Speed.from_dict({"pp_tokens_per_s": 1.0, "tg_tokens_per_s": 2.0})
    assert old.cpu_only and old.placement == ""


@pytest.mark.llama
def test_a_speed_timed_under_another_placement_is_timed_again(tmp_path: Path, dense_model: Path) -> None:
    worker = Worker(dense_model, ScoreSettings(ctx=128, chunks=2, threads=1), tmp_path / "cache", tmp_path / "work")
    recipe = recipe_from_dict({"name": "all-q8", "unmatched": {"type": "Q8_0"}})
    on_gpu, split = Placement.parse("-ngl all"), Placement.parse("-ot attn_q=CPU -ngl 1")
    first = worker.measure(recipe, speed=on_gpu)
    assert first.speed is not None and first.speed.placement == "-ngl all"
    assert first.speed.cpu_only == (not gpu_offload_supported())
    assert first.speed.pp_tokens_per_s > 0 and first.speed.tg_tokens_per_s > 0
    assert worker.measure(recipe, speed=on_gpu).cached and worker.measure(recipe).cached
    again = worker.measure(recipe, speed=split)
    assert not again.cached and again.speed is not None and again.speed.placement == split.describe()
    stored = Measurement.from_dict(again.to_dict())
    assert stored.speed == again.speed


def test_a_study_times_speed_under_its_placement() -> None:
    from recipe_search.core.config import StudyConfig

    config = StudyConfig(objectives=["size", "kld_p99", "speed"], placement="--cpu-moe -ngl 20")
    assert config.speed_placement() == Placement.parse("--cpu-moe -ngl 20")
    assert StudyConfig(objectives=["size", "speed"]).speed_placement() == Placement.parse("-ngl all")
    assert StudyConfig(placement="--cpu-moe").speed_placement() is None  # no speed objective: nothing timed
