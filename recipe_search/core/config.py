"""The study config: what a study searches, measures and how, validated from YAML at the edge."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import RecipeSearchError
from ..formats.ggml_types import DEFAULT_LADDER, parse_file_type, parse_type
from . import limits
from .devices import DeviceBudget
from .inventory import Inventory
from .kld import MIN_TOKENS, scored_per_chunk
from .metrics import OBJECTIVES, SIZE_OBJECTIVES, TASK_OBJECTIVES
from .pareto import Target, parse_byte_size, parse_target
from .placement import Placement
from .run_memory import ContextSettings
from .text import ScoreSettings, TextSource
from .text_tasks import ClozeSettings, ContinuationSettings
from .yaml_file import load_yaml


class SpaceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tensor_types: list[str] | None = None  # None: every tensor type llama.cpp quantizes
    ladder: list[str] = Field(default_factory=lambda: [t.name for t in DEFAULT_LADDER], min_length=1)
    ladders: dict[str, list[str]] = Field(default_factory=dict)
    fixed: dict[str, str] = Field(default_factory=dict)
    tied: list[list[str]] = Field(default_factory=list)
    # tensor type -> its blocks searched apart: a number of equal bands, or the first block of each band
    # (``[0, 1, 5]`` on 6 blocks: block 0, blocks 1-4, block 5), so first and last blocks can be parameters of their own
    bands: dict[str, int | list[int]] = Field(default_factory=dict)
    unmatched: str = "Q8_0"
    # the routed experts' (*_exps) first blocks, a band of their own unless `bands` splits them otherwise: the
    # first blocks' experts are the ones hand-made recipes protect; 0: no such band
    expert_first_blocks: int = Field(2, ge=0)

    @field_validator("ladders")
    @classmethod
    def _not_empty(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        empty = [k for k, ts in v.items() if not ts]
        if empty:
            raise ValueError(f"empty ladder for {', '.join(empty)}")
        return v

    @field_validator("bands")
    @classmethod
    def _band_counts(cls, v: dict[str, int | list[int]]) -> dict[str, int | list[int]]:
        lo, hi = limits.BANDS
        bad = [f"{k}: {n}" for k, n in v.items() if isinstance(n, int) and not lo <= n <= hi]
        if bad:
            raise ValueError(f"a tensor type is split into {lo}..{hi} bands, not {', '.join(bad)}")
        starts = [f"{k}: {n}" for k, n in v.items() if isinstance(n, list) and (not n or min(n) < 0)]
        if starts:
            raise ValueError(f"bands given as first blocks need block numbers (0 or more), not {', '.join(starts)}")
        return v

    @model_validator(mode="after")
    def _ties(self) -> SpaceConfig:
        """A tied group is one parameter: its members share one ladder and appear in one group."""
        seen: set[str] = set()
        for group in self.tied:
            again = [k for k in group if k in seen]
            if again:
                raise ValueError(f"tensor type {again[0]} is in more than one tied group (or twice in one)")
            seen.update(group)
            ladders = {tuple(self.ladders.get(k, self.ladder)) for k in group}
            if len(ladders) > 1:
                raise ValueError(f"tied tensor types {', '.join(group)} have different ladders; give them one")
            banded = {str(self.bands.get(k, 1)) for k in group}
            if len(banded) > 1:
                raise ValueError(f"tied tensor types {', '.join(group)} have different bands; give them one")
        return self

    @field_validator("ladder", "unmatched", mode="before")
    @classmethod
    def _types(cls, v):
        return [parse_type(t).name for t in v] if isinstance(v, list) else parse_type(v).name

    @field_validator("ladders", "fixed", mode="before")
    @classmethod
    def _type_maps(cls, v):
        return {k: ([parse_type(t).name for t in ts] if isinstance(ts, list) else parse_type(ts).name)
                for k, ts in (v or {}).items()}


class ReferenceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uniform: list[str] | Literal["ladder"] = "ladder"
    presets: list[str] = Field(default_factory=lambda: ["Q4_K_M", "Q3_K_M"])

    @field_validator("uniform")
    @classmethod
    def _uniform_types(cls, v):
        return v if v == "ladder" else [parse_type(t).name for t in v]

    @field_validator("presets")
    @classmethod
    def _preset_types(cls, v: list[str]) -> list[str]:
        for preset in v:
            parse_file_type(preset)
        return v


def _as_value_error(check: Callable[[], object]) -> object:
    """A check's RecipeSearchError as the ValueError pydantic reports with the field's name."""
    try:
        return check()
    except RecipeSearchError as err:
        raise ValueError(str(err)) from None


class RunConfig(BaseModel):
    """The context llama.cpp will run the recipes with: the device budgets count its KV cache, recurrent state
    and compute estimate beside the weights."""

    model_config = ConfigDict(extra="forbid")

    ctx: int | None = Field(None, ge=1, le=1 << 24)  # llama.cpp's -c (all sequences); None: weights only
    parallel: int = Field(1, ge=1, le=4096)  # -np
    ubatch: int = Field(512, ge=1, le=1 << 20)  # -ub
    cache_type_k: str = "f16"  # -ctk
    cache_type_v: str = "f16"  # -ctv

    @model_validator(mode="after")
    def _types(self) -> RunConfig:
        _as_value_error(self.settings)
        return self

    def settings(self) -> ContextSettings | None:
        if self.ctx is None:
            return None
        return ContextSettings(self.ctx, self.parallel, self.ubatch, self.cache_type_k, self.cache_type_v)


class TaskOptions(BaseModel):
    """The sizes of a study's tasks, as `recipe-search tasks` takes them (its --cloze-items, ...)."""

    model_config = ConfigDict(extra="forbid")

    cloze_items: int = ClozeSettings.items
    cloze_tokens: int = ClozeSettings.passage_tokens
    prompts: int = ContinuationSettings.prompts
    prompt_tokens: int = ContinuationSettings.prompt_tokens
    new_tokens: int = ContinuationSettings.new_tokens
    ctx: int = Field(512, ge=limits.CTX[0], le=limits.CTX[1])  # task files' context (llama-perplexity's -c)
    limit: int | None = Field(None, ge=1)  # only the first tasks of each task file; None: all

    @model_validator(mode="after")
    def _sizes(self) -> TaskOptions:
        _as_value_error(self.cloze)
        _as_value_error(self.continuation)
        return self

    def cloze(self) -> ClozeSettings:
        return ClozeSettings(items=self.cloze_items, passage_tokens=self.cloze_tokens)

    def continuation(self) -> ContinuationSettings:
        return ContinuationSettings(prompts=self.prompts, prompt_tokens=self.prompt_tokens, new_tokens=self.new_tokens)


