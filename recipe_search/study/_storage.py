"""A study's storage: opening it (heartbeats, retries, the sampler), where it is, and what its URL and name
may show and be (credentials masked, names that are safe file names)."""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from ..core.config import StudyConfig
from ..core.metrics import MAXIMISE
from ..errors import RecipeSearchError

T = TypeVar("T")
_MASK = "***"
# user:password@ up to the last @ before the host (a password may hold @), and password-like query parameters
_USERINFO = re.compile(r"^(?P<scheme>[^:/?#]+://)(?P<user>[^:/?#@]*):(?P<pw>[^/?#]*)@")
_QUERY_SECRET = re.compile(r"(?i)([?&](?:password|passwd|pwd|pass|secret|token|sslpassword|api_key)=)[^&#]*")


def mask_credentials(url: str) -> str:
    """``url`` (or a message quoting it) with every password hidden: ``user:pw@``, a password holding ``@``,
    ``?password=...``. A regex masks the forms by shape (the password runs to the last ``@`` before the
    host); SQLAlchemy's parser, where it reads the result, checks that no password it would send is left."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    shown = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{_MASK}@", url)
    shown = _QUERY_SECRET.sub(lambda m: m[1] + _MASK, shown)
    try:
        parsed = make_url(shown)
    except (ArgumentError, ValueError, TypeError):
        return shown
    left = [parsed.password, *(v for k, v in parsed.query.items() if _QUERY_SECRET.match(f"?{k}="))]
    if any(v not in (None, _MASK, (_MASK,), (_MASK, _MASK)) for v in left):  # a form the regex missed
        return f"{parsed.drivername}://{_MASK}"
    return shown


def mask_message(message: str, url: str) -> str:
    """An error message about ``url`` with the URL's password masked, and any piece of it a driver quotes
    (a password holding ``@`` reads to a driver as part of the host)."""
    shown = mask_credentials(message)
    m = _USERINFO.match(url)
    if m and m["pw"]:
        pw = m["pw"]
        tails = [pw.split("@", i)[-1] + "@" for i in range(1, pw.count("@") + 1)]  # what a driver takes for the host
        for piece in sorted({pw, *tails, *(p for p in pw.split("@") if len(p) >= 3)}, key=len, reverse=True):
            shown = shown.replace(piece, _MASK + ("@" if piece.endswith("@") and piece != pw else ""))
    for value in re.findall(r"(?i)[?&](?:password|passwd|pwd|pass|secret|token|sslpassword|api_key)=([^&#]+)", url):
        shown = shown.replace(value, _MASK)
    return shown


def storage_label(url: str) -> str:
    """The storage as a shared recipe records it: credentials masked, a SQLite file by its name only."""
    if url.startswith("sqlite:///"):
        return f"sqlite:///{Path(url.removeprefix('sqlite:///')).name}"
    return mask_credentials(url)


#: how often a trial failed by an error is enqueued again
MAX_RETRIES = 3
#: how often in all: a full disk, or a worker killed under a trial (it records no reason: SIGKILL, the OOM killer, a
#: power cut), is not the recipe's doing and does not count against `MAX_RETRIES`, but a disk that stays full or a
#: recipe that kills every worker that runs it must not keep a study busy for good
MAX_ATTEMPTS = 12


def check_study_name(name: str) -> str:
    """Refuse a study name that is not a plain file name (it names the study's directory under studies/)."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name
            or any(ord(c) < 32 or c == "\x7f" for c in name)):
        raise RecipeSearchError(f"study name {name!r} is not a plain name (no '/', '..' or control characters)")
    return name


