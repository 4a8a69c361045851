"""Tensor roles across the architectures llama.cpp knows, and a recipe carried from one model family to
another by role and relative depth instead of by its regexes.

A role is what a tensor does (an attention query projection, a routed expert's down projection, ...),
read off llama.cpp's own tensor names as the `gguf` package lists them (``gguf.MODEL_TENSOR`` and
``gguf.TENSOR_NAMES``), so ``ffn_down`` of a dense llama, ``ffn_down_exps`` of a MoE and
``ffn_down_shexp`` of its shared expert are three roles of one kind (down), and ``attn_qkv`` is the fused
form of ``attn_q``/``attn_k``/``attn_v``.

Carrying: each tensor of the target model gets the type its role's counterpart had in the source model
at the matching depth. Depth is relative (block / blocks), except that the first and last blocks keep
their place from the model's ends, so protection of a source's first blocks stays on the target's first
blocks. Counterparts: a role itself; across dense and MoE models the FFN of the same kind (up, gate, down),
routed and shared experts alike; fused ``attn_qkv`` from q/k/v (the highest of their types) and q/k/v from
``attn_qkv``; the recurrent input and output projections (``ssm_in``, ``ssm_out``) and the attention
ones (``attn_qkv``, ``attn_output``) stand in for each other, as uploaders treat them alike.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from enum import Enum

import gguf

from ..errors import RecipeSearchError
from ..formats.ggml_types import GGMLType, bits_per_weight
from .inventory import Inventory, Tensor
from .recipe import Recipe, Rule, Unmatched
from .resolution import MixtureOracle, resolve


class Role(str, Enum):
    EMBEDDING = "embedding"
    OUTPUT = "output"
    ATTN_Q = "attn.q"
    ATTN_K = "attn.k"
    ATTN_V = "attn.v"
    ATTN_QKV = "attn.qkv"
    ATTN_OUTPUT = "attn.output"
    ATTN_GATE = "attn.gate"
    ATTN_LOW_RANK = "attn.low_rank"  # MLA's a/b projections
    SSM_IN = "ssm.in"
    SSM_OUT = "ssm.out"
    SSM_SMALL = "ssm.small"  # conv, dt, a, d, alpha, beta, ...
    FFN_UP = "ffn.up"
    FFN_GATE = "ffn.gate"
    FFN_DOWN = "ffn.down"
    EXPERTS_UP = "experts.up"
    EXPERTS_GATE = "experts.gate"
    EXPERTS_DOWN = "experts.down"
    SHARED_UP = "shared.up"
    SHARED_GATE = "shared.gate"
    SHARED_DOWN = "shared.down"
    ROUTER = "router"
    MTP = "mtp"  # a multi-token-prediction layer's own projection (GLM's nextn)
    NORM = "norm"
    OTHER = "other"


_T = gguf.MODEL_TENSOR
_BY_TENSOR: dict[gguf.MODEL_TENSOR, Role] = {
    _T.TOKEN_EMBD: Role.EMBEDDING, _T.OUTPUT: Role.OUTPUT,
    _T.ATTN_Q: Role.ATTN_Q, _T.ATTN_K: Role.ATTN_K, _T.ATTN_V: Role.ATTN_V, _T.ATTN_QKV: Role.ATTN_QKV,
    _T.ATTN_OUT: Role.ATTN_OUTPUT, _T.ATTN_GATE: Role.ATTN_GATE,
    _T.ATTN_Q_A: Role.ATTN_LOW_RANK, _T.ATTN_Q_B: Role.ATTN_LOW_RANK, _T.ATTN_KV_A_MQA: Role.ATTN_LOW_RANK,
    _T.ATTN_KV_B: Role.ATTN_LOW_RANK, _T.ATTN_K_B: Role.ATTN_LOW_RANK, _T.ATTN_V_B: Role.ATTN_LOW_RANK,
    _T.SSM_IN: Role.SSM_IN, _T.SSM_OUT: Role.SSM_OUT,
    _T.FFN_UP: Role.FFN_UP, _T.FFN_GATE: Role.FFN_GATE, _T.FFN_DOWN: Role.FFN_DOWN,
    _T.FFN_UP_EXP: Role.EXPERTS_UP, _T.FFN_GATE_EXP: Role.EXPERTS_GATE, _T.FFN_DOWN_EXP: Role.EXPERTS_DOWN,
    _T.FFN_UP_SHEXP: Role.SHARED_UP, _T.FFN_GATE_SHEXP: Role.SHARED_GATE, _T.FFN_DOWN_SHEXP: Role.SHARED_DOWN,
    _T.FFN_GATE_INP: Role.ROUTER, _T.FFN_GATE_INP_SHEXP: Role.ROUTER,
    _T.NEXTN_EMBED_TOKENS: Role.EMBEDDING, _T.NEXTN_SHARED_HEAD_HEAD: Role.OUTPUT, _T.NEXTN_EH_PROJ: Role.MTP,
}
_SSM_SMALL_PREFIX = "SSM_"  # every other SSM_* tensor: convolutions, dt, A, D, alpha, beta, their norms


def _kind_of(name: str) -> str:
    return name.removeprefix("blk.{bid}.")


def _role_table() -> dict[str, Role]:
    table: dict[str, Role] = {}
    for tensor, name in gguf.TENSOR_NAMES.items():
        kind = _kind_of(name)
        if tensor in _BY_TENSOR:
            table[kind] = _BY_TENSOR[tensor]
        elif tensor.name.startswith(_SSM_SMALL_PREFIX):
            table[kind] = Role.NORM if tensor.name.endswith("NORM") else Role.SSM_SMALL
        elif tensor.name.endswith("_NORM") or kind.endswith("_norm"):
            table[kind] = Role.NORM
    return table


#: tensor type (``blk.N.`` and ``.weight`` stripped, as `Inventory` names them) -> role, for every name
#: llama.cpp knows; a bias or a scale of a known type has its type's role
ROLES: dict[str, Role] = _role_table()


def role_of(kind: str) -> Role:
    base = kind.removesuffix(".bias").removesuffix(".scale")
    return ROLES.get(kind) or ROLES.get(base) or Role.OTHER


#: where a role's type comes from when the source has no tensor of that role, in order of preference
_COUNTERPARTS: dict[Role, tuple[Role, ...]] = {
    Role.FFN_UP: (Role.SHARED_UP, Role.EXPERTS_UP), Role.FFN_GATE: (Role.SHARED_GATE, Role.EXPERTS_GATE),
    Role.FFN_DOWN: (Role.SHARED_DOWN, Role.EXPERTS_DOWN),
    Role.EXPERTS_UP: (Role.FFN_UP, Role.SHARED_UP), Role.EXPERTS_GATE: (Role.FFN_GATE, Role.SHARED_GATE),
    Role.EXPERTS_DOWN: (Role.FFN_DOWN, Role.SHARED_DOWN),
    Role.SHARED_UP: (Role.FFN_UP, Role.EXPERTS_UP), Role.SHARED_GATE: (Role.FFN_GATE, Role.EXPERTS_GATE),
    Role.SHARED_DOWN: (Role.FFN_DOWN, Role.EXPERTS_DOWN),
    Role.ATTN_QKV: (Role.ATTN_Q, Role.ATTN_K, Role.ATTN_V, Role.SSM_IN),
    Role.ATTN_Q: (Role.ATTN_QKV,), Role.ATTN_K: (Role.ATTN_QKV,), Role.ATTN_V: (Role.ATTN_QKV,),
    Role.SSM_IN: (Role.ATTN_QKV, Role.ATTN_Q, Role.ATTN_K, Role.ATTN_V),
    Role.ATTN_OUTPUT: (Role.SSM_OUT,), Role.SSM_OUT: (Role.ATTN_OUTPUT,),
    Role.EMBEDDING: (Role.OUTPUT,), Role.OUTPUT: (Role.EMBEDDING,),
}


@dataclass(frozen=True)
class Carried:
    """A recipe carried onto another model: the recipe, and what it could not carry."""

    recipe: Recipe
    counterparts: dict[str, str]  # target tensor type -> where its types came from (e.g. "ffn_down")
    no_counterpart: list[str]  # target tensor types left to the source recipe's unmatched type
    no_role: list[str]  # source tensor types of no role llama.cpp names: not carried
    unused_rules: list[str]  # the recipe's rules that name no tensor of the source model


def _source_block(block: int, n_target: int, n_source: int) -> int:
    """The source block that matches target block ``block``: by relative depth, but the first and last
    blocks keep their distance from the nearer end (a protected first block stays the first)."""
    if n_source <= 1 or n_target <= 1:
        return 0
    rel = round(block / (n_target - 1) * (n_source - 1))
    if block <= (n_target - 1) / 2:
        return min(block, rel)
    from_end = n_target - 1 - block
    return max(n_source - 1 - from_end, rel)


def carry(recipe: Recipe, source: Inventory, target: Inventory, mixture: MixtureOracle | None = None) -> Carried:
    """``recipe`` (made for ``source``) carried onto ``target`` by role and depth; see the module docstring.
    The carried types are the source's intended types (before its own row-size fallbacks); the result
    resolves on the target with the target's fallbacks. A recipe of llama.cpp's own mixture is resolved on the
    source by ``mixture`` (its dry run); what has no counterpart gets the mixture's default type."""
    resolved = resolve(recipe, source, mixture)
    used = {r.rule for r in resolved.tensors if r.rule is not None}
    if recipe.rules and not used:
        raise RecipeSearchError(f"recipe {recipe.name!r}: no rule names a tensor of this {source.arch} model "
                                "(a recipe for another model?)", source.path)
    unused = [f"{rule.tensors}" + (f" (blocks {rule.blocks})" if rule.blocks else "")
              for i, rule in enumerate(recipe.rules) if i not in used]
    by_role: dict[Role, dict[int | None, list[GGMLType]]] = defaultdict(lambda: defaultdict(list))
    kinds_of_role: dict[Role, set[str]] = defaultdict(set)
    for r in resolved.tensors:
        if r.tensor.quantizable:
            role = role_of(r.tensor.kind)
            by_role[role][r.tensor.block].append(r.requested)  # the intended type: the target applies its own fallbacks
            kinds_of_role[role].add(r.tensor.kind)
    n_source, n_target = source.n_blocks, target.n_blocks
    chosen: dict[str, GGMLType] = {}
    counterparts: dict[str, str] = {}
    missing: list[str] = []
    for kind, k in target.kinds.items():
        if not k.quantizable:
            continue
        role = role_of(kind)
        roles = [role] if role in by_role else [c for c in _COUNTERPARTS.get(role, ()) if c in by_role]
        if not roles or role in (Role.OTHER, Role.NORM):
            missing.append(kind)
            continue
        fused = role is Role.ATTN_QKV and roles[0] in (Role.ATTN_Q, Role.ATTN_K, Role.ATTN_V)
        use = [r for r in roles if r in (Role.ATTN_Q, Role.ATTN_K, Role.ATTN_V)] if fused else roles[:1]
        counterparts[kind] = ", ".join(sorted(k for r in use for k in kinds_of_role[r]))
        for t in k.tensors:
            chosen[t.name] = max((_type_at(by_role[r], t, n_target, n_source) for r in use), key=bits_per_weight)
    provenance = {"carried_from": {"recipe": recipe.name, "architecture": source.arch, "blocks": source.n_blocks}}
    unmatched = Unmatched(type=recipe.file_type.default_type.name) if recipe.uses_mixture else recipe.unmatched
    no_role = sorted({k for k in kinds_of_role[Role.OTHER]})
    return Carried(recipe_of_types(f"{recipe.name}-carried-to-{target.arch}", unmatched, target, chosen, provenance),
                   counterparts, missing, no_role, unused)


