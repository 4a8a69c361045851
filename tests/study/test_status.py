"""Watching a study: the metric names optuna-dashboard labels its axes with, and `recipe-search status`."""

from __future__ import annotations

import json

import optuna
import pytest

from recipe_search.core.config import StudyConfig

CONFIG = {"ctx": 64, "chunks": 2, "objectives": ["size", "kld_p99"], "surrogate_seeds": 0, "refit_every": 0,
          "space": {"tensor_types": ["ffn_up"], "ladder": ["Q8_0", "Q4_0"]},
          "references": {"uniform": ["Q4_0"], "presets": []}}


def test_opened_study_names_its_metrics(tmp_path, dense_model) -> None:
    """optuna-dashboard labels a study's axes with its metric names: the objectives, on creating and resuming."""
    from recipe_search.study.study import Study

    config = StudyConfig.model_validate(CONFIG)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = Study.open(dense_model, config, name="s", storage=url, directory=tmp_path / "s", cache=tmp_path / "cache")
    assert study.optuna_study.metric_names == ["size", "kld_p99"]
    # a study made before the names were set gets them when it is resumed
    optuna.load_study(study_name="s", storage=url)._storage.set_study_system_attr(
        study.optuna_study._study_id, "study:metric_names", None)
    assert optuna.load_study(study_name="s", storage=url).metric_names is None
    resumed = Study.open(None, name="s", storage=url, directory=tmp_path / "s", cache=tmp_path / "cache")
    assert resumed.optuna_study.metric_names == ["size", "kld_p99"]


def _status(capsys, *argv: str) -> tuple[int, str, str]:
    from recipe_search.cli import main

    code = main(["status", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_status_of_a_finished_study(capsys, synthetic_study, tmp_path) -> None:
    """Counts by state with the pruning reasons, the pace, the frontier at a few sizes; the cache when asked."""
    cache = tmp_path / "cache" / "tensors"
    (cache / "ab").mkdir(parents=True)
    (cache / "ab" / "x.gguf").write_bytes(b"\0" * 1000)
    (cache / "stats.json").write_text(json.dumps({"hits": 3, "misses": 1}))
    code, out, _ = _status(capsys, "--study", "dense", "--dir", synthetic_study, "--cache-dir", tmp_path / "cache")
    assert code == 0
    assert "5 done (4 measured, 1 duplicate(s)), 0 running, 0 failed, 1 pruned, 0 waiting" in out
    assert "1 x after chunk 2" in out
    assert "6 trial(s) finished in the last hour" in out
    assert "trial 0 (uniform-Q4_0)" in out and "trial 3 (uniform-Q8_0)" in out
    assert "1 entries" in out and "hit rate 75.0%" in out
    code, out, _ = _status(capsys, "--study", "dense", "--dir", synthetic_study, "--json")
    st = json.loads(out)
    assert st["trials"] == {"done": 5, "running": 0, "failed": 0, "pruned": 1, "waiting": 0}
    assert [f["trial"] for f in st["frontier"]] == [0, 2, 3]  # the smallest, the middle sizes, the largest
    assert st["frontier"][0]["values"]["kld_p999"] > st["frontier"][-1]["values"]["kld_p999"]
    assert "tensor_cache" not in st


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_status_shows_stale_running_trials_and_failure_reasons(capsys, tmp_path) -> None:
    """A running trial whose worker stopped beating is stale past the grace period; a fresh one is not; failed
    trials are grouped by the reason the study recorded (or by its absence: a killed worker)."""
    import sqlite3

    from recipe_search.study._storage import storage_for

    db = tmp_path / "study.db"
    storage = storage_for(f"sqlite:///{db}", heartbeat=30, grace=120)
    study = optuna.create_study(storage=storage, study_name="live", directions=["minimize", "minimize"])
    for why in ("trial-0: kld_p99 is nan", "trial-1: kld_p99 is nan", None):
        t = study.ask()
        if why:
            t.set_user_attr("failed", why.replace("trial-1", "trial-0"))
        study.tell(t, state=optuna.trial.TrialState.FAIL)
    old, fresh = study.ask(), study.ask()
    silent = study.ask()  # running, no heartbeat yet
    for t in (old, fresh):
        storage.record_heartbeat(t._trial_id)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-600 seconds') WHERE trial_id = ?",
                     (old._trial_id,))
    code, out, _ = _status(capsys, "--study", "live", "--storage", f"sqlite:///{db}", "--json")
    assert code == 0
    st = json.loads(out)
    assert st["heartbeats"] and st["grace_seconds"] == 120
    assert st["trials"] == {"done": 0, "running": 3, "failed": 3, "pruned": 0, "waiting": 0}
    assert {f["reason"]: f["trials"] for f in st["failures"]} == {
        "trial-0: kld_p99 is nan": 2, "no reason recorded (a killed or interrupted worker, or a stale heartbeat)": 1}
    running = {r["trial"]: r for r in st["running"]}
    assert 590 <= running[old.number]["seconds_since_heartbeat"] < 700 and running[old.number]["stale"]
    assert running[fresh.number]["seconds_since_heartbeat"] < 60 and not running[fresh.number]["stale"]
    assert running[silent.number]["seconds_since_heartbeat"] is None and not running[silent.number]["stale"]
    _, out, _ = _status(capsys, "--study", "live", "--storage", f"sqlite:///{db}")
    assert f"trial {old.number} (trial-{old.number})" in out and out.count("STALE") == 1
    assert "2 x trial-0: kld_p99 is nan" in out
    # a longer grace: nothing is stale
    _, out, _ = _status(capsys, "--study", "live", "--storage", f"sqlite:///{db}", "--grace", "3600")
    assert "STALE" not in out


@pytest.mark.parametrize(("argv", "words"), [
    (["--study", "nope", "--dir", "DIR"], "no study 'nope'"),
    (["--study", "dense", "--dir", "DIR/missing"], "no study database here"),
    (["--study", "dense", "--storage", "postgresql://u:secret@127.0.0.1:1/db"], "cannot open study storage"),
])
def test_status_bad_input_is_one_line(capsys, synthetic_study, argv, words) -> None:
    code, out, err = _status(capsys, *(str(synthetic_study) if a == "DIR" else a.replace("DIR", str(synthetic_study))
                                       for a in argv))
    assert code == 2 and words in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert "secret" not in err


def test_status_bad_grace_is_one_line(capsys, synthetic_study, monkeypatch) -> None:
    monkeypatch.setenv("RECIPE_SEARCH_GRACE", "two minutes")
    code, _, err = _status(capsys, "--study", "dense", "--dir", synthetic_study)
    assert code == 2 and "RECIPE_SEARCH_GRACE" in err and err.count("\n") == 1, err


def test_status_loads_no_libllama(synthetic_study, tmp_path) -> None:
    """status watches a study from any machine that reaches its storage: no model, no llama.cpp (a fresh interpreter,
    so that nothing another test imported counts)."""
    import subprocess
    import sys

    probe = (f"from recipe_search.cli import main\n"
             f"assert main(['status', '--study', 'dense', '--dir', {str(synthetic_study)!r}, "
             f"'--cache-dir', {str(tmp_path / 'cache')!r}]) == 0\n"
             "import sys\nprint('MODULES', *sorted({m.split('.')[0] for m in sys.modules}))\n")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    loaded = set(run.stdout.splitlines()[-1].split()[1:])
    assert "optuna" in loaded and "llama_cpp" not in loaded
