"""Cold and warm `recipe-search score` trials against llama.cpp's tools on a real-shape GGUF, with peak memory by kind.

    python experiments/real_shape_bench.py ../rs-work/real-shapes/q35-2blocks.gguf --runs 3 \
        --out experiments/results/real-shapes-2blocks.json

The model comes from experiments/real_shapes.py. One recipe (default: uniform Q4_K; ``--recipe`` a YAML) is
scored ``--runs`` times, each run three trials in a row, every one a whole process timed from outside:

- ours, cold: `recipe-search score MODEL RECIPE` with the tensor cache emptied first and the reference cached;
- theirs: `llama-quantize --tensor-type-file` + `llama-perplexity --kl-divergence` against a base file made
  beforehand (experiments/bench_trial.py's ``theirs_trial``: the same tools, kernels, batch and flags);
- ours, warm: the same `recipe-search score` again, every tensor now cached.

The same threads (default 2), context and chunks (default 4 of 512) on both sides; medians over the runs.
Memory: the bench samples every process below it each ``--sample-s`` seconds (RssAnon, RssFile, RssShmem and
VmHWM from /proc/PID/status) and reports, per trial, the peak of the tree's anonymous sum, the peak of its
file-backed sum (the mapped model, quant and shards) and each process's own peaks; wait4's peak RSS is kept
beside them (every ``*_mb`` is MiB). Peaks shorter than a sampling interval can be missed. The tensor cache's
bytes after a cold trial are summed from its records, per block and for the rest (token_embd, output).

Without ``--tools`` the tools are built once as experiments/bench_trial.py builds them. ``--ours-only`` skips
their side (no tools needed; ratios are then not computed).

    python experiments/real_shape_bench.py --smoke  # --ours-only, one run, on real_shapes.py's smoke model
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import bench_trial
import smoke

from recipe_search.formats import block_index

STATUS_KEYS = ("RssAnon", "RssFile", "RssShmem", "VmHWM")


def _descendants(root: int) -> list[int]:
    """Every live process below ``root``, from each process's parent in /proc/PID/stat."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            children[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry.name))
    out, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _status(pid: int) -> tuple[str, dict[str, int]] | None:
    """A process's name and its memory counters in kB, or None once it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    name = " ".join(Path(arg.decode(errors="replace")).name for arg in cmdline[:4] if arg)[:80]
    return name, {k: int(fields[k].split()[0]) for k in STATUS_KEYS if k in fields}


class MemorySampler:
    """Peak memory by kind of every process below this one while the ``with`` block runs."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.peak = {"anon_mb": 0.0, "file_mb": 0.0, "shmem_mb": 0.0, "total_mb": 0.0}
        self.processes: dict[int, dict] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        tree = {"anon_mb": 0.0, "file_mb": 0.0, "shmem_mb": 0.0}
        for pid in _descendants(os.getpid()):
            got = _status(pid)
            if got is None or "RssAnon" not in got[1]:
                continue
            name, kb = got
            mb = {"anon_mb": kb["RssAnon"] / 1024, "file_mb": kb["RssFile"] / 1024,
                  "shmem_mb": kb.get("RssShmem", 0) / 1024, "hwm_mb": kb.get("VmHWM", 0) / 1024}
            proc = self.processes.setdefault(pid, {"name": name, **dict.fromkeys(mb, 0.0)})
            for k, v in mb.items():
                proc[k] = max(proc[k], v)
            for k in tree:
                tree[k] += mb[k]
        for k, v in tree.items():
            self.peak[k] = max(self.peak[k], v)
        self.peak["total_mb"] = max(self.peak["total_mb"], sum(tree.values()))
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def result(self) -> dict:
        procs = [{k: (round(v, 1) if isinstance(v, float) else v) for k, v in p.items()}
                 for p in self.processes.values() if p["anon_mb"] + p["file_mb"] >= 1]
        return {**{k: round(v, 1) for k, v in self.peak.items()}, "samples": self.samples,
                "interval_s": self.interval_s, "processes": procs}


def cache_bytes(cache: Path) -> dict[str, int]:
    """Bytes of the tensor cache's quantized tensors, from its records: per block (``blk.N``) and the rest."""
    out: dict[str, int] = defaultdict(int)
    for record in (cache / "tensors").glob("*/*.json"):
        entry = json.loads(record.read_text())
        b = block_index(entry["tensor"])
        out[f"blk.{b}" if b is not None else "rest"] += entry["bytes"]
    return dict(sorted(out.items()))


