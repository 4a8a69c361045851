"""Hostile but fair input and faults (issue 11): every case ends in one line on stderr and exit code 2,
or a documented warning; nothing aborts, hangs, leaks a password or loses data."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from paths import REPO

from recipe_search.cli import main
from recipe_search.core.config import StudyConfig, load_study_config
from recipe_search.core.inventory import inventory_rows, read_inventory
from recipe_search.core.space import build_space
from recipe_search.core.text import TextSource
from recipe_search.errors import RecipeSearchError
from recipe_search.formats.gguf_header import read_header

F32, Q8_0 = 0, 8
U32, STRING, ARRAY = 4, 8, 9


# -- helpers ---------------------------------------------------------------------------------------
def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    return _s(key) + struct.pack("<I", vtype) + payload


def raw_gguf(path: Path, *, kvs: list[bytes] | None = None, tensors=None, n_tensors: int | None = None) -> Path:
    """A GGUF written byte by byte, so that every field can be wrong. ``tensors``: (name, shape, type)."""
    tensors = [("blk.0.ffn_up.weight", (32, 4), F32)] if tensors is None else tensors
    kvs = [_kv("general.architecture", STRING, _s("llama"))] if kvs is None else kvs
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors) if n_tensors is None else n_tensors, len(kvs)) + b"".join(kvs)
    offset = 0
    for name, shape, t in tensors:
        out += _s(name) + struct.pack(f"<I{len(shape)}QIQ", len(shape), *shape, t, offset)
        n = 1
        for d in shape:
            n *= d
        offset += -(-n * 4 // 32) * 32
    out += b"\0" * (-len(out) % 32) + b"\0" * offset
    path.write_bytes(out)
    return path


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the command in-process (an unexpected exception fails the test with its traceback)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(capsys, *argv: str) -> str:
    code, _, err = cli(capsys, *argv)
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def run_cli(*argv: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recipe_search.cli", *map(str, argv)], capture_output=True,
                          text=True, timeout=timeout, **kw)


@pytest.fixture()
def recipe_file(tmp_path) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "unmatched": {"type": "Q8_0"},
                                    "rules": [{"tensors": "ffn_down", "type": "Q4_0"}]}))
    return path


# -- corrupt GGUF headers --------------------------------------------------------------------------
def test_alignment_zero(tmp_path, capsys) -> None:
    bad = raw_gguf(tmp_path / "a.gguf", kvs=[_kv("general.architecture", STRING, _s("llama")),
                                             _kv("general.alignment", U32, struct.pack("<I", 0))])
    assert "alignment" in one_line_error(capsys, "inspect", bad)


def test_tensor_count_one_too_many(tmp_path, capsys) -> None:
    assert "corrupt GGUF" in one_line_error(capsys, "inspect", raw_gguf(tmp_path / "n.gguf", n_tensors=2))


def test_row_length_zero(tmp_path, capsys, recipe_file) -> None:
    bad = raw_gguf(tmp_path / "z.gguf", tensors=[("blk.0.ffn_down.weight", (0, 4), F32)])
    assert "shape" in one_line_error(capsys, "size", bad, recipe_file)


def test_row_not_whole_blocks(tmp_path, capsys) -> None:
    bad = raw_gguf(tmp_path / "q.gguf", tensors=[("blk.0.ffn_up.weight", (33, 4), Q8_0)])
    assert "block size" in one_line_error(capsys, "inspect", bad)


def test_arrays_nested_100k_deep(tmp_path, capsys) -> None:
    nested = struct.pack("<IQ", ARRAY, 1) * 100_000 + struct.pack("<IQI", U32, 1, 7)
    bad = raw_gguf(tmp_path / "deep.gguf", kvs=[_kv("general.architecture", STRING, _s("llama")),
                                                _kv("x.deep", ARRAY, nested)])
    assert bad.stat().st_size > 1_000_000
    assert "corrupt GGUF" in one_line_error(capsys, "inspect", bad)


def test_fifo_as_model_does_not_hang(tmp_path) -> None:
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    out = run_cli("inspect", fifo, timeout=60)
    assert out.returncode == 2 and "not a regular file" in out.stderr and out.stderr.count("\n") == 1


@pytest.mark.slow
@pytest.mark.llama  # the commands load llama.cpp in a subprocess before they read the imatrix
@pytest.mark.parametrize("command", ["quantize", "score", "search"])
def test_fifo_as_imatrix_does_not_hang(tmp_path, dense_model, recipe_file, command) -> None:
    """The imatrix was opened without a look at what it is: a FIFO blocked the command for ever (the timeout
    ends the test if it does again)."""
    fifo = tmp_path / "im.gguf"
    os.mkfifo(fifo)
    argv = {"quantize": ["quantize", dense_model, recipe_file, "-o", tmp_path / "q.gguf"],
            "score": ["score", dense_model, recipe_file, "--ctx", "64", "--chunks", "1"],
            "search": ["search", dense_model, "--dir", tmp_path / "s", "--trials", "0"]}[command]
    out = run_cli(*argv, "--imatrix", fifo, timeout=60, env={**os.environ, "RECIPE_SEARCH_CACHE": str(tmp_path / "c")})
    assert out.returncode == 2 and "not a regular file" in out.stderr and str(fifo) in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1, out.stderr


def test_fuzz_header_bytes(tmp_path, dense_model) -> None:
    """Mutate bytes of a tiny model's header (fixed seed): a one-line RecipeSearchError or a model, nothing else."""
    data = dense_model.read_bytes()
    header_end = read_header(dense_model).data_start
    rng = random.Random(11)
    outcomes = {"ok": 0, "error": 0}
    path = tmp_path / "fuzz.gguf"
    for _ in range(400):
        buf = bytearray(data[:header_end])
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(buf)) if rng.random() < 0.5 else rng.randrange(min(len(buf), 4096))
            buf[pos] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        path.write_bytes(bytes(buf) + data[header_end:])
        try:
            inventory_rows(read_inventory(path))
            outcomes["ok"] += 1
        except RecipeSearchError as err:
            assert "\n" not in str(err)
            outcomes["error"] += 1
    assert outcomes["error"] > 50 and outcomes["ok"] > 10, outcomes


