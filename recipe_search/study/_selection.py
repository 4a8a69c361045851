"""Reading a study for decisions: its frontier on one objective, ties, picks at size targets, recipe files.

`pareto` does the arithmetic; this module opens the storage, gathers the measured trials and writes
the picked recipes (with their measurements and provenance) as YAML.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from ..core.config import StudyConfig
from ..core.kld import bootstrap_ci, paired_bootstrap, scored_per_chunk, shared_chunks
from ..core.metrics import MAXIMISE, TAIL_STATISTICS, TASK_OBJECTIVES, TOKEN_STATISTICS, statistic_of
from ..core.pareto import NeighbourTest, Target, frontier_2d, neighbour_tests, pick_on_shared_chunks
from ..core.recipe import ModelRef, Recipe
from ..core.task_flips import item_statistic
from ..core.text import TextSource, text_sha256
from ..errors import RecipeSearchError
from ..version import __version__
from ._records import TrialRecord
from ._storage import mask_credentials, storage_label
from ._summary import measured_records


@dataclass(frozen=True)
class FrontierPoint:
    candidate: int  # index into Selection.candidates
    test: NeighbourTest | None  # against the next smaller frontier point (None: the smallest, or untestable)

    @property
    def distinct(self) -> bool | None:
        """True: better than its smaller neighbour beyond the interval; False: a tie; None: not tested."""
        return None if self.test is None else not self.test.tie


@dataclass(frozen=True)
class Pick:
    target: Target
    candidate: int | None  # None: nothing measured fits the target
    #: the best recipe on the objective, when the pick is another that ties it there with a distinctly lower mean KLD
    #: (`_steadier`): (its candidate index, the 95% interval of the mean-KLD difference, pick minus it)
    instead_of: tuple[int, tuple[float, float]] | None = None


@dataclass
class Selection:
    """A study's measured trials, its frontier on (file size, objective) and the picks at the targets."""

    study: str
    storage: str
    model: Path
    config: StudyConfig
    objectives: list[str]
    objective: str
    counts: dict[str, int]  # trial states, plus duplicates
    candidates: list[TrialRecord]
    frontier: list[FrontierPoint]
    picks: list[Pick]
    tools: dict[str, str]  # the versions that measured the study
    #: trial number -> {task kind: figures}, what `validate --tasks` measured of the frontier on held-out text
    task_figures: dict[int, dict] = field(default_factory=dict)
    _ties: dict[Pick, list[dict]] = field(default_factory=dict, repr=False)  # `ties`, by pick

    def quality(self, c: TrialRecord) -> float:
        return float(c.metrics[self.objective])

    def point_of(self, candidate: int) -> FrontierPoint | None:
        return next((p for p in self.frontier if p.candidate == candidate), None)

    def ties(self, pick: Pick, n_boot: int = 1000, seed: int = 0) -> list[dict]:
        """The frontier recipes within the pick's target that it cannot be told apart from: the 95% paired chunk
        bootstrap of the objective (pick minus other) contains 0. The decision's noise, for the picked recipe
        (computed once per pick: `pareto` prints it and writes it into the recipe)."""
        if pick not in self._ties:
            self._ties[pick] = self._tied_with(pick, n_boot, seed)
        return self._ties[pick]

    def _tied_with(self, pick: Pick, n_boot: int, seed: int, among: Iterable[int] | None = None) -> list[dict]:
        """`ties` among the candidates ``among`` (default: the frontier's)."""
        if pick.candidate is None:
            return []
        values, unit, statistic = resampling_basis(self.candidates, self.objective, scored_per_chunk(self.config.ctx))
        mine = values[pick.candidate]
        if statistic is None or mine is None or len(mine) < 2 * unit:
            return []
        out = []
        for i in (p.candidate for p in self.frontier) if among is None else among:
            o, theirs = self.candidates[i], values[i]
            if i == pick.candidate or not pick.target.fits(o.bpw, o.file_bytes, o.device_bytes) or theirs is None:
                continue
            a, b = shared_chunks(mine.astype(np.float64), theirs.astype(np.float64), unit)
            if len(a) < 2 * unit:
                continue
            lo, hi = paired_bootstrap(a, b, statistic, unit, n_boot=n_boot, seed=seed)
            if lo <= 0.0 <= hi:
                out.append({"trial": o.number, "name": o.name, "bpw": o.bpw, "file_bytes": o.file_bytes,
                            self.objective: float(o.metrics[self.objective]), "difference_ci95": [lo, hi]})
        return out

    def steadier_note(self, pick: Pick) -> dict:
        """Which recipe the pick was preferred over (`_steadier`), and why."""
        assert pick.instead_of is not None
        best, ci = pick.instead_of
        o = self.candidates[best]
        return {"trial": o.number, "name": o.name, "bpw": o.bpw, self.objective: float(o.metrics[self.objective]),
                "why": f"the best {self.objective} at the target, tied with the pick on it; the pick's mean KLD is "
                       "distinctly lower", "kld_mean_difference_ci95": list(ci)}

    def status(self, point: FrontierPoint, trial: str = "#") -> str:
        """How a frontier point stands against its smaller neighbour, in words (``trial`` prefixes trial numbers)."""
        if point.test is None:
            first = bool(self.frontier) and self.frontier[0].candidate == point.candidate
            return "smallest" if first else "not tested"
        smaller = self.candidates[point.test.smaller].number
        return f"{'distinct from' if point.distinct else 'tie with'} {trial}{smaller}"


