"""The table of ggml types: block geometry, bits per weight, imatrix needs, fallbacks, file types.

Mirrors src/llama-quant.cpp of the llama.cpp that llama-cpp-python 0.3.36 vendors.
"""

from __future__ import annotations

from enum import IntEnum

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..errors import RecipeSearchError

GGMLType = GGMLQuantizationType

#: Types that llama.cpp's quantizer can write (what a recipe rule may name).
QUANTIZABLE_TYPES: tuple[GGMLType, ...] = (
    GGMLType.F32, GGMLType.F16, GGMLType.BF16,
    GGMLType.Q8_0, GGMLType.Q6_K, GGMLType.Q5_K, GGMLType.Q5_1, GGMLType.Q5_0,
    GGMLType.Q4_K, GGMLType.IQ4_XS, GGMLType.IQ4_NL, GGMLType.Q4_1, GGMLType.Q4_0,
    GGMLType.MXFP4, GGMLType.Q3_K, GGMLType.IQ3_S, GGMLType.IQ3_XXS, GGMLType.Q2_K,
    GGMLType.IQ2_S, GGMLType.IQ2_XS, GGMLType.IQ2_XXS, GGMLType.IQ1_M, GGMLType.IQ1_S,
    GGMLType.TQ2_0, GGMLType.TQ1_0,
)

#: The default search ladder for 2-D weights, best first.
DEFAULT_LADDER: tuple[GGMLType, ...] = (
    GGMLType.Q8_0, GGMLType.Q6_K, GGMLType.Q5_K, GGMLType.Q5_1, GGMLType.Q5_0,
    GGMLType.Q4_K, GGMLType.IQ4_XS, GGMLType.IQ4_NL, GGMLType.Q4_1, GGMLType.Q4_0,
    GGMLType.MXFP4, GGMLType.Q3_K, GGMLType.IQ3_S, GGMLType.IQ3_XXS, GGMLType.Q2_K,
    GGMLType.IQ2_S, GGMLType.IQ2_XXS,
)

#: Types llama.cpp refuses to write without an imatrix (tensor_requires_imatrix; Q2_K only in Q2_K_S files).
IMATRIX_REQUIRED: frozenset[GGMLType] = frozenset({
    GGMLType.IQ3_XXS, GGMLType.IQ2_XXS, GGMLType.IQ2_XS, GGMLType.IQ2_S, GGMLType.IQ1_M, GGMLType.IQ1_S,
})

#: Types ggml itself cannot quantize without imatrix data (ggml_quantize_requires_imatrix): it aborts.
GGML_IMATRIX_REQUIRED: frozenset[GGMLType] = frozenset({GGMLType.IQ2_XXS, GGMLType.IQ2_XS, GGMLType.IQ1_S})

#: tensor_type_fallback: where a type goes when a row does not divide its block.
_FALLBACK: dict[GGMLType, GGMLType] = {
    **{t: GGMLType.IQ4_NL for t in (GGMLType.IQ1_S, GGMLType.IQ1_M, GGMLType.IQ2_XXS, GGMLType.IQ2_XS,
                                      GGMLType.IQ2_S, GGMLType.IQ3_XXS, GGMLType.IQ3_S, GGMLType.IQ4_XS)},
    **{t: GGMLType.Q4_0 for t in (GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.TQ1_0, GGMLType.TQ2_0)},
    GGMLType.Q4_K: GGMLType.Q5_0,
    GGMLType.Q5_K: GGMLType.Q5_1,
    GGMLType.Q6_K: GGMLType.Q8_0,
}


class FileType(IntEnum):
    """llama_ftype values (include/llama.h)."""

    ALL_F32 = 0
    MOSTLY_F16 = 1
    MOSTLY_Q4_0 = 2
    MOSTLY_Q4_1 = 3
    MOSTLY_Q8_0 = 7
    MOSTLY_Q5_0 = 8
    MOSTLY_Q5_1 = 9
    MOSTLY_Q2_K = 10
    MOSTLY_Q3_K_S = 11
    MOSTLY_Q3_K_M = 12
    MOSTLY_Q3_K_L = 13
    MOSTLY_Q4_K_S = 14
    MOSTLY_Q4_K_M = 15
    MOSTLY_Q5_K_S = 16
    MOSTLY_Q5_K_M = 17
    MOSTLY_Q6_K = 18
    MOSTLY_IQ2_XXS = 19
    MOSTLY_IQ2_XS = 20
    MOSTLY_Q2_K_S = 21
    MOSTLY_IQ3_XS = 22
    MOSTLY_IQ3_XXS = 23
    MOSTLY_IQ1_S = 24
    MOSTLY_IQ4_NL = 25
    MOSTLY_IQ3_S = 26
    MOSTLY_IQ3_M = 27
    MOSTLY_IQ2_S = 28
    MOSTLY_IQ2_M = 29
    MOSTLY_IQ4_XS = 30
    MOSTLY_IQ1_M = 31
    MOSTLY_BF16 = 32
    MOSTLY_TQ1_0 = 36
    MOSTLY_TQ2_0 = 37
    MOSTLY_MXFP4_MOE = 38

    @property
    def label(self) -> str:
        """The name llama-quantize takes on its command line (Q4_K_M, F16, MXFP4_MOE...)."""
        return "F32" if self is FileType.ALL_F32 else self.name.removeprefix("MOSTLY_")

    @property
    def default_type(self) -> GGMLType:
        """llama_ftype_get_default_type."""
        return _FTYPE_DEFAULT[self]


