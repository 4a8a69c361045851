"""Search studies end to end on a tiny model: metrics, frontier, resume, kill and retry, two workers."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from paths import REPO

from recipe_search.core.config import RunConfig, SpaceConfig, StudyConfig
from recipe_search.core.inventory import read_inventory
from recipe_search.core.pareto import non_dominated
from recipe_search.core.recipe import Recipe, Unmatched
from recipe_search.core.space import build_space
from recipe_search.engine.worker import tool_versions
from recipe_search.study._early_stopping import FinishedPoint, prune_decision
from recipe_search.study._objective import same_measurement
from recipe_search.study._records import Measurement, TrialRecord, record_measurement, record_resolution
from recipe_search.study._summary import measured_records

pytestmark = pytest.mark.llama  # quantizes or evaluates with llama.cpp

# no sweep (surrogate_seeds, refit_every): these test the study's mechanics; study/test_imatrix_study.py runs the defaults
CONFIG = {"ctx": 128, "chunks": 4, "objectives": ["size", "kld_p99"], "surrogate_seeds": 0, "refit_every": 0,
          "space": {"tensor_types": ["ffn_up", "ffn_gate", "ffn_down", "attn_q", "attn_output"],
                    "ladder": ["Q8_0", "Q5_0", "Q4_0", "Q3_K", "Q2_K"], "tied": [["ffn_up", "ffn_gate"]]},
          "references": {"uniform": ["Q8_0", "Q4_0", "Q2_K"], "presets": ["Q4_K_M"]}}


def cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recipe_search.cli", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})}, **kw)


@pytest.fixture()
def study_setup(tmp_path, dense_model):
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    return dense_model, config, tmp_path / "study", tmp_path / "cache"


def _load(directory: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{directory / 'study.db'}")


@pytest.mark.slow
def test_search_resume_and_frontier(study_setup) -> None:
    model, config, directory, cache = study_setup
    args = ["search", str(model), "--config", str(config), "--dir", str(directory), "--study", "s",
            "--cache-dir", str(cache), "--json"]
    first = cli(*args, "--trials", "8")
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    study = _load(directory, "s")
    n_first = len(study.trials)
    measured = measured_records(study)
    assert measured and all({"kld_p99", "kld_p999", "kld_mean", "ppl_ratio", "same_top", "dp_rms"} <= set(t.metrics)
                            for t in measured)
    assert {TrialRecord.from_trial(t).reference for t in study.trials} >= {"uniform-Q8_0", "uniform-Q4_0", "preset-Q4_K_M"}
    assert study.user_attrs["tools"] == tool_versions()  # what measured it, for the picks' provenance
    # the frontier is non-dominated, and everything else is dominated by it
    pts = np.array([t.values for t in measured])
    assert len(summary["frontier"]) == len(non_dominated(pts))
    assert "reference: computed" in first.stderr

    second = cli(*args, "--trials", "4")
    assert second.returncode == 0, second.stderr
    assert "reference: cached" in second.stderr
    study = _load(directory, "s")
    assert len(study.trials) == n_first + 4
    keys = [t.result_key for t in measured_records(study)]
    assert len(keys) == len(set(keys)), "a resolved recipe was measured twice"
    assert not list((directory / "work").rglob("*.gguf*"))


def _wait_for_running_trial(directory: Path, name: str, timeout: float = 120) -> int:
    """The number of the first trial seen measuring (running, its recipe resolved)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            study = _load(directory, name)
        except Exception:  # the database may not exist yet
            study = None
        running = [t.number for t in (study.trials if study else [])
                   if t.state == optuna.trial.TrialState.RUNNING and TrialRecord.from_trial(t).result_key]
        if running:
            return running[0]
        time.sleep(0.05)
    pytest.fail(f"no trial of study {name} started measuring within {timeout} s")