def resampling_basis(candidates: list[TrialRecord], objective: str, per_chunk: int
                     ) -> tuple[list[np.ndarray | None], int, Callable[[np.ndarray], np.ndarray] | None]:
    """What a paired test of ``objective`` resamples, per candidate, its unit and its statistic: per-token KLD in
    chunks of ``per_chunk`` tokens for a KLD statistic; per-item values one item a unit for a task objective (the
    items' sum for a count of flips, else their mean); no statistic otherwise (size, speed, PPL ratio)."""
    if objective in TOKEN_STATISTICS:
        return [c.kld_tokens for c in candidates], per_chunk, statistic_of(objective)
    if objective in TASK_OBJECTIVES:
        items = [None if c.measurement is None else c.measurement.task_items.get(objective) for c in candidates]
        return items, 1, item_statistic(objective)
    return [None] * len(candidates), 1, None


def select(study: optuna.Study, url: str, objective: str | None, targets: list[Target], n_boot: int = 1000,
           seed: int = 0) -> Selection:
    """The frontier on (file size, ``objective``), each point tested against its smaller neighbour, and
    the best measured recipe at or under each target."""
    if "config" not in study.user_attrs:
        raise RecipeSearchError(f"study {study.study_name!r} was not made by recipe-search (no stored config)")
    config = StudyConfig.model_validate(json.loads(study.user_attrs["config"]))
    objectives = list(study.user_attrs.get("objectives", config.objectives))
    objective = objective or objectives[1]
    candidates = measured_records(study)
    if not candidates:
        raise RecipeSearchError(f"study {study.study_name!r} has no measured trial yet")
    missing = [c.number for c in candidates if objective not in c.metrics]
    if missing:
        known = sorted(k for k in candidates[0].metrics if isinstance(candidates[0].metrics[k], (int, float)))
        raise RecipeSearchError(f"objective {objective!r} is not among the measured metrics ({', '.join(known)})")
    sign = -1.0 if objective in MAXIMISE else 1.0
    quality = [sign * float(c.metrics[objective]) for c in candidates]
    order = [int(i) for i in frontier_2d([c.file_bytes for c in candidates], quality)]
    values, unit, statistic = resampling_basis(candidates, objective, scored_per_chunk(config.ctx))
    tests = neighbour_tests(order, values, statistic, unit, n_boot=n_boot, seed=seed)
    frontier = [FrontierPoint(i, test) for i, test in zip(order, [None, *tests])]
    picks = [Pick(t, _pick(t, candidates, quality, objective, config)) for t in targets]
    counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    counts["duplicates"] = sum(TrialRecord.from_trial(t).duplicate_of is not None for t in study.get_trials(deepcopy=False))
    sel = Selection(study.study_name, mask_credentials(url), Path(study.user_attrs["model"]), config, objectives,
                    objective, counts, candidates, frontier, picks, study_tools(study),
                    {int(k): v for k, v in study.user_attrs.get(TASK_FIGURES, {}).items()})
    sel.picks = [_steadier(sel, p, n_boot, seed) for p in picks]
    return sel