# -- text bytes that would abort llama.cpp's tokenizer ----------------------------------------------
@pytest.mark.parametrize("bad", [b"\xF4\x90\x80\x80", b"\xF5\x80\x80\x80", b"\xFF"])
def test_text_beyond_unicode_is_refused_with_its_offset(tmp_path, bad) -> None:
    text = tmp_path / "t.txt"
    text.write_bytes(b"hello world\n" * 10 + bad + b" more\n")
    with pytest.raises(RecipeSearchError, match="byte offset 120 "):
        TextSource.parse(str(text)).read()
    # a fraction of the file that leaves the bytes out is fine; bytes llama.cpp replaces with U+FFFD are too
    assert TextSource.parse(f"{text}[0:0.5]").read()
    text.write_bytes(b"caf\xe9 \xF4\x8F\xBF\xBF \xC0\n" * 5)
    assert TextSource.parse(str(text)).read()


@pytest.mark.slow
@pytest.mark.llama  # starts llama.cpp in a subprocess
def test_imatrix_on_binary_text_does_not_abort(tmp_path, dense_model) -> None:
    text = tmp_path / "random.bin"
    text.write_bytes(random.Random(3).randbytes(20_000))
    out = run_cli("imatrix", dense_model, "--text", text, "-o", tmp_path / "im.gguf", "--ctx", 64)
    assert out.returncode == 2 and "byte offset" in out.stderr and out.stderr.count("\n") == 1, out.stderr


