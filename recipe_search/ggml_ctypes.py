"""ctypes view of ggml's tensor struct and the few ggml-base functions needed to read graph tensors.

Layout and enum values follow ggml/include/ggml.h of the llama.cpp vendored by llama-cpp-python 0.3.36.
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
    return lib


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