def _pick(target: Target, candidates: list[TrialRecord], quality: list[float], objective: str,
          config: StudyConfig) -> int | None:
    """The best recipe at or under ``target`` on the stored statistics, unless a fitting recipe scored on more
    chunks (near a size target) beats it on the chunks both have (`pick_on_shared_chunks`)."""
    best = target.pick([c.bpw for c in candidates], [c.file_bytes for c in candidates], quality,
                       [c.device_bytes for c in candidates])
    if best is None:
        return None
    per_chunk = scored_per_chunk(config.ctx)
    longer = [i for i, c in enumerate(candidates) if c.kld_tokens is not None
              and len(c.kld_tokens) > config.chunks * per_chunk and target.fits(c.bpw, c.file_bytes, c.device_bytes)]
    return pick_on_shared_chunks(best, longer, [c.kld_tokens for c in candidates], objective, per_chunk,
                                 [c.file_bytes for c in candidates])


def _steadier(sel: Selection, pick: Pick, n_boot: int, seed: int) -> Pick:
    """For a tail objective: among the measured recipes that fit the target and that the pick cannot be told apart
    from on it (95% paired chunk bootstrap), the one with the lowest mean KLD, if that mean is distinctly below the
    pick's; else the pick. A tail statistic of a few thousand tokens rests on a handful of them; the mean on all."""
    if pick.candidate is None or sel.objective not in TAIL_STATISTICS:
        return pick
    tied = sel._tied_with(pick, n_boot, seed, among=range(len(sel.candidates)))
    if not tied:
        return pick
    index = {c.number: i for i, c in enumerate(sel.candidates)}
    other = min((index[t["trial"]] for t in tied), key=lambda i: sel.candidates[i].metrics["kld_mean"])
    a, b = sel.candidates[other].kld_tokens, sel.candidates[pick.candidate].kld_tokens
    assert a is not None and b is not None  # `ties` compares only recipes with per-token KLD
    unit = scored_per_chunk(sel.config.ctx)
    a, b = shared_chunks(a.astype(np.float64), b.astype(np.float64), unit)
    lo, hi = paired_bootstrap(a, b, statistic_of("kld_mean"), unit, n_boot=n_boot, seed=seed)
    return Pick(pick.target, other, (pick.candidate, (lo, hi))) if hi < 0 else pick


#: the study attribute holding the task figures of its trials (`record_task_figures`)
TASK_FIGURES = "task_figures"


def record_task_figures(study: optuna.Study, figures: dict[int, dict]) -> None:
    """Keep task figures of trials (trial number -> {task kind: figures}) in the study, beside earlier ones."""
    kept = dict(study.user_attrs.get(TASK_FIGURES, {}))
    kept.update({str(n): f for n, f in figures.items()})
    study.set_user_attr(TASK_FIGURES, kept)


# -- writing picks ---------------------------------------------------------------------------------
def study_tools(study: optuna.Study) -> dict[str, str]:
    """The tool versions that measured the study (stored when it was created); for a study made before
    they were stored, this tool's version and the installed llama-cpp-python's, read without loading it."""
    from importlib.metadata import version

    stored = study.user_attrs.get("tools")
    return dict(stored) if stored else {"recipe_search": __version__, "llama_cpp_python": version("llama-cpp-python")}


def model_ref(model: Path) -> ModelRef | None:
    """The study's model by architecture, tensor count, name, file name, size and fingerprint (no path);
    None when its file is not here."""
    from ..core.inventory import model_fingerprint, read_inventory

    try:
        inv = read_inventory(model)
    except RecipeSearchError:
        return None
    name = inv.headers[0].get("general.name")
    return ModelRef(architecture=inv.arch, tensor_count=len(inv.tensors), name=str(name) if name else None,
                    file=model.name, file_bytes=sum(p.stat().st_size for p in inv.paths),
                    fingerprint=model_fingerprint(inv))


def text_ref(spec: str | None) -> dict[str, str]:
    """The scoring text by name (and range) and, where the file is here, the SHA-256 of the scored bytes."""
    source = TextSource.parse(spec)
    try:
        return {"text": source.label, "text_sha256": text_sha256(source.read())}
    except RecipeSearchError:
        return {"text": source.label}


