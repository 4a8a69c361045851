"""The sensitivity table: one row per cell (tensor type, ggml type), read and written as files; the cells a
sweep plans. Pure: no model is evaluated here (`sweep` measures the cells).

A table lives in a directory: ``sensitivity.csv`` (one row per cell: tensor_type, ggml_type, bpw of the
type, the type's element count, file_bytes, every worker metric), ``kld_tokens.npz`` (the cell's per-token
KLD, keyed ``tensor_type|ggml_type``) and ``meta.json`` (model, reference and imatrix it was measured with).
Every file is replaced atomically after each cell, so a killed sweep resumes where it stopped.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from ..core.config import SpaceConfig, StudyConfig
from ..core.inventory import Inventory
from ..core.kld import KLDSummary
from ..core.recipe import Recipe, Rule, Unmatched
from ..core.resolution import Resolution, resolve
from ..core.space import SearchSpace, build_space
from ..errors import RecipeSearchError
from ..formats.files import atomic_write_bytes, atomic_write_text
from ..formats.ggml_types import GGMLType

TABLE_FILE = "sensitivity.csv"
TOKENS_FILE = "kld_tokens.npz"
META_FILE = "meta.json"
TABLE_FORMAT = 1
#: the columns before the metrics
CELL_COLUMNS = ("tensor_type", "ggml_type", "bpw", "n_elements", "file_bytes")
#: the numbers a table's rows carry besides the cell columns, by proxy (what `sensitivity --metric` may name):
#: a KLD sweep's rows carry every worker metric (`KLDSummary`, ppl_ratio) and the measuring seconds
TABLE_METRICS = {"kld": (*(f.name for f in fields(KLDSummary)), "ppl_ratio", "seconds"),
                 "weight-error": ("weight_error", "weight_error_rel")}
#: meta fields that must agree for a sweep to resume into a table
_SAME_FIELDS = ("format", "model_fingerprint", "reference", "imatrix")


def cell_key(tensor_type: str, ggml_type: str) -> str:
    return f"{tensor_type}|{ggml_type}"


def sweep_ladders(inv: Inventory, has_imatrix: bool, tensor_types: list[str] | None = None,
                  types: list[str] | None = None,
                  imatrix_tensors: Collection[str] | None = None) -> dict[str, tuple[GGMLType, ...]]:
    """Per tensor type, the ggml types to sweep: the search space's ladder for it (row-size fallbacks,
    imatrix-only types without an imatrix, and types that need imatrix data it lacks removed)."""
    space_config = SpaceConfig(tensor_types=tensor_types) if types is None else \
        SpaceConfig(tensor_types=tensor_types, ladder=types)
    return space_ladders(build_space(StudyConfig(space=space_config), inv, has_imatrix, imatrix_tensors))


def source_types(inv: Inventory) -> dict[str, GGMLType]:
    """The source type of every quantizable tensor type (one per type, or an error)."""
    out = {}
    for kind in inv.kinds.values():
        if kind.quantizable:
            found = {t.ggml_type for t in kind.tensors if t.quantizable}
            if len(found) != 1:
                raise RecipeSearchError(f"tensor type {kind.name} mixes source types "
                                        f"{', '.join(sorted(t.name for t in found))}", inv.path)
            out[kind.name] = found.pop()
    return out


def single_type_recipe(inv: Inventory, tensor_type: str, t: GGMLType) -> Recipe:
    """``tensor_type`` to ``t``, every other tensor kept at its source type.

    The commonest source type becomes the catch-all (`Unmatched(type=F16)` and the like, for which the
    recipe picks a quantized file type, since llama.cpp drops every override under an F16/BF16 one);
    tensor types stored otherwise get a rule of their own.
    """
    sources = source_types(inv)
    if tensor_type not in sources:
        raise RecipeSearchError(f"tensor type {tensor_type} is not quantized in this model", inv.path)
    base = Counter(sources.values()).most_common(1)[0][0]
    rules = [Rule(tensors=tensor_type, type=t.name)]
    rules += [Rule(tensors=k, type=s.name) for k, s in sources.items() if k != tensor_type and s != base]
    return Recipe(name=f"sensitivity-{tensor_type}-{t.name}", unmatched=Unmatched(type=base.name), rules=rules)


def check_single_type(resolution: Resolution, tensor_type: str, t: GGMLType, source: Path) -> None:
    """Raise unless ``tensor_type`` resolves to ``t`` and every other tensor to its source type."""
    for r in resolution.tensors:
        wanted = t if r.tensor.kind == tensor_type and r.tensor.quantizable else r.tensor.ggml_type
        if r.ggml_type != wanted:
            raise RecipeSearchError(f"recipe {resolution.recipe.name}: {r.tensor.name} resolves to "
                                    f"{r.ggml_type.name}, not {wanted.name}", source)


@dataclass
class SensitivityTable:
    """A sweep's cells (rows with their metrics) and per-token KLD vectors, stored in ``directory``."""

    directory: Path
    meta: dict
    rows: list[dict] = field(default_factory=list)
    tokens: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: str | Path) -> SensitivityTable:
        """Read a table; a row whose token vector is missing (a sweep killed between the files) is dropped,
        except in a proxy table (``meta["proxy"]``), which has no per-token vectors."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / META_FILE).read_text())
            with open(directory / TABLE_FILE, newline="", encoding="utf-8") as fh:
                rows = [_typed(r) for r in csv.DictReader(fh)]
            with np.load(directory / TOKENS_FILE) as npz:
                tokens = {k: npz[k].astype(np.float32) for k in npz.files}
        except (OSError, ValueError, KeyError) as err:
            raise RecipeSearchError(f"not a readable sensitivity table ({err})", directory) from None
        if not meta.get("proxy"):
            rows = [r for r in rows if cell_key(r["tensor_type"], r["ggml_type"]) in tokens]
        return cls(directory, meta, rows, tokens)

    @classmethod
    def open(cls, directory: Path, meta: dict) -> SensitivityTable:
        """The table in ``directory`` to add to, or a new one; refuse one measured with other settings."""
        if not (directory / META_FILE).exists():
            return cls(directory, meta)
        table = cls.load(directory)
        differ = [k for k in _SAME_FIELDS if table.meta.get(k) != meta.get(k)]
        if differ:
            raise RecipeSearchError(f"holds a sweep with another {', '.join(differ)}; use another --out", directory)
        return table

    def cell(self, tensor_type: str, ggml_type: str) -> dict | None:
        for r in self.rows:
            if r["tensor_type"] == tensor_type and r["ggml_type"] == ggml_type:
                return r
        return None

    def add(self, row: dict, kld_tokens: np.ndarray) -> None:
        self.rows.append(row)
        self.tokens[cell_key(row["tensor_type"], row["ggml_type"])] = np.asarray(kld_tokens, np.float32)

    def save(self) -> None:
        """Write the token vectors, then the CSV, then the meta, each atomically."""
        self.directory.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez_compressed(buf, **self.tokens)  # type: ignore[arg-type]  # numpy stub: a ** key could hit allow_pickle
        atomic_write_bytes(self.directory / TOKENS_FILE, buf.getvalue())
        columns = list(CELL_COLUMNS) + [k for k in self.rows[0] if k not in CELL_COLUMNS] if self.rows else []
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.directory / TABLE_FILE, text.getvalue())
        atomic_write_text(self.directory / META_FILE, json.dumps(self.meta, indent=1))


def _typed(row: dict[str, str]) -> dict:
    out: dict = {}
    for k, v in row.items():
        if k in ("tensor_type", "ggml_type"):
            out[k] = v
        else:
            try:
                out[k] = int(v)
            except ValueError:
                out[k] = float(v)
    return out


def planned_cells(inv: Inventory, ladders: dict[str, tuple[GGMLType, ...]]) -> list[tuple[str, GGMLType, Resolution]]:
    """Every cell's recipe, resolved and checked to change its tensor type alone."""
    cells = []
    for kind, ladder in ladders.items():
        for t in ladder:
            resolution = resolve(single_type_recipe(inv, kind, t), inv)
            check_single_type(resolution, kind, t, inv.path)
            cells.append((kind, t, resolution))
    return cells


def space_ladders(space: SearchSpace) -> dict[str, tuple[GGMLType, ...]]:
    """Per tensor type of a search space's parameters, the ggml types its ladder offers (the cells a
    surrogate needs to allocate over that space)."""
    out: dict[str, tuple[GGMLType, ...]] = {}
    for p in space.parameters:
        for kind in p.kinds:
            out[kind] = tuple(dict.fromkeys([*out.get(kind, ()), *p.ladder]))
    return out


def surrogate_ladders(space: SearchSpace, inv: Inventory) -> dict[str, tuple[GGMLType, ...]]:
    """The cells a surrogate of ``space`` needs: each parameter's ladder, and for every tensor type the space
    does not search (fixed, or left to ``unmatched``), the one type every recipe of the space gives it where
    that changes it (a study whose space searches a few tensor types still has the others quantized)."""
    out = space_ladders(space)
    same = resolve(space.recipe({p.name: 0 for p in space.parameters}), inv)
    for r in same.tensors:
        if r.tensor.kind not in out and r.ggml_type != r.tensor.ggml_type:
            out[r.tensor.kind] = tuple(dict.fromkeys([*out.get(r.tensor.kind, ()), r.ggml_type]))
    return out
