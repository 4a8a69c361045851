"""Reading back what the tool exports, the way llama.cpp's tools read it."""

from __future__ import annotations

from recipe_search.core.dialects import parse_tensor_type_file
from recipe_search.formats.ggml_types import GGMLType, parse_type


def llama_quantize_reads(text: str) -> list[tuple[str, GGMLType]]:
    """A --tensor-type-file as llama-quantize reads it: the dialect reader's entries, patterns lower-cased."""
    return [(e.pattern.lower(), parse_type(e.type_name)) for e in parse_tensor_type_file(text, "<exported>").entries]