def recipe_file_name(sel: Selection, pick: Pick) -> str:
    """``<model>-<target>-<objective>.yaml``, e.g. ``gemma-3-270m-f16-4.00bpw-kld_p999.yaml``."""
    return f"{sel.model.stem}-{pick.target.label}-{sel.objective}.yaml"


def picked_recipe(sel: Selection, pick: Pick, model: ModelRef | None, versions: dict[str, str]) -> Recipe:
    """The picked trial's rules with its measurements (``metrics``) and where they come from (``provenance``)."""
    if pick.candidate is None:
        raise RecipeSearchError(f"nothing measured fits {pick.target.label}")
    c = sel.candidates[pick.candidate]
    metrics: dict = {"file_bytes": c.file_bytes, "bpw": c.bpw, **c.metrics}
    per_chunk = scored_per_chunk(sel.config.ctx)
    if c.kld_tokens is not None and len(c.kld_tokens) >= 2 * per_chunk:
        kld = c.kld_tokens.astype(np.float64)
        for name in TAIL_STATISTICS:  # the intervals are over every chunk the pick was scored on
            metrics[f"{name}_ci95"] = list(bootstrap_ci(kld, statistic_of(name), per_chunk))
        if len(kld) > sel.config.chunks * per_chunk:  # near a size target: scored beyond the study's chunks
            metrics["scored_chunks"] = {"chunks": len(kld) // per_chunk,
                                        **{name: float(statistic_of(name)(kld)) for name in TOKEN_STATISTICS}}
    point = sel.point_of(pick.candidate)
    cfg = sel.config
    how = sel.status(point, trial="trial ") if point else "not on the frontier"
    provenance = {
        "study": {"name": sel.study, "storage": storage_label(sel.storage), "trial": c.number, "trial_name": c.name,
                  "objective": sel.objective, "target": pick.target.label,
                  "frontier": f"{how} (95% paired chunk bootstrap of {sel.objective} against the next smaller "
                              "frontier point)",
                  "ties": sel.ties(pick),
                  **({} if pick.instead_of is None else {"instead_of": sel.steadier_note(pick)})},
        "scoring": {"model": sel.model.name, **text_ref(cfg.text), "ctx": cfg.ctx, "chunks": cfg.chunks,
                    "imatrix": Path(cfg.imatrix).name if cfg.imatrix else None},
        "tools": versions,
    }
    if c.device_bytes:  # the bytes per device under the study's placement and run context (`export --format run`)
        provenance["devices"] = {"placement": cfg.run_placement().describe(), **cfg.run.model_dump(),
                                 **{f"{d}_bytes": n for d, n in c.device_bytes.items()}}
    return c.recipe.model_copy(update={
        "name": Path(recipe_file_name(sel, pick)).stem, "model": model,
        "imatrix": Path(cfg.imatrix).name if cfg.imatrix else None,
        "metrics": metrics, "provenance": provenance})


def write_picks(sel: Selection, out_dir: Path, force: bool, holdout: dict[int, dict] | None = None,
                tasks: dict[int, dict] | None = None) -> dict[int, Path]:
    """Write every pick's recipe under ``out_dir`` (pick index -> file); checks every name first, so nothing
    is written when one exists (without ``force``). Targets nothing fits are skipped. ``holdout`` (pick index ->
    its held-out validation) and ``tasks`` (pick index -> its task figures) go into the recipe's metrics beside
    the search-text figures."""
    todo = {i: out_dir / recipe_file_name(sel, p) for i, p in enumerate(sel.picks) if p.candidate is not None}
    if not force:
        for path in todo.values():
            if path.exists():
                raise RecipeSearchError("exists already (use --force to replace it)", path)
    if todo:
        model, versions = model_ref(sel.model), sel.tools
        for i, path in todo.items():
            recipe = picked_recipe(sel, sel.picks[i], model, versions)
            for key, extra in (("holdout", holdout), ("tasks", tasks)):
                if extra and i in extra:
                    recipe = recipe.model_copy(update={"metrics": {**(recipe.metrics or {}), key: extra[i]}})
            recipe.save(path, overwrite=force)
    return todo
