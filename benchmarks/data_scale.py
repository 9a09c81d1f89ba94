"""Peak memory and time of preparing local text at 30M and 300M tokens: the prepared path vs the old in-memory one.

    python benchmarks/data_scale.py --workdir /tmp/hf_wsd-data-scale --sizes 30 300 --num-proc 1 2 --old-at 30

Builds a synthetic corpus from the shipped KJV (chapters repeated, each copy with its own marker so documents
differ) as JSONL shards under ``--workdir`` (never in the repository), trains one fixed tokenizer on a bounded
sample (timed separately), then runs every configuration in a fresh subprocess and reports its peak memory — the
proportional set size of the process and its children, sampled every 50 ms, —
above the interpreter + imports baseline, wall seconds and
training tokens per second. Each configuration gets an empty cache, so every run converts the JSONL to Arrow.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COPIES_PER_SHARD = 10
TOKENS_PER_COPY = 1.0e6  # the KJV is ~1.0M tokens at a 4,096-token byte-level BPE


def make_corpus(workdir: Path, millions: int, single_file: bool) -> tuple[Path, Path]:
    """``(shard folder, single file)`` of about ``millions`` M tokens: KJV copies with a per-copy marker (the
    single JSONL file, for the old path, only when asked)."""
    from hf_wsd.data import kjv_documents

    folder, single = workdir / f"corpus-{millions}M", workdir / f"corpus-{millions}M.jsonl"
    if folder.is_dir() and (folder / "done").is_file():
        return folder, single
    folder.mkdir(parents=True, exist_ok=True)
    chapters = kjv_documents()
    copies = round(millions * 1e6 / TOKENS_PER_COPY)
    with (single if single_file else Path(os.devnull)).open("w") as whole:
        for shard_start in range(0, copies, COPIES_PER_SHARD):
            lines = []
            for copy in range(shard_start, min(copies, shard_start + COPIES_PER_SHARD)):
                lines.extend(json.dumps({"text": f"[copy {copy}] {chapter}"}) + "\n" for chapter in chapters)
            text = "".join(lines)
            (folder / f"shard-{shard_start // COPIES_PER_SHARD:05d}.jsonl").write_text(text)
            whole.write(text)
    (folder / "done").write_text("")
    return folder, single


def fixed_tokenizer(workdir: Path, corpus: Path) -> tuple[Path, float]:
    """A 4,096-token BPE trained once on a bounded sample (10,000 documents) of ``corpus``; its training seconds."""
    from hf_wsd.data import open_corpus, tokenizer_sample, train_tokenizer

    started = time.perf_counter()
    source = open_corpus(str(corpus), cache_dir=workdir / "tok-cache")
    sample = tokenizer_sample(source, 10_000, 0.05, 0)
    tokenizer = train_tokenizer(sample, 4096, workdir / "tok-cache", name="bench")
    return Path(tokenizer.name_or_path), time.perf_counter() - started


CHILD = r"""
import json, os, sys, time
import psutil
import datasets, transformers, numpy  # the imports count as baseline
sys.path.insert(0, {repo!r})
import hf_wsd.data
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained({tokenizer!r})
baseline = psutil.Process().memory_full_info().pss  # the parent subtracts its own anonymous baseline
anon = [l for l in open("/proc/self/smaps_rollup") if l.startswith(("Pss_Anon", "Pss_Shmem"))]
print(json.dumps({{"baseline": baseline, "baseline_anon": sum(int(l.split()[1]) * 1024 for l in anon)}}), flush=True)
started = time.perf_counter()
if {old!r}:
    sys.path.insert(0, {old_dir!r})
    import old_data
    data = old_data.build_lm_datasets({single!r}, tokenizer=tokenizer, block_size=1024, cache_dir={cache!r})
    tokens = len(data.train) * 1024
else:
    data = hf_wsd.data.build_lm_datasets({folder!r}, tokenizer=tokenizer, block_size=1024, cache_dir={cache!r},
                                        num_proc={num_proc!r})
    tokens = data.train_tokens
