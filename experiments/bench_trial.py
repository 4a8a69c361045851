#!/usr/bin/env python3
"""One recipe-search trial against llama.cpp's own tools, phase by phase, on the same recipe, model and text.

Their side is `llama-quantize --tensor-type-file` + `llama-perplexity --kl-divergence` (and, for the
reference, `llama-perplexity --kl-divergence-base`), built from the llama.cpp that the installed
llama-cpp-python sdist vendors, so both sides run the same kernels. Our side is `Worker.measure` (and
`get_reference`) in a fresh child process. Runs alternate ours, theirs, ours, theirs..., each pair on a
random per-tensor-type mix not scored before; the same threads, context, chunks and batch on both sides
(logical batch n_seq·ctx, micro-batch 512, llama.cpp's defaults on both). llama-perplexity runs with
`--no-repack`, which is what our engine's `use_extra_bufts=False` is: with repacking, this CPU's AMX path
dies with SIGILL on quantized models. Peak RSS is each child's, from wait4 (the process and what it waited
for). Prints ratios (ours/theirs) per target and a phase table; writes every number to a JSON file.

Phases. Ours, from the library's own per-phase seconds: quantize (spawned quantizer child, type check),
load, decode (inside llama_decode), kld (statistics, reading the cached reference, summary), other (the
rest of Worker.measure: resolution, size prediction, removing the quant). The trial is Worker.measure;
the interpreter, imports and worker setup (once per search) are reported as startup, outside the total.
Theirs: quantize (llama-quantize's wall time), load (llama-perplexity's log timestamp when it starts
computing), decode (inside its llama_process calls, timed by an LD_PRELOAD shim), kld + I/O (the rest:
reading the base file, the statistics, exit).

    python experiments/bench_trial.py [--tools DIR] [--runs 3] [--out experiments/results/bench_trial.json]

Without --tools, llama-quantize and llama-perplexity are built once (cmake, Release, -j2) into
~/.cache/recipe-search/llama.cpp-tools/ from `pip download --no-binary :all: llama-cpp-python==VERSION`.
If that build fails, their side is the naive in-process loop (llama_cpp.Llama with logits_all=True,
a dense float16 log-probability file as reference) and the report says why.

    python experiments/bench_trial.py --smoke   # our side only (--ours-only), on a generated tiny model

The smoke mode neither builds nor runs llama.cpp's tools: it runs the --ours-only benchmark (every child of
our side, the score process, the report) on a tiny model, one trial, into a temporary directory.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import smoke

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # benchmark this checkout's recipe_search, whatever is installed
DEFAULT_TEXT = REPO.parent / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"
TOOLS_CACHE = Path.home() / ".cache" / "recipe-search" / "llama.cpp-tools"
TARGETS = ("llama-quantize", "llama-perplexity")
MIX_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")
N_UBATCH = 512  # llama.cpp's default micro-batch, on both sides


# --------------------------------------------------------------------------------------------------
# machine and process measurement


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "nproc": os.cpu_count(),
            "cpu": cpu, "kernel": platform.release(), "python": platform.python_version()}


def wait_quiet(max_load: float, max_wait_s: float, poll_s: float = 30.0) -> list[float]:
    """Wait until the 1-minute load average is at most max_load (or max_wait_s passes); returns the loads seen."""
    seen = [os.getloadavg()[0]]
    deadline = time.monotonic() + max_wait_s
    while seen[-1] > max_load and time.monotonic() < deadline:
        print(f"load {seen[-1]:.2f} > {max_load}: waiting {poll_s:.0f} s", flush=True)
        time.sleep(poll_s)
        seen.append(os.getloadavg()[0])
    return seen


def run_measured(cmd: list[str], log: Path | None = None, env: dict | None = None) -> dict:
    """Run cmd; wall seconds, peak RSS in MB of it and the children it waited for, its output."""
    with open(log or os.devnull, "w") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        assert proc.stdout is not None  # stdout=PIPE
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log else ""
        raise RuntimeError(f"{cmd[0]} failed (exit {proc.returncode}):\n{tail}")
    return {"wall": wall, "rss_mb": usage.ru_maxrss / 1024, "stdout": out,
            "load1": os.getloadavg()[0]}


# --------------------------------------------------------------------------------------------------
# llama.cpp tools


def build_tools(cache: Path, version: str) -> Path:
    """llama-quantize and llama-perplexity from the llama-cpp-python sdist's vendored llama.cpp, built once."""
    bin_dir = cache / f"build-{version}" / "bin"
    if all((bin_dir / t).exists() for t in TARGETS):
        return bin_dir
    sdist_dir = cache / "sdist"
    sdist = next(sdist_dir.glob(f"llama_cpp_python-{version}.tar.gz"), None)
    if sdist is None:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={version}", "-d", str(sdist_dir)], check=True)
        sdist = next(sdist_dir.glob(f"llama_cpp_python-{version}.tar.gz"))
    src = cache / "src"
    if not (src / f"llama_cpp_python-{version}").exists():
        with tarfile.open(sdist) as tar:
            tar.extractall(src, filter="data")
    llama_src = src / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    build = bin_dir.parent
    subprocess.run(["cmake", "-S", str(llama_src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                    "-DLLAMA_CURL=OFF"], check=True)
    subprocess.run(["cmake", "--build", str(build), "-j2", "--target", *TARGETS], check=True)
    return bin_dir


_STAMP = re.compile(r"^(\d+)\.(\d+)\.(\d+)\.(\d+) \w (.*)$")  # llama.cpp's log timestamps: m.ss.ms.us


def _stamps(log: str) -> list[tuple[float, str]]:
    """(seconds since the log started, message) of every timestamped line."""
    out = []
    for line in log.splitlines():
        m = _STAMP.match(line)
        if m:
            mi, s, ms, us = map(int, m.groups()[:4])
            out.append((mi * 60 + s + ms / 1e3 + us / 1e6, m.group(5)))
    return out


def _stamp_of(stamps: list[tuple[float, str]], text: str) -> float:
    return next(t for t, line in stamps if text in line)


def _logged(pattern: str, log: str) -> float:
    """The number that the first match of ``pattern`` captures in a tool's log."""
    m = re.search(pattern, log)
    if m is None:
        raise RuntimeError(f"no match for {pattern!r} in the tool's log")
    return float(m.group(1))


# llama-perplexity's own decode timer (`--perf`, "prompt eval time") misses most of a multi-ubatch decode,
# so the time inside its llama_process calls is taken by interposing the function (LD_PRELOAD).
DECODE_TIMER = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
static double seconds;
static int calls;
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int32_t llama_process(void *ctx, int type, void *batch) {
    static int32_t (*real)(void *, int, void *);
    if (!real) real = (int32_t (*)(void *, int, void *))dlsym(RTLD_NEXT, "llama_process");
    double start = now();
    int32_t rc = real(ctx, type, batch);
    seconds += now() - start;
    calls += 1;
    return rc;
}
__attribute__((destructor)) static void report(void) {
    fprintf(stderr, "decode-timer: %d llama_process calls, %.6f s\n", calls, seconds);
}
"""


def build_decode_timer(work: Path) -> Path:
    src, lib = work / "decode_timer.c", work / "decode_timer.so"
    src.write_text(DECODE_TIMER)
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(lib), str(src), "-ldl"], check=True)
    return lib


def _decode_s(log: str) -> float:
    return _logged(r"decode-timer: \d+ llama_process calls, ([\d.]+) s", log)


def run_timed_tool(cmd: list[str], log: Path, timer: Path) -> tuple[dict, str]:
    r = run_measured(cmd, log, env={**os.environ, "LD_PRELOAD": str(timer)})
    return r, log.read_text(errors="replace")


def perplexity_cmd(bin_dir: Path, model: Path, a: argparse.Namespace) -> list[str]:
    return [str(bin_dir / "llama-perplexity"), "-m", str(model), "-c", str(a.ctx), "-b", str(a.ctx * a.n_seq),
            "-t", str(a.threads), "--no-repack"]


def theirs_reference(bin_dir: Path, a: argparse.Namespace, base_file: Path, log: Path, timer: Path) -> dict:
    cmd = perplexity_cmd(bin_dir, a.model, a) + ["-f", str(a.text), "--chunks", str(a.chunks),
                                                 "--kl-divergence-base", str(base_file)]
    r, text = run_timed_tool(cmd, log, timer)
    load = _stamp_of(_stamps(text), "tokenizing the input")
    tokenize = _logged(r"tokenization took ([\d.]+) ms", text) / 1000
    decode = _decode_s(text)
    return {"cmd": cmd, "wall": r["wall"], "rss_mb": r["rss_mb"], "load1": r["load1"],
            "bytes": base_file.stat().st_size,
            "phases": {"load": load, "tokenize": tokenize, "decode": decode,
                       "log-softmax + write": r["wall"] - load - tokenize - decode}}


def theirs_trial(bin_dir: Path, a: argparse.Namespace, recipe, base_file: Path, work: Path, i: int,
                 timer: Path) -> dict:
    from recipe_search.core import quantize_args, tensor_type_file

    ttf = work / f"trial-{i}.tensor-types.txt"
    ttf.write_text(tensor_type_file(recipe))
    quant = work / f"trial-{i}-theirs.gguf"
    qcmd = shlex.split(quantize_args(recipe, str(a.model), str(quant), str(ttf), a.threads))
    qcmd[0] = str(bin_dir / "llama-quantize")
    q = run_measured(qcmd, work / f"trial-{i}-quantize.log")
    size = quant.stat().st_size
    log = work / f"trial-{i}-perplexity.log"
    pcmd = perplexity_cmd(bin_dir, quant, a) + ["--kl-divergence-base", str(base_file), "--kl-divergence"]
    p, text = run_timed_tool(pcmd, log, timer)
    quant.unlink()
    load = _stamp_of(_stamps(text), "kl_divergence: computing over")
    decode = _decode_s(text)
    kld = _logged(r"Mean\s+KLD:\s+([-\d.]+)", p["stdout"] + text)
    return {"cmd": [qcmd, pcmd], "wall": q["wall"] + p["wall"], "rss_mb": max(q["rss_mb"], p["rss_mb"]),
            "rss_mb_quantize": q["rss_mb"], "rss_mb_perplexity": p["rss_mb"], "load1": p["load1"],
            "file_bytes": size, "kld_mean": kld,
            "phases": {"quantize": q["wall"], "load": load, "decode": decode,
                       "kld + I/O": p["wall"] - load - decode}}


# --------------------------------------------------------------------------------------------------
# our side, in a child process (`--child KIND SPEC`)


def _settings(spec: dict):
    from recipe_search.core import ScoreSettings, TextSource

    return ScoreSettings(text=TextSource(Path(spec["text"])), ctx=spec["ctx"], chunks=spec["chunks"],
                         threads=spec["threads"], n_seq=spec["n_seq"])


def child_reference(spec: dict) -> dict:
    """Build the sparse reference into an empty cache directory."""
    from recipe_search.engine import get_reference

    start = time.perf_counter()
    ref, cached = get_reference(Path(spec["model"]), _settings(spec), Path(spec["cache"]))
    wall = time.perf_counter() - start
    assert not cached
    phases = ref.meta["seconds"]
    return {"wall": wall, "bytes": sum(f.stat().st_size for f in ref.path.iterdir()),
            "phases": {**phases, "other": wall - sum(phases.values())}}


def child_trial(spec: dict) -> dict:
    """One Worker.measure, the worker set up first (imports, base inventory, cached reference).

    ``mode``: cold (the tensor cache emptied first), warm (every tensor of the recipe cached by its cold run),
    plain (no tensor cache: llama_model_quantize writes the whole model)."""
    from recipe_search.core import recipe_from_dict
    from recipe_search.engine import TensorCache, Worker

    mode = spec.get("mode", "cold")
    worker = Worker(Path(spec["model"]), _settings(spec), Path(spec["cache"]), Path(spec["work"]),
                    tensor_cache=mode != "plain")
    assert worker.reference is not None and worker.reference_was_cached
    if mode == "cold":
        TensorCache.under(Path(spec["cache"])).clear()
    recipe = recipe_from_dict(spec["recipe"])
    start = time.perf_counter()
    m = worker.measure(recipe, use_cache=False)  # a trial's cost, not a cache read
    wall = time.perf_counter() - start
    return {"wall": wall, "file_bytes": m.file_bytes, "kld_mean": m.metrics["kld_mean"],
            "phases": {**m.seconds, "other": wall - sum(m.seconds.values())}}


def score_process(a: argparse.Namespace, spec: dict, recipe, work: Path, i: int) -> dict:
    """A whole `recipe-search score MODEL RECIPE` process (this checkout's code), timed from outside."""
    path = work / f"trial-{i}.yaml"
    recipe.save(path)
    cmd = [sys.executable, "-m", "recipe_search.cli", "score", spec["model"], str(path), "--text", spec["text"],
           "--ctx", str(spec["ctx"]), "--chunks", str(spec["chunks"]), "--threads", str(spec["threads"]),
           "--cache-dir", spec["cache"], "--json"]
    r = run_measured(cmd, work / f"trial-{i}-score.log", env={**os.environ, "PYTHONPATH": str(REPO)})
    return {"cmd": cmd, "wall": r["wall"], "rss_mb": r["rss_mb"], "load1": r["load1"],
            "kld_mean": json.loads(r["stdout"])["metrics"]["kld_mean"]}


def in_child(kind: str, spec: dict, log: Path) -> dict:
    """Run a `--child` function in a fresh interpreter; `startup` is the process's wall time outside it."""
    r = run_measured([sys.executable, __file__, "--child", kind, json.dumps(spec)], log,
                     env={**os.environ, "PYTHONPATH": str(REPO)})  # this checkout's recipe_search
    result = json.loads(r["stdout"].strip().splitlines()[-1])
    return {**result, "startup": r["wall"] - result["wall"], "rss_mb": r["rss_mb"], "load1": r["load1"]}


# --------------------------------------------------------------------------------------------------
# the naive in-process loop, their side when the tools cannot be built (`--child naive-...`)


def _naive_llama(path: str, spec: dict):
    """High-level Llama with logits for every position, weights not repacked (its --no-repack, which it has no
    argument for), the SWA cache as llama-perplexity sizes it."""
    import llama_cpp
    import llama_cpp.llama_cpp as low

    defaults = low.llama_model_default_params

    def no_repack():
        params = defaults()
        params.use_extra_bufts = False
        return params

    low.llama_model_default_params = no_repack
    try:
        return llama_cpp.Llama(path, n_ctx=spec["ctx"], n_batch=spec["ctx"], n_threads=spec["threads"],
                               logits_all=True, swa_full=False, verbose=False)
    finally:
        low.llama_model_default_params = defaults


def child_naive_reference(spec: dict) -> dict:
    """Base log-probabilities of every scored position, float16, from Llama(logits_all=True) chunk by chunk."""
    import numpy as np

    from recipe_search.core import TextSource, log_softmax
    from recipe_search.engine import chunk_tokens, scored_range

    start = time.perf_counter()
    llm = _naive_llama(spec["model"], spec)
    tokens = np.array(llm.tokenize(TextSource.parse(spec["text"]).read(), add_bos=True, special=False), dtype=np.int32)
    chunks = chunk_tokens(tokens, spec["ctx"], spec["chunks"], llm._model.add_bos_token(), llm.token_bos())
    first, last = scored_range(spec["ctx"])
    out = np.lib.format.open_memmap(spec["base"], "w+", np.float16, (len(chunks), last + 1 - first, llm.n_vocab()))
    for i, chunk in enumerate(chunks):
        llm.reset()
        llm.eval(chunk.tolist())
        out[i] = log_softmax(llm.scores[first:last + 1])
    out.flush()
    np.save(spec["base"] + ".tokens.npy", chunks)
    return {"wall": time.perf_counter() - start}


def child_naive_trial(spec: dict) -> dict:
    """Quantize with llama.cpp's quantizer, then score with Llama(logits_all=True) chunk by chunk."""
    import numpy as np

    from recipe_search.core import TokenStats, recipe_from_dict, summarize, token_stats_from_logprobs
    from recipe_search.engine import quantize_model

    start = time.perf_counter()
    quant = Path(spec["work"]) / "naive.gguf"
    quantize_model(spec["model"], recipe_from_dict(spec["recipe"]), quant, threads=spec["threads"])
    quantized = time.perf_counter()
    llm = _naive_llama(str(quant), spec)
    loaded = time.perf_counter()
    base = np.load(spec["base"], mmap_mode="r")
    chunks = np.load(spec["base"] + ".tokens.npy")
    first = spec["ctx"] // 2
    decode = 0.0
    parts = []
    for i, chunk in enumerate(chunks):
        t = time.perf_counter()
        llm.reset()
        llm.eval(chunk.tolist())
        decode += time.perf_counter() - t
        parts.append(token_stats_from_logprobs(np.asarray(base[i], np.float32), llm.scores[first:len(chunk) - 1],
                                               chunk[first + 1:]))
    kld = summarize(TokenStats.concat(parts)).kld_mean
    wall = time.perf_counter() - start
    size = quant.stat().st_size
    quant.unlink()
    return {"wall": wall, "file_bytes": size, "kld_mean": kld,
            "phases": {"quantize": quantized - start, "load": loaded - quantized, "decode": decode,
                       "kld + I/O": wall - (loaded - start) - decode}}


CHILDREN = {"reference": child_reference, "trial": child_trial, "naive-reference": child_naive_reference,
            "naive-trial": child_naive_trial}


# --------------------------------------------------------------------------------------------------
# the benchmark


def random_mix(inventory, rng, name: str):
    """Every quantizable tensor type gets a random type it takes without a fallback."""
    from recipe_search.core import Recipe, Rule, Unmatched

    rules = []
    for kind in inventory.kinds.values():
        allowed = [t.name for t in kind.admitted_types if t.name in MIX_TYPES]
        if allowed:
            rules.append(Rule(tensors=kind.name, type=str(rng.choice(allowed))))
    return Recipe(name=name, unmatched=Unmatched(type="Q8_0"), rules=rules)


def median_phases(runs: list[dict]) -> dict[str, float]:
    return {k: statistics.median(r["phases"][k] for r in runs) for k in runs[0]["phases"]}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=smoke.EPILOG)
    p.add_argument("--model", type=Path, help="F16 GGUF (default: the demo model)")
    p.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-seq", type=int, default=4, help="chunks per llama_decode (llama-perplexity -b n_seq*ctx)")
    p.add_argument("--runs", type=int, default=3, help="alternating pairs of trials")
    p.add_argument("--reference-runs", type=int, default=3, help="alternating pairs of reference builds")
    p.add_argument("--tools", type=Path, help="a bin/ with llama-quantize and llama-perplexity (default: build)")
    p.add_argument("--tools-cache", type=Path, default=TOOLS_CACHE)
    p.add_argument("--naive", action="store_true", help="compare against the naive in-process loop instead")
    p.add_argument("--seed", type=int, help="recipe seed (default: the time, so no recipe was scored before)")
    p.add_argument("--max-load", type=float, default=0.5, help="wait for a 1-minute load average this low")
    p.add_argument("--max-wait", type=float, default=1200, help="seconds to wait for it at most")
    p.add_argument("--work", type=Path, help="scratch directory (default: a temporary one)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_trial.json")
    p.add_argument("--no-plain", action="store_true", help="skip the trials without the tensor cache")
    p.add_argument("--ours-only", action="store_true",
                   help="no llama.cpp tools: the baseline is recipe-search without the tensor cache (one reference)")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(CHILDREN[a.child[0]](json.loads(a.child[1]))))
        return

    import llama_cpp
    import numpy as np

    from recipe_search import read_inventory
    from recipe_search.engine import demo_model_path

    a.model = (a.model or demo_model_path()).resolve()
    version = llama_cpp.__version__
    info = {"machine": machine(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "llama_cpp_python": version, "model": str(a.model), "text": str(a.text), "ctx": a.ctx,
            "chunks": a.chunks, "threads": a.threads, "n_seq": a.n_seq, "batch": a.ctx * a.n_seq,
            "micro_batch": N_UBATCH, "scored_tokens": a.chunks * (a.ctx - 1 - a.ctx // 2)}
    naive_why = "asked for (--naive)" if a.naive else None
    bin_dir = None
    if a.ours_only:
        a.reference_runs, a.no_plain = 1, False
    elif not a.naive:
        try:
            bin_dir = a.tools or build_tools(a.tools_cache, version)
        except (subprocess.CalledProcessError, OSError, StopIteration) as err:
            naive_why = f"building llama.cpp's tools failed: {err}"
            print(naive_why, file=sys.stderr)
    info["theirs"] = ("none (--ours-only): ratios against recipe-search without the tensor cache" if a.ours_only
                      else "naive in-process loop: llama_cpp.Llama(logits_all=True) " + f"({naive_why})" if naive_why
                      else f"llama-quantize + llama-perplexity from {bin_dir}")
    seed = a.seed if a.seed is not None else int(time.time())
    info["seed"] = seed
    rng = np.random.default_rng(seed)
    inventory = read_inventory(a.model)
    work = Path(tempfile.mkdtemp(prefix="bench-trial-", dir=a.work))
    spec = {"model": str(a.model), "text": str(a.text), "ctx": a.ctx, "chunks": a.chunks, "threads": a.threads,
            "n_seq": a.n_seq, "work": str(work / "ours")}
    info["load_before"] = wait_quiet(a.max_load, a.max_wait)
    info["machine"]["date"] = machine()["date"]  # when the measurements start
    print(f"load {info['load_before'][-1]:.2f}; work in {work}", flush=True)
    try:
        timer = None if naive_why or a.ours_only else build_decode_timer(work)
        refs_ours, refs_theirs = [], []
        base_file = work / "base.kld"
        for i in range(a.reference_runs):
            spec_i = {**spec, "cache": str(work / f"cache-{i}")}
            refs_ours.append(in_child("reference", spec_i, work / f"ref-{i}-ours.log"))
            if i:
                shutil.rmtree(work / f"cache-{i}")
            target = base_file if i == 0 else work / f"base-{i}.kld"
            if a.ours_only:
                print(f"reference {i}: ours {refs_ours[-1]['wall']:.1f} s", flush=True)
                continue
            if naive_why:
                spec_n = {**spec, "base": str(target.with_suffix(".npy"))}
                r = in_child("naive-reference", spec_n, work / f"ref-{i}-naive.log")
                refs_theirs.append({**r, "bytes": target.with_suffix(".npy").stat().st_size,
                                    "phases": {"all": r["wall"]}})
            else:
                assert bin_dir is not None and timer is not None  # both set unless naive_why
                refs_theirs.append(theirs_reference(bin_dir, a, target, work / f"ref-{i}-theirs.log", timer))
            if i:
                for f in work.glob(f"base-{i}.*"):
                    f.unlink()
            print(f"reference {i}: ours {refs_ours[-1]['wall']:.1f} s, theirs {refs_theirs[-1]['wall']:.1f} s",
                  flush=True)
        trials_ours, trials_theirs, trials_warm, trials_plain, scores_warm = [], [], [], [], []
        for i in range(a.runs):
            recipe = random_mix(inventory, rng, f"bench-{seed}-{i}")
            spec_i = {**spec, "cache": str(work / "cache-0"), "recipe": recipe.model_dump(by_alias=True, mode="json")}
            trials_ours.append(in_child("trial", {**spec_i, "mode": "cold"}, work / f"trial-{i}-ours.log"))
            if a.ours_only:
                trials_theirs.append(in_child("trial", {**spec_i, "mode": "plain"}, work / f"trial-{i}-plain.log"))
            elif naive_why:
                spec_n = {**spec_i, "base": str(base_file.with_suffix(".npy")), "work": str(work)}
                trials_theirs.append(in_child("naive-trial", spec_n, work / f"trial-{i}-naive.log"))
            else:
                assert bin_dir is not None and timer is not None  # both set unless naive_why
                trials_theirs.append(theirs_trial(bin_dir, a, recipe, base_file, work, i, timer))
            trials_warm.append(in_child("trial", {**spec_i, "mode": "warm"}, work / f"trial-{i}-warm.log"))
            scores_warm.append(score_process(a, spec_i, recipe, work, i))
            if not a.no_plain and not a.ours_only:
                trials_plain.append(in_child("trial", {**spec_i, "mode": "plain"}, work / f"trial-{i}-plain.log"))
            for r in (trials_ours[-1], trials_theirs[-1], trials_warm[-1]):
                r["recipe"] = {rule.tensors: rule.type for rule in recipe.rules}
            print(f"trial {i}: ours cold {trials_ours[-1]['wall']:.1f} s, warm {trials_warm[-1]['wall']:.1f} s, "
                  f"score process (warm) {scores_warm[-1]['wall']:.1f} s"
                  + (f", no tensor cache {trials_plain[-1]['wall']:.1f} s" if trials_plain else "")
                  + f"; theirs {trials_theirs[-1]['wall']:.1f} s "
                  f"(KLD {trials_ours[-1]['kld_mean']:.5f} / {trials_warm[-1]['kld_mean']:.5f} / "
                  f"{trials_theirs[-1]['kld_mean']:.5f})", flush=True)
        info["load_after"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(info, refs_ours, refs_theirs, trials_ours, trials_theirs, a.out,
           {"warm": trials_warm, "score_warm": scores_warm, "plain": trials_plain})


def _phase_cell(kv: tuple[str, float | None]) -> str:
    return f"{kv[0]:>26s} {kv[1]:7.2f}" if kv[1] is not None else " " * 34


def report(info: dict, refs_ours: list, refs_theirs: list, trials_ours: list, trials_theirs: list,
           out: Path, cached: dict[str, list]) -> None:
    med = statistics.median
    t_ours, t_theirs = med(r["wall"] for r in trials_ours), med(r["wall"] for r in trials_theirs)
    t_warm, t_score = med(r["wall"] for r in cached["warm"]), med(r["wall"] for r in cached["score_warm"])
    assembly_share = med(r["phases"]["assemble"] / r["wall"] for r in cached["warm"])
    rss_ours = med(r["rss_mb"] for r in trials_ours)
    rss_theirs = med(r.get("rss_mb_perplexity", r["rss_mb"]) for r in trials_theirs)
    targets = {
        "trial_time": {"ours_s": t_ours, "theirs_s": t_theirs, "ratio": t_ours / t_theirs, "target": 1.0},
        "warm_trial_time": {"ours_s": t_warm, "theirs_s": t_theirs, "ratio": t_warm / t_theirs, "target": 0.72},
        "warm_score_process": {"ours_s": t_score, "theirs_s": t_theirs, "ratio": t_score / t_theirs, "target": 0.80},
        "warm_assembly_share": {"ours_s": med(r["phases"]["assemble"] for r in cached["warm"]), "theirs_s": t_warm,
                                "ratio": assembly_share, "target": 0.01},
        "trial_peak_rss": {"ours_mb": rss_ours, "theirs_mb": rss_theirs, "ratio": rss_ours / rss_theirs,
                           "target": 1.0, "micro_batch": info["micro_batch"], "batch": info["batch"]},
    }
    if refs_theirs:
        r_ours, r_theirs = med(r["wall"] for r in refs_ours), med(r["wall"] for r in refs_theirs)
        cache, base = med(r["bytes"] for r in refs_ours), med(r["bytes"] for r in refs_theirs)
        targets["reference_time"] = {"ours_s": r_ours, "theirs_s": r_theirs, "ratio": r_ours / r_theirs, "target": 1.0}
        targets["reference_size"] = {"ours_bytes": cache, "theirs_bytes": base, "ratio": cache / base, "target": 0.05}
    if cached["plain"]:
        t_plain = med(r["wall"] for r in cached["plain"])
        targets["cold_vs_no_tensor_cache"] = {"ours_s": t_ours, "theirs_s": t_plain, "ratio": t_ours / t_plain,
                                              "target": 1.0}
    for t in targets.values():
        t["met"] = t["ratio"] <= t["target"]
    m = info["machine"]
    print(f"\n{m['date']}  {m['cpu']}, nproc {m['nproc']}; load {info['load_before'][-1]:.2f} before, "
          f"{info['load_after']:.2f} after; {info['theirs']}")
    print(f"threads {info['threads']}, ctx {info['ctx']}, {info['chunks']} chunks = {info['scored_tokens']} scored "
          f"tokens, batch {info['batch']} (n_seq {info['n_seq']}), micro-batch {info['micro_batch']}; "
          f"medians of {len(trials_ours)} trial pairs and {len(refs_ours)} reference pairs\n")
    for name, t in targets.items():
        vals = [v for k, v in t.items() if k.startswith(("ours", "theirs"))]
        print(f"{name:16s} ours {vals[0]:>14,.2f}  theirs {vals[1]:>14,.2f}  ratio {t['ratio']:.3f} "
              f"(target <= {t['target']}) {'met' if t['met'] else 'NOT met'}")
    for title, o, th in (("cold trial", trials_ours, trials_theirs), ("warm trial", cached["warm"], trials_theirs),
                         *((("trial without the tensor cache", cached["plain"], trials_theirs),) if cached["plain"]
                           else ()), *((("reference", refs_ours, refs_theirs),) if refs_theirs else ())):
        po, pt = median_phases(o), median_phases(th)
        print(f"\n{title} phases (median seconds)\n{'ours':>34s} {'':8s}{'theirs':>28s}")
        for k in range(max(len(po), len(pt))):
            left = list(po.items())[k] if k < len(po) else ("", None)
            right = list(pt.items())[k] if k < len(pt) else ("", None)
            print(f"{_phase_cell(left)}   {_phase_cell(right)}")
        print(f"{'total':>26s} {med(r['wall'] for r in o):7.2f}   {'total':>26s} {med(r['wall'] for r in th):7.2f}")
        print(f"{'startup (not in total)':>26s} {med(r['startup'] for r in o):7.2f}")
        print(f"{'peak RSS MB':>26s} {med(r['rss_mb'] for r in o):7.0f}   {'peak RSS MB':>26s} "
              f"{med(r['rss_mb'] for r in th):7.0f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**info, "targets": targets, "trials": {"ours": trials_ours, "theirs": trials_theirs,
                                                                      **cached},
                               "references": {"ours": refs_ours, "theirs": refs_theirs}}, indent=1) + "\n")
    print(f"\nwrote {out}")


def run_smoke() -> None:
    print("smoke: our side only (--ours-only); llama-quantize and llama-perplexity are neither built nor run", flush=True)
    with smoke.directory("bench_trial") as tmp:
        main(["--model", str(smoke.dense_model(tmp)), "--text", str(smoke.text_file(tmp)), "--ctx", "128", "--chunks",
              "2", "--runs", "1", "--ours-only", "--seed", "0", "--max-load", "inf", "--work", str(tmp),
              "--out", str(tmp / "bench_trial.json")])


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
