"""Head to head (experiments/head_to_head.py): the profiles (each model's texts, searched space, templates and
size targets) and the setup every method shares (imatrix, the search and held-out workers, the space, the study
config, the hypervolume's reference point)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from recipe_search import RecipeSearchError, predict_size, resolve
from recipe_search.core import Recipe, SearchSpace, SpaceConfig, StudyConfig, TextSource, build_space, text_sha256
from recipe_search.engine import ImatrixInput, ScoreSettings, Worker, collect_imatrix
from recipe_search.formats import GGMLType, parse_type, save_imatrix_gguf

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
WIKI = SHARED / "wikitext-2-raw" / "wiki.test.raw"
CTX, CHUNKS = 512, 20  # 20 x 255 = 5,100 scored tokens: the 99.9th percentile rests on ~5 tokens
MIN_TOKENS = 5000  # fewer scored tokens on a text than this is refused
#: fixed before the run: (file bytes of the uniform Q8_0 recipe, log10 of a 99.9% KLD of 10 nats); points beyond
#: either bound add nothing
REFERENCE_KLD = 10.0


def _demo_model() -> Path:
    from recipe_search.engine import demo_model_path

    return demo_model_path()


@dataclass(frozen=True)
class Profile:
    """One model's head to head: its texts (byte ranges of the corpus, wiki.test.raw), searched space, templates
    and targets."""

    label: str
    model: Callable[[], Path]
    search: tuple[float, float]
    holdout: tuple[float, float]
    calibration: tuple[float, float]
    ladder: tuple[str, ...]  # of each `big` tensor type
    big: tuple[str, ...]
    rest: tuple[str, ...]  # every other quantized tensor type: one tied parameter over `rest_ladder`
    rest_ladder: tuple[str, ...]
    low: tuple[str, ...]  # what the role templates put low, block 0 a band of its own; the last a step higher
    tied: tuple[str, str]  # two of `low` that share a type
    low_types: tuple[str, ...]  # the templates' low types
    hand_bases: tuple[str, str]  # the uniform types the hand sweep moves one parameter away from
    targets: tuple[float, ...]
    second_holdout: TextSource | None = None  # a second domain the picks are also re-scored on
    corpus: Path = WIKI  # the file the search, held-out and calibration ranges are cut from
    ctx: int = CTX
    min_tokens: int = MIN_TOKENS

    @property
    def searched(self) -> tuple[str, ...]:
        return (*self.big, *self.rest)

    @property
    def space(self) -> SpaceConfig:
        return SpaceConfig(tensor_types=list(self.searched), ladder=list(self.ladder),
                           ladders={k: list(self.rest_ladder) for k in self.rest},
                           tied=[list(self.tied), list(self.rest)], bands={k: [0, 1] for k in self.low},
                           unmatched="Q8_0")

    def text(self, span: tuple[float, float]) -> TextSource:
        return TextSource(self.corpus, *span)

    def text_spec(self, span: tuple[float, float]) -> str:
        return f"{self.corpus}[{span[0]}:{span[1]}]"


EXPERTS = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")
PROFILES = {
    # the model never trained on wiki.test.raw[0:0.4] (its README); three disjoint ranges of it. The big types
    # (token_embd, output, routed experts) are 86% of the weights; the rest (attention, SSM, shared experts) is
    # one tied parameter, so the role templates' "everything else at Q6_K / Q4_K" is in the space
    "tiny-qwen35moe": Profile(
        "tiny-qwen35moe/model-bf16.gguf", lambda: SHARED / "tiny-qwen35moe" / "model-bf16.gguf",
        (0.0, 0.12), (0.12, 0.24), (0.24, 0.4), ("Q8_0", "Q6_K", "Q4_K", "Q3_K", "Q2_K"),
        ("token_embd", "output", *EXPERTS),
        ("attn_qkv", "attn_gate", "attn_q", "attn_k", "attn_v", "attn_output", "ssm_out", "ssm_alpha", "ssm_beta",
         "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"), ("Q8_0", "Q6_K", "Q4_K"),
        EXPERTS, ("ffn_gate_exps", "ffn_up_exps"), ("Q2_K", "Q3_K"), ("Q4_K", "Q3_K"), (4.0, 5.0)),
    # Gemma 3 270M (F16 from Q4_K_M: its weights sit on Q4_K/Q5_0/Q6_K/Q8_0 grids already, so those types are
    # nearly free; its 640-wide rows send K-quants on most tensors to llama.cpp's fallbacks, which the measurements
    # record: Q6_K -> Q8_0, Q4_K -> Q5_0, Q3_K and Q2_K -> Q4_0, all on the ladder, beside IQ4_NL, a 32-block type).
    # token_embd is 63% of its weights; the held-out picks are also re-scored on the built-in text
    "demo": Profile(
        "gemma-3-270m-f16.gguf (demo)", _demo_model, (0.0, 0.1), (0.1, 0.2), (0.2, 0.3),
        ("Q8_0", "Q6_K", "Q5_0", "Q4_K", "IQ4_NL", "Q4_0", "Q3_K", "Q2_K"), ("token_embd", "ffn_gate", "ffn_up", "ffn_down"),
        ("attn_q", "attn_k", "attn_v", "attn_output"), ("Q8_0", "Q6_K", "Q5_0", "Q4_0"),
        ("ffn_gate", "ffn_up", "ffn_down"), ("ffn_gate", "ffn_up"), ("Q3_K", "Q4_0"), ("Q5_0", "Q4_0"), (5.0, 6.0),
        second_holdout=TextSource()),
}


def smoke_profile(model: Path, corpus: Path) -> Profile:
    """The demo profile on a generated tiny dense model (tests/tiny_models.py's: the demo's tensor types, and an
    untied output, searched with the rest) and a generated text, over fewer types, at a context of 128 with no floor
    on scored tokens: for the smoke mode, whose numbers mean nothing."""
    return dataclasses.replace(PROFILES["demo"], label=f"{model.name} (smoke)", model=lambda: model,
                               ladder=("Q8_0", "Q4_0", "Q3_K"), rest=(*PROFILES["demo"].rest, "output"),
                               rest_ladder=("Q8_0", "Q4_0"), corpus=corpus, ctx=128, min_tokens=0)


# -- setup ------------------------------------------------------------------------------------------
@dataclass
class Setup:
    work: Path
    imatrix_path: Path
    imatrix: ImatrixInput
    search: Worker
    holdout: Worker
    second: Worker | None  # the profile's second held-out domain
    space: SearchSpace
    config: StudyConfig
    reference_point: tuple[float, float]
    log: Callable[[str], None]
    profile: Profile

    @property
    def model(self) -> Path:
        return self.search.model

    @property
    def extra_kv(self) -> dict:
        return self.imatrix.kv()

    def size(self, recipe: Recipe) -> tuple[int, float]:
        s = predict_size(resolve(recipe, self.search.inventory), self.search.inventory, self.extra_kv)
        return s.file_bytes, s.bits_per_weight


def setup(profile: Profile, work: Path, threads: int, log: Callable[[str], None], holdout_chunks: int | None = CHUNKS,
          chunks: int = CHUNKS) -> Setup:
    work.mkdir(parents=True, exist_ok=True)
    model = profile.model()
    calibration = profile.text(profile.calibration)
    cache = work / "cache"
    imatrix_path = work / "imatrix-calibration.gguf"
    if not imatrix_path.exists():
        log(f"imatrix on {calibration.label}")
        im = collect_imatrix(model, calibration.read(), ctx=profile.ctx, n_chunks=None, n_threads=threads,
                             process_output=True, dataset=calibration.label)
        save_imatrix_gguf(im, imatrix_path)
    imatrix = ImatrixInput.from_file(imatrix_path)

    def worker(source: TextSource, n: int | None) -> Worker:
        return Worker(model, ScoreSettings(source, profile.ctx, n, threads), cache, work / "work", imatrix=imatrix)

    search, holdout = worker(profile.text(profile.search), chunks), worker(profile.text(profile.holdout), holdout_chunks)
    second = worker(profile.second_holdout, holdout_chunks) if profile.second_holdout else None
    config = StudyConfig(text=profile.text_spec(profile.search), holdout_text=profile.text_spec(profile.holdout),
                         ctx=profile.ctx, chunks=chunks, imatrix=str(imatrix_path), threads=threads,
                         objectives=["size", "kld_p999"], space=profile.space,
                         references={"uniform": "ladder", "presets": ["Q4_K_M"]})
    space = build_space(config, search.inventory, has_imatrix=True)
    q8 = predict_size(resolve(space.recipe(space.nearest({k: GGMLType.Q8_0 for p in space.parameters for k in p.kinds},
                                                         search.inventory)), search.inventory),
                      search.inventory, imatrix.kv())
    for w, what in ((search, "search"), (holdout, "held-out"), *([(second, "second held-out")] if second else [])):
        n = w.reference.meta["n_tokens"]
        log(f"{what} reference: {n} scored tokens of {w.settings.text.label}")
        if n < profile.min_tokens:
            raise RecipeSearchError(f"the {what} text gives {n} scored tokens, fewer than {profile.min_tokens:,}")
    return Setup(work, imatrix_path, imatrix, search, holdout, second, space, config,
                 (float(q8.file_bytes), math.log10(REFERENCE_KLD)), log, profile)


def provenance(s: Setup) -> dict:
    """The model by fingerprint, each text by digest, the imatrix by the digest of what the quantizer receives."""
    meta = {what: w.reference.meta for what, w in (("search", s.search), ("holdout", s.holdout), ("second", s.second))
            if w is not None}
    return {"model_fingerprint": meta["search"]["model_fingerprint"],
            "text_sha256": {**{what: m["text_sha256"] for what, m in meta.items()},
                            "imatrix_calibration": text_sha256(s.profile.text(s.profile.calibration).read())},
            "imatrix_digest": s.imatrix.digest}


def uniform_choice(s: Setup, t: str) -> dict[str, int]:
    return s.space.nearest({k: parse_type(t) for p in s.space.parameters for k in p.kinds}, s.search.inventory)
