"""Importance-matrix files: GGUF and legacy round trips, llama.cpp's readers, quantizer weights, bad files."""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter

from recipe_search.errors import RecipeSearchError
from recipe_search.formats.imatrix_file import (
    Imatrix,
    ImatrixEntry,
    check_against,
    load_imatrix,
    quantizer_arrays,
    save_imatrix_dat,
    save_imatrix_gguf,
)

DENSE, MOE = "blk.0.ffn_up.weight", "blk.0.ffn_down_exps.weight"


def _imatrix(datasets: list[str] | None = None) -> Imatrix:
    return Imatrix(
        entries={
            MOE: ImatrixEntry(np.arange(12, dtype=np.float32).reshape(3, 4), np.array([2, 0, 5], np.float32)),
            DENSE: ImatrixEntry(np.arange(1, 9, dtype=np.float32).reshape(1, 8), np.array([4], np.float32)),
        },
        datasets=["wiki.train.raw", "code.txt"] if datasets is None else datasets,
        chunk_count=10,
        chunk_size=4,
    )


def test_gguf_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "imatrix.gguf"
    save_imatrix_gguf(_imatrix(), path)
    assert [p.name for p in tmp_path.iterdir()] == ["imatrix.gguf"]  # no temporary left behind
    back = load_imatrix(path)
    assert back.datasets == ["wiki.train.raw", "code.txt"]
    assert (back.chunk_count, back.chunk_size) == (10, 4)
    assert list(back.entries) == [MOE, DENSE]
    assert np.array_equal(back.entries[MOE].in_sum2, np.arange(12).reshape(3, 4))
    assert np.array_equal(back.entries[MOE].counts, [2, 0, 5])
    assert np.array_equal(back.entries[DENSE].in_sum2, np.arange(1, 9).reshape(1, 8))


def test_gguf_as_the_gguf_package_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "imatrix.gguf"
    save_imatrix_gguf(_imatrix(), path)
    r = GGUFReader(path)
    assert r.get_field("general.type").contents() == "imatrix"
    assert r.get_field("imatrix.datasets").contents() == ["wiki.train.raw", "code.txt"]
    assert r.get_field("imatrix.chunk_count").contents() == 10
    assert r.get_field("imatrix.chunk_size").contents() == 4
    assert "general.architecture" not in r.fields
    tensors = {t.name: t for t in r.tensors}
    assert list(tensors) == [MOE + ".in_sum2", MOE + ".counts", DENSE + ".in_sum2", DENSE + ".counts"]
    assert tensors[MOE + ".in_sum2"].shape.tolist() == [4, 3]  # ggml ne: [ne0, n_expert]
    assert tensors[MOE + ".counts"].shape.tolist() == [1, 3]
    assert tensors[DENSE + ".in_sum2"].shape.tolist() == [8]  # trailing 1s dropped, as ggml_n_dims does
    assert tensors[DENSE + ".counts"].shape.tolist() == [1]
    assert tensors[MOE + ".counts"].data.ravel().tolist() == [2, 0, 5]


@pytest.mark.llama  # llama.cpp's own GGUF reader
def test_gguf_as_llama_cpp_reads_it(tmp_path: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))

    class InitParams(ctypes.Structure):
        _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]

    lib.gguf_init_from_file.restype = ctypes.c_void_p
    lib.gguf_init_from_file.argtypes = [ctypes.c_char_p, InitParams]
    for fn in ("gguf_get_n_tensors", "gguf_get_n_kv"):
        getattr(lib, fn).restype = ctypes.c_int64
        getattr(lib, fn).argtypes = [ctypes.c_void_p]
    lib.gguf_free.argtypes = [ctypes.c_void_p]
    for datasets in (["wiki.train.raw"], []):
        path = tmp_path / "imatrix.gguf"
        save_imatrix_gguf(_imatrix(datasets), path)
        ctx = lib.gguf_init_from_file(str(path).encode(), InitParams(False, None))  # reads the data too
        assert ctx, "llama.cpp's GGUF reader rejected the file"
        assert (lib.gguf_get_n_tensors(ctx), lib.gguf_get_n_kv(ctx)) == (4, 4)
        lib.gguf_free(ctx)


def _legacy(entries: list[tuple[str, int, list[float]]], trailer: bytes = b"") -> bytes:
    out = struct.pack("<i", len(entries))
    for name, ncall, values in entries:
        out += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", ncall, len(values))
        out += struct.pack(f"<{len(values)}f", *values)
    return out + trailer


def test_legacy_read_and_quantizer_weights(tmp_path: Path) -> None:
    path = tmp_path / "imatrix.dat"
    trailer = struct.pack("<ii", 7, 8) + b"data.txt"
    path.write_bytes(_legacy([("b.weight", 3, [3.0, 6.0, 1.5]), ("a.weight", 0, [2.0, 5.0])], trailer))
    im = load_imatrix(path)
    assert list(im.entries) == ["a.weight", "b.weight"]
    assert (im.chunk_count, im.chunk_size, im.datasets) == (7, 0, ["data.txt"])
    q = quantizer_arrays(im)
    assert q["b.weight"].tolist() == [1.0, 2.0, 0.5]  # values / ncall
    assert q["a.weight"].tolist() == [2.0, 5.0]  # ncall 0: llama-quantize passes the values unchanged

    path.write_bytes(_legacy([("a.weight", 2, [4.0])]))  # no trailer
    im = load_imatrix(path)
    assert (im.chunk_count, im.datasets) == (0, [])


