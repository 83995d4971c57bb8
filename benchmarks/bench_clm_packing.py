"""Benchmark run_clm.py's tokenize + pack against HF run_clm's approach, on a generated Chinese corpus.

    python benchmarks/bench_clm_packing.py                        # 200 MB corpus, results table + JSON
    python benchmarks/bench_clm_packing.py --megabytes 50         # quicker
    python benchmarks/bench_clm_packing.py --tokenizer /path/to/bert-base-chinese

Measured, each in a fresh process (so peak RSS is its own), on the same files and tokenizer:
- baseline: HF run_clm (`load_dataset("text")`, `map(tokenize)`, `map(group_texts)` over 1,000-row batches);
- run_clm cold: read + tokenize + pack + write the Arrow block cache (1 process, then 2 worker processes);
- run_clm cache hit: the same call again (key check + memory-map);
- streaming: the --streaming reader (10,000-document shuffle buffer) over 1/5 of the corpus and over all of it (peak RSS must stay flat).
The corpus is generated into a temp dir (never committed): templated documents from
scripts/demo_texts.py joined into realistic lengths (a few hundred characters).
"""

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from itertools import chain
from pathlib import Path

import datasets
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from demo_models import build_tokenizer  # noqa: E402
from demo_texts import clm_document  # noqa: E402
from run_clm import add_missing_special_tokens  # noqa: E402
from zhtrain.data.packing import BlockRecipe, DocumentEncoder, StreamedBlocks, load_or_build_blocks  # noqa: E402

SHARED_TOKENIZER = Path("/work/shared/data/tokenizers/bert-base-chinese")
BLOCK_SIZE = 512


def make_corpus(out_dir: Path, megabytes: int, n_files: int, seed: int = 0) -> list[str]:
    """n_files txt files (one document per line) of about megabytes/n_files MB each."""
    rng = random.Random(seed)
    pool = [clm_document(rng) for _ in range(20000)]
    files, per_file = [], megabytes * 1_000_000 // n_files
    for index in range(n_files):
        path = out_dir / f"part-{index:03d}.txt"
        written, lines = 0, []
        while written < per_file:
            document = "".join(rng.choices(pool, k=rng.randint(2, 16)))
            lines.append(document)
            written += len(document.encode("utf-8")) + 1
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        files.append(str(path))
    return files


def peak_rss_mb() -> dict:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_rss_mb": round(own, 1), "peak_worker_rss_mb": round(children, 1)}


def measure(kind: str, files: list[str], tokenizer_dir: str, work: Path, workers: int) -> dict:
    """One measurement, run inside its own process."""
    datasets.disable_progress_bars()
    datasets.disable_caching()  # the baseline's map() results still go to cache files below `work`
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    add_missing_special_tokens(tokenizer, from_scratch=True)
    megabytes = sum(os.path.getsize(f) for f in files) / 1e6
    start = time.perf_counter()
    if kind == "baseline":
        raw = datasets.load_dataset("text", data_files=files, split="train", cache_dir=str(work / "hf"))
        tokenized = raw.map(lambda batch: tokenizer(batch["text"]), batched=True, remove_columns=["text"])

        def group_texts(examples):  # HF run_clm's, with its 1,000-row batches
            concatenated = {k: list(chain(*examples[k])) for k in examples}
            total = len(concatenated["input_ids"]) // BLOCK_SIZE * BLOCK_SIZE
            result = {k: [t[i : i + BLOCK_SIZE] for i in range(0, total, BLOCK_SIZE)] for k, t in concatenated.items()}
            result["labels"] = result["input_ids"].copy()
            return result

        grouped = tokenized.map(group_texts, batched=True)
        tokens, blocks = sum(len(ids) for ids in tokenized["input_ids"]), len(grouped)
        seconds = time.perf_counter() - start
    elif kind in ("cold", "hit"):
        encoder = DocumentEncoder(tokenizer, None, tokenizer.eos_token_id)
        recipe = BlockRecipe(files, "train_file", "text", "utf-8", encoder, BLOCK_SIZE)
        parts = load_or_build_blocks(recipe, work / "cache", workers=workers)
        seconds = time.perf_counter() - start
        blocks = len(parts["main"])
        info = json.loads(next((work / "cache").glob("*/info.json")).read_text(encoding="utf-8"))
        tokens = info["stats"]["main_tokens"]
    elif kind == "streaming":
        encoder = DocumentEncoder(tokenizer, None, tokenizer.eos_token_id)
        stream = StreamedBlocks(BlockRecipe(files, "train_file", "text", "utf-8", encoder, BLOCK_SIZE), 0, 10000)
        blocks = sum(1 for _ in stream)
        tokens = blocks * BLOCK_SIZE
        seconds = time.perf_counter() - start
    result = {"kind": kind, "workers": workers, "megabytes": round(megabytes, 1), "seconds": round(seconds, 3)}
    result.update(tokens=tokens, blocks=blocks, mb_per_s=round(megabytes / seconds, 2))
    result.update(tokens_per_s=round(tokens / seconds), **peak_rss_mb())
    return result