class StudyConfig(BaseModel):
    """Everything a study needs besides the model; stored in the study so workers can join it."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None  # FILE or FILE[a:b]; None = the built-in default text
    holdout_text: str | None = None  # a second text the study never sees: `validate` and `pareto` re-score on it
    ctx: int = Field(ScoreSettings.ctx, ge=limits.CTX[0], le=limits.CTX[1])
    chunks: int = Field(ScoreSettings.chunks or 8, ge=limits.CHUNKS[0], le=limits.CHUNKS[1])
    imatrix: str | None = None
    threads: int = Field(ScoreSettings.threads, ge=limits.THREADS[0], le=limits.THREADS[1])
    # threads that quantize the next enqueued trials' (and sweep cells') missing tensors while one is scored
    # (`engine.prefill`; 0: none), taken from `threads` while scoring runs on the CPU; None: all `threads` when
    # scoring runs on a GPU, none on the CPU (there it takes as much CPU time as it saves: experiments/reports/real-shapes.md)
    prefill_threads: int | None = Field(None, ge=0, le=limits.THREADS[1])
    # layers offloaded to a GPU (-1: all); a GPU build
    gpu_layers: int = Field(ScoreSettings.gpu_layers, ge=limits.GPU_LAYERS[0], le=limits.GPU_LAYERS[1])
    objectives: list[str] = Field(default_factory=lambda: ["size", "kld_p999"])  # experiments/tail_statistic_rule.py
    max_bpw: float | None = Field(None, gt=0)
    min_bpw: float | None = Field(None, ge=0)
    max_bytes: int | None = Field(None, gt=0)
    # where llama.cpp will run the recipes, in its own flags ('-ot exps=CPU', '--n-cpu-moe 20', '-ngl 30');
    # None: every layer on the GPU. Each trial records its bytes per device under it
    placement: str | None = None
    max_gpu_bytes: int | None = Field(None, gt=0)  # bytes or a size (24GiB): weights plus the `run` context
    max_cpu_bytes: int | None = Field(None, gt=0)
    run: RunConfig = Field(default_factory=RunConfig)
    band: Literal["steer", "prune"] = "steer"  # a proposal outside the size band is moved into it, or pruned
    space: SpaceConfig = Field(default_factory=SpaceConfig)
    references: ReferenceConfig = Field(default_factory=ReferenceConfig)
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    seed: int = 0
    prune: bool = True
    # recipes from the sensitivity surrogate enqueued at start, spread over the size range (and one at the size
    # band's upper edge, and one at each target); 0 with refit_every 0 and no targets: no sweep, TPE from the start
    surrogate_seeds: int = Field(8, ge=0, le=1000)
    # sizes (bits per weight) the surrogate's allocation is enqueued at, and that refitted proposals revisit
    target_bpw: list[float] = Field(default_factory=list)
    # after the enqueued trials, every `refit_every`-th trial is the allocation of the surrogate refitted to the
    # measured trials (at a target, or where the frontier has its widest gap); 0: TPE proposes every trial
    refit_every: int = Field(2, ge=0, le=1000)
    seeds: list[str] = Field(default_factory=list)  # recipe files (any dialect `import` reads) enqueued first
    # the sensitivity table the surrogate comes from; None: the study sweeps its own space on `sweep_chunks` chunks
    sensitivity: str | None = None
    sweep_chunks: int | None = Field(None, ge=limits.CHUNKS[0], le=limits.CHUNKS[1])  # None: `sweep_chunk_count`
    # tokens where the decision is (with size targets: `target_bpw` or a device budget): a trial that fits a target
    # and leaves less than `near_target` of it unused is scored on up to `chunks_near_target` chunks (None: twice
    # `chunks`; as many as the text holds), which the picks at the targets compare; a trial far from every target
    # stops after `chunks_far` chunks unless it is on track for the frontier. Objectives and stored statistics stay
    # those of the first `chunks` chunks. `chunks_near_target` and `chunks_far` at `chunks` turn either half off
    chunks_near_target: int | None = Field(None, ge=limits.CHUNKS[0], le=limits.CHUNKS[1])
    chunks_far: int = Field(2, ge=2, le=limits.CHUNKS[1])  # 2: the fewest the early-stopping rule can judge
    near_target: float = Field(0.03, ge=0, lt=1)
    # tasks every trial is scored on beside KLD, as `recipe-search tasks --task` takes them (a text task without
    # its text is built from `holdout_text`); their figures are in each trial's metrics, and objectives may name them
    tasks: list[str] = Field(default_factory=list)
    task_options: TaskOptions = Field(default_factory=TaskOptions)

    @field_validator("objectives")
    @classmethod
    def _two_or_more(cls, v: list[str]) -> list[str]:
        unknown = [o for o in v if o not in OBJECTIVES]
        if unknown:
            raise ValueError(f"unknown objective {unknown[0]!r} (one of {', '.join(OBJECTIVES)})")
        if len(v) < 2 or v[0] not in SIZE_OBJECTIVES or any(o in SIZE_OBJECTIVES for o in v[1:]):
            raise ValueError("objectives start with `size` or `bpw` and name at least one quality measure")
        if len(set(v)) < len(v):
            raise ValueError(f"objectives name one twice: {v}")
        return v

    @field_validator("max_gpu_bytes", "max_cpu_bytes", mode="before")
    @classmethod
    def _byte_size(cls, v):
        return _as_value_error(lambda: parse_byte_size(v)) if isinstance(v, str) else v

    @field_validator("placement")
    @classmethod
    def _placement(cls, v: str | None) -> str | None:
        if v is not None:
            _as_value_error(lambda: Placement.parse(v))
        return v

    def run_placement(self) -> Placement:
        return Placement.parse(self.placement)

    def device_budget(self, inv: Inventory) -> DeviceBudget:
        """Per-device totals under this config's placement and run context, held to its device budgets."""
        return DeviceBudget(inv, self.run_placement(), self.run.settings(),
                            {"gpu": self.max_gpu_bytes, "cpu": self.max_cpu_bytes})

    def speed_placement(self) -> Placement | None:
        """The placement the `speed` objective times every recipe under (the study's), or None without it."""
        return self.run_placement() if "speed" in self.objectives else None

    @property
    def has_device_budget(self) -> bool:
        return self.max_gpu_bytes is not None or self.max_cpu_bytes is not None

    @model_validator(mode="after")
    def _consistent(self) -> StudyConfig:
        if self.min_bpw is not None and self.max_bpw is not None and self.min_bpw >= self.max_bpw:
            raise ValueError(f"min_bpw {self.min_bpw} is not below max_bpw {self.max_bpw}")
        bad = [t for t in self.target_bpw if not 0 < t < 64]
        if bad:
            raise ValueError(f"target_bpw holds bits per weight between 0 and 64, not {bad[0]}")
        kinds = {s.strip().partition(":")[0] for item in self.tasks for s in item.split(",")}
        for o in self.objectives:
            if o in TASK_OBJECTIVES and TASK_OBJECTIVES[o] not in kinds:
                kind = TASK_OBJECTIVES[o]
                raise ValueError(f"objective {o} needs the {kind} task in `tasks` (e.g. tasks: [\"{kind}"
                                 f"{'' if kind in ('cloze', 'continuation') else ':FILE'}\"])")
        return self

    @property
    def uses_surrogate(self) -> bool:
        """Whether the study needs a sensitivity table (its own sweep when `sensitivity` is not given)."""
        return bool(self.surrogate_seeds or self.target_bpw or self.refit_every)

    @property
    def sweep_chunk_count(self) -> int:
        """Chunks per cell of the study's own sweep: `sweep_chunks`, else a tenth of `chunks` (at least 2), so the
        sweep's fidelity follows the trials': a sweep on too few tokens misorders the small differences between
        the high-precision types (on tiny-qwen35moe, 2 chunks put token_embd at Q6_K below Q8_0; 6 did not), and
        never fewer than the KLD statistics need at this ctx."""
        if self.sweep_chunks is not None:
            return self.sweep_chunks
        enough = -(-MIN_TOKENS // scored_per_chunk(self.ctx))  # the fewest chunks KLD statistics accept
        return max(2, self.chunks // 10, enough)


    def size_targets(self) -> list[Target]:
        """The sizes the study is asked for: each of `target_bpw`, and the device budget (`max_gpu_bytes`,
        `max_cpu_bytes`) as one target."""
        targets = [parse_target(f"{t}bpw") for t in self.target_bpw]
        limits_ = {d: v for d, v in (("gpu", self.max_gpu_bytes), ("cpu", self.max_cpu_bytes)) if v is not None}
        if limits_:
            targets.append(Target("devices", float(sum(limits_.values())),
                                  "+".join(f"{v}B-{d}" for d, v in limits_.items()), tuple(limits_.items())))
        return targets

    @property
    def extra_chunks(self) -> int:
        """Chunks a trial near a size target is scored on beyond `chunks` (0 without targets)."""
        if not self.size_targets():
            return 0
        return max(0, (self.chunks_near_target or 2 * self.chunks) - self.chunks)

    @property
    def reference_chunks(self) -> int:
        """The most chunks a trial is scored on (the reference holds them, as far as the text goes)."""
        return self.chunks + self.extra_chunks

    @property
    def prefill_thread_count(self) -> int:
        """`prefill_threads`, its default resolved."""
        if self.prefill_threads is not None:
            return self.prefill_threads
        return self.threads if self.gpu_layers else 0

    def score_settings(self) -> ScoreSettings:
        """The scoring setup of every trial."""
        return ScoreSettings(text=TextSource.parse(self.text), ctx=self.ctx, chunks=self.chunks, threads=self.threads,
                             gpu_layers=self.gpu_layers, more_chunks=self.extra_chunks)


def load_study_config(path: str | Path | None) -> StudyConfig:
    if path is None:
        return StudyConfig()
    path = Path(path)
    data = load_yaml(path, "study config")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeSearchError("a study config is a YAML mapping", path)
    return _validate(data, path)


def with_overrides(config: StudyConfig, overrides: dict) -> StudyConfig:
    """``config`` with the command line's ``overrides`` (field -> value), validated as a config file is: pydantic's
    ``model_copy(update=...)`` validates nothing, so ``--gpu-layers -5`` would reach the study."""
    if not overrides:
        return config
    return _validate({**config.model_dump(exclude_unset=True), **overrides}, None, option=True)


def _validate(data: dict, path: Path | None, option: bool = False) -> StudyConfig:
    """One line naming the field (as ``--option`` for a command-line override) and the file, if any."""
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(map(str, first["loc"])) or "config"
        if option and len(first["loc"]) == 1:
            where = "--" + where.replace("_", "-")
        raise RecipeSearchError(f"{where}: {first['msg'].removeprefix('Value error, ')}", path) from None
    except RecipeSearchError as err:
        raise RecipeSearchError(str(err), path) from None