def test_legacy_write_follows_llama_imatrix(tmp_path: Path) -> None:
    path = tmp_path / "imatrix.dat"
    im = _imatrix()
    im.entries["blk.1.unused.weight"] = ImatrixEntry(np.ones((1, 2), np.float32), np.zeros(1, np.float32))
    save_imatrix_dat(im, path)
    raw = path.read_bytes()
    # ncall = ceil(max count / chunk_size): MoE ceil(5/4) = 2, dense ceil(4/4) = 1; never-counted entries dropped
    moe_values = [0 / 2 * 2, 1 / 2 * 2, 2 / 2 * 2, 3 / 2 * 2, 2, 2, 2, 2, 8 / 5 * 2, 9 / 5 * 2, 10 / 5 * 2, 11 / 5 * 2]
    expected = _legacy([(MOE, 2, moe_values), (DENSE, 1, [v / 4 for v in range(1, 9)])],
                       struct.pack("<ii", 10, 8) + b"code.txt")
    assert raw[:4] == struct.pack("<i", 2) and len(raw) == len(expected)
    got = load_imatrix(path)
    assert got.entries[MOE].in_sum2.ravel() == pytest.approx(moe_values)
    assert got.datasets == ["code.txt"] and got.chunk_count == 10
    # both formats hand the quantizer the same weights (uncounted experts: 1)
    want = quantizer_arrays(_imatrix())
    for name, arr in quantizer_arrays(got).items():
        assert arr == pytest.approx(want[name], rel=1e-6)
    assert want[MOE].tolist() == pytest.approx([0, 0.5, 1, 1.5, 1, 1, 1, 1, 1.6, 1.8, 2, 2.2])


def test_quantizer_counts_round_half_away_from_zero() -> None:
    im = Imatrix({"w": ImatrixEntry(np.array([[3.0, 6.0]], np.float32), np.array([2.5], np.float32))}, [], 1, 1)
    assert quantizer_arrays(im)["w"].tolist() == [1.0, 2.0]  # lround(2.5) = 3
    im.entries["w"].in_sum2[0, 0] = np.inf
    with pytest.raises(RecipeSearchError, match="non-finite"):
        quantizer_arrays(im)


def test_check_against_names_mismatches() -> None:
    im = _imatrix()
    im.entries["legacy.weight"] = ImatrixEntry(np.ones((1, 12), np.float32), np.ones(1, np.float32))
    check_against(im, {MOE: (4, 3), DENSE: (8, 1), "legacy.weight": (4, 3), "absent.weight": (2, 2)})
    with pytest.raises(RecipeSearchError, match="wrong size") as err:
        check_against(im, {DENSE: (16, 1), MOE: (6, 2)}, "im.gguf")
    assert f"{DENSE} (1×8 where the weight has 1×16)" in str(err.value)
    assert MOE in str(err.value) and "im.gguf" in str(err.value) and "legacy" not in str(err.value)
    with pytest.raises(RecipeSearchError, match=MOE):  # same size, wrong expert count
        check_against(im, {MOE: (6, 2)})


def _gguf_with(path: Path, tensors: dict[str, np.ndarray], keys: bool = True) -> Path:
    w = GGUFWriter(path, "llama")
    if keys:
        w.add_array("imatrix.datasets", ["x"])
        w.add_uint32("imatrix.chunk_count", 1)
        w.add_uint32("imatrix.chunk_size", 512)
    for name, data in tensors.items():
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_bad_files(tmp_path: Path) -> None:
    ok = {"w.in_sum2": np.ones(4, np.float32), "w.counts": np.ones(1, np.float32)}
    cases = {
        "missing.gguf": (None, "cannot read imatrix"),
        "empty.dat": (b"", "no data"),
        "zero.dat": (struct.pack("<i", 0), "no data"),
        "cut.dat": (_legacy([("w", 1, [1.0, 2.0])])[:-3], "truncated legacy imatrix"),
        "name.dat": (struct.pack("<ii", 1, 50) + b"w", "truncated legacy imatrix"),
        "nval.dat": (_legacy([("w", 1, [])]), "0 values"),
        "nokeys.gguf": (lambda p: _gguf_with(p, ok, keys=False), "missing imatrix metadata"),
        "nocounts.gguf": (lambda p: _gguf_with(p, {"w.in_sum2": np.ones(4, np.float32)}), "mismatched sums"),
        "f16.gguf": (lambda p: _gguf_with(p, {**ok, "w.in_sum2": np.ones(4, np.float16)}), "must be F32"),
        "split.gguf": (lambda p: _gguf_with(p, {**ok, "w.counts": np.ones(3, np.float32)}), "do not split"),
        "notensors.gguf": (lambda p: _gguf_with(p, {}), "no data"),
    }
    for name, (content, message) in cases.items():
        p = tmp_path / name
        if callable(content):
            content(p)
        elif content is not None:
            p.write_bytes(content)
        with pytest.raises(RecipeSearchError, match=message) as err:
            load_imatrix(p)
        assert str(p) in str(err.value)
    trunc = tmp_path / "trunc.gguf"
    save_imatrix_gguf(_imatrix(), trunc)
    trunc.write_bytes(trunc.read_bytes()[:-40])
    with pytest.raises(RecipeSearchError, match="truncated"):
        load_imatrix(trunc)