# -- recipes and configs that are not UTF-8 YAML --------------------------------------------------
@pytest.mark.parametrize("content", [
    "name: café\nunmatched: {type: Q8_0}\n".encode("latin-1"),
    "name: x\nunmatched: {type: Q8_0}\n".encode("utf-16"),
    random.Random(5).randbytes(300),
], ids=["latin-1", "utf-16", "random"])
def test_recipe_not_utf8(tmp_path, capsys, dense_model, content) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(content)
    assert "UTF-8" in one_line_error(capsys, "size", dense_model, recipe)
    assert "UTF-8" in one_line_error(capsys, "export", recipe)
    assert "UTF-8" in one_line_error(capsys, "compare", recipe, recipe)


def test_gguf_given_as_recipe(capsys, dense_model) -> None:
    assert "GGUF model, not a recipe" in one_line_error(capsys, "export", dense_model)


@pytest.mark.llama  # runs the CLI or a worker, which load libllama
def test_config_not_utf8(tmp_path, capsys, dense_model) -> None:
    config = tmp_path / "c.yaml"
    config.write_bytes("ctx: 128 # \xe9\n".encode("latin-1"))
    err = one_line_error(capsys, "search", dense_model, "--config", config, "--dir", tmp_path / "s")
    assert "UTF-8" in err and not (tmp_path / "s").exists()


def test_duplicate_yaml_keys(tmp_path, capsys, dense_model) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\nunmatched: {type: Q8_0}\nname: y\n")
    assert "duplicate key 'name'" in one_line_error(capsys, "export", recipe)
    config = tmp_path / "c.yaml"
    config.write_text("ctx: 128\nchunks: 2\nctx: 256\n")
    with pytest.raises(RecipeSearchError, match="duplicate key 'ctx'"):
        load_study_config(config)


# -- numbers out of range ------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["--ctx", "0"], ["--ctx", "1"], ["--ctx", "3"], ["--ctx", "-256"],
                                  ["--threads", "0"], ["--threads", "-1"], ["--chunks", "-2"], ["--gpu-layers", "-5"]])
def test_bad_numbers_on_the_command_line(capsys, dense_model, recipe_file, argv) -> None:
    code, _, err = cli(capsys, "score", dense_model, recipe_file, *argv)
    assert code == 2 and "outside" in err and "Traceback" not in err


def test_negative_trials(capsys, tmp_path, dense_model) -> None:
    code, _, err = cli(capsys, "search", dense_model, "--trials", "-1", "--dir", tmp_path / "s")
    assert code == 2 and "outside 0.." in err


@pytest.mark.parametrize("config, words", [
    ({"ctx": 0}, "ctx"), ({"threads": 0}, "threads"), ({"chunks": -1}, "chunks"),
    ({"space": {"bands": {"ffn_up": 0}}}, "bands"), ({"space": {"bands": {"ffn_up": -3}}}, "bands"),
    ({"space": {"bands": {"ffn_up": 100}}}, "bands"),
    ({"objectives": ["size", "size"]}, "objectives"), ({"objectives": ["size", "kld_p99", "kld_p99"]}, "twice"),
    ({"max_bytes": -5}, "max_bytes"), ({"min_bpw": 5, "max_bpw": 4}, "min_bpw"),
    ({"space": {"ladder": ["Q8_0", "Q4_0"], "ladders": {"ffn_up": ["Q4_0"]}, "tied": [["ffn_up", "ffn_gate"]]}},
     "different ladders"),
    ({"space": {"ladders": {"ffn_up": []}}}, "empty ladder"),
    ({"references": {"presets": ["Q9_X"]}}, "Q9_X"), ({"references": {"uniform": ["Q7"]}}, "Q7"),
    ({"target_bpw": [0]}, "target_bpw"), ({"target_bpw": [4.0, 99]}, "target_bpw"), ({"sweep_chunks": 0}, "sweep_chunks"),
    ({"refit_every": -1}, "refit_every"),
])
def test_bad_study_config(tmp_path, config, words) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(RecipeSearchError, match=words) as err:
        load_study_config(path)
    assert "\n" not in str(err.value) and "Value error" not in str(err.value)



