"""What a study stores of one trial, written and read in this one place.

A trial's record lives in Optuna's ``user_attrs`` (so optuna-dashboard shows it). Writers call the
``record_*`` functions on a live trial, or `TrialRecord.to_attrs` for a finished one; readers call
`TrialRecord.from_trial` on a frozen trial. Nothing here imports Optuna: a trial is anything with
``number``, ``values``, ``state`` and ``user_attrs`` (and ``set_user_attr`` for the writers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import yaml

from ..core.recipe import Recipe, recipe_from_dict
from ..engine.measurement import Measurement, StoredMeasurement, decode_items, speed_from_dict


class _Trial(Protocol):
    @property
    def number(self) -> int: ...

    @property
    def user_attrs(self) -> dict[str, Any]: ...


class _LiveTrial(_Trial, Protocol):
    def set_user_attr(self, key: str, value: Any) -> None: ...


#: the keys of a trial's measurement (a duplicate copies those its trial has: task items only with task figures)
_MEASUREMENT_KEYS = ("recipe", "file_bytes", "bpw", "metrics", "fallbacks", "seconds", "speed", "kld_tokens",
                     "task_items")


@dataclass
class TrialRecord:
    """One trial as the study stored it: its role, its resolution key and, once measured, its numbers."""

    number: int
    values: list[float] | None = None
    reference: str | None = None  # a reference recipe's name (uniform-*, preset-*); None for a searched trial
    seed: str | None = None  # the config's seed recipe this trial was enqueued from
    surrogate_seed: str | None = None  # the surrogate allocation this trial was enqueued from
    refit: str | None = None  # the allocation of the surrogate refitted to measured trials it was enqueued from
    result_key: str | None = None  # identifies the resolved recipe and scoring setup (see Worker.result_key)
    predicted_bytes: int | None = None
    device_bytes: dict[str, int] | None = None  # GPU and CPU bytes under the study's placement and run context
    recipe_yaml: str | None = None
    measurement: Measurement | None = None
    duplicate_of: int | None = None  # the trial whose measurement this one repeats
    cached_measurement: bool = False  # read from the cross-study measurement cache
    pruned: str | None = None  # why it was stopped or thrown away
    partial_kld_mean: float | None = None  # running mean KLD when early stopping cut it

    @property
    def name(self) -> str:
        return self.reference or f"trial-{self.number}"

    @property
    def measured(self) -> bool:
        """Complete with a measurement of its own (not a duplicate of another trial's)."""
        return self.measurement is not None and self.values is not None and self.duplicate_of is None

    @property
    def recipe(self) -> Recipe:
        if self.recipe_yaml is None:
            raise ValueError(f"trial {self.number} has no recipe")
        return recipe_from_dict(yaml.safe_load(self.recipe_yaml), f"trial {self.number}")

    @property
    def measured_values(self) -> list[float]:
        """The objective values of a complete trial."""
        assert self.values is not None
        return self.values

    @property
    def file_bytes(self) -> int:
        assert self.measurement is not None
        return self.measurement.file_bytes

    @property
    def bpw(self) -> float:
        assert self.measurement is not None
        return self.measurement.bpw

    @property
    def metrics(self) -> dict[str, float]:
        assert self.measurement is not None
        return self.measurement.metrics

    @property
    def kld_tokens(self) -> np.ndarray | None:
        return None if self.measurement is None or self.measurement.kld_tokens.size == 0 else self.measurement.kld_tokens

    def to_attrs(self) -> dict[str, Any]:
        """The ``user_attrs`` form (only the fields that are set)."""
        attrs: dict[str, Any] = {}
        for key in ("reference", "seed", "surrogate_seed", "refit", "result_key", "predicted_bytes", "device_bytes",
                    "duplicate_of", "pruned", "partial_kld_mean"):
            if getattr(self, key) is not None:
                attrs[key] = getattr(self, key)
        if self.cached_measurement:
            attrs["cached_measurement"] = True
        if self.measurement is not None:
            attrs.update(self.measurement.to_dict())
        if self.recipe_yaml is not None:
            attrs["recipe"] = self.recipe_yaml
        return attrs

    @classmethod
    def from_trial(cls, trial: _Trial) -> TrialRecord:
        a = trial.user_attrs
        measurement = None
        if "metrics" in a and "file_bytes" in a:
            measurement = StoredMeasurement(
                a.get("kld_tokens"), file_bytes=int(a["file_bytes"]), bpw=float(a["bpw"]), metrics=dict(a["metrics"]),
                fallbacks=dict(a.get("fallbacks") or {}), seconds=dict(a.get("seconds") or {}),
                speed=speed_from_dict(a.get("speed")), cached=bool(a.get("cached_measurement")),
                task_items=decode_items(a.get("task_items")))
        values = getattr(trial, "values", None)
        return cls(number=trial.number, values=list(values) if values else None, reference=a.get("reference"),
                   seed=a.get("seed"), surrogate_seed=a.get("surrogate_seed"), refit=a.get("refit"),
                   result_key=a.get("result_key"),
                   predicted_bytes=a.get("predicted_bytes"), device_bytes=a.get("device_bytes"),
                   recipe_yaml=a.get("recipe"), measurement=measurement,
                   duplicate_of=a.get("duplicate_of"), cached_measurement=bool(a.get("cached_measurement")),
                   pruned=a.get("pruned"), partial_kld_mean=a.get("partial_kld_mean"))


# -- writing a live trial --------------------------------------------------------------------------
def record_resolution(trial: _LiveTrial, result_key: str, predicted_bytes: int,
                      device_bytes: dict[str, int] | None = None) -> None:
    trial.set_user_attr("result_key", result_key)
    trial.set_user_attr("predicted_bytes", predicted_bytes)
    if device_bytes is not None:
        trial.set_user_attr("device_bytes", device_bytes)


def record_measurement(trial: _LiveTrial, recipe: Recipe, m: Measurement) -> None:
    for k, v in TrialRecord(trial.number, recipe_yaml=recipe.to_yaml(), measurement=m,
                            cached_measurement=m.cached).to_attrs().items():
        trial.set_user_attr(k, v)


def record_duplicate(trial: _LiveTrial, same: _Trial) -> None:
    """The trial repeats ``same``'s measurement (the same resolved recipe)."""
    for k in _MEASUREMENT_KEYS:
        if k in same.user_attrs:
            trial.set_user_attr(k, same.user_attrs[k])
    trial.set_user_attr("duplicate_of", same.number)


def record_steered(trial: _LiveTrial, choice: dict[str, int]) -> None:
    """The proposal was moved into the size band: the ladder indices it was measured at."""
    trial.set_user_attr("steered_to", choice)


class _SearchedTrial(_Trial, Protocol):
    @property
    def params(self) -> dict[str, Any]: ...


def measured_choice(trial: _SearchedTrial) -> dict[str, int]:
    """The ladder indices a searched trial was measured at: its parameters, or where the band moved them."""
    return dict(trial.user_attrs.get("steered_to") or trial.params)


def record_failed(trial: _LiveTrial, why: str) -> None:
    """The trial failed (a RecipeSearchError while measuring it): why, in one line."""
    trial.set_user_attr("failed", why)


def record_pruned(trial: _LiveTrial, why: str, partial_kld_mean: float | None = None) -> None:
    trial.set_user_attr("pruned", why)
    if partial_kld_mean is not None:
        trial.set_user_attr("partial_kld_mean", partial_kld_mean)


#: what a trial is enqueued with besides its role (Study.enqueue_references)
_ENQUEUE_EXTRAS = ("surrogate_prediction",)


def enqueued_attrs(trial: _Trial, **extra: Any) -> dict[str, Any]:
    """The ``user_attrs`` ``trial`` was enqueued with (its role and their extras), to enqueue it again."""
    r = TrialRecord.from_trial(trial)
    kept = {k: trial.user_attrs[k] for k in _ENQUEUE_EXTRAS if k in trial.user_attrs}
    return role_attrs(reference=r.reference, seed=r.seed, surrogate_seed=r.surrogate_seed, refit=r.refit, **kept,
                      **extra)


def role_attrs(reference: str | None = None, seed: str | None = None, surrogate_seed: str | None = None,
               refit: str | None = None, **extra: Any) -> dict[str, Any]:
    """``user_attrs`` of an enqueued trial: a reference recipe, a config seed, a surrogate seed or a refitted
    surrogate's proposal."""
    return {**TrialRecord(-1, reference=reference, seed=seed, surrogate_seed=surrogate_seed, refit=refit).to_attrs(),
            **extra}
