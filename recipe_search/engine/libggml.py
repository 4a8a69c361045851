"""ctypes for libggml-base: the tensor struct (to read graph tensors) and the row quantizers.

Layout, enum values and signatures follow ggml/include/ggml.h of the llama.cpp vendored by
llama-cpp-python 0.3.36. This is the one module that knows libggml's ctypes details.
"""

from __future__ import annotations

import ctypes
import functools
import os
import pathlib
from typing import Any

import numpy as np

GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10
GGML_MAX_OP_PARAMS = 64
GGML_MAX_NAME = 64

# enum ggml_type: llama.cpp graphs keep activations in F32; MUL_MAT_ID's expert ids are I32
GGML_TYPE_F32 = 0
GGML_TYPE_I32 = 26

# enum ggml_op: position in the enum (GGML_OP_NONE = 0, ..., GGML_OP_L2_NORM, GGML_OP_MUL_MAT, GGML_OP_MUL_MAT_ID)
GGML_OP_MUL_MAT = 29
GGML_OP_MUL_MAT_ID = 30

_NUMPY_TYPE = {GGML_TYPE_F32: np.float32, GGML_TYPE_I32: np.int32}


class GgmlTensor(ctypes.Structure):
    """struct ggml_tensor."""


GgmlTensor._fields_ = [
    ("type", ctypes.c_int),
    ("buffer", ctypes.c_void_p),
    ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
    ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
    ("op", ctypes.c_int),
    ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
    ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(GgmlTensor) * GGML_MAX_SRC),
    ("view_src", ctypes.POINTER(GgmlTensor)),
    ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p),
    ("name", ctypes.c_char * GGML_MAX_NAME),
    ("extra", ctypes.c_void_p),
    ("padding", ctypes.c_char * 8),
]

_TensorP = ctypes.POINTER(GgmlTensor)

_ToFloat = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)


class GgmlTypeTraits(ctypes.Structure):
    """struct ggml_type_traits."""

    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


def lib_dir() -> pathlib.Path:
    """The folder llama-cpp-python loads its shared libraries from (LLAMA_CPP_LIB_PATH overrides, as there)."""
    override = os.environ.get("LLAMA_CPP_LIB_PATH")
    if override is not None:
        return pathlib.Path(override)
    import llama_cpp

    return pathlib.Path(llama_cpp.__file__).resolve().parent / "lib"


@functools.cache
def ggml_base() -> ctypes.CDLL:
    """libggml-base, with the signatures used here declared."""
    lib = ctypes.CDLL(str(lib_dir() / "libggml-base.so"))
    lib.ggml_nbytes.argtypes = [_TensorP]
    lib.ggml_nbytes.restype = ctypes.c_size_t
    lib.ggml_nrows.argtypes = [_TensorP]
    lib.ggml_nrows.restype = ctypes.c_int64
    lib.ggml_op_name.argtypes = [ctypes.c_int]
    lib.ggml_op_name.restype = ctypes.c_char_p
    lib.ggml_type_name.argtypes = [ctypes.c_int]
    lib.ggml_type_name.restype = ctypes.c_char_p
    lib.ggml_tensor_overhead.argtypes = []
    lib.ggml_tensor_overhead.restype = ctypes.c_size_t
    lib.ggml_backend_buffer_is_host.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_buffer_is_host.restype = ctypes.c_bool
    lib.ggml_backend_tensor_get.argtypes = [_TensorP, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    lib.ggml_backend_tensor_get.restype = None
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    lib.ggml_get_type_traits.restype = ctypes.POINTER(GgmlTypeTraits)
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    lib.ggml_quantize_init.restype = None
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_validate_row_data.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    lib.ggml_validate_row_data.restype = ctypes.c_bool
    return lib


@functools.cache
def buffer_types() -> dict[str, int]:
    """Each device's default buffer type by its name (``CPU``, ``CUDA0``, ...): the names ``-ot PATTERN=BUFFER``
    accepts (``parse_tensor_buffer_overrides`` in common/arg.cpp)."""
    lib = ctypes.CDLL(str(lib_dir() / "libggml.so"))  # the device registry; buffer type names are in libggml-base
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_buffer_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_buffer_type.restype = ctypes.c_void_p
    lib.ggml_backend_buft_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_buft_name.restype = ctypes.c_char_p
    out = {}
    for i in range(lib.ggml_backend_dev_count()):
        buft = lib.ggml_backend_dev_buffer_type(lib.ggml_backend_dev_get(i))
        if buft:
            out[lib.ggml_backend_buft_name(buft).decode()] = int(buft)
    return out


def ggml_base_path() -> pathlib.Path:
    """The libggml-base file whose quantizers produce the bytes (part of a cached tensor's identity)."""
    return lib_dir() / "libggml-base.so"


def row_size(ggml_type: int, n_per_row: int) -> int:
    """ggml_row_size: bytes of one row of ``n_per_row`` elements."""
    return ggml_base().ggml_row_size(ggml_type, n_per_row)


def to_float(ggml_type: int, data: np.ndarray, n_elements: int) -> np.ndarray:
    """The type's ``to_float`` (type traits) over ``n_elements``: F16/BF16 conversion or dequantization."""
    fn = ggml_base().ggml_get_type_traits(ggml_type).contents.to_float
    if not fn:
        raise ValueError(f"ggml has no to_float for {ggml_base().ggml_type_name(ggml_type).decode()}")
    data = np.ascontiguousarray(data)
    out = np.empty(n_elements, dtype=np.float32)
    _ToFloat(fn)(data.ctypes.data, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), n_elements)
    return out