@pytest.mark.llama  # imports the study, which loads llama.cpp
def test_command_line_overrides_are_validated_as_the_config(tmp_path, capsys, monkeypatch, dense_model) -> None:
    """`search --gpu-layers -5` was applied with pydantic's model_copy(update=...), which validates nothing: the
    study opened with a value the config refuses. Overrides go through the config's own validation."""
    from recipe_search.study.study import Study

    def reached(*a, **k):
        raise AssertionError("the study opened with an override the config refuses")

    monkeypatch.setattr(Study, "open", reached)
    err = one_line_error(capsys, "search", dense_model, "--gpu-layers", "-5", "--dir", tmp_path / "s")
    assert "--gpu-layers" in err and "greater than or equal to -1" in err and not (tmp_path / "s").exists()


def test_the_sweep_follows_the_trials_fidelity_unless_told() -> None:
    assert [StudyConfig(chunks=n).sweep_chunk_count for n in (1, 8, 20, 29, 60, 200)] == [2, 2, 2, 2, 6, 20]
    assert StudyConfig(chunks=60, sweep_chunks=3).sweep_chunk_count == 3
    assert StudyConfig(ctx=64).sweep_chunk_count == 4  # 31 scored tokens a chunk: 4 chunks reach the 100 KLD needs

def test_space_errors_against_the_model(dense_model) -> None:
    inv = read_inventory(dense_model)
    with pytest.raises(RecipeSearchError, match="not_a_tensor"):
        build_space(StudyConfig.model_validate({"space": {"ladders": {"not_a_tensor": ["Q8_0"]}}}), inv, False)
    with pytest.raises(RecipeSearchError, match="too few for 5 bands"):
        build_space(StudyConfig.model_validate({"space": {"bands": {"ffn_up": 5}}}), inv, False)


# -- config errors are caught before the study exists ---------------------------------------------
@pytest.mark.llama  # runs the CLI or a worker, which load libllama
@pytest.mark.parametrize("config, words", [
    ({"max_bpw": 0.5}, "max_bpw"),
    ({"imatrix": "missing.imatrix"}, "missing.imatrix"),
    ({"surrogate_seeds": 2, "sensitivity": "no-such-table"}, "no-such-table"),
    ({"target_bpw": [1.0]}, "target_bpw 1.0 is below the smallest recipe"),
    ({"refit_every": 2, "ctx": 16, "chunks": 20, "sweep_chunks": 2}, "sweep_chunks 2 at ctx 16 scores 14 tokens"),
    ({"space": {"tied": [["ffn_up", "no_such_type"]]}}, "no_such_type"),
    ({"text": "GARBAGE"}, "byte offset"),
    ({"text": "missing.txt"}, "missing.txt"),
])
def test_config_errors_before_the_study(tmp_path, dense_model, config, words) -> None:
    import optuna

    from recipe_search.study._storage import storage_for
    from recipe_search.study.study import Study

    garbage = tmp_path / "garbage.txt"
    garbage.write_bytes(b"text \xF7\xBF\xBF\xBF" * 100)
    config = json.loads(json.dumps(config).replace("GARBAGE", str(garbage))
                        .replace("missing", str(tmp_path / "missing"))
                        .replace("no-such-table", str(tmp_path / "no-such-table")))
    storage = storage_for(f"sqlite:///{tmp_path / 'study.db'}")
    with pytest.raises(RecipeSearchError, match=words):
        Study.open(dense_model, StudyConfig.model_validate({"ctx": 64, "chunks": 2, **config}), name="s",
                   storage=f"sqlite:///{tmp_path / 'study.db'}", directory=tmp_path / "s", cache=tmp_path / "cache")
    assert not optuna.get_all_study_summaries(storage), "the study was created before the config was checked"


# -- where commands write --------------------------------------------------------------------------
@pytest.mark.llama  # runs the CLI or a worker, which load libllama
def test_quantize_never_replaces_a_fifo(tmp_path, capsys, dense_model, recipe_file) -> None:
    fifo = tmp_path / "out.gguf"
    os.mkfifo(fifo)
    assert "not a regular file" in one_line_error(capsys, "quantize", dense_model, recipe_file, "-o", fifo)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


