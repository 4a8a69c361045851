"""Files: ggml types, GGUF headers read and written, tensor maps, imatrix files, task files, safe writes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_API = {
    "atomic_write_bytes": "files",
    "atomic_write_text": "files",
    "check_output_dir": "files",
    "check_output_file": "files",
    "refuse_non_regular": "files",
    "write_error": "files",
    "DEFAULT_LADDER": "ggml_types",
    "FileType": "ggml_types",
    "GGMLType": "ggml_types",
    "GGML_IMATRIX_REQUIRED": "ggml_types",
    "IMATRIX_REQUIRED": "ggml_types",
    "QUANTIZABLE_TYPES": "ggml_types",
    "bits_per_weight": "ggml_types",
    "fallback": "ggml_types",
    "is_quantized": "ggml_types",
    "parse_file_type": "ggml_types",
    "parse_type": "ggml_types",
    "pure_file_type": "ggml_types",
    "tensor_bytes": "ggml_types",
    "DEFAULT_ALIGNMENT": "gguf_header",
    "GGUFHeader": "gguf_header",
    "block_index": "gguf_header",
    "ggml_n_dims": "gguf_header",
    "read_header": "gguf_header",
    "TensorInfo": "gguf_write",
    "header_bytes": "gguf_write",
    "loader_order": "gguf_write",
    "pad": "gguf_write",
    "quantized_kv": "gguf_write",
    "split_kv": "gguf_write",
    "split_path": "gguf_write",
    "Imatrix": "imatrix_file",
    "ImatrixEntry": "imatrix_file",
    "ImatrixInput": "imatrix_file",
    "load_imatrix": "imatrix_file",
    "save_imatrix_gguf": "imatrix_file",
    "read_map": "tensor_map",
    "write_header_only": "tensor_map",
    "SUBSET_NOTE": "task_files",
    "TASK_FILE_KINDS": "task_files",
    "TaskFile": "task_files",
    "TaskItem": "task_files",
    "read_task_file": "task_files",
    "read_task_spec": "task_files",
    "split_task_spec": "task_files",
    "task_file_bytes": "task_files",
    "write_task_file": "task_files",
}
__all__ = list(_API)  # noqa: PLE0604
__getattr__, __dir__ = lazy_exports(__name__, globals(), _API)

if TYPE_CHECKING:
    from .files import atomic_write_bytes as atomic_write_bytes
    from .files import atomic_write_text as atomic_write_text
    from .files import check_output_dir as check_output_dir
    from .files import check_output_file as check_output_file
    from .files import refuse_non_regular as refuse_non_regular
    from .files import write_error as write_error
    from .ggml_types import DEFAULT_LADDER as DEFAULT_LADDER
    from .ggml_types import GGML_IMATRIX_REQUIRED as GGML_IMATRIX_REQUIRED
    from .ggml_types import IMATRIX_REQUIRED as IMATRIX_REQUIRED
    from .ggml_types import QUANTIZABLE_TYPES as QUANTIZABLE_TYPES
    from .ggml_types import FileType as FileType
    from .ggml_types import GGMLType as GGMLType
    from .ggml_types import bits_per_weight as bits_per_weight
    from .ggml_types import fallback as fallback
    from .ggml_types import is_quantized as is_quantized
    from .ggml_types import parse_file_type as parse_file_type
    from .ggml_types import parse_type as parse_type
    from .ggml_types import pure_file_type as pure_file_type
    from .ggml_types import tensor_bytes as tensor_bytes
    from .gguf_header import DEFAULT_ALIGNMENT as DEFAULT_ALIGNMENT
    from .gguf_header import GGUFHeader as GGUFHeader
    from .gguf_header import block_index as block_index
    from .gguf_header import ggml_n_dims as ggml_n_dims
    from .gguf_header import read_header as read_header
    from .gguf_write import TensorInfo as TensorInfo
    from .gguf_write import header_bytes as header_bytes
    from .gguf_write import loader_order as loader_order
    from .gguf_write import pad as pad
    from .gguf_write import quantized_kv as quantized_kv
    from .gguf_write import split_kv as split_kv
    from .gguf_write import split_path as split_path
    from .imatrix_file import Imatrix as Imatrix
    from .imatrix_file import ImatrixEntry as ImatrixEntry
    from .imatrix_file import ImatrixInput as ImatrixInput
    from .imatrix_file import load_imatrix as load_imatrix
    from .imatrix_file import save_imatrix_gguf as save_imatrix_gguf
    from .task_files import SUBSET_NOTE as SUBSET_NOTE
    from .task_files import TASK_FILE_KINDS as TASK_FILE_KINDS
    from .task_files import TaskFile as TaskFile
    from .task_files import TaskItem as TaskItem
    from .task_files import read_task_file as read_task_file
    from .task_files import read_task_spec as read_task_spec
    from .task_files import split_task_spec as split_task_spec
    from .task_files import task_file_bytes as task_file_bytes
    from .task_files import write_task_file as write_task_file
    from .tensor_map import read_map as read_map
    from .tensor_map import write_header_only as write_header_only