def run_child(kind: str, files: list[str], tokenizer_dir: str, work: Path, workers: int = 1) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--tokenizer", tokenizer_dir, "--work", str(work)]
    command += ["--workers", str(workers), "--files", *files]
    print("  running:", kind, f"workers={workers}", f"files={len(files)}", flush=True)
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result = json.loads(output.strip().splitlines()[-1])
    print("  ", result, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--files_count", type=int, default=10)
    parser.add_argument("--tokenizer", default=None, help="Tokenizer dir (default: bert-base-chinese if present).")
    parser.add_argument("--output", default=None, help="Write the results as JSON here.")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--files", nargs="*", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.files, args.tokenizer, Path(args.work), args.workers)))
        return

    with tempfile.TemporaryDirectory(prefix="bench_clm_") as tmp:
        tmp = Path(tmp)
        tokenizer_dir = args.tokenizer
        if tokenizer_dir is None:
            if SHARED_TOKENIZER.is_dir():
                tokenizer_dir = str(SHARED_TOKENIZER)
            else:
                tokenizer_dir = str(tmp / "tokenizer")
                build_tokenizer(tokenizer_dir)
        (tmp / "corpus").mkdir()
        start = time.perf_counter()
        files = make_corpus(tmp / "corpus", args.megabytes, args.files_count)
        print(f"corpus: {len(files)} files, {sum(map(os.path.getsize, files)) / 1e6:.1f} MB "
              f"in {time.perf_counter() - start:.0f} s; tokenizer {tokenizer_dir}", flush=True)  # fmt: skip
        results = {"machine": f"{platform.platform()}, {os.cpu_count()} CPU cores", "tokenizer": tokenizer_dir}
        results["baseline"] = run_child("baseline", files, tokenizer_dir, tmp / "baseline")
        results["cold_1"] = run_child("cold", files, tokenizer_dir, tmp / "ours1", 1)
        results["hit_1"] = run_child("hit", files, tokenizer_dir, tmp / "ours1", 1)
        results["cold_2"] = run_child("cold", files, tokenizer_dir, tmp / "ours2", 2)
        fifth = files[: max(1, len(files) // 5)]
        results["streaming_fifth"] = run_child("streaming", fifth, tokenizer_dir, tmp / "stream1")
        results["streaming_all"] = run_child("streaming", files, tokenizer_dir, tmp / "stream5")

    base = results["baseline"]
    summary = {
        "speedup_1_process": round(results["cold_1"]["mb_per_s"] / base["mb_per_s"], 2),
        "speedup_2_workers": round(results["cold_2"]["mb_per_s"] / base["mb_per_s"], 2),
        "cache_hit_vs_cold": round(results["cold_1"]["seconds"] / results["hit_1"]["seconds"], 1),
        "streaming_rss_growth_5x_corpus": round(
            results["streaming_all"]["peak_rss_mb"] / results["streaming_fifth"]["peak_rss_mb"], 3
        ),
    }
    results["summary"] = summary
    print(json.dumps(results, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
