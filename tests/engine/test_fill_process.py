"""Cache misses quantized in a child process: an abort there fails one (tensor, type) pair, named, and the next
miss is quantized by a new child; what a killed fill leaves is removed by the next run."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from recipe_search.core.inventory import read_inventory
from recipe_search.core.text import TextSource
from recipe_search.engine import fill_process
from recipe_search.engine.imatrix_collect import collect_imatrix
from recipe_search.engine.leftovers import remove_stale
from recipe_search.engine.score import ScoreSettings
from recipe_search.engine.tensor_fill import write_atomically
from recipe_search.engine.worker import Worker
from recipe_search.errors import RecipeSearchError
from recipe_search.formats.ggml_types import GGMLType
from recipe_search.formats.imatrix_file import ImatrixInput, save_imatrix_gguf

pytestmark = pytest.mark.llama


def _tensors(model, tmp_path, isolated: bool = True):
    tmp_path.mkdir(parents=True, exist_ok=True)
    im = collect_imatrix(model, TextSource().read()[:20000], ctx=128, n_chunks=2, n_threads=2)
    save_imatrix_gguf(im, tmp_path / "im.gguf")
    worker = Worker(model, ScoreSettings(ctx=128, chunks=2), tmp_path / "cache", tmp_path / "work",
                    imatrix=ImatrixInput.from_file(tmp_path / "im.gguf"))
    tensors = worker.tensors
    tensors.isolated = isolated
    return tensors


def test_an_abort_fails_only_its_pair(dense_model, tmp_path) -> None:
    """IQ2_XXS asserts (GGML_ASSERT) that rows are whole 256-blocks; the dense model's ffn_down rows are 320 wide.
    In process this abort would end the run; in the child it is one error naming the pair."""
    tensors = _tensors(dense_model, tmp_path)
    t = read_inventory(dense_model).by_name["blk.0.ffn_down.weight"]
    assert t.shape[0] % 256
    with pytest.raises(RecipeSearchError, match=r"aborted while quantizing blk\.0\.ffn_down\.weight to IQ2_XXS: "
                                                r".*GGML_ASSERT"):
        tensors.shard(t, GGMLType.IQ2_XXS)
    assert not tensors.path(t, GGMLType.IQ2_XXS).exists()
    assert tensors.shard(t, GGMLType.Q8_0).is_file()  # a new child quantizes the next miss


def test_child_and_in_process_fills_are_the_same_bytes(qwen35_model, tmp_path) -> None:
    isolated = _tensors(qwen35_model, tmp_path / "a")
    in_process = _tensors(qwen35_model, tmp_path / "b", isolated=False)
    inv = read_inventory(qwen35_model)
    for name, t in (("blk.0.ffn_down_exps.weight", GGMLType.IQ2_XXS), ("blk.2.attn_q.weight", GGMLType.Q4_K)):
        a, b = isolated.shard(inv.by_name[name], t), in_process.shard(inv.by_name[name], t)
        assert a.read_bytes() == b.read_bytes()
        assert isolated.weight_error(inv.by_name[name], t) == in_process.weight_error(inv.by_name[name], t)


def test_ctrl_c_kills_the_child_and_its_temporary_file_is_removed_later(dense_model, tmp_path, monkeypatch) -> None:
    tensors = _tensors(dense_model, tmp_path)
    t = read_inventory(dense_model).by_name["blk.0.attn_q.weight"]
    tensors.shard(t, GGMLType.Q4_0)  # the child is running
    filler = fill_process._filler
    assert filler is not None

    def interrupted(job):
        raise KeyboardInterrupt

    monkeypatch.setattr(filler, "_send", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tensors.shard(t, GGMLType.Q5_0)
    assert fill_process._filler is None and filler.proc.poll() is not None
    # a killed fill's temporary file, named for a process that is gone
    dead = filler.proc.pid
    path = tensors.path(t, GGMLType.Q5_0)
    path.parent.mkdir(parents=True, exist_ok=True)
    stale = path.with_name(f".{path.name}.{dead}-0123abcd.tmp")
    live = path.with_name(f".{path.name}.{os.getppid()}-0123abcd.tmp")  # a process that runs
    stale.write_bytes(np.zeros(8, np.uint8).tobytes())
    live.write_bytes(b"x")
    assert stale in remove_stale(tmp_path / "cache")
    assert not stale.exists() and live.exists()


def test_full_disk_while_writing_a_shard_is_one_line(tmp_path) -> None:
    """A full disk under the cache crashed the fill's child with an OSError traceback, reported as
    "llama.cpp aborted while quantizing ..."."""
    def parts():
        yield b"header"
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(RecipeSearchError, match=r"cannot write: no space left on device \(ENOSPC\)"):
        write_atomically(tmp_path / "shard.gguf", parts())
    assert not list(tmp_path.iterdir())
