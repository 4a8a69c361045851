"""recipe-search: find per-tensor mixed-precision GGUF quantization recipes for llama.cpp."""

__version__ = "0.1.0"