def measured(what: Callable[[], dict], sample_s: float) -> dict:
    """Run ``what()`` (a trial, returning its dict) with the memory sampler around it."""
    with MemorySampler(sample_s) as mem:
        r = what()
    return {**r, "memory": mem.result()}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=smoke.EPILOG)
    p.add_argument("model", type=Path, help="a BF16 GGUF from experiments/real_shapes.py")
    p.add_argument("--recipe", type=Path, help="recipe YAML (default: uniform Q4_K)")
    p.add_argument("--text", type=Path, default=bench_trial.DEFAULT_TEXT)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--chunks", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3, help="runs of cold, theirs, warm (default 3)")
    p.add_argument("--sample-s", type=float, default=0.2, help="memory sampling interval in seconds (default 0.2)")
    p.add_argument("--tools", type=Path, help="a bin/ with llama-quantize and llama-perplexity (default: build)")
    p.add_argument("--tools-cache", type=Path, default=bench_trial.TOOLS_CACHE)
    p.add_argument("--ours-only", action="store_true", help="skip llama.cpp's tools (no ratios)")
    p.add_argument("--max-load", type=float, default=0.5, help="wait for a 1-minute load average this low")
    p.add_argument("--max-wait", type=float, default=1200, help="seconds to wait for it at most")
    p.add_argument("--work", type=Path, help="scratch directory (default: a temporary one)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "real-shapes-bench.json")
    a = p.parse_args(argv)

    import llama_cpp

    from recipe_search import load_recipe, read_inventory, uniform_recipe
    from recipe_search.core import ScoreSettings, TextSource
    from recipe_search.engine import TensorCache

    a.model = a.model.resolve()
    a.n_seq = ScoreSettings(text=TextSource(a.text)).n_seq  # score's chunks per llama_decode: llama-perplexity -b
    recipe = load_recipe(a.recipe) if a.recipe else uniform_recipe("Q4_K")
    inventory = read_inventory(a.model)
    bin_dir = None if a.ours_only else (a.tools or bench_trial.build_tools(a.tools_cache, llama_cpp.__version__))
    work = Path(tempfile.mkdtemp(prefix="real-shape-bench-", dir=a.work))
    cache = work / "cache"
    spec = {"model": str(a.model), "text": str(a.text), "ctx": a.ctx, "chunks": a.chunks, "threads": a.threads,
            "n_seq": a.n_seq, "cache": str(cache), "work": str(work / "ours")}
    info = {"machine": bench_trial.machine(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "model": str(a.model), "blocks": inventory.n_blocks, "model_bytes": a.model.stat().st_size,
            "recipe": recipe.model_dump(by_alias=True, mode="json"), "text": str(a.text), "ctx": a.ctx,
            "chunks": a.chunks, "threads": a.threads, "n_seq": a.n_seq, "sample_s": a.sample_s,
            "theirs": "none (--ours-only)" if bin_dir is None else f"llama-quantize + llama-perplexity from {bin_dir}"}
    info["load_before"] = bench_trial.wait_quiet(a.max_load, a.max_wait)
    info["machine"]["date"] = bench_trial.machine()["date"]
    print(f"load {info['load_before'][-1]:.2f}; work in {work}", flush=True)
    runs: dict[str, list[dict]] = {"cold": [], "theirs": [], "warm": []}
    refs: dict[str, dict] = {}
    try:
        refs["ours"] = measured(partial(bench_trial.in_child, "reference", spec, work / "ref-ours.log"), a.sample_s)
        base_file = work / "base.kld"
        timer: Path | None = None
        if bin_dir is not None:
            timer = bench_trial.build_decode_timer(work)
            refs["theirs"] = measured(partial(bench_trial.theirs_reference, bin_dir, a, base_file,
                                              work / "ref-theirs.log", timer), a.sample_s)
        print("references: " + ", ".join(f"{k} {r['wall']:.1f} s" for k, r in refs.items()), flush=True)
        for i in range(a.runs):
            TensorCache.under(cache).clear()
            score = partial(bench_trial.score_process, a, spec, recipe, work, i)
            runs["cold"].append(measured(score, a.sample_s))
            runs["cold"][-1]["cache_bytes"] = cache_bytes(cache)
            if bin_dir is not None and timer is not None:
                runs["theirs"].append(measured(partial(bench_trial.theirs_trial, bin_dir, a, recipe, base_file, work,
                                                       i, timer), a.sample_s))
            runs["warm"].append(measured(score, a.sample_s))
            print(f"run {i}: " + ", ".join(f"{k} {r[-1]['wall']:.1f} s (KLD {r[-1]['kld_mean']:.6f}, "
                                           f"anon {r[-1]['memory']['anon_mb']:,.0f} MiB, "
                                           f"file {r[-1]['memory']['file_mb']:,.0f} MiB)"
                                           for k, r in runs.items() if r), flush=True)
        info["load_after"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(info, refs, runs, a.out, work)




def portable(text: str, work: Path) -> str:
    """``text`` without this machine's paths: the scratch directory as WORK, the interpreter as python, files
    beside the repository relative to it (../shared/...), any other absolute path by its file name."""
    text = text.replace(str(work), "WORK").replace(sys.executable, "python")
    text = re.sub(rf"{re.escape(str(Path.cwd().parent))}/[^\"\s]*", lambda m: os.path.relpath(m.group(0)), text)
    return re.sub(r"(?<![\w.~])/[^\"\s]*/([^/\"\s]+)", r"\1", text)


def report(info: dict, refs: dict, runs: dict[str, list[dict]], out: Path, work: Path) -> None:
    """Print the medians side by side and write every number to ``out``, without this machine's paths."""
    sides = [k for k, r in runs.items() if r]
    summary: dict[str, dict] = {}
    for k in sides:
        rs = runs[k]
        summary[k] = {"wall_s": statistics.median(r["wall"] for r in rs),
                      "kld_mean": statistics.median(r["kld_mean"] for r in rs),
                      **{f"peak_{m}": statistics.median(r["memory"][m] for r in rs)
                         for m in ("anon_mb", "file_mb", "total_mb")},
                      "wait4_rss_mb": statistics.median(r["rss_mb"] for r in rs)}
    if "theirs" in summary:
        for k in ("cold", "warm"):
            summary[k]["ratio"] = summary[k]["wall_s"] / summary["theirs"]["wall_s"]
    cold_cache = runs["cold"][0]["cache_bytes"]
    m = info["machine"]
    print(f"\n{m['date']}  {m['cpu']}, nproc {m['nproc']}; load {info['load_before'][-1]:.2f} before, "
          f"{info['load_after']:.2f} after; {info['theirs']}")
    print(f"{info['model']}: {info['blocks']} blocks, {info['model_bytes']:,} bytes; threads {info['threads']}, "
          f"ctx {info['ctx']}, {info['chunks']} chunks; medians of {len(runs['cold'])} runs\n")
    print(f"{'trial':8s} {'wall s':>8s} {'ratio':>6s} {'mean KLD':>10s} {'anon MiB':>9s} {'file MiB':>9s} "
          f"{'total MiB':>9s} {'wait4 MiB':>9s}")
    for k, s in summary.items():
        ratio = f"{s['ratio']:.2f}" if "ratio" in s else "-"
        print(f"{k:8s} {s['wall_s']:8.1f} {ratio:>6s} {s['kld_mean']:10.6f} {s['peak_anon_mb']:9,.0f} "
              f"{s['peak_file_mb']:9,.0f} {s['peak_total_mb']:9,.0f} {s['wait4_rss_mb']:9,.0f}")
    print("\ntensor cache after a cold trial: " + ", ".join(f"{k} {v:,} B" for k, v in cold_cache.items())
          + f"; {sum(cold_cache.values()):,} B in all")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(portable(json.dumps({**info, "summary": summary, "references": refs, "runs": runs}, indent=1),
                            work) + "\n")
    print(f"wrote {out}")


def run_smoke() -> None:
    print("smoke: our side only (--ours-only), one run, on real_shapes.py's smoke model", flush=True)
    from header_only_gguf import write_map
    from real_shapes import main as write_model

    with smoke.directory("real_shape_bench") as tmp:
        tiny = smoke.qwen35_model(tmp)
        model = tmp / "real-shapes.gguf"
        write_model([str(write_map(tiny, tmp / "tensors.map")), str(model), "--experts", "4", "--vocab", "640",
                     "--tokenizer", str(tiny)])
        main([str(model), "--text", str(smoke.text_file(tmp)), "--ctx", "128", "--chunks", "2", "--runs", "1",
              "--ours-only", "--max-load", "inf", "--work", str(tmp), "--out", str(tmp / "bench.json")])


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