@pytest.mark.slow
def test_killed_worker_trial_is_failed_and_retried(study_setup) -> None:
    model, config, directory, cache = study_setup
    env = {"RECIPE_SEARCH_HEARTBEAT": "1", "RECIPE_SEARCH_GRACE": "2"}
    base = ["search", str(model), "--config", str(config), "--dir", str(directory), "--study", "k",
            "--cache-dir", str(cache), "--quiet"]
    assert cli(*base, "--trials", "0", env=env).returncode == 0  # creates the study, reference and presets
    proc = subprocess.Popen([sys.executable, "-m", "recipe_search.cli", *base, "--trials", "6"],
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_running_trial(directory, "k")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(3)  # past the grace period
    again = cli(*base, "--trials", "3", env=env)
    assert again.returncode == 0, again.stderr
    study = _load(directory, "k")
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed, "the killed trial was not failed"
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") in {f.number for f in failed}]
    assert retried and all(t.state != optuna.trial.TrialState.FAIL for t in retried)
    assert all(TrialRecord.from_trial(f).measurement is None for f in failed)
    assert not list((directory / "work").rglob("*.gguf*")), "temporary GGUF left behind"


@pytest.mark.slow
def test_ctrl_c_records_the_trial_in_flight(study_setup) -> None:
    model, config, directory, cache = study_setup
    base = ["search", str(model), "--config", str(config), "--dir", str(directory), "--study", "c",
            "--cache-dir", str(cache), "--quiet"]
    assert cli(*base, "--trials", "0").returncode == 0
    # a terminal's Ctrl-C reaches the whole process group, the quantizing child included
    proc = subprocess.Popen([sys.executable, "-m", "recipe_search.cli", *base, "--trials", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    in_flight = _wait_for_running_trial(directory, "c")
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "stopped by Ctrl-C" in out
    study = _load(directory, "c")
    assert study.trials[in_flight].state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert not [t for t in study.trials if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL)]
    assert len(study.trials) < 20 + 4  # it stopped instead of running the whole budget
    assert not list((directory / "work").rglob("*.gguf*"))


def _two_workers(study_setup, url: str, name: str) -> optuna.Study:
    """Create the study, run two workers of 5 trials each on it at once, check what they left."""
    model, config, directory, cache = study_setup
    made = cli("search", str(model), "--config", str(config), "--dir", str(directory), "--study", name,
               "--storage", url, "--cache-dir", str(cache), "--trials", "0", "--quiet")
    assert made.returncode == 0, made.stderr
    workers = [subprocess.Popen([sys.executable, "-m", "recipe_search.cli", "worker", "--storage", url, "--study", name,
                                 "--dir", str(directory / f"w{i}"), "--cache-dir", str(cache), "--trials", "5",
                                 "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err
    study = optuna.load_study(study_name=name, storage=url)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    optimized = [t for t in study.trials if TrialRecord.from_trial(t).reference is None or t.params]
    assert len([t for t in optimized if t.state.is_finished()]) >= 10
    keys = [t.result_key for t in measured_records(study)]
    assert len(keys) == len(set(keys)), "two workers measured the same recipe"
    return study


@pytest.mark.slow
def test_two_workers_share_a_sqlite_study(study_setup) -> None:
    directory = study_setup[2]
    directory.mkdir(parents=True)
    _two_workers(study_setup, f"sqlite:///{directory / 'study.db'}", "w")
    with sqlite3.connect(directory / "study.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_two_workers_share_a_postgres_study(study_setup) -> None:
    url = os.environ.get("RECIPE_SEARCH_TEST_POSTGRES")
    if not url:
        pytest.skip("RECIPE_SEARCH_TEST_POSTGRES is not set (.ci/run starts PostgreSQL and sets it)")
    pytest.importorskip("psycopg")
    _two_workers(study_setup, url, f"pg-{os.getpid()}-{int(time.time())}")


def test_prune_rule() -> None:
    rng = np.random.default_rng(0)
    done = [FinishedPoint(100, 0.05, {"kld_p99": 0.5}), FinishedPoint(200, 0.02, {"kld_p99": 0.2})]
    clearly_worse = rng.exponential(0.2, 500)
    assert prune_decision(clearly_worse, 150, done) is not None
    assert prune_decision(clearly_worse, 90, done) is None  # nothing measured at its size or smaller
    close = rng.exponential(0.05, 50)
    assert prune_decision(close, 150, done) is None
    # a finished trial with a light tail for its mean makes the forecast optimistic enough to keep it
    light_tail = done + [FinishedPoint(300, 0.3, {"kld_p99": 0.6})]
    assert prune_decision(clearly_worse, 150, light_tail) is None
    # objectives that the mean cannot bound switch the rule off
    assert prune_decision(clearly_worse, 150, [FinishedPoint(100, 0.05, {"same_top": 0.9})]) is None




def test_same_recipe_is_measured_once() -> None:
    study = optuna.create_study(directions=["minimize", "minimize"])
    dist = {"x": optuna.distributions.IntDistribution(0, 3)}
    measured = Measurement(1000, 4.5, {"kld_mean": 0.1}, np.zeros(4, np.float32), {}, {})
    study.add_trial(optuna.trial.create_trial(params={"x": 1}, distributions=dist, state=optuna.trial.TrialState.PRUNED,
                                              user_attrs=TrialRecord(-1, result_key="k").to_attrs()))
    assert same_measurement(study, "k", 99).state == optuna.trial.TrialState.PRUNED
    assert same_measurement(study, "other", 99) is None
    study.add_trial(optuna.trial.create_trial(params={"x": 1}, distributions=dist, values=[1.0, 2.0],
                                              user_attrs=TrialRecord(-1, result_key="k", measurement=measured).to_attrs()))
    assert same_measurement(study, "k", 99).state == optuna.trial.TrialState.COMPLETE  # a measurement beats a pruned one
    # another worker is measuring the same recipe: wait for it instead of measuring again
    running = study.ask()
    record_resolution(running, "r", 1000)
    later = study.ask()
    recipe = Recipe(name="r", unmatched=Unmatched(type="Q8_0"))
    finisher = threading.Timer(0.3, lambda: (record_measurement(running, recipe, measured),
                                             study.tell(running, [1.0, 1.0])))
    finisher.start()
    start = time.time()
    same = same_measurement(study, "r", later.number, poll=0.05)
    finisher.join()
    assert same is not None and same.number == running.number and time.time() - start >= 0.25


def test_documented_study_config_is_valid(qwen35_model) -> None:
    """docs/study-config.yaml, the annotated config the README points to, shows every key; it must stay valid."""
    documented = (REPO / "docs" / "study-config.yaml").read_text(encoding="utf-8")
    config = StudyConfig.model_validate(yaml.safe_load(documented))
    shown = set(re.findall(r"^(?:# )?(\w+):", documented, re.M))  # min_bpw and max_bytes are shown commented out
    assert set(StudyConfig.model_fields) <= shown, set(StudyConfig.model_fields) - shown
    assert set(SpaceConfig.model_fields) <= set(re.findall(r"^  (\w+):", documented, re.M))
    assert set(RunConfig.model_fields) <= set(re.findall(r"^  (\w+):", documented, re.M))
    assert config.max_gpu_bytes == 24 << 30 and config.run.settings() is not None
    space = build_space(config, read_inventory(qwen35_model), has_imatrix=True)
    names = {p.name for p in space.parameters}
    assert "token_embd" not in names and "token_embd" in space.fixed
    tied = sorted(n for n in names if n.startswith("ffn_up_exps+ffn_gate_exps@"))
    assert len(tied) == 2 and tied[0] == "ffn_up_exps+ffn_gate_exps@0-0", names  # block 0, then the rest
    assert config.holdout_text and config.band == "steer"
    assert len([n for n in names if n.startswith("ffn_down_exps")]) == 3, names
    assert [t.name for t in next(p for p in space.parameters if p.name == "ssm_out").ladder] == ["Q8_0", "Q6_K", "Q5_K"]
