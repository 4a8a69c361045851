"""A finished study written by hand: measured trials through the trial record, on the dense tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna

from recipe_search.core.config import StudyConfig
from recipe_search.core.recipe import Recipe, Rule, Unmatched
from recipe_search.study._records import Measurement, TrialRecord

#: the tool versions the synthetic study says measured it (a real study stores `worker.tool_versions()`)
STUDY_TOOLS = {"recipe_search": "0.1.0", "llama_cpp_python": "0.3.36", "libllama": "b1", "ggml": "0.9.4",
               "ggml_commit": "abc123"}


def measured_trial(recipe: Recipe, file_bytes: int, bpw: float, tokens: np.ndarray, reference: str | None = None,
                   duplicate_of: int | None = None) -> optuna.trial.FrozenTrial:
    """A complete trial as the study stores it, with metrics computed from ``tokens``."""
    metrics = {"n_tokens": len(tokens), "kld_mean": float(tokens.mean()), "kld_p99": float(np.quantile(tokens, 0.99)),
               "kld_p999": float(np.quantile(tokens, 0.999)), "same_top": 0.9}
    record = TrialRecord(-1, reference=reference, result_key=recipe.name, recipe_yaml=recipe.to_yaml(),
                         measurement=Measurement(file_bytes, bpw, metrics, tokens, {}, {}), duplicate_of=duplicate_of)
    return optuna.trial.create_trial(values=[float(file_bytes), metrics["kld_p999"]], params={}, distributions={},
                                     user_attrs=record.to_attrs())


def ffn_attn_recipe(name: str, ffn: str, attn: str) -> Recipe:
    return Recipe(name=name, unmatched=Unmatched(type="Q8_0"),
                  rules=[Rule(tensors=k, type=ffn) for k in ("ffn_up", "ffn_gate", "ffn_down")]
                  + [Rule(tensors=k, type=attn) for k in ("attn_q", "attn_k", "attn_v", "attn_output")])


def write_synthetic_study(directory: Path, model: Path) -> Path:
    """Four measured trials (one a near twin of its smaller neighbour), a duplicate and a pruned trial."""
    rng = np.random.default_rng(1)
    base = rng.exponential(0.1, 48 * 63).astype(np.float32)  # 48 chunks of ctx 128 (63 scored tokens each)
    directory.mkdir()
    study = optuna.create_study(storage=f"sqlite:///{directory / 'study.db'}", study_name="dense",
                                directions=["minimize", "minimize"])
    config = StudyConfig(ctx=128, chunks=48, objectives=["size", "kld_p999"])  # as the study says below
    study.set_user_attr("config", config.model_dump_json())
    study.set_user_attr("model", str(model.resolve()))
    study.set_user_attr("objectives", ["size", "kld_p999"])
    study.set_user_attr("tools", STUDY_TOOLS)
    study.add_trial(measured_trial(ffn_attn_recipe("q4", "Q4_0", "Q4_0"), 700_000, 4.5, base * 4, "uniform-Q4_0"))
    # the twin: the same tail values on other tokens (a paired resample can go either way), 0.1% lower
    twin = base * 4
    top = np.argsort(twin)[-12:]
    twin[top] = twin[top][::-1]
    study.add_trial(measured_trial(ffn_attn_recipe("q4q5", "Q4_0", "Q5_0"), 720_000, 4.7, twin * np.float32(0.999)))
    study.add_trial(measured_trial(ffn_attn_recipe("q5", "Q5_0", "Q5_0"), 800_000, 5.5, base * 2, "uniform-Q5_0"))
    study.add_trial(measured_trial(ffn_attn_recipe("q8", "Q8_0", "Q8_0"), 1_200_000, 8.5, base * 0.1, "uniform-Q8_0"))
    study.add_trial(measured_trial(ffn_attn_recipe("dup", "Q5_0", "Q5_0"), 800_000, 5.5, base * 2, duplicate_of=2))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params={}, distributions={},
                                              user_attrs=TrialRecord(-1, pruned="after chunk 2").to_attrs()))
    return directory
