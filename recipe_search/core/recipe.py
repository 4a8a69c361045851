"""The recipe: a validated, ordered list of `tensor type or pattern -> ggml type` rules, as YAML."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import RecipeSearchError
from ..formats.files import atomic_write_text, check_output_file
from ..formats.ggml_types import FileType, GGMLType, is_quantized, parse_file_type, parse_type, pure_file_type
from .rule_match import SIMPLE
from .yaml_file import load_yaml

SCHEMA_VERSION = 1

# Regex syntax that std::regex (ECMAScript) lacks, or that llama-quantize's lower-casing would change.
_NON_PORTABLE = (
    (re.compile(r"\(\?(P|<|i|m|s|x|a)"), "Python-only group syntax"),
    (re.compile(r"\\[ADSWBZ]"), "an upper-case escape (llama-quantize lower-cases patterns, so \\D would become \\d)"),
)


_SPACE_OR_EQUALS = re.compile(r"[\s=]")  # \s of a str pattern: what str.isspace() calls whitespace


def check_pattern(pattern: str) -> None:
    """Raise ValueError when ``pattern`` is not a regex both Python and llama.cpp read the same way."""
    if SIMPLE.fullmatch(pattern):  # literal text, escaped dots, anchors: nothing to check (a recipe may hold 300k)
        return
    problem = _pattern_problem(pattern)
    if problem:
        raise ValueError(problem)


@functools.lru_cache(maxsize=1 << 16)
def _pattern_problem(pattern: str) -> str | None:
    if not pattern:
        return "empty pattern"
    for rx, why in _NON_PORTABLE:
        if rx.search(pattern):
            return f"pattern {pattern!r} uses {why}"
    if _SPACE_OR_EQUALS.search(pattern):
        return f"pattern {pattern!r} contains whitespace or '=', which --tensor-type-file cannot carry"
    try:
        re.compile(pattern)
    except re.error as err:
        return f"invalid regex {pattern!r}: {err}"
    return None


def kind_pattern(kind: str, blocks: list[int] | None = None) -> str:
    """An exact, anchored regex for one tensor type, optionally restricted to some blocks.

    ``ffn_up`` must not catch ``ffn_up_exps`` and ``attn_q`` must not catch ``attn_qkv``, under
    Python's ``re.search``, llama.cpp's ``std::regex_search`` and llama-quantize's lower-casing alike.
    """
    return _kind_pattern(kind, tuple(blocks) if blocks else None)


@functools.lru_cache(maxsize=1 << 14)
def _kind_pattern(kind: str, blocks: tuple[int, ...] | None) -> str:
    body = re.escape(kind) + r"\.weight$"
    if blocks:
        return r"^blk\.(" + "|".join(str(b) for b in sorted(set(blocks))) + r")\." + body
    return r"^(blk\.\d+\.)?" + body


class Rule(BaseModel):
    """One override: the tensors it names (a tensor type, optionally some blocks, or a regex) and their type."""

    model_config = ConfigDict(extra="forbid")

    tensors: str | None = None
    blocks: list[int] | None = None
    pattern: str | None = None
    type: str

    @field_validator("type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        try:
            return parse_type(v).name
        except RecipeSearchError as err:
            raise ValueError(str(err)) from None

    @field_validator("pattern")
    @classmethod
    def _portable(cls, v: str | None) -> str | None:
        if v is not None:
            check_pattern(v)
        return v

    @model_validator(mode="after")
    def _one_target(self) -> Rule:
        if (self.tensors is None) == (self.pattern is None):
            raise ValueError("a rule names either `tensors` (a tensor type) or `pattern` (a regex), not both")
        if self.blocks is not None and self.tensors is None:
            raise ValueError("`blocks` goes with `tensors`")
        return self

    @property
    def ggml_type(self) -> GGMLType:
        return parse_type(self.type)

    @property
    def regex(self) -> str:
        return self.pattern if self.pattern is not None else kind_pattern(self.tensors or "", self.blocks)

    @property
    def label(self) -> str:
        if self.pattern is not None:
            return self.pattern
        assert self.tensors is not None  # the validator requires `tensors` or `pattern`
        return self.tensors + (f"[blocks {','.join(map(str, self.blocks))}]" if self.blocks else "")


class Unmatched(BaseModel):
    """What tensors no rule matches get: one explicit type, or a llama.cpp file type (pure or its mixture)."""

    model_config = ConfigDict(extra="forbid")

    type: str | None = None
    file_type: str | None = None
    pure: bool = True

    @model_validator(mode="after")
    def _one(self) -> Unmatched:
        if (self.type is None) == (self.file_type is None):
            raise ValueError("`unmatched` gives either `type` or `file_type` (with `pure`)")
        if self.type is not None:
            self.type = parse_type(self.type).name
        if self.file_type is not None:
            self.file_type = parse_file_type(self.file_type).label
        return self


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    architecture: str
    tensor_count: int
    sha256: str | None = None
    name: str | None = None
    file: str | None = None  # the model's file name (never a path: recipes are shared)
    file_bytes: int | None = None
    fingerprint: str | None = None  # inventory.model_fingerprint: sizes, header, sampled data


class Recipe(BaseModel):
    """A quantization recipe: ordered rules (first match wins) plus the treatment of unmatched tensors."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = Field(default=SCHEMA_VERSION, alias="schema")
    name: str
    model: ModelRef | None = None
    unmatched: Unmatched
    imatrix: str | None = None
    token_embedding_type: str | None = None
    output_tensor_type: str | None = None
    rules: list[Rule] = Field(default_factory=list)
    metrics: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None

    @field_validator("schema_version")
    @classmethod
    def _schema(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"unsupported recipe schema {v} (this tool reads {SCHEMA_VERSION})")
        return v

    @field_validator("token_embedding_type", "output_tensor_type")
    @classmethod
    def _opt_type(cls, v: str | None) -> str | None:
        return None if v is None else parse_type(v).name

    # -- what llama.cpp's quantizer is given --------------------------------------------------------
    @property
    def file_type(self) -> FileType:
        u = self.unmatched
        if u.file_type is not None:
            return parse_file_type(u.file_type)
        assert u.type is not None  # Unmatched's validator requires `type` or `file_type`
        t = parse_type(u.type)
        return pure_file_type(t) if is_quantized(t) else FileType.MOSTLY_Q8_0

    @property
    def pure(self) -> bool:
        return self.unmatched.pure if self.unmatched.file_type is not None else True

    @property
    def uses_mixture(self) -> bool:
        """True when unmatched tensors get llama.cpp's own per-tensor mixture (file type, not pure)."""
        return not self.pure and self.unmatched.file_type is not None

    def overrides(self) -> list[tuple[str, GGMLType]]:
        """The ordered (regex, type) list for ``tt_overrides``, the catch-all appended where one is needed."""
        out = [(r.regex, r.ggml_type) for r in self.rules]
        u = self.unmatched
        if u.type is not None and not is_quantized(parse_type(u.type)):
            out.append((".", parse_type(u.type)))
        return out

    # -- YAML ---------------------------------------------------------------------------------------
    def to_yaml(self) -> str:
        data = self.model_dump(by_alias=True, exclude_none=True, mode="json")
        if self.unmatched.type is not None:
            data["unmatched"].pop("pure", None)
        data["rules"] = [r.model_dump(exclude_none=True) for r in self.rules]
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120, default_flow_style=None)

    def save(self, path: str | Path, *, overwrite: bool = True) -> Path:
        """Write atomically (temp file + rename); refuse to replace an existing file unless ``overwrite``."""
        path = check_output_file(path)
        if path.exists() and not overwrite:
            raise RecipeSearchError("exists already (use --force to replace it)", path)
        atomic_write_text(path, self.to_yaml())
        return path


def recipe_from_dict(data: object, source: str | Path = "<recipe>") -> Recipe:
    """Validate ``data``; any problem becomes one line naming the source and the field."""
    if not isinstance(data, dict):
        raise RecipeSearchError("a recipe is a YAML mapping", source)
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "recipe"
        msg = first["msg"].removeprefix("Value error, ")
        raise RecipeSearchError(f"{where}: {msg}", source) from None
    except RecipeSearchError as err:
        raise RecipeSearchError(str(err), source) from None


def load_recipe(path: str | Path) -> Recipe:
    return recipe_from_dict(load_yaml(path, "recipe"), path)


def uniform_recipe(t: GGMLType | str, name: str | None = None) -> Recipe:
    """Every quantizable tensor to one type (what ``llama-quantize --pure`` gives)."""
    t = parse_type(t) if isinstance(t, str) else t
    return Recipe(name=name or f"uniform-{t.name}", unmatched=Unmatched(type=t.name))


def preset_recipe(file_type: str) -> Recipe:
    """llama.cpp's own preset (its per-tensor mixture), e.g. ``Q4_K_M``."""
    ft = parse_file_type(file_type)
    return Recipe(name=f"preset-{ft.label}", unmatched=Unmatched(file_type=ft.label, pure=False))


