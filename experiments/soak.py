"""Fault-injection soak test (issue 24 item 4): a fixed list of recipes measured by worker processes while a seeded
RNG kills them, damages tensor-cache shards and fills the disk under the cache; the study must end as an
undisturbed run ends, bit for bit.

    python experiments/soak.py MODEL [--config YAML] [--recipes 60] [--workers 2] [--faults 20] [--rounds 10]
        [--seed 0] [--postgres URL --pg-workers 4] [--json OUT]

Steps: N distinct recipes of the config's space are drawn (seeded) and written as the study's `seeds`, with no
references, no surrogate and no early stopping, so that the study measures exactly that list. An undisturbed run
(`recipe-search search --trials N`, one process, its own cache) measures it first. Then, per storage (SQLite, and
PostgreSQL with ``--postgres``), a fresh study on a small tmpfs mounted for the cache and the work directories is
worked by W `recipe-search worker` processes, each given a trial budget no larger than the enqueued trials left
(so that no worker ever asks the sampler for a trial off the list), restarted when killed, while faults come at
random times: SIGKILL and SIGTERM of a worker (the phase it was in read from /proc: starting, quantizing, assembling,
scoring, or recording/between trials), 64 KiB of random bytes in the middle of a random cached shard, and the
tmpfs filled to the last byte for a moment. At the end a `worker --trials 0` per work directory cleans what killed
workers left (as the next command of a user does), and the checks run: every trial COMPLETE, or FAIL with its reason
and retried, or PRUNED as the second copy of one retry (the first measures it); no resolution key COMPLETE twice;
no NaN; no temporary file left; the tensor cache within its bound; each resolution key's metrics and values equal to
the undisturbed run's; every fault kind injected at least ``--faults`` times. ``--rounds`` soaks are run per storage,
each a fresh study of the same list: a recipe's line of runs is bounded (3 failures by an error; a killed worker or a
full disk does not count, and 12 runs in all), so 200 faults of a kind are spread over rounds of a 60-recipe list
rather than put on one.
Exit status 1 when a check fails (the JSON lists every problem).

Needs root for the tmpfs mount: without it the disk-full fault cannot be injected and the run fails, saying so.
The heartbeat is 1 s and the grace 10 s ($RECIPE_SEARCH_HEARTBEAT, $RECIPE_SEARCH_GRACE), so a killed worker's
trial is retried within seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from recipe_search.core import StudyConfig, build_space, read_inventory, resolve
from recipe_search.engine import TRIAL_PREFIX, ScoreSettings, Worker
from recipe_search.study import TrialRecord, frontier_records, measured_records

sys.path.insert(0, str(Path(__file__).resolve().parent))
import smoke  # noqa: E402

KINDS = ("sigkill", "sigterm", "damage", "disk_full")
PHASES = ("starting", "quantizing", "assembling", "scoring", "recording")
HEARTBEAT_S, GRACE_S = 1, 10
DAMAGE_BYTES = 64 * 1024
STUDY = "soak"
#: the config of the smoke mode and of the CI test (the tiny generated models)
TINY_CONFIG: dict[str, Any] = {"ctx": 128, "chunks": 4, "threads": 1, "objectives": ["size", "kld_p99"],
                               "space": {"ladder": ["Q8_0", "Q6_K", "Q5_0", "Q4_K", "Q4_0", "Q3_K", "Q2_K"]}}
#: what the study must measure exactly the list: no references, no surrogate, no sampler's pruning
LIST_ONLY: dict[str, Any] = {"references": {"uniform": [], "presets": []}, "surrogate_seeds": 0, "refit_every": 0,
                             "prune": False, "sampler": "random"}


def cli(*args: str, env: dict[str, str] | None = None, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recipe_search.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, **kw)


def worker_env(cache_gb: float) -> dict[str, str]:
    return {"RECIPE_SEARCH_HEARTBEAT": str(HEARTBEAT_S), "RECIPE_SEARCH_GRACE": str(GRACE_S),
            "RECIPE_SEARCH_TENSOR_CACHE_GB": f"{cache_gb:.6f}"}


# -- the list ----------------------------------------------------------------------------------------
def write_list(model: Path, base: dict[str, Any], n: int, seed: int, where: Path) -> Path:
    """N recipes of the space with N distinct resolutions (seeded), written as seed files; returns the config."""
    config = StudyConfig.model_validate({**base, **LIST_ONLY})
    inv = read_inventory(model)
    space = build_space(config, inv, has_imatrix=False)
    rng = random.Random(seed)
    where.mkdir(parents=True, exist_ok=True)
    seeds: list[str] = []
    keys: set[tuple] = set()
    for _ in range(200 * n):
        if len(seeds) == n:
            break
        choice = {p.name: rng.randrange(len(p.ladder)) for p in space.parameters}
        recipe = space.recipe(choice, name=f"soak-{len(seeds):03d}")
        key = resolve(recipe, inv).key()
        if key in keys:
            continue
        keys.add(key)
        path = where / f"{recipe.name}.yaml"
        path.write_text(recipe.to_yaml())
        seeds.append(str(path))
    if len(seeds) < n:
        raise SystemExit(f"the space holds fewer than {n} distinct recipes")
    out = where / "study.yaml"
    out.write_text(yaml.safe_dump({**base, **LIST_ONLY, "seeds": seeds}))
    return out


def outcome(study: optuna.Study) -> dict[str, dict[str, Any]]:
    """Resolution key -> the metrics, size and values of its COMPLETE trial (the last one, if several)."""
    out = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        r = TrialRecord.from_trial(t)
        if r.measurement is not None and r.result_key:
            out[r.result_key] = {"metrics": r.metrics, "file_bytes": r.file_bytes, "values": list(t.values)}
    return out


def undisturbed(model: Path, config: Path, n: int, where: Path) -> tuple[dict[str, dict[str, Any]], float, int]:
    """The list measured by one `search` process, no faults: (outcome, seconds, tensor cache bytes)."""
    start = time.perf_counter()
    run = cli("search", str(model), "--config", str(config), "--dir", str(where / "study"), "--study", STUDY,
              "--cache-dir", str(where / "cache"), "--trials", str(n), "--quiet")
    if run.returncode:
        raise SystemExit(f"the undisturbed run failed:\n{run.stderr[-3000:]}")
    cache_bytes = sum(p.stat().st_size for p in (where / "cache" / "tensors").rglob("*") if p.is_file())
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{where / 'study' / 'study.db'}")
    return outcome(study), time.perf_counter() - start, cache_bytes


# -- workers -------------------------------------------------------------------------------------------
@dataclass
class Slot:
    """One worker place: its work directory and its current process."""

    directory: Path
    proc: subprocess.Popen | None = None
    budget: int = 0
    log: Path | None = None
    started: int = 0

    def done(self) -> int:
        """Trials this process has finished (its progress lines)."""
        text = self.log.read_text(errors="replace") if self.log and self.log.exists() else ""
        return len(re.findall(r"^\[\d+/\d+\] trial", text, re.M))

    def outstanding(self) -> int:
        return self.budget - self.done() if self.proc and self.proc.poll() is None else 0


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields and int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return "?"


def phase(slot: Slot) -> str:
    """What the worker is doing, read from outside: starting (before its reference line), quantizing (its fill
    child running), assembling (its trial files exist, not yet mapped), scoring (mapped), or recording (the rest:
    telling the study, taking the next trial)."""
    assert slot.proc is not None and slot.log is not None
    pid = slot.proc.pid
    if "reference:" not in slot.log.read_text(errors="replace"):
        return "starting"
    if any(_state(c) == "R" for c in _children(pid)):
        return "quantizing"
    if list(slot.directory.rglob(f"{TRIAL_PREFIX}{pid}-*")):
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            maps = ""
        return "scoring" if f"{TRIAL_PREFIX}{pid}-" in maps else "assembling"
    return "recording"


class Pool:
    """W worker slots on one study; each started with a budget no larger than the trials it may take."""

    def __init__(self, storage: str, root: Path, cache: Path, n: int, env: dict[str, str]) -> None:
        self.storage, self.cache, self.env = storage, cache, env
        self.slots = [Slot(root / f"w{i}") for i in range(n)]
        self.logs = root.parent / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.starts = 0
        self._study: optuna.Study | None = None
        self._stale: set[int] = set()
        self._stale_at = 0.0

    def study(self) -> optuna.Study:
        if self._study is None:
            self._study = optuna.load_study(study_name=STUDY, storage=self.storage)
        return self._study

    def open_trials(self) -> tuple[int, set[int]]:
        """(trials waiting, numbers of the trials running) now."""
        trials = self.study().get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
        return sum(t.state == TrialState.WAITING for t in trials), {t.number for t in trials if t.state == TrialState.RUNNING}

    def available(self) -> int:
        """Trials a worker may take now: waiting, and running past the grace period (a killed worker's, which the
        next worker to start a trial fails and enqueues again; `recipe-search status` tells, every few seconds),
        silent since their last heartbeat or, killed before their first, since they started."""
        waiting, running = self.open_trials()
        if running and time.monotonic() - self._stale_at > 3:
            st = cli("status", "--study", STUDY, "--storage", self.storage, "--grace", str(GRACE_S), "--json")
            rows = json.loads(st.stdout)["running"] if st.returncode == 0 else []
            self._stale = {r["trial"] for r in rows if r["stale"] or (r["seconds_since_heartbeat"] is None
                                                                       and (r["seconds_running"] or 0) > GRACE_S)}
            self._stale_at = time.monotonic()
        return waiting + len(self._stale & running)

    def top_up(self) -> None:
        """Start workers in free slots while trials are left for them."""
        free = [s for s in self.slots if s.proc is None or s.proc.poll() is not None]
        if not free:
            return
        available, outstanding = self.available(), [s.outstanding() for s in self.slots]
        left = available - sum(outstanding)
        for i, slot in enumerate(free):
            if left <= 0:
                return
            share = max(1, left // (len(free) - i))
            self.start(slot, share)
            with open(self.logs / "budgets.log", "a") as log:
                print(f"{time.strftime('%T')} {slot.directory.name}-{self.starts}: available {available} "
                      f"(stale {sorted(self._stale)}), outstanding {outstanding}, budget {share}", file=log)
            left -= share

    def start(self, slot: Slot, budget: int, extra: tuple[str, ...] = ()) -> subprocess.Popen:
        self.starts += 1
        slot.budget, slot.started = budget, self.starts
        slot.log = self.logs / f"{slot.directory.name}-{self.starts}.log"
        with open(slot.log, "w") as log:
            slot.proc = subprocess.Popen(
                [sys.executable, "-m", "recipe_search.cli", "worker", "--storage", self.storage, "--study", STUDY,
                 "--dir", str(slot.directory), "--cache-dir", str(self.cache), "--trials", str(budget), *extra],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        return slot.proc

    def live(self) -> list[Slot]:
        return [s for s in self.slots if s.proc is not None and s.proc.poll() is None]

    def finish(self) -> list[str]:
        """Wait for the workers, then run `worker --trials 0` in every slot (it removes what killed workers left);
        returns the problems seen (a worker that ended with an error)."""
        problems = []
        for s in self.slots:
            if s.proc is not None:
                s.proc.wait()
        for s in self.slots:
            proc = self.start(s, 0)
            if proc.wait():
                problems.append(f"the cleaning `worker --trials 0` in {s.directory.name} exited {proc.returncode}: "
                                f"{s.log.read_text()[-500:] if s.log else ''}")
        return problems


# -- faults ----------------------------------------------------------------------------------------------
@dataclass
class Faults:
    rng: random.Random
    disk: Path | None  # the tmpfs mount, None when it could not be mounted
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    phases: dict[str, dict[str, int]] = field(default_factory=lambda: {"sigkill": {}, "sigterm": {}})
    ballast_until: float = 0.0

    @property
    def ballast(self) -> Path | None:
        return None if self.disk is None else self.disk / "ballast"

    def inject(self, kind: str, pool: Pool) -> bool:
        """One fault of ``kind``; False when there was nothing to hit (no live worker, no shard, a full disk)."""
        if kind in ("sigkill", "sigterm"):
            live = pool.live()
            if not live:
                return False
            slot, where = self._target(live)
            assert slot.proc is not None
            if slot.proc.poll() is not None:  # ended meanwhile (polling reaps it: its pid is not signalled)
                return False
            os.kill(slot.proc.pid, signal.SIGKILL if kind == "sigkill" else signal.SIGTERM)
            slot.proc.wait()
            self.phases[kind][where] = self.phases[kind].get(where, 0) + 1
        elif kind == "damage":
            shards = sorted(pool.cache.glob("tensors/*/*.gguf"))
            if not shards:
                return False
            if not damage(self.rng.choice(shards), self.rng):
                return False
        else:
            if self.ballast is None or self.ballast.exists():
                return False
            fill_disk(self.ballast)
            self.ballast_until = time.monotonic() + self.rng.uniform(0.5, 3.0)
        self.counts[kind] += 1
        return True

    def _target(self, live: list[Slot]) -> tuple[Slot, str]:
        """A worker in a phase drawn at random (watched for up to 5 s; else a random worker as it is), and its phase."""
        wanted = self.rng.choice(PHASES)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for slot in live:
                if slot.proc is not None and slot.proc.poll() is None and (where := phase(slot)) == wanted:
                    return slot, where
            time.sleep(0.02)
        live = [s for s in live if s.proc is not None and s.proc.poll() is None] or live
        slot = self.rng.choice(live)
        return slot, phase(slot)

    def release(self, now: float) -> None:
        if self.ballast is not None and now >= self.ballast_until:
            self.ballast.unlink(missing_ok=True)


def damage(shard: Path, rng: random.Random) -> bool:
    """Random bytes written in place into the middle of ``shard`` (at most 64 KiB, a quarter of it)."""
    try:
        size = shard.stat().st_size
        n = max(1, min(DAMAGE_BYTES, size // 4))
        with open(shard, "r+b") as fh:
            fh.seek(size // 2 - n // 2)
            fh.write(rng.randbytes(n))
    except FileNotFoundError:  # evicted meanwhile
        return False
    return True


def fill_disk(ballast: Path) -> None:
    """Every free byte of the filesystem under ``ballast`` taken by it."""
    st = os.statvfs(ballast.parent)
    fd = os.open(ballast, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.posix_fallocate(fd, 0, max(1, st.f_bavail * st.f_frsize))
    except OSError:
        pass  # the last pages: taken as far as they go
    finally:
        os.close(fd)


def mount_tmpfs(where: Path, size: int) -> str | None:
    """Mount a tmpfs of ``size`` bytes at ``where``; None, or why it could not be mounted."""
    where.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                         text=True)
    return None if run.returncode == 0 else (run.stderr.strip() or f"mount exited {run.returncode}")


# -- one soak ------------------------------------------------------------------------------------------
def soak(model: Path, config: Path, storage: str | None, workers: int, n: int, faults: int, seed: int, where: Path,
         reference: dict[str, dict[str, Any]], cache_bytes: int, interval: float, max_seconds: float,
         trial_seconds: float) -> dict[str, Any]:
    """One storage's soak; returns its figures and its problems. Faults come ``interval`` seconds apart on average,
    closer when the list would otherwise end first (``trial_seconds``: an undisturbed trial's)."""
    problems: list[str] = []
    disk = where / "disk"
    # the study refuses to start on less than its need plus 256 MiB free (study._checks.check_disk)
    mounted = mount_tmpfs(disk, (320 << 20) + 3 * cache_bytes + 8 * model.stat().st_size)
    if mounted is not None:
        problems.append(f"disk_full: cannot mount a tmpfs under the cache ({mounted}); that fault kind was not injected")
    bound_gb = max(cache_bytes // 2, 1 << 20) / (1 << 30)  # half the list's need: evictions, and fills again
    env = worker_env(bound_gb)
    url = storage or f"sqlite:///{where / 'study.db'}"
    cache = disk / "cache"
    try:
        made = cli("search", str(model), "--config", str(config), "--dir", str(disk / "main"), "--study", STUDY,
                   "--storage", url, "--cache-dir", str(cache), "--trials", "0", "--quiet", env=env)
        if made.returncode:
            raise SystemExit(f"could not create the study:\n{made.stderr[-3000:]}")
        pool = Pool(url, disk, cache, workers, env)
        f = Faults(random.Random(seed), disk if mounted is None else None)
        start = last_fault = time.monotonic()
        gap = f.rng.expovariate(1)  # in units of the mean gap, which shrinks as the list runs out
        while time.monotonic() - start < max_seconds:
            pool.top_up()
            now = time.monotonic()
            f.release(now)
            wanted = [k for k in KINDS if f.counts[k] < faults and (k != "disk_full" or f.disk is not None)]
            waiting, running = pool.open_trials()
            if wanted:
                # the faults left fit into the work left (an undisturbed trial's seconds per open trial and worker)
                left = sum(faults - f.counts[k] for k in wanted)
                mean = min(interval, (waiting + len(running)) * trial_seconds / workers / (left + 1))
                if now - last_fault >= gap * mean:
                    f.inject(f.rng.choice(wanted), pool)
                    last_fault, gap = time.monotonic(), f.rng.expovariate(1)
            if not pool.live() and (waiting, running) == (0, set()):
                break
            time.sleep(0.25)
        else:
            problems.append(f"not finished within {max_seconds:.0f} s")
        for s in pool.live():  # past the time limit: stopped as Ctrl-C stops them
            assert s.proc is not None
            s.proc.send_signal(signal.SIGINT)
        if f.ballast is not None:
            f.ballast.unlink(missing_ok=True)
        seconds = time.monotonic() - start
        problems += pool.finish()
        got = outcome(pool.study())
        problems += check(pool.study(), got, reference, model, disk, cache, bound_gb)
        problems += [f"{k}: {f.counts[k]} injected, fewer than {faults}" for k in KINDS
                     if f.counts[k] < faults and not (k == "disk_full" and f.disk is None)]
        trials = pool.study().get_trials(deepcopy=False)
        (where / "trials.json").write_text(json.dumps([_row(t) for t in trials], indent=1))
        return {"storage": "postgresql" if storage else "sqlite", "workers": workers, "seconds": round(seconds, 1),
                "worker_starts": pool.starts, "faults": f.counts, "kill_phases": f.phases,
                "trials": {s.name: sum(t.state == s for t in trials) for s in TrialState},
                "off_list": sum(k not in reference for k in got),
                "cache_bound_bytes": int(bound_gb * (1 << 30)), "problems": problems}
    finally:
        if mounted is None:
            subprocess.run(["umount", "-l", str(disk)], check=False)


def _row(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """One trial as the run left it, for reading a problem: its state, role, retry links and reason."""
    return {"number": t.number, "state": t.state.name, "seed": t.user_attrs.get("seed"),
            "result_key": t.user_attrs.get("result_key"), "requeued_from": t.user_attrs.get("requeued_from"),
            "failed_trial": t.system_attrs.get("failed_trial"), "failed": t.user_attrs.get("failed"),
            "start": str(t.datetime_start), "complete": str(t.datetime_complete)}


def check(study: optuna.Study, got: dict[str, dict[str, Any]], reference: dict[str, dict[str, Any]], model: Path,
          disk: Path, cache: Path, bound_gb: float) -> list[str]:
    """The end-of-run checks (see the module's docstring) of ``study``, whose `outcome` is ``got``; the problems."""
    problems = []
    trials = study.get_trials(deepcopy=False)
    # Optuna's retry of a stale trial lists every trial it retries (retry_history); ours names the one (requeued_from)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    retried |= {t.user_attrs["requeued_from"] for t in trials if "requeued_from" in t.user_attrs}
    complete: dict[str, list[int]] = {}
    for t in trials:
        r = TrialRecord.from_trial(t)
        if t.state == TrialState.COMPLETE:
            complete.setdefault(r.result_key or "?", []).append(t.number)
            numbers = [*(t.values or []), *(r.metrics.values() if r.measurement else [])]
            if not all(math.isfinite(v) for v in numbers):
                problems.append(f"trial {t.number}: a value or metric is not finite")
        elif t.state == TrialState.FAIL:
            reason = t.user_attrs.get("failed") or ("heartbeat stale (its worker was killed)"
                                                    if t.number in retried else None)
            if reason is None:
                problems.append(f"trial {t.number} FAIL without a reason")
            if t.number not in retried:
                problems.append(f"trial {t.number} FAIL ({reason}) and not retried")
        elif t.state == TrialState.PRUNED and "is retried by another trial" in t.user_attrs.get("pruned", ""):
            continue  # a second copy of one retry, which the first copy measures
        else:
            problems.append(f"trial {t.number} left {t.state.name}")
    problems += [f"resolution key {k} COMPLETE {len(v)} times (trials {v})" for k, v in complete.items() if len(v) > 1]
    problems += [f"resolution key {k} never COMPLETE (lost)" for k in reference if k not in got]
    # off the list: a worker that found no enqueued trial asked the sampler (the harness's budgets race with
    # retries: a stale trial can be counted once as stale and once as its retry); measured like any trial, they
    # are reported (`off_list`), not compared: the list is what must come out whole and exact
    problems += [f"resolution key {k}: {got[k]} != undisturbed {reference[k]}" for k in reference
                 if k in got and got[k] != reference[k]]
    left = [p for p in disk.rglob("*") if p.is_file() and _temporary(p)]
    problems += [f"temporary file left: {p.relative_to(disk)}" for p in left[:20]]
    held = sum(p.stat().st_size for p in cache.glob("tensors/*/*.gguf"))
    pinned = frontier_bytes(study, model, cache)
    if held > bound_gb * (1 << 30) + pinned:
        problems.append(f"tensor cache holds {held} bytes, over its bound {int(bound_gb * (1 << 30))} plus the "
                        f"{pinned} bytes of the frontier's entries it keeps")
    return problems


def frontier_bytes(study: optuna.Study, model: Path, cache: Path) -> int:
    """The bytes of the cached entries of the study's frontier recipes: a study pins them, and the cache exceeds its
    bound rather than evict them."""
    worker = Worker(model, ScoreSettings(), cache, cache / "unused")
    paths = {worker.tensors.path(x.tensor, x.ggml_type)
             for r in frontier_records(measured_records(study), study.directions)
             for x in resolve(r.recipe, worker.inventory).tensors}
    return sum(p.stat().st_size for p in paths if p.exists())


def _temporary(p: Path) -> bool:
    """A temporary file by its name: a trial GGUF, a half-written entry or reference, a partial quantization."""
    return (p.name.startswith(TRIAL_PREFIX) or p.name.endswith((".tmp", ".partial"))
            or (p.name.startswith(".") and p.name != ".lock") or any(part.startswith(".") for part in p.parent.parts[-2:]))


# -- entry points ------------------------------------------------------------------------------------
def run(model: Path, config_yaml: Path | None, n: int, workers: int, faults: int, seed: int, where: Path,
        postgres: str | None, pg_workers: int, interval: float, max_seconds: float, rounds: int = 1) -> dict[str, Any]:
    """The undisturbed run, then ``rounds`` soaks on SQLite (and as many on PostgreSQL), each a fresh study of the
    same list with ``faults`` faults of each kind at least (a recipe's retries are bounded: a long list of faults
    is spread over rounds rather than over one list)."""
    base = yaml.safe_load(config_yaml.read_text()) if config_yaml else dict(TINY_CONFIG)
    config = write_list(model, base, n, seed, where / "list")
    reference, seconds, cache_bytes = undisturbed(model, config, n, where / "undisturbed")
    print(f"undisturbed: {len(reference)} recipes in {seconds:.0f} s, tensor cache {cache_bytes} bytes", flush=True)
    result: dict[str, Any] = {"model": model.name, "recipes": n, "seed": seed, "faults_per_kind": faults,
                              "undisturbed_seconds": round(seconds, 1), "runs": []}
    runs = [(None, workers)] * (rounds if workers else 0) + [(postgres, pg_workers)] * (rounds if postgres else 0)
    for i, (storage, w) in enumerate(runs):
        if storage:
            storage_reset(storage)
        r = soak(model, config, storage, w, n, faults, seed + i, where / f"soak-{i}", reference, cache_bytes,
                 interval, max_seconds, seconds / n)
        print(json.dumps(r), flush=True)
        result["runs"].append(r)
    if len(reference) != n:
        result["runs"][0]["problems"].append(f"the undisturbed run measured {len(reference)} of {n} recipes")
    result["faults_total"] = {k: sum(r["faults"][k] for r in result["runs"]) for k in KINDS}
    result["kill_phases_total"] = {k: {p: sum(r["kill_phases"][k].get(p, 0) for r in result["runs"]) for p in PHASES}
                                   for k in ("sigkill", "sigterm")}
    return result


def storage_reset(url: str) -> None:
    """Delete an earlier soak's study from the PostgreSQL storage."""
    storage = optuna.storages.RDBStorage(url)
    if STUDY in {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}:
        optuna.delete_study(study_name=STUDY, storage=storage)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=smoke.EPILOG)
    p.add_argument("model")
    p.add_argument("--config", type=Path, help="study YAML (text, ctx, chunks, space); default: a tiny-model one")
    p.add_argument("--recipes", type=int, default=60)
    p.add_argument("--workers", type=int, default=2, help="SQLite workers (0: the PostgreSQL rounds only)")
    p.add_argument("--faults", type=int, default=20, help="faults of each kind per round, at least")
    p.add_argument("--rounds", type=int, default=10, help="soaks per storage, each a fresh study of the list")
    p.add_argument("--interval", type=float, default=2.0, help="mean seconds between faults")
    p.add_argument("--postgres", default=os.environ.get("RECIPE_SEARCH_TEST_POSTGRES"),
                   help="PostgreSQL URL for the second soak (default: $RECIPE_SEARCH_TEST_POSTGRES)")
    p.add_argument("--pg-workers", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=6 * 3600, help="per storage")
    p.add_argument("--dir", type=Path, help="scratch directory, kept (default: a temporary one, removed)")
    p.add_argument("--json", type=Path, help="write the figures here")
    a = p.parse_args()
    with contextlib.ExitStack() as stack:
        where = a.dir.resolve() if a.dir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        result = run(Path(a.model).resolve(), a.config, a.recipes, a.workers, a.faults, a.seed, where,
                     a.postgres, a.pg_workers, a.interval, a.max_seconds, a.rounds)
    return report(result, a.json)


def report(result: dict[str, Any], out: Path | None) -> int:
    if out:
        out.write_text(json.dumps(result, indent=1) + "\n")
    bad = [p for r in result["runs"] for p in r["problems"]]
    print(f"faults injected in all: {result['faults_total']}; kills by phase: {result['kill_phases_total']}")
    for r in result["runs"]:
        print(f"{r['storage']}, {r['workers']} workers, {r['seconds']:.0f} s: faults {r['faults']}, kills by phase "
              f"{r['kill_phases']}, trials {r['trials']}, {len(r['problems'])} problem(s)")
    for line in bad:
        print(f"PROBLEM: {line}", file=sys.stderr)
    return 1 if bad else 0


def run_smoke() -> int:
    with smoke.directory("soak") as tmp:
        model = smoke.dense_model(tmp)
        result = run(model, None, 6, 2, 1, 0, tmp / "run", None, 2, 0.3, 600)
    return report(result, None)


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