print(json.dumps({{"seconds": time.perf_counter() - started, "tokens": tokens}}), flush=True)
"""


def _smaps(pid: int) -> dict[str, int]:
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                fields[name] = int(rest.split()[0]) * 1024
    return fields


def _tree_memory(process) -> tuple[int, int]:
    """``(anonymous, file-backed)`` proportional set size of the process and its children: pages a forked
    worker shares with its parent count once (a sum of RSS would count them in every process); file-backed
    pages are memory-mapped files (Arrow) read so far, which the kernel may drop under pressure."""

    anon = file = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            fields = _smaps(p.pid)
        except OSError:
            continue
        anon += fields.get("Pss_Anon", 0) + fields.get("Pss_Shmem", 0)
        file += fields.get("Pss_File", 0)
    return anon, file


def run_config(workdir: Path, tokenizer: Path, millions: int, num_proc: int | None, old: bool) -> dict:
    """One configuration in a fresh interpreter: peak PSS of the process tree above baseline, seconds, tokens/s."""
    import psutil

    folder, single = workdir / f"corpus-{millions}M", workdir / f"corpus-{millions}M.jsonl"
    old_dir = workdir / "old"
    cache = tempfile.mkdtemp(prefix="cache-", dir=workdir)
    code = CHILD.format(
        repo=str(REPO),
        tokenizer=str(tokenizer),
        old=old,
        old_dir=str(old_dir),
        single=str(single),
        folder=str(folder),
        cache=cache,
        num_proc=num_proc,
    )
    env = {
        **os.environ,
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "HF_DATASETS_CACHE": str(Path(cache) / "hf"),
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    }
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    process = psutil.Process(child.pid)
    lines: list[dict] = []
    def read() -> None:
        lines.extend(json.loads(line) for line in child.stdout if line.startswith("{"))

    reader = threading.Thread(target=read)
    reader.start()
    peak = peak_anon = 0
    while child.poll() is None:
        anon, file = _tree_memory(process)
        peak, peak_anon = max(peak, anon + file), max(peak_anon, anon)
        time.sleep(0.05)
    reader.join()
    subprocess.run(["rm", "-rf", cache], check=False)
    if child.returncode != 0 or len(lines) < 2:
        raise RuntimeError(f"configuration {millions}M old={old} num_proc={num_proc} failed ({child.returncode})")
    baseline, result = lines[0]["baseline"], lines[1]
    anon_baseline = lines[0]["baseline_anon"]
    return {
        "path": "old (main)" if old else "prepared",
        "corpus_M": millions,
        "num_proc": num_proc or 1,
        "tokens": result["tokens"],
        "seconds": round(result["seconds"], 1),
        "tokens_per_s": round(result["tokens"] / result["seconds"]),
        "peak_pss_above_baseline_gb": round((peak - baseline) / 1e9, 3),
        "peak_anon_above_baseline_gb": round((peak_anon - anon_baseline) / 1e9, 3),
        "baseline_gb": round(baseline / 1e9, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/hf_wsd-data-scale")
    parser.add_argument("--sizes", type=int, nargs="+", default=[30, 300], help="corpus sizes in M tokens")
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--old-at", type=int, nargs="*", default=[30], help="sizes to also run the old path at")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "old").mkdir(exist_ok=True)
    old_source = subprocess.run(
        ["git", "-C", str(REPO), "show", "main:hf_wsd/data.py"], capture_output=True, text=True, check=True
    ).stdout
    (workdir / "old" / "old_data.py").write_text(old_source)
    for millions in args.sizes:
        make_corpus(workdir, millions, single_file=millions in args.old_at)
    tokenizer, tokenizer_seconds = fixed_tokenizer(workdir, workdir / f"corpus-{min(args.sizes)}M")
    print(f"tokenizer: 4,096-token BPE on a 10,000-document sample in {tokenizer_seconds:.1f} s", flush=True)
    rows = []
    for millions in args.sizes:
        configs = [(n, False) for n in args.num_proc] + ([(None, True)] if millions in args.old_at else [])
        for num_proc, old in configs:
            row = run_config(workdir, tokenizer, millions, num_proc, old)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"tokenizer_seconds": tokenizer_seconds, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