@pytest.mark.llama  # runs the CLI or a worker, which load libllama
def test_device_outputs_are_refused(capsys, dense_model, recipe_file) -> None:
    mode = os.stat("/dev/full").st_mode
    for argv in (["quantize", dense_model, recipe_file, "-o", "/dev/full"], ["export", recipe_file, "-o", "/dev/full"],
                 ["import", dense_model, "-o", "/dev/full"]):
        assert "not a regular file" in one_line_error(capsys, *argv)
    assert os.stat("/dev/full").st_mode == mode


@pytest.mark.llama  # runs the CLI or a worker, which load libllama
def test_directory_outputs(tmp_path, capsys, dense_model, recipe_file) -> None:
    for argv in (["quantize", dense_model, recipe_file, "-o", tmp_path], ["export", recipe_file, "-o", tmp_path]):
        assert "is a directory" in one_line_error(capsys, *argv)
    # import writes into a directory it is given (one recipe per source), so its -o may be one; under a file it may not
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / f"{dense_model.stem}.yaml").mkdir()
    assert "is a directory" in one_line_error(capsys, "import", dense_model, "-o", tmp_path / "out", "--force")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert "not a directory" in one_line_error(capsys, "export", recipe_file, "-o", a_file / "out.txt")
    assert "not a directory" in one_line_error(capsys, "demo-model", "--dir", a_file)
    assert "not a directory" in one_line_error(capsys, "report", "--dir", tmp_path / "nowhere", "-o", a_file)


@pytest.mark.llama  # runs the CLI or a worker, which load libllama
def test_full_disk_names_the_output(tmp_path, dense_model, recipe_file, monkeypatch) -> None:
    from recipe_search.core.recipe import load_recipe
    from recipe_search.engine import quantize

    real = shutil.disk_usage
    monkeypatch.setattr(quantize.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    out = tmp_path / "q.gguf"
    with pytest.raises(RecipeSearchError, match="ENOSPC") as err:
        quantize.quantize_model(dense_model, load_recipe(recipe_file), out)
    assert str(err.value).startswith(str(out))


def test_atomic_writer_reports_a_full_disk(tmp_path, monkeypatch) -> None:
    import errno

    from recipe_search.formats import files

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(RecipeSearchError, match="ENOSPC"):
        files.atomic_write_text(tmp_path / "x.yaml", "x")
    assert list(tmp_path.iterdir()) == []


# -- the reference cache -----------------------------------------------------------------------------
@pytest.mark.llama  # runs the CLI or a worker, which load libllama
@pytest.mark.parametrize("damage", ["list", "no_n_tokens", "nan"])
def test_corrupt_reference_cache_is_rebuilt(tmp_path, dense_model, sample_text, damage) -> None:
    from recipe_search.engine.score import ScoreSettings, get_reference

    text = tmp_path / "t.txt"
    text.write_text(sample_text * 4)
    settings = ScoreSettings(text=TextSource.parse(str(text)), ctx=64, chunks=2)
    ref, cached = get_reference(dense_model, settings, tmp_path)
    assert not cached
    good = np.fromfile(ref.path / "logprobs.bin", np.float32).copy()
    meta = json.loads((ref.path / "meta.json").read_text())
    if damage == "list":
        (ref.path / "meta.json").write_text("[]")
    elif damage == "no_n_tokens":
        del meta["n_tokens"]
        (ref.path / "meta.json").write_text(json.dumps(meta))
    else:
        bad = good.copy()
        bad[len(bad) // 2] = np.nan
        bad.tofile(ref.path / "logprobs.bin")
    again, cached = get_reference(dense_model, settings, tmp_path)
    assert not cached, "a damaged cache was used"
    assert np.array_equal(np.fromfile(again.path / "logprobs.bin", np.float32), good)


# -- silently accepted before ----------------------------------------------------------------------
def test_recipe_for_another_architecture_warns(tmp_path, capsys, dense_model) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "x", "model": {"architecture": "gemma3", "tensor_count": 236},
                                      "unmatched": {"type": "Q8_0"}}))
    code, _, err = cli(capsys, "size", dense_model, recipe)
    assert code == 0 and "made for a gemma3 model" in err