def _type_at(blocks: dict[int | None, list[GGMLType]], t: Tensor, n_target: int, n_source: int) -> GGMLType:
    """The source role's type nearest to tensor ``t``'s depth (the most common one at that block)."""
    if None in blocks or t.block is None:
        types = blocks.get(None) or [x for ts in blocks.values() for x in ts]
    else:
        want = _source_block(t.block, n_target, n_source)
        nearest = min((b for b in blocks if b is not None), key=lambda b: (abs(b - want), b))
        types = blocks[nearest]
    return max(set(types), key=types.count)


def recipe_of_types(name: str, unmatched: Unmatched, inv: Inventory, chosen: dict[str, GGMLType],
                    provenance: dict | None = None) -> Recipe:
    """A recipe giving each tensor named in ``chosen`` its type: one rule per (tensor type, ggml type), its
    blocks listed where a type covers only some; every other tensor gets ``unmatched``."""
    groups: dict[tuple[str, GGMLType], list[int | None]] = defaultdict(list)
    for tensor_name, t in chosen.items():
        tensor = inv.by_name[tensor_name]
        groups[(tensor.kind, t)].append(tensor.block)
    rules = []
    for (kind, t), blocks in sorted(groups.items(), key=lambda kv: (kv[0][0], -bits_per_weight(kv[0][1]))):
        every = len(blocks) == inv.kinds[kind].count
        numbered = sorted(b for b in blocks if b is not None)
        rules.append(Rule(tensors=kind, type=t.name, blocks=None if every or not numbered else numbered))
    return Recipe(name=name, unmatched=unmatched, rules=rules, provenance=provenance)