def quiet_optuna() -> None:
    """Optuna's INFO lines off; its experimental-feature warning off for the heartbeats and the retry
    callback, which are the documented way to survive killed workers."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def storage_for(url: str, heartbeat: int | None = None, grace: int | None = None) -> RDBStorage:
    """Optuna RDB storage with heartbeats, so a killed worker's trial is failed and retried.

    A worker beats every ``heartbeat`` seconds ($RECIPE_SEARCH_HEARTBEAT, 30); a trial silent for
    ``grace`` seconds ($RECIPE_SEARCH_GRACE, 120) is failed and retried."""
    quiet_optuna()
    heartbeat = heartbeat or int(os.environ.get("RECIPE_SEARCH_HEARTBEAT", "30"))
    grace = grace or grace_period()
    sqlite = url.startswith("sqlite")
    # pysqlite in autocommit: the transactions are SQLAlchemy's, begun IMMEDIATE (see `_lock_on_begin`)
    engine_kwargs = {"connect_args": {"timeout": 120, "isolation_level": None}} if sqlite else {"pool_pre_ping": True}
    # a killed worker's trial: retried up to MAX_ATTEMPTS runs in all (see `_interrupts`); two copies of one retry:
    # see `_interrupts.retried_elsewhere`
    retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_ATTEMPTS - 1)
    storage = _opened(url, lambda: RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat,
                                              grace_period=grace, heartbeat_stale_trial_callback=retry))
    if sqlite:
        _lock_on_begin(storage.engine)
    return storage


def _lock_on_begin(engine: sqlalchemy.engine.Engine) -> None:
    """Every transaction on ``engine`` takes SQLite's write lock as it begins (``BEGIN IMMEDIATE``).

    Optuna changes a trial's state by reading it ``FOR UPDATE`` and writing the new one, which SQLite does not lock:
    two workers that popped the same waiting trial both set it RUNNING and both ran it (one then failed with
    "Cannot tell a COMPLETE trial"), and two that failed the same stale trial both retried it. Begun IMMEDIATE, the
    read and the write are one step for every other connection."""
    sqlalchemy.event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))


def claim(storage: optuna.storages.BaseStorage, trial_id: int, key: str) -> bool:
    """Insert system attribute ``key`` of a trial straight into Optuna's table (finished trials included); False when
    it is there already (another process claimed it). Storages without that table claim nothing and always win."""
    engine = getattr(getattr(storage, "_backend", storage), "engine", None)
    if engine is None:
        return True
    table = sqlalchemy.Table("trial_system_attributes", sqlalchemy.MetaData(),
                             sqlalchemy.Column("trial_id", sqlalchemy.Integer), sqlalchemy.Column("key", sqlalchemy.String),
                             sqlalchemy.Column("value_json", sqlalchemy.Text))
    try:
        with engine.begin() as conn:
            conn.execute(table.insert().values(trial_id=trial_id, key=key, value_json="true"))
    except sqlalchemy.exc.IntegrityError:
        return False
    return True


def grace_period() -> int:
    """Seconds a running trial may stay silent before it is failed and retried ($RECIPE_SEARCH_GRACE, 120)."""
    text = os.environ.get("RECIPE_SEARCH_GRACE", "120")
    try:
        return int(text)
    except ValueError:
        raise RecipeSearchError(f"RECIPE_SEARCH_GRACE is not a whole number of seconds: {text!r}") from None


def _opened(url: str, open_: Callable[[], T]) -> T:
    """``open_()``, with a storage or driver error (a bad URL, a missing driver, an unreachable server) as
    one line whose credentials are masked."""
    try:
        return open_()
    except Exception as err:  # sqlalchemy/driver errors: report, don't trace
        raise RecipeSearchError(f"cannot open study storage {mask_credentials(url)}: "
                                f"{mask_message(str(err).splitlines()[0], url)}") from None


def directions(config: StudyConfig) -> list[Literal["minimize", "maximize"]]:
    return ["maximize" if o in MAXIMISE else "minimize" for o in config.objectives]


def make_sampler(config: StudyConfig, worker_seed: int) -> optuna.samplers.BaseSampler:
    seed = config.seed * 1000 + worker_seed
    if config.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=16)
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10)


def worker_seed() -> int:
    """Distinct per process, so concurrent workers do not propose the same trials."""
    return (os.getpid() * 7919 + int(time.time())) % 100_000


# -- opening a study -------------------------------------------------------------------------------
def storage_url(storage: str | None, directory: str | Path | None, study: str | None) -> str:
    """The storage URL: given, or the SQLite database of the study directory (default studies/<study>)."""
    if storage:
        return storage
    if directory is None and study is None:
        raise RecipeSearchError("say where the study is: --storage URL, --dir DIR or --study NAME")
    db = Path(directory if directory is not None else Path("studies") / check_study_name(str(study))) / "study.db"
    if not db.is_file():
        raise RecipeSearchError("no study database here", db)
    return f"sqlite:///{db.resolve()}"


def load_study(url: str, name: str | None) -> optuna.Study:
    """Open an existing study read-only in spirit (no heartbeat); the only study when ``name`` is None."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise RecipeSearchError("no study database here", url.removeprefix("sqlite:///"))
    storage = _opened(url, lambda: optuna.storages.RDBStorage(url))
    names = _opened(url, lambda: [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)])
    if name is None:
        if len(names) != 1:
            raise RecipeSearchError(f"{mask_credentials(url)} holds {len(names)} studies "
                                    f"({', '.join(names) or 'none'}); "
                                    "name one with --study")
        name = names[0]
    if name not in names:
        raise RecipeSearchError(f"no study {name!r} in {mask_credentials(url)} (it has: {', '.join(names) or 'none'})")
    return optuna.load_study(study_name=name, storage=storage)