def test_many_warnings_are_summarised(tmp_path, capsys, dense_model) -> None:
    recipe = tmp_path / "r.yaml"
    rules = [{"pattern": f"^nothing_{i}$", "type": "Q8_0"} for i in range(3000)]
    recipe.write_text(yaml.safe_dump({"name": "x", "unmatched": {"type": "Q8_0"}, "rules": rules}))
    code, _, err = cli(capsys, "size", dense_model, recipe)
    assert code == 0 and err.count("\n") <= 11 and "2990 more" in err


@pytest.mark.llama  # imports the sweep, which loads llama.cpp
def test_unknown_sensitivity_metric_is_refused_first(tmp_path, capsys, monkeypatch, dense_model) -> None:
    """`sensitivity --metric unknown` printed its plan and ran the whole sweep before refusing the metric."""
    from recipe_search.sensitivity import sweep

    def reached(*a, **k):
        raise AssertionError("the sweep started with a metric no table has")

    monkeypatch.setattr(sweep, "run_sweep", reached)
    err = one_line_error(capsys, "sensitivity", dense_model, "--metric", "unknown", "--out", tmp_path / "t",
                         "--cache-dir", tmp_path / "cache")
    assert "'unknown'" in err and "kld_p99" in err and not (tmp_path / "t").exists()


def test_pareto_out_without_targets(tmp_path, capsys) -> None:
    assert "--targets" in one_line_error(capsys, "pareto", "--dir", tmp_path, "--out", tmp_path / "r")


def test_inspect_into_a_closed_pipe(dense_model) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "recipe_search.cli", "inspect", str(dense_model)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # as `| head -5` does once it has its lines
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


# -- security ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("url, secret", [
    ("postgresql://alice:s3cret@127.0.0.1:1/db", "s3cret"),
    ("postgresql://alice:p@ss@Secret@127.0.0.1:1/db", "Secret"),
    ("postgresql://alice@127.0.0.1:1/db?password=hunter2", "hunter2"),
    ("postgresql://alice@127.0.0.1:1/db?sslmode=disable&PASSWORD=hunter2", "hunter2"),
    ("nosuchdb://alice:s3cret@host/db", "s3cret"),
])
def test_passwords_never_shown(url, secret) -> None:
    from recipe_search.study._storage import mask_credentials, storage_for

    assert secret not in mask_credentials(url) and "***" in mask_credentials(url)
    with pytest.raises(RecipeSearchError) as err:
        storage_for(url)
    assert secret not in str(err.value)


@pytest.mark.llama  # runs the CLI or a worker, which load libllama
@pytest.mark.parametrize("name", ["../../x", "a/b", "..", "x\ny", "x\0y"])
def test_study_names_that_are_paths(tmp_path, capsys, monkeypatch, dense_model, name) -> None:
    monkeypatch.chdir(tmp_path)
    err = one_line_error(capsys, "search", dense_model, "--study", name, "--trials", "1")
    assert "study name" in err and not (tmp_path / "studies").exists()


