"""Which device each tensor lands on when llama.cpp loads a model, from its own run flags.

Mirrors the vendored llama.cpp: ``common/arg.cpp`` turns ``-ot PATTERN=BUFFER,...``, ``--cpu-moe`` and
``--n-cpu-moe N`` into buffer overrides in command-line order (``--cpu-moe`` is ``LLM_FFN_EXPS_REGEX=CPU``,
``--n-cpu-moe N`` one ``blk\\.i`` + that regex per block i < N, ``common/common.h``);
``llama_model_loader::create_tensor`` takes the first override whose pattern ``std::regex_search``-es the
tensor name, and otherwise the tensor's layer device: ``llama_model_base::load_tensors`` keeps the input
layer (``token_embd`` and the other embeddings) on the CPU and offloads the last ``-ngl N`` of the
``n_layer_all + 1`` layers, the output layer counted as the last one. A model without ``output.weight``
loads ``token_embd`` a second time as its output, on the output layer's device. Assumed: one GPU, every
weight type supported there, mmap on (a CPU copy of a duplicated tensor shares the file's pages).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from ..errors import RecipeSearchError
from ..formats.gguf_header import block_index
from .inventory import Inventory

#: LLM_FFN_EXPS_REGEX (common/common.h)
FFN_EXPS_REGEX = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"
#: LLM_FFN_DENSE_REGEX (common/common.h), for --n-cpu-ffn
FFN_DENSE_REGEX = r"\.ffn_(up|down|gate)\."
# LLM_TENSOR_INFOS (src/llama-arch.cpp): block-less tensors of the input layer; of the first repeating layer
_INPUT = frozenset({"token_embd", "position_embd", "token_types", "per_layer_token_embd"})
_FIRST_LAYER = frozenset({"token_embd_norm", "rope_freqs", "rope_factors_long", "rope_factors_short",
                          "per_layer_model_proj", "per_layer_proj_norm"})
GPU, CPU = "gpu", "cpu"


def _device_of_buffer(name: str) -> str:
    """``CPU`` (and a GPU's pinned ``..._Host`` memory) is system memory; any other buffer type is the GPU's."""
    return CPU if name == "CPU" or name.endswith("_Host") else GPU


@dataclass(frozen=True)
class Override:
    pattern: str
    buffer: str  # llama.cpp's buffer type name: CPU, CUDA0, ...
    flag: str = ""  # the flag it came from, for errors

    @property
    def device(self) -> str:
        return _device_of_buffer(self.buffer)


@dataclass(frozen=True)
class TensorPlace:
    name: str
    device: str
    layer: str  # input, output, or the repeating layer's index
    override: str | None  # the pattern that placed it, if one did
    duplicate: bool = False  # token_embd loaded again as the output of a model without output.weight


@dataclass(frozen=True)
class Placement:
    """Buffer overrides in llama.cpp's order and ``-ngl`` (None: every layer, llama.cpp's ``-ngl all``)."""

    overrides: tuple[Override, ...] = ()
    n_gpu_layers: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> Placement:
        """Read llama.cpp run flags: ``-ot exps=CPU``, ``--cpu-moe``, ``--n-cpu-moe 20``, ``-ngl 99``."""
        try:
            words = shlex.split(text or "")
        except ValueError as err:
            raise RecipeSearchError(f"placement {text!r}: {err}") from None
        overrides: list[Override] = []
        ngl: int | None = None
        i = 0
        while i < len(words):
            flag, eq, inline = words[i].partition("=")
            if flag in ("-cmoe", "--cpu-moe"):
                if eq:
                    raise RecipeSearchError(f"placement {text!r}: {flag} takes no value")
                overrides.append(Override(FFN_EXPS_REGEX, "CPU", flag))
                i += 1
                continue
            if flag not in _VALUED:
                raise RecipeSearchError(f"placement {text!r}: {words[i]!r} is not a placement flag "
                                        f"(-ot, --cpu-moe, --n-cpu-moe, --n-cpu-ffn, -ngl)")
            if eq and flag.startswith("--"):
                value, i = inline, i + 1
            elif i + 1 < len(words):
                value, i = words[i + 1], i + 2
            else:
                raise RecipeSearchError(f"placement {text!r}: {flag} needs a value")
            if flag in ("-ot", "--override-tensor"):
                overrides += _parse_overrides(value, text, flag)
            elif flag in ("-ngl", "--gpu-layers", "--n-gpu-layers"):
                ngl = _gpu_layers(value, text)
            else:
                n = _count(value, flag, text)
                regex = FFN_EXPS_REGEX if flag in ("-ncmoe", "--n-cpu-moe") else FFN_DENSE_REGEX
                overrides += [Override(rf"blk\.{b}{regex}", "CPU", f"{flag} {n}") for b in range(n)]
        return cls(tuple(overrides), ngl)

    def args(self) -> list[str]:
        """The run flags that pin this placement: one ``-ot`` with every override, an explicit ``-ngl``."""
        out = []
        if self.overrides:
            out += ["-ot", ",".join(f"{o.pattern}={o.buffer}" for o in self.overrides)]
        out += ["-ngl", "all" if self.n_gpu_layers is None else str(self.n_gpu_layers)]
        return out

    def describe(self) -> str:
        return shlex.join(self.args())

    @property
    def uses_gpu(self) -> bool:
        return self.n_gpu_layers != 0 or any(o.device == GPU for o in self.overrides)

    def layer_on_gpu(self, layer: int, n_layer_all: int) -> bool:
        """Repeating layer ``layer`` (``n_layer_all``: the output layer) is one of the last ``-ngl`` layers."""
        ngl = n_layer_all + 1 if self.n_gpu_layers is None else self.n_gpu_layers
        return layer >= max(n_layer_all + 1 - ngl, 0)

    def place(self, inv: Inventory) -> list[TensorPlace]:
        """Every tensor's device, in the inventory's order; a pattern that matches no tensor is an error."""
        compiled = [(i, o, re.compile(o.pattern)) for i, o in enumerate(self.overrides)]
        n_layer_all = inv.n_blocks
        used: set[int] = set()

        def one(name: str, layer: str, device: str, duplicate: bool = False) -> TensorPlace:
            for i, o, rx in compiled:
                if rx.search(name):
                    used.add(i)
                    return TensorPlace(name, o.device, layer, o.pattern, duplicate)
            return TensorPlace(name, device, layer, None, duplicate)

        out = []
        for t in inv.tensors:
            layer, device = self._layer(t.name, n_layer_all)
            out.append(one(t.name, layer, device))
        if "output.weight" not in inv.by_name and "token_embd.weight" in inv.by_name:
            out.append(one("token_embd.weight", "output", self._device(n_layer_all, n_layer_all), duplicate=True))
        for flag in dict.fromkeys(o.flag for o in self.overrides):
            if not any(i in used for i, o in enumerate(self.overrides) if o.flag == flag):
                raise RecipeSearchError(f"placement {flag!r} places no tensor of the model", inv.path)
        return out

    def _device(self, layer: int, n_layer_all: int) -> str:
        return GPU if self.layer_on_gpu(layer, n_layer_all) else CPU

    def _layer(self, name: str, n_layer_all: int) -> tuple[str, str]:
        block = block_index(name)
        stem = name.rsplit(".", 1)[0] if block is None else ""
        if block is not None:
            return str(block), self._device(block, n_layer_all)
        if stem in _INPUT:
            return "input", CPU
        if stem in _FIRST_LAYER:
            return "0", self._device(0, n_layer_all)
        return "output", self._device(n_layer_all, n_layer_all)


_VALUED = ("-ot", "--override-tensor", "-ncmoe", "--n-cpu-moe", "-ncffn", "--n-cpu-ffn",
           "-ngl", "--gpu-layers", "--n-gpu-layers")


def _parse_overrides(value: str, text: str | None, flag: str) -> list[Override]:
    """parse_tensor_buffer_overrides (common/arg.cpp): comma-separated ``pattern=buffer``."""
    out = []
    for item in value.split(","):
        pattern, eq, buffer = item.partition("=")
        if not eq or not pattern or not buffer:
            raise RecipeSearchError(f"placement {text!r}: override {item!r} is not PATTERN=BUFFER")
        try:
            re.compile(pattern)
        except re.error as err:
            raise RecipeSearchError(f"placement {text!r}: pattern {pattern!r} is not a regex ({err})") from None
        out.append(Override(pattern, buffer, f"{flag} {item}"))
    return out


def _count(value: str, flag: str, text: str | None) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise RecipeSearchError(f"placement {text!r}: {flag} takes a layer count, not {value!r}")
    return n


def _gpu_layers(value: str, text: str | None) -> int | None:
    if value == "all":
        return None
    if value == "auto":
        raise RecipeSearchError(f"placement {text!r}: -ngl auto is llama.cpp's --fit choice, which depends on "
                                "the free memory at run time; give a number or `all`")
    return _count(value, "-ngl", text)