#: the roles a profile groups tensors by: the kinds of one family's role
_ROLE_GROUP: dict[Role, str] = {
    Role.EMBEDDING: "embedding", Role.OUTPUT: "output",
    Role.ATTN_Q: "attention", Role.ATTN_K: "attention", Role.ATTN_V: "attention", Role.ATTN_QKV: "attention",
    Role.ATTN_OUTPUT: "attention", Role.ATTN_GATE: "attention", Role.ATTN_LOW_RANK: "attention",
    Role.SSM_IN: "ssm", Role.SSM_OUT: "ssm", Role.SSM_SMALL: "ssm",
    Role.FFN_UP: "ffn up/gate", Role.FFN_GATE: "ffn up/gate", Role.FFN_DOWN: "ffn down",
    Role.EXPERTS_UP: "ffn up/gate", Role.EXPERTS_GATE: "ffn up/gate", Role.EXPERTS_DOWN: "ffn down",
    Role.SHARED_UP: "ffn up/gate", Role.SHARED_GATE: "ffn up/gate", Role.SHARED_DOWN: "ffn down",
}
BANDS = ("first", "middle", "last")


@dataclass(frozen=True)
class RoleProfile:
    """A recipe on a model, by role group and relative depth: per group, (depth in [0, 1], bits, elements)
    of each block's tensors at their resolved types; a tensor outside the blocks (embedding, output) sits at
    depth 0 or 1."""

    points: dict[str, list[tuple[float, float, int]]]

    def curve(self, group: str) -> list[tuple[float, float]]:
        """(depth, bits per weight) of the group's tensors, one point per block, elements weighting each."""
        by_depth: dict[float, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for depth, bits, n in self.points.get(group, []):
            by_depth[depth][0] += bits
            by_depth[depth][1] += n
        return [(d, b / n) for d, (b, n) in sorted(by_depth.items())]

    def bands(self) -> dict[str, dict[str, float]]:
        """Per group, bits per weight in the first, middle and last third of the depth."""
        out: dict[str, dict[str, float]] = {}
        for group, points in self.points.items():
            acc: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
            for depth, bits, n in points:
                band = BANDS[min(2, int(depth * 3))]
                acc[band][0] += bits
                acc[band][1] += n
            out[group] = {band: b / n for band, (b, n) in acc.items()}
        return out


def role_profile(recipe: Recipe, inv: Inventory) -> RoleProfile:
    n = inv.n_blocks
    points: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    for r in resolve(recipe, inv).tensors:
        group = _ROLE_GROUP.get(role_of(r.tensor.kind))
        if group is None or not r.tensor.quantizable:
            continue
        if r.tensor.block is None:
            depth = 1.0 if role_of(r.tensor.kind) is Role.OUTPUT else 0.0
        else:
            depth = r.tensor.block / (n - 1) if n > 1 else 0.0
        points[group].append((depth, bits_per_weight(r.ggml_type) * r.tensor.n_elements, r.tensor.n_elements))
    return RoleProfile(dict(points))