def test_shared_files_carry_no_machine_paths() -> None:
    root = REPO
    files = subprocess.run(["git", "ls-files", "recipes", "experiments/results"], cwd=root, capture_output=True,
                           text=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    import re

    machine = re.compile(r"""(^|[ "'(=:])/(root|home|Users|tmp)/""", re.M)
    found = [f for f in files if (root / f).is_file() and machine.search((root / f).read_text(errors="replace"))]
    assert not found


# -- faults ----------------------------------------------------------------------------------------
def test_stale_leftovers_are_removed_at_start(tmp_path, dense_model) -> None:
    cache = tmp_path / "cache"
    dead = subprocess.Popen(["true"])
    dead.wait()
    (cache / "work").mkdir(parents=True)
    partial = cache / "work" / f"trial-{dead.pid}-score.gguf.partial"
    partial.write_bytes(b"x" * 100)
    live = cache / "work" / f"trial-{os.getppid()}-score.gguf.partial"
    live.write_bytes(b"x")
    # a split trial's first file, written atomically by a killed worker (the long soak on PostgreSQL)
    first = cache / "work" / f".trial-{dead.pid}-8e4bf350-00001-of-00112.gguf.{dead.pid}-ba4fec88.tmp"
    first.write_bytes(b"x")
    live_first = cache / "work" / f".trial-{os.getppid()}-1-00001-of-00002.gguf.{os.getppid()}-ab.tmp"
    live_first.write_bytes(b"x")
    (cache / "references" / ".0123abcd.xyz").mkdir(parents=True)  # an empty temporary of an older run
    (cache / "references" / f".0123abcd.{dead.pid}.xyz").mkdir()
    (cache / "references" / f".0123abcd.{dead.pid}.xyz" / "meta.json").write_text("{}")
    # half-written measurement records and task caches (atomic writes of a killed process)
    records = [cache / d / f".x.json.{dead.pid}-abc123.tmp" for d in ("measurements", "tasks", "tensors")]
    for record in records:
        record.parent.mkdir()
        record.write_text("{")
    kept = cache / "measurements" / f".y.json.{os.getppid()}-abc123.tmp"
    kept.write_text("{")
    run = run_cli("inspect", dense_model, env={**os.environ, "RECIPE_SEARCH_CACHE": str(cache)})
    assert run.returncode == 0, run.stderr
    assert not partial.exists() and live.exists()
    assert not first.exists() and live_first.exists()
    assert not list((cache / "references").iterdir())
    assert not any(r.exists() for r in records) and kept.exists()


def test_atomic_writes_name_their_process(tmp_path, monkeypatch) -> None:
    """A killed process's half-written file is known by the pid in its name (`leftovers` removes it)."""
    from recipe_search.formats import files

    seen = []
    real = files.os.replace
    monkeypatch.setattr(files.os, "replace", lambda a, b: (seen.append(Path(a).name), real(a, b)))
    files.atomic_write_text(tmp_path / "m.json", "{}")
    assert seen and seen[0].startswith(f".m.json.{os.getpid()}-") and seen[0].endswith(".tmp")


@pytest.mark.slow
@pytest.mark.llama  # starts llama.cpp in a subprocess
def test_quantizing_child_dies_with_its_parent(tmp_path, dense_model) -> None:
    """A SIGKILLed worker's quantizing child must not run on: here the child blocks opening a FIFO for ever."""
    fifo = tmp_path / "blocks.gguf"
    os.mkfifo(fifo)
    script = ("from pathlib import Path\nfrom recipe_search.engine.quantize import _run_isolated\n"
              "from recipe_search.core.recipe import uniform_recipe\n"
              f"_run_isolated(Path({str(fifo)!r}), Path({str(tmp_path / 'o')!r}), uniform_recipe('Q8_0'), 1, None)\n")
    parent = subprocess.Popen([sys.executable, "-c", script])
    children: list[int] = []
    deadline = time.time() + 60
    while not children and time.time() < deadline:
        time.sleep(0.2)
        for task in Path(f"/proc/{parent.pid}/task").glob("*/children"):
            children += [int(p) for p in task.read_text().split()]
    # the spawned child is up once it has imported llama_cpp and opened the FIFO
    time.sleep(5)
    parent.kill()
    parent.wait()
    try:
        deadline = time.time() + 20
        alive = children
        while alive and time.time() < deadline:
            time.sleep(0.2)
            alive = [c for c in children if Path(f"/proc/{c}").exists()
                     and "Z" not in Path(f"/proc/{c}/stat").read_text().split(")")[-1].split()[0]]
        assert children and not alive, f"the quantizing child(ren) {alive} outlived their parent"
    finally:
        for c in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(c, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.llama  # starts llama.cpp in a subprocess
def test_a_script_without_a_main_guard_can_quantize(tmp_path, dense_model) -> None:
    """The quantizer's child process was started with multiprocessing's spawn, which runs the parent's __main__
    again in the child: a script without ``if __name__ == "__main__":`` quantized in the child, which could not
    start a process while bootstrapping, and the parent reported an abort."""
    script = tmp_path / "no_guard.py"
    script.write_text("from recipe_search.core.recipe import uniform_recipe\n"
                      "from recipe_search.engine.quantize import quantize_model\n"
                      "print('top level ran', flush=True)\n"
                      f"quantize_model({str(dense_model)!r}, uniform_recipe('Q8_0'), {str(tmp_path / 'q.gguf')!r})\n"
                      "print('quantized', flush=True)\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["top level ran", "quantized"], out.stdout
    assert read_inventory(tmp_path / "q.gguf").by_name["blk.0.ffn_up.weight"].ggml_type.name == "Q8_0"


@pytest.mark.slow
@pytest.mark.llama  # starts llama.cpp in a subprocess
def test_second_ctrl_c_requeues_the_abandoned_trial(tmp_path, dense_model) -> None:
    import optuna

    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"ctx": 128, "chunks": 4, "objectives": ["size", "kld_p99"],
                                      "surrogate_seeds": 0, "refit_every": 0,
                                      "space": {"tensor_types": ["ffn_up", "ffn_down"], "ladder": ["Q8_0", "Q4_0"]},
                                      "references": {"uniform": ["Q8_0", "Q4_0"], "presets": []}}))
    # without the tensor cache a trial quantizes in a child process: long enough to be caught in flight
    base = ["search", dense_model, "--config", config, "--dir", tmp_path / "s", "--study", "c",
            "--cache-dir", tmp_path / "cache", "--quiet", "--no-tensor-cache"]
    assert run_cli(*base, "--trials", "0", timeout=300).returncode == 0
    storage = f"sqlite:///{tmp_path / 's' / 'study.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "recipe_search.cli", *map(str, base), "--trials", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline, in_flight = time.time() + 120, None
    while in_flight is None and time.time() < deadline:
        time.sleep(0.05)
        trials = optuna.load_study(study_name="c", storage=storage).trials
        in_flight = next((t for t in trials if t.state == optuna.trial.TrialState.RUNNING
                          and "result_key" in t.user_attrs), None)
    assert in_flight is not None and "reference" in in_flight.user_attrs
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    state = optuna.load_study(study_name="c", storage=storage).trials[in_flight.number].state
    # 130: the second Ctrl-C abandoned the trial; 0: the trial had finished first and nothing was left to abandon
    assert (proc.returncode, state != optuna.trial.TrialState.COMPLETE) in ((130, True), (0, False)), err
    assert "Traceback" not in err, err
    again = run_cli(*base, "--trials", "3", timeout=300)
    assert again.returncode == 0, again.stderr
    done = [t for t in optuna.load_study(study_name="c", storage=storage).trials
            if t.user_attrs.get("reference") == in_flight.user_attrs["reference"]
            and t.state == optuna.trial.TrialState.COMPLETE]
    assert done, f"the abandoned reference {in_flight.user_attrs['reference']} was never measured"


def test_pareto_recipes_carry_no_paths(synthetic_study, dense_model, tmp_path, capsys) -> None:
    from recipe_search.core.inventory import model_fingerprint
    from recipe_search.core.recipe import load_recipe

    out = tmp_path / "picks"
    assert main(["pareto", "--dir", str(synthetic_study), "--targets", "5.0bpw", "--out", str(out)]) == 0
    capsys.readouterr()
    (path,) = out.iterdir()
    text = path.read_text()
    assert "/tmp/" not in text and str(Path.home()) not in text, text
    recipe = load_recipe(path)
    assert recipe.model.file == dense_model.name and recipe.model.file_bytes == dense_model.stat().st_size
    assert recipe.model.fingerprint == model_fingerprint(read_inventory(dense_model))
    assert recipe.provenance["study"]["storage"] == "sqlite:///study.db"
    assert recipe.provenance["scoring"]["model"] == dense_model.name