_FTYPE_DEFAULT: dict[FileType, GGMLType] = {
    FileType.ALL_F32: GGMLType.F32, FileType.MOSTLY_F16: GGMLType.F16, FileType.MOSTLY_BF16: GGMLType.BF16,
    FileType.MOSTLY_Q4_0: GGMLType.Q4_0, FileType.MOSTLY_Q4_1: GGMLType.Q4_1, FileType.MOSTLY_Q5_0: GGMLType.Q5_0,
    FileType.MOSTLY_Q5_1: GGMLType.Q5_1, FileType.MOSTLY_Q8_0: GGMLType.Q8_0,
    FileType.MOSTLY_MXFP4_MOE: GGMLType.MXFP4,
    FileType.MOSTLY_Q2_K_S: GGMLType.Q2_K, FileType.MOSTLY_Q2_K: GGMLType.Q2_K,
    FileType.MOSTLY_IQ3_XS: GGMLType.IQ3_S,
    FileType.MOSTLY_Q3_K_S: GGMLType.Q3_K, FileType.MOSTLY_Q3_K_M: GGMLType.Q3_K, FileType.MOSTLY_Q3_K_L: GGMLType.Q3_K,
    FileType.MOSTLY_Q4_K_S: GGMLType.Q4_K, FileType.MOSTLY_Q4_K_M: GGMLType.Q4_K,
    FileType.MOSTLY_Q5_K_S: GGMLType.Q5_K, FileType.MOSTLY_Q5_K_M: GGMLType.Q5_K,
    FileType.MOSTLY_Q6_K: GGMLType.Q6_K,
    FileType.MOSTLY_TQ1_0: GGMLType.TQ1_0, FileType.MOSTLY_TQ2_0: GGMLType.TQ2_0,
    FileType.MOSTLY_IQ2_XXS: GGMLType.IQ2_XXS, FileType.MOSTLY_IQ2_XS: GGMLType.IQ2_XS,
    FileType.MOSTLY_IQ2_S: GGMLType.IQ2_XS, FileType.MOSTLY_IQ2_M: GGMLType.IQ2_S,
    FileType.MOSTLY_IQ3_XXS: GGMLType.IQ3_XXS, FileType.MOSTLY_IQ1_S: GGMLType.IQ1_S,
    FileType.MOSTLY_IQ1_M: GGMLType.IQ1_M, FileType.MOSTLY_IQ4_NL: GGMLType.IQ4_NL,
    FileType.MOSTLY_IQ4_XS: GGMLType.IQ4_XS, FileType.MOSTLY_IQ3_S: GGMLType.IQ3_S,
    FileType.MOSTLY_IQ3_M: GGMLType.IQ3_S,
}


def parse_type(name: str) -> GGMLType:
    """A ggml type from its name, case-insensitive (``q4_k``, ``Q4_K``)."""
    try:
        return GGMLType.__members__[name.strip().upper()]
    except KeyError:
        known = ", ".join(t.name for t in QUANTIZABLE_TYPES)
        raise RecipeSearchError(f"unknown ggml type {name!r} (known: {known})") from None


def parse_file_type(name: str) -> FileType:
    """A llama_ftype from llama-quantize's name for it (``Q4_K_M``, ``F16``, ``MXFP4_MOE``)."""
    key = name.strip().upper()
    for ft in FileType:
        if ft.label == key:
            return ft
    known = ", ".join(ft.label for ft in FileType)
    raise RecipeSearchError(f"unknown file type {name!r} (known: {known})")


def pure_file_type(t: GGMLType) -> FileType:
    """A file type whose default type is ``t`` (for ``pure`` recipes with a catch-all type)."""
    for ft in FileType:
        if _FTYPE_DEFAULT[ft] == t:
            return ft
    raise RecipeSearchError(f"no llama.cpp file type has {t.name} as its default type")


def block_size(t: GGMLType) -> int:
    return GGML_QUANT_SIZES[t][0]


def type_size(t: GGMLType) -> int:
    """Bytes per block."""
    return GGML_QUANT_SIZES[t][1]


def bits_per_weight(t: GGMLType) -> float:
    bs, ts = GGML_QUANT_SIZES[t]
    return ts * 8 / bs


def is_quantized(t: GGMLType) -> bool:
    """ggml_is_quantized: anything but the plain float and integer types."""
    return t not in (GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.F64,
                     GGMLType.I8, GGMLType.I16, GGMLType.I32, GGMLType.I64)


def row_fits(t: GGMLType, ncols: int) -> bool:
    return ncols % block_size(t) == 0


def fallback(t: GGMLType, ncols: int) -> GGMLType:
    """tensor_type_fallback: the type llama.cpp writes when ``ncols`` does not divide ``t``'s block."""
    if row_fits(t, ncols):
        return t
    target = _FALLBACK.get(t)
    if target is None:
        if block_size(t) > 32:
            raise RecipeSearchError(f"llama.cpp defines no fallback for {t.name}")
        target = t
    return target if row_fits(target, ncols) else GGMLType.F16


def tensor_bytes(t: GGMLType, shape: tuple[int, ...]) -> int:
    """ggml_nbytes of a contiguous tensor of ``shape`` (ne order) stored as ``t``."""
    bs, ts = GGML_QUANT_SIZES[t]
    nrows = 1
    for n in shape[1:]:
        nrows *= n
    return nrows * (shape[0] // bs) * ts
