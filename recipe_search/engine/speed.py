"""Prompt and generation speed of a quantized model, loaded with the placement its recipe will run under.

A build that can offload gets the placement's ``-ngl`` and ``-ot`` overrides; a CPU-only build runs every
layer on the CPU whatever the placement, and its speed says so (`Speed.cpu_only`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.placement import Placement
from .allocation import gpu_offload_supported
from .llama import LlamaModel
from .measurement import Speed


@dataclass(frozen=True)
class SpeedRun:
    """What the speed measurement gives llama.cpp's model parameters."""

    n_gpu_layers: int  # negative: all
    overrides: tuple[tuple[str, str], ...]  # (pattern, buffer type name), in llama.cpp's order
    cpu_only: bool  # the build cannot offload: the placement is not applied


def speed_run(placement: Placement, offload: bool) -> SpeedRun:
    """The model parameters of a speed measurement under ``placement`` on a build that can (``offload``) or
    cannot put layers on a GPU."""
    if not offload:
        return SpeedRun(0, (), cpu_only=True)
    ngl = -1 if placement.n_gpu_layers is None else placement.n_gpu_layers
    return SpeedRun(ngl, tuple((o.pattern, o.buffer) for o in placement.overrides), cpu_only=False)


def speed_of(quant: Path, threads: int, placement: Placement) -> Speed:
    """Prompt-processing and generation tokens per second of a GGUF on this machine under ``placement``."""
    run = speed_run(placement, gpu_offload_supported())
    with LlamaModel(quant, n_threads=threads, n_ctx=512, n_gpu_layers=run.n_gpu_layers, overrides=run.overrides) as lm:
        pp, tg = lm.generate_speed()
    return Speed(pp, tg, placement.describe(), run.cpu_only)