def requires_imatrix(ggml_type: int) -> bool:
    """ggml_quantize_requires_imatrix: ggml aborts without imatrix data for this type."""
    return bool(ggml_base().ggml_quantize_requires_imatrix(ggml_type))


def quantize_rows(ggml_type: int, rows: np.ndarray, out: np.ndarray, imatrix: np.ndarray | None) -> bool:
    """ggml_quantize_chunk of float32 ``rows`` (nrows x n_per_row) into ``out`` (nrows x row bytes),
    then ggml_validate_row_data on the result; returns whether the data validated.

    ctypes releases the GIL during the call, so threads quantize disjoint row ranges in parallel.
    """
    lib = ggml_base()
    nrows, n_per_row = rows.shape
    size = lib.ggml_quantize_chunk(ggml_type, rows.ctypes.data, out.ctypes.data, 0, nrows, n_per_row,
                                   None if imatrix is None else imatrix.ctypes.data)
    if size != out.nbytes:
        raise ValueError(f"ggml_quantize_chunk wrote {size} bytes, expected {out.nbytes}")
    return bool(lib.ggml_validate_row_data(ggml_type, out.ctypes.data, size))


def tensor_at(address: int) -> GgmlTensor:
    """The ggml_tensor at a raw pointer value (no copy)."""
    return GgmlTensor.from_address(address)


def tensor_name(t: GgmlTensor) -> str:
    """The tensor's name."""
    return t.name.decode("utf-8", errors="replace")


def tensor_to_numpy(t: GgmlTensor) -> np.ndarray:
    """Copy an F32 or I32 tensor, strides honoured, into a new array shaped (ne3, ne2, ne1, ne0).

    Host buffers are read in place; other buffers are fetched with ggml_backend_tensor_get first.
    """
    dtype = _NUMPY_TYPE.get(t.type)
    if dtype is None:
        raise ValueError(f"tensor {tensor_name(t)!r}: unsupported type {ggml_base().ggml_type_name(t.type).decode()}")
    if t.nb[0] != np.dtype(dtype).itemsize:
        raise ValueError(f"tensor {tensor_name(t)!r}: elements are not contiguous in dim 0")
    lib = ggml_base()
    nbytes = lib.ggml_nbytes(ctypes.byref(t))
    if t.buffer and lib.ggml_backend_buffer_is_host(t.buffer):
        raw: Any = (ctypes.c_char * nbytes).from_address(t.data)  # a buffer numpy's stubs do not list
    else:
        fetched = np.empty(nbytes, dtype=np.uint8)
        lib.ggml_backend_tensor_get(ctypes.byref(t), fetched.ctypes.data, 0, nbytes)
        raw = fetched
    view = np.ndarray(shape=t.ne[::-1], dtype=dtype, buffer=raw, strides=t.nb[::-1])
    return view.copy()
